"""Fit-on-train encoding and scaling of flow tables (:class:`FlowPreprocessor`) and where a model keeps it.

Fitted on training rows only: categorical vocabularies with an explicit unknown bucket (index 0), ``log1p`` for
non-negative heavy-tailed columns, a robust scaler (median, 5-95 % range) and a clip at +-10. Its state is a JSON-able
dict that travels in the model's ``zoo_config``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .canonical import _check_values, _id_like_columns, to_canonical
from .vocabulary import DERIVED, FORMATS, SOURCE_MAPS, UNKNOWN, CoverageReport, source_names

log = logging.getLogger("gatedzoo")

#: where each format's column names are listed, for messages
_SPELLINGS = {"nslkdd": "the NSL-KDD names, gatedzoo.data.flows.NSLKDD_COLUMNS",
              "cicflowmeter": "either CICFlowMeter spelling, gatedzoo.data.flows.CICFLOWMETER_MAP",
              "argus": "the Argus field names, gatedzoo.data.flows.ARGUS_MAP"}


def _wanted_columns(lacking: list[str], fmt: str) -> list[str]:
    """The table columns to add for the ``lacking`` features, in the source's own names: ``"'src_bytes'"``, or
    ``"'Total Fwd Packets' / 'Tot Fwd Pkts'"`` where the source has two spellings. A feature the source only derives
    (:data:`DERIVED`) is left to the lacking column it is derived from, else named through its two sources."""
    out = []
    for f in lacking:
        derived_only = f in DERIVED and f not in SOURCE_MAPS[fmt].values()
        if derived_only and any(x in lacking for x in DERIVED[f][:2]):
            continue
        for g in DERIVED[f][:2] if derived_only else (f,):
            text = " / ".join(repr(n) for n in source_names(g, fmt) or [g])
            if text not in out:
                out.append(text)
    return out


class FlowPreprocessor:
    """Fit-on-train preprocessing of flow tables; its :meth:`state` is JSON-able and rebuilds it exactly.

    Args:
        fmt (str): source format the preprocessor reads (``"nslkdd"``, ``"cicflowmeter"``, ``"argus"``).
        min_coverage (float): refuse a table that provides less than this share of the fitted features. Default:
            ``0.9``.
        clip (float): clip scaled values to ``[-clip, clip]``. Default: ``10.0``.
        log_threshold (float): a non-negative column whose training maximum exceeds it is ``log1p``-transformed
            (heavy-tailed bytes / counts / durations). Default: ``100.0``.
    """

    def __init__(self, fmt: str = "nslkdd", min_coverage: float = 0.9, clip: float = 10.0, log_threshold: float = 100):
        if fmt not in FORMATS:
            raise ValueError(f"format={fmt!r}; use one of {FORMATS}.")
        self.fmt, self.min_coverage, self.clip, self.log_threshold = fmt, min_coverage, clip, log_threshold
        self.features: list[str] = []
        self.observed: list[str] = []
        self.log_cols: list[str] = []
        self.center: list[float] = []
        self.scale: list[float] = []
        self.categorical: dict[str, list[str]] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.features)

    def _numeric(self, df, only: set[str] | None = None):
        num, cat, report = to_canonical(df, self.fmt, only)
        _check_values(num, self.fmt, report)
        return num, cat, report

    def fit(self, df) -> CoverageReport:
        """Fit on a training table (raw columns of ``self.fmt``); returns the coverage report. Columns that look like
        row or record numbers are kept as features, with a warning naming them."""
        num, cat, report = self._numeric(df)
        log.info("flow coverage %s", report)
        ids = _id_like_columns(num, report)
        if ids:
            log.warning("%s table: columns %s look like row or record numbers and are used as features; in a capture "
                        "written in time order the row number alone can predict the label. Drop them before training "
                        "if they are ids (df.drop(columns=[...])).", self.fmt, ids[:8])
        self.features = list(num.columns)
        self.observed = report.present + report.extras
        values = num.to_numpy(np.float64)
        self.log_cols = [c for c, col in zip(self.features, values.T)
                         if col.min() >= 0 and col.max() > self.log_threshold]
        values = self._log(values)
        lo, med, hi = np.percentile(values, [5, 50, 95], axis=0)
        span = hi - lo
        full = values.max(0) - values.min(0)
        # a column constant between its 5th and 95th percentile still carries rare signal: scale by its full range
        span = np.where(span > 0, span, np.where(full > 0, full, 1.0))
        self.center, self.scale = med.tolist(), span.tolist()
        self.categorical = {c: [UNKNOWN, *sorted(set(cat[c]))] for c in cat.columns}
        return report

    def _log(self, values: np.ndarray) -> np.ndarray:
        idx = [self.features.index(c) for c in self.log_cols]
        values = values.copy()
        values[:, idx] = np.log1p(np.maximum(values[:, idx], 0))
        return values

    def transform(self, df) -> tuple[np.ndarray, np.ndarray, CoverageReport]:
        """Map a raw table to ``(x_num float32 [N, F], x_cat int64 [N, K], report)``.

        Raises:
            RuntimeError: not fitted.
            ValueError: coverage below ``min_coverage`` (naming the columns to add as ``self.fmt`` spells them),
                NaN/inf or negative counts (naming the table's columns, with rows).
        """
        if not self.fitted:
            raise RuntimeError("FlowPreprocessor.transform before fit; call fit(train_df) or load a state.")
        # only the features the model reads are converted and checked: an unused column cannot block scoring
        num, cat, report = self._numeric(df, set(self.features))
        have = set(num.columns)
        lacking = [f for f in self.observed if f not in have or (f in report.missing)]
        cover = 1 - len(lacking) / max(len(self.observed), 1)
        if cover < self.min_coverage:
            wanted = _wanted_columns(lacking, self.fmt)
            raise ValueError(
                f"the table provides {100 * cover:.0f} % of the {len(self.observed)} features this model was trained "
                f"on (min_coverage={self.min_coverage}); missing columns: {', '.join(wanted[:10])}"
                f"{' ...' if len(wanted) > 10 else ''}. Add them under those names ({_SPELLINGS[self.fmt]})."
            )
        if lacking:
            # zero is a value the model reads, not an absence: the scores of these flows move
            log.warning("flow table lacks %d of the %d features the model was trained on; columns %s are zero-filled, "
                        "which shifts the scores: add them for the scores the model was validated with.",
                        len(lacking), len(self.observed), ", ".join(_wanted_columns(lacking, self.fmt)[:10]))
        for f in self.features:
            if f not in have:
                num[f] = 0.0
        values = self._log(num[self.features].to_numpy(np.float64))
        x = np.clip((values - np.array(self.center)) / np.array(self.scale), -self.clip, self.clip)
        codes = []
        for c, vocab in self.categorical.items():
            if c not in cat.columns:
                raise ValueError(f"categorical column {c!r} is missing; the model was trained with it.")
            index = {v: i for i, v in enumerate(vocab)}
            col = cat[c].map(lambda v, index=index: index.get(v, 0)).to_numpy(np.int64)
            if (col == 0).any():
                unseen = sorted(set(cat[c][col == 0]))
                log.warning("%d flows have %s values unseen in training %s: mapped to the unknown bucket",
                            int((col == 0).sum()), c, unseen[:8])
            codes.append(col)
        x_cat = np.stack(codes, 1) if codes else np.zeros((len(df), 0), np.int64)
        return x.astype(np.float32), x_cat, report

    def state(self) -> dict:
        """JSON-able state (goes into ``zoo_config["preprocessing"]``)."""
        return {"format": self.fmt, "features": self.features, "observed": self.observed, "log_cols": self.log_cols,
                "center": self.center, "scale": self.scale, "categorical": self.categorical, "clip": self.clip,
                "min_coverage": self.min_coverage}

    @classmethod
    def from_state(cls, state: dict) -> FlowPreprocessor:
        p = cls(state["format"], state.get("min_coverage", 0.9), state.get("clip", 10.0))
        for k in ("features", "observed", "log_cols", "center", "scale", "categorical"):
            setattr(p, k, state[k])
        return p


def load_preprocessing(source: str) -> dict:
    """The ``preprocessing`` state of a zoo folder (``config.json``) or a shipped ``arch.tag``."""
    import json

    p = Path(source).expanduser()
    if not p.exists():
        from gatedzoo.zoo.registry import get_pretrained

        entry = get_pretrained(source)
        if entry.path is None:
            raise FileNotFoundError(f"{source}: not a local zoo folder; download the weights first.")
        p = entry.path
    cfg = json.loads((p / "config.json" if p.is_dir() else p).read_text())
    if "preprocessing" not in cfg:
        raise ValueError(f"{source} carries no flow preprocessing; it was not trained on flow tables.")
    return cfg["preprocessing"]
