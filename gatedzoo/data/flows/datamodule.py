"""The flow-table LightningDataModule: splits, fit-on-train preprocessing and per-flow windows for TCH-Net."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from ..paths import fetch
from .labels import CATEGORIES_5, attack_names, check_task, labels_of
from .preprocess import FlowPreprocessor, load_preprocessing
from .readers import NSLKDD_FILES, read_flow_table
from .vocabulary import CoverageReport
from .windows import SPLIT_BLOCK_WINDOWS, FlowWindows, block_split, flow_order, table_windows


class FlowDataModule(L.LightningDataModule):
    """Flow tables -> per-flow windows for TCH-Net (train / validation / test, preprocessing fitted on train only).

    Args:
        train_path (str, Optional): training table. Default (NSL-KDD): ``KDDTrain+.txt`` when present in the data
            directory, else ``KDDTrain+_20Percent.txt``.
        test_path (str, Optional): test table. Default (NSL-KDD): ``KDDTest+.txt``.
        format (str): ``"nslkdd"``, ``"cicflowmeter"``, ``"argus"`` or ``"auto"``. Default: ``"nslkdd"``.
        task (str): ``"binary"`` (normal / benign vs any other label) or ``"5class"`` (normal, DoS, Probe, R2L,
            U2R, from NSL-KDD attack names or those category names; another label set is mapped onto them first, see
            :func:`labels_of`). Default: ``"binary"``.
        val_fraction (float): stratified share of the training table held out for validation. With ``window=1`` a
            random stratified draw of flows; with ``window > 1`` whole blocks of ``SPLIT_BLOCK_WINDOWS * window``
            consecutive flows of one source (:func:`block_split`), the windows built on the whole table (so they are
            the ones inference builds) and training windows that reach into a validation flow dropped. Default:
            ``0.2``.
        window (int): flows per window (1 for NSL-KDD: no time order). Default: ``1``.
        time_format (str, Optional): ``strftime`` pattern of the time-stamp column (``"%d/%m/%Y %H:%M:%S"``),
            for stamps whose format pandas cannot infer or whose day/month order is ambiguous; stored with the
            model. Default: `None` (inferred, see :func:`flow_times`).
        batch_size (int): Default: ``512``.
        seed (int): split seed. Default: ``0``.
        preprocessor_from (str, Optional): a zoo folder (``config.json``) or ``arch.tag`` whose preprocessing to reuse
            (fine-tuning keeps the category encodings of the pretrained model); the scaler is refitted on the new
            training rows. Default: `None`.
        num_workers (int): Default: ``0``.
        max_train_rows (int, Optional): keep this many training-table rows (quick runs and tests) before the split:
            a random subset with ``window=1``, the earliest flows in time order (file order without time stamps)
            with ``window > 1``, so that windows stay consecutive. Default: `None` (all).
        load_test (bool): read the test table in :meth:`setup`. `False` builds the training and validation splits
            only, without reading (or fetching) any test file: what the novelty guard's reference needs
            (:func:`gatedzoo.tasks.flows.rebuild_novelty_guard`). Default: `True`.
    """

    def __init__(self, train_path: str | None = None, test_path: str | None = None, format: str = "nslkdd",
                 task: str = "binary", val_fraction: float = 0.2, window: int = 1, batch_size: int = 512,
                 seed: int = 0, preprocessor_from: str | None = None, num_workers: int = 0,
                 max_train_rows: int | None = None, time_format: str | None = None, load_test: bool = True):
        super().__init__()
        check_task(task)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction}; use a share in (0, 1).")
        self.train_path, self.test_path, self.format, self.task = train_path, test_path, format, task
        self.val_fraction, self.window, self.batch_size, self.seed = val_fraction, window, batch_size, seed
        self.preprocessor_from, self.num_workers, self.max_train_rows = preprocessor_from, num_workers, max_train_rows
        self.time_format, self.load_test = time_format, load_test
        self.pre: FlowPreprocessor | None = None
        self.class_counts: list[int] = []
        self.report: CoverageReport | None = None
        #: raw label strings per split (``"train"``, ``"val"``, ``"test"``), filled by :meth:`setup`
        self.row_labels: dict[str, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return 2 if self.task == "binary" else len(CATEGORIES_5)

    @property
    def label_names(self) -> list[str]:
        return ["normal", "attack"] if self.task == "binary" else list(CATEGORIES_5)

    def _train_file(self) -> tuple[Path, str]:
        if self.train_path:
            return Path(self.train_path), self.train_path
        full = NSLKDD_FILES["train"].path()
        if full.exists():
            return full, "nsl_kdd/KDDTrain+.txt"
        return fetch(NSLKDD_FILES["train20"]), "nsl_kdd/KDDTrain+_20Percent.txt"

    def _base_preprocessor(self, fmt: str) -> FlowPreprocessor:
        if self.preprocessor_from is None:
            return FlowPreprocessor(fmt)
        state = load_preprocessing(self.preprocessor_from)
        pre = FlowPreprocessor.from_state(state)
        if pre.fmt != fmt:
            raise ValueError(f"preprocessor_from={self.preprocessor_from!r} reads {pre.fmt} tables but the training "
                             f"table is {fmt}; convert the table or train from scratch (preprocessor_from: null).")
        return pre

    def setup(self, stage: str | None = None) -> None:
        if self.pre is not None:
            return
        from sklearn.model_selection import train_test_split

        path, self.train_name = self._train_file()
        df, fmt = read_flow_table(path, self.format)
        # both tables are read (and their time stamps parsed) before any fitting, so bad input stops the run first
        if not self.load_test:
            test = None
        elif self.test_path:
            test = Path(self.test_path)
        else:
            test = fetch(NSLKDD_FILES["test"]) if fmt == "nslkdd" else None
        tdf = None if test is None else read_flow_table(test, fmt)[0]
        ty = None if tdf is None else labels_of(tdf, fmt, self.task)
        windowed = self.window > 1
        order = flow_order(df, self.time_format) if windowed else (None, None)
        if self.max_train_rows and len(df) > self.max_train_rows:
            if windowed:  # the earliest flows: a random subset would leave holes in every window
                key = np.arange(len(df)) if order[1] is None else order[1]
                keep = np.argsort(key, kind="stable")[: self.max_train_rows]
            else:
                keep = np.random.default_rng(self.seed).choice(len(df), self.max_train_rows, replace=False)
            keep = np.sort(keep)
            df = df.iloc[keep].reset_index(drop=True)
            order = tuple(None if a is None else a[keep] for a in order)
        y = labels_of(df, fmt, self.task)
        counts = np.bincount(y, minlength=self.num_classes)
        if (counts > 0).sum() < 2:
            raise ValueError(f"{path} holds only one class ({self.label_names[int(y[0])]}); training needs flows of "
                             "at least two classes.")
        test_windows = None if tdf is None else table_windows(tdf, fmt, self.window, self.time_format)
        if windowed:
            windows = table_windows(df, fmt, self.window, self.time_format)
            tr, va = block_split(y, self.val_fraction, SPLIT_BLOCK_WINDOWS * self.window, self.seed, *order)
            in_val = np.zeros(len(df), bool)
            in_val[va] = True
            # a training window that reaches back into a validation flow would train on that flow's features
            tr = tr[~in_val[windows[tr]].any(1)]
            if len(np.unique(y[tr])) < 2:
                raise ValueError(f"{path}: the training blocks of the window split hold one class only; give more "
                                 "flows of each class, a smaller window or another seed.")
        else:
            # classes with a single row cannot be stratified: they join the largest class's stratum
            strat = np.where(counts[y] >= 2, y, int(counts.argmax()))
            tr, va = train_test_split(np.arange(len(df)), test_size=self.val_fraction, random_state=self.seed,
                                      stratify=strat)
            tr, va = np.sort(tr), np.sort(va)
        pre = self._base_preprocessor(fmt)
        vocab = dict(pre.categorical)
        self.report = pre.fit(df.iloc[tr])
        if vocab:
            # keep the pretrained encodings (index = embedding row); new values go to the unknown bucket
            pre.categorical = vocab
        self.pre, self.fmt = pre, fmt
        self.class_counts = np.bincount(y[tr], minlength=self.num_classes).tolist()
        if windowed:
            # one transform of the whole table; each split's windows index into it, as they would at inference
            x, c, _ = pre.transform(df)
            self.datasets = {"train": FlowWindows(x, c, y[tr], windows[tr]),
                             "val": FlowWindows(x, c, y[va], windows[va])}
        else:
            self.datasets = {"train": self._windows(df.iloc[tr], y[tr]), "val": self._windows(df.iloc[va], y[va])}
        # the attack type of every flow of each split (same order as the datasets): leave-attack-types-out studies
        names = attack_names(df)
        self.row_labels = {"train": names[tr], "val": names[va]}
        if tdf is not None:
            x, c, _ = pre.transform(tdf)
            self.datasets["test"] = FlowWindows(x, c, ty, test_windows)
            self.row_labels["test"] = attack_names(tdf)

    def _windows(self, df, y) -> FlowWindows:
        x, c, _ = self.pre.transform(df)
        return FlowWindows(x, c, y, table_windows(df, self.fmt, self.window, self.time_format))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            why = "pass test_path to the data module" if self.load_test else "the module was built with load_test=False"
            raise ValueError(f"no {split} table: {why}.")
        # training drops a last batch that could hold a single flow (BatchNorm needs two); evaluation keeps every flow
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=shuffle)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)

    def model_args(self) -> dict:
        """Architecture arguments the data fixes: input width, category sizes, number of classes."""
        return {"in_features": len(self.pre.features), "cat_cardinalities": [len(v) for v in
                                                                              self.pre.categorical.values()],
                "num_classes": self.num_classes}

    def zoo_metadata(self) -> dict:
        return {"preprocessing": self.pre.state(), "window": self.window, "label_names": self.label_names,
                "flow_task": self.task, "training_data": self.train_name, "class_counts": self.class_counts,
                "coverage": str(self.report), "time_format": self.time_format}
