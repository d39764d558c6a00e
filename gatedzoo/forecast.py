"""Forecast your own series: fit / predict / cross-validate on a long (Nixtla-style) or wide DataFrame, and plot.

Long layout: one row per (series, time) with columns ``unique_id``, ``ds``, ``y``; wide layout: a ``date`` column
plus one numeric column per series (the TSLib CSV format). A path to a CSV in either layout works wherever a frame
does.
Gateformer is multivariate: all series are forecast jointly, so they must share the same timestamps. Predictions
come back in the layout the data came in (long: a column named after the model, ``Gateformer``; wide: one column
per series), on the data's own scale, stamped at the data's frequency. The timestamps must be regular (a missing one
is refused, named); a gap inside a series is filled forward for the model's look-back, while the truth that
:meth:`Forecaster.cross_validation` returns keeps it as NaN.

    fc = Forecaster("gateformer", h=48, input_size=96, max_epochs=3).fit(df)
    future = fc.predict()                               # the h steps after the end of df
    cv = fc.cross_validation(df, n_windows=3)           # rolling-origin evaluation, no refit: optimistic here,
                                                        # its windows are rows fit() selected the epoch on
    fc.plot(df, cv, path="forecast.png")
    fc.save("my_forecaster"); Forecaster.load("my_forecaster")
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from gatedzoo.data.timeseries import (
    DATE,
    TimeSeriesDataModule,
    _read_csv,
    check_frame,
    check_frequency,
    fixed_frequency,
    load_frame,
    same_frequency,
    time_steps,
    tslib_borders,
)

MODEL_COL = "Gateformer"


def _count(name: str, value, meaning: str) -> int:
    """``value`` as an ``int`` >= 1, or a ``ValueError`` naming ``name``, the value, the valid range and ``meaning``.

    Integers (Python or NumPy) and integral floats (``24.0``) pass; ``bool``, text, ``2.5``, 0 and negatives do not.
    """
    integral = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())
    if not integral or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: give an integer >= 1 ({meaning}).")
    return int(value)


def to_wide(df, id_col: str = "unique_id", time_col: str = "ds", target_col: str = "y"):
    """Long ``(unique_id, ds, y)`` -> wide ``date`` + one column per series (named ``str(unique_id)``).

    ``ds`` is parsed to timestamps before the rows are ordered, so dates written as strings in any format pandas
    reads sort by time, not as text. Refuses numeric ``ds`` (integer time steps), unparsable ``ds``, repeated
    ``(unique_id, ds)`` pairs and series with different timestamps.
    """
    import pandas as pd

    missing = [c for c in (id_col, time_col, target_col) if c not in df.columns]
    if missing:
        raise ValueError(f"long DataFrame lacks columns {missing} (has {list(df.columns)[:10]}); give {id_col}, "
                         f"{time_col}, {target_col} or pass id_col= / time_col= / target_col=.")
    ds = df[time_col]
    if pd.api.types.is_numeric_dtype(ds) or pd.api.types.is_bool_dtype(ds):
        # pandas would read integers as nanoseconds since 1970 and the forecasts would carry meaningless timestamps
        raise ValueError(f"{time_col!r} holds numbers (e.g. {ds.head(2).tolist()}); Gateformer needs timestamps "
                         f"(its forecasts continue the calendar): convert them, e.g. df[{time_col!r}] = "
                         f"pd.Timestamp('2000-01-01') + pd.to_timedelta(df[{time_col!r}], unit='h') for hourly steps.")
    if not pd.api.types.is_datetime64_any_dtype(ds):
        parsed = pd.to_datetime(ds, errors="coerce")
        if parsed.isna().any():
            bad = ds[parsed.isna()].head(3).tolist()
            raise ValueError(f"{int(parsed.isna().sum())} {time_col!r} values do not parse as timestamps, e.g. "
                             f"{bad}; use one format for all of them, e.g. ISO dates such as 2016-07-01 00:00:00.")
        df = df.assign(**{time_col: parsed})
    if df[id_col].astype(str).nunique() != df[id_col].nunique():
        raise ValueError(f"distinct {id_col} values have the same text (e.g. 1 and '1'); give every series its own "
                         "name.")
    if df.duplicated([id_col, time_col]).any():
        raise ValueError(f"long DataFrame has repeated ({id_col}, {time_col}) pairs; keep one row per series and time.")
    wide = df.pivot(index=time_col, columns=id_col, values=target_col).sort_index()
    span = df.groupby(id_col)[time_col].agg(["min", "max", "nunique"])
    if (span["nunique"] != len(wide)).any():
        raise ValueError(_ragged_advice(span, len(wide), time_col, target_col))
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index().rename(columns={time_col: DATE}).rename_axis(columns=None).pipe(pd.DataFrame)


def _ragged_advice(span, n_times: int, time_col: str, target_col: str) -> str:
    """The error for series with different timestamps; ``span``: per series ``min``, ``max``, ``nunique`` of ``ds``.

    Resampling changes the step, not where a series starts or ends, so the advice is the common range (the latest
    start to the earliest end) with the timestamps a series lacks inside it added as missing values.
    """
    start, end = span["min"].max(), span["max"].min()
    short = span.loc[span["nunique"] != n_times, "nunique"].head(3).to_dict()
    head = (f"the series do not share the same timestamps (timestamps per series {short} vs {n_times} in all); "
            "Gateformer forecasts them jointly from one look-back of every series, so each needs a row (a value or "
            f"NaN) at every timestamp. Resampling does not align them: ")
    if start > end:
        first, last = span["min"].idxmax(), span["max"].idxmin()
        return head + (f"they share no time range ({first!r} starts at {start}, after {last!r} ends at {end}); "
                       "forecast such series with separate Forecasters.")
    late = [str(u) for u in span.index[span["min"] > span["min"].min()]][:5]
    early = [str(u) for u in span.index[span["max"] < span["max"].max()]][:5]
    where = "; ".join(part for part in (f"{late} start later" if late else "", f"{early} end earlier" if early else "")
                      if part)
    return head + (f"{where + ': ' if where else ''}keep the rows from {start} to {end}, the range every series "
                   f"covers (the latest start to the earliest end), e.g. "
                   f"df[df[{time_col!r}].between(pd.Timestamp('{start}'), pd.Timestamp('{end}'))], and add each "
                   f"timestamp a series misses inside it as a row with {target_col} = NaN (utilsforecast.preprocessing"
                   ".fill_gaps adds them); such gaps are filled forward for the look-back.")


def to_long(wide, value_col: str = MODEL_COL, id_col: str = "unique_id", time_col: str = "ds"):
    """Wide ``date`` + series columns -> long ``unique_id, ds, <value_col>``."""
    out = wide.melt(id_vars=[DATE], var_name=id_col, value_name=value_col).rename(columns={DATE: time_col})
    return out[[id_col, time_col, value_col]].sort_values([id_col, time_col], kind="stable").reset_index(drop=True)


class Forecaster:
    """A Gateformer (or any zoo forecaster) bound to its scaler, look-back, horizon and series names.

    Args:
        model (str): ``"gateformer"`` (train from scratch), ``"gateformer.etth1_96"`` or a saved folder (start from
            those weights). Default: ``"gateformer"``.
        h (int, Optional): horizon; default: the weights' horizon, or 96.
        input_size (int, Optional): look-back; default: the weights' look-back, or 96.
        freq (str, Optional): pandas frequency of the series (``"h"``, ``"30min"``, ``"D"``); inferred when unset.
        model_args (dict, Optional): architecture arguments (``d_model``, ``e_layers``, ...). Default: `None`.
        lr (float): learning rate (halved every epoch). Default: ``1e-3``.
        max_epochs (int): epochs. Default: ``10``.
        batch_size (int): training batch size. Default: ``32``.
        val_size (float): trailing fraction of the series used for early stopping. Default: ``0.2``.
        patience (int): early-stopping patience in epochs. Default: ``3``.
        limit_train_batches (int | float, Optional): cap on batches per epoch. Default: `None` (all).
        accelerator (str): Lightning accelerator. Default: ``"auto"``.
        seed (int): random seed. Default: ``0``.
        id_col (str): series-id column of the long layout. Default: ``"unique_id"``.
        time_col (str): timestamp column of the long layout. Default: ``"ds"``.
        target_col (str): value column of the long layout. Default: ``"y"``.
    """

    def __init__(self, model: str = "gateformer", h: int | None = None, input_size: int | None = None,
                 freq: str | None = None, model_args: dict | None = None, lr: float = 1e-3, max_epochs: int = 10,
                 batch_size: int = 32, val_size: float = 0.2, patience: int = 3,
                 limit_train_batches: int | float | None = None, accelerator: str = "auto", seed: int = 0,
                 id_col: str = "unique_id", time_col: str = "ds", target_col: str = "y"):
        from gatedzoo.zoo import create_model

        if h is not None:
            h = _count("h", h, "the number of steps to forecast")
        if input_size is not None:
            input_size = _count("input_size", input_size, "the number of past steps the model reads")
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"val_size={val_size} must lie strictly between 0 and 1.")
        self.name, self.model_args = model, dict(model_args or {})
        self.lr, self.max_epochs, self.batch_size, self.val_size = lr, max_epochs, batch_size, val_size
        self.patience, self.limit_train_batches, self.accelerator, self.seed = (patience, limit_train_batches,
                                                                                accelerator, seed)
        self.cols = (id_col, time_col, target_col)
        if freq is not None and not isinstance(freq, str):
            raise ValueError(f"freq={freq!r}: give a pandas frequency string ('h', '30min', 'D'); integer time steps "
                             "are not supported, the timestamps must be dates.")
        from gatedzoo.tasks.forecasting import weights_source

        # a name with a dot or a path, a hub / local-dir prefix, or an existing folder (a bare name saved in the
        # working directory) names weights; anything else is an architecture trained from scratch
        self.pretrained = weights_source(model) is not None
        self.model = create_model(model, pretrained=True) if self.pretrained else None
        cfg = getattr(self.model, "zoo_config", {}) if self.model is not None else {}
        self.h = h if h is not None else int(cfg.get("horizon") or 96)
        self.input_size = input_size if input_size is not None else int(cfg.get("lookback") or 96)
        # a frequency given here wins; otherwise the data's (inferred at fit) or, before any fit, the weights'
        self.user_freq = freq
        self.freq = freq or cfg.get("freq") or None
        if self.model is not None and self.input_size != self.model.seq_len:
            raise ValueError(f"input_size={self.input_size} but the weights {model} look back {self.model.seq_len} "
                             "steps; drop input_size or train from 'gateformer'.")
        self._wide = None  # the training data (wide), the default of predict / cross_validation
        self._train_ids: dict | None = None  # its layout: see _frame
        self._fit_dates = None  # (first, first validation target, last) timestamps of the training data

    # data handling
    def _frame(self, df):
        """``(wide, ids)``: the wide checked frame from a long or wide DataFrame or a CSV path, and its layout.

        ``ids`` is ``None`` for the wide layout, else (long) a dict series column name -> the caller's ``unique_id``
        (an int id stays an int); ``df=None`` gives the training data and its layout. Nothing is remembered: each
        call's output follows the layout of its own data. Columns of a long frame other than the id, time and target
        columns are dropped with a warning (Gateformer reads no exogenous inputs). Missing values stay NaN here (the
        truth of :meth:`cross_validation`); :meth:`_inputs` fills the model's look-back.
        """
        if df is None:
            if self._wide is None:
                raise ValueError("no data: call fit(df) first or pass df=.")
            return self._wide, self._train_ids
        if isinstance(df, (str, os.PathLike)):
            df = self._read(df)
        id_col, time_col, target_col = self.cols
        if id_col in df.columns and target_col in df.columns:
            extra = [str(c) for c in df.columns if c not in self.cols]
            if extra:
                warnings.warn(f"the long DataFrame's columns {extra[:10]} are ignored: Gateformer uses no exogenous "
                              f"inputs, it forecasts each {target_col!r} from the past of all the series; drop them "
                              "to silence this warning.", UserWarning, stacklevel=3)
            ids = {str(u): u for u in df[id_col].unique()}
            wide = to_wide(df, *self.cols)
        else:
            ids = None
            wide = df.rename(columns={time_col: DATE}) if DATE not in df.columns else df
        return check_frame(wide, source="DataFrame", target=str(wide.columns[-1]), freq=self.user_freq,
                           fill=False), ids

    def _read(self, path):
        """A CSV path -> the long frame it holds when its header has the id, time and target columns, else the
        checked wide frame (the TSLib format, :func:`load_frame`; also the named datasets such as ``"etth1"``)."""
        import pandas as pd

        file = Path(path).expanduser()
        if file.is_file():
            try:
                header = pd.read_csv(file, nrows=0).columns
            except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
                header = []  # load_frame says what is wrong with the file
            if all(c in header for c in self.cols):
                return _read_csv(file)
        return load_frame(str(path), freq=self.user_freq, fill=False)

    @staticmethod
    def _inputs(wide, variables) -> np.ndarray:
        """The model's inputs ``[T, N]`` float64: gaps inside a series filled forward (only past values, so a
        window's look-back never reads a value after its cutoff; :func:`check_frame` refused leading gaps)."""
        return wide[variables].ffill().to_numpy(dtype=np.float64)

    def _out(self, wide, ids):
        """Forecasts ``wide`` in the layout ``ids`` of :meth:`_frame` names (``None``: as they are)."""
        if ids is None:
            return wide
        out = to_long(wide, MODEL_COL, self.cols[0], self.cols[1])
        out[self.cols[0]] = out[self.cols[0]].map(ids)
        return out

    def _scaler(self):
        cfg = self.model.zoo_config
        return np.asarray(cfg["scaler"]["mean"]), np.asarray(cfg["scaler"]["std"]), list(cfg["variables"])

    def _check_vars(self, wide):
        _, _, variables = self._scaler()
        have = [c for c in wide.columns if c != DATE]
        if sorted(have) != sorted(variables):
            raise ValueError(f"the data has {len(have)} series {have[:10]} but the model was fitted on "
                             f"{len(variables)}: {variables[:10]}; pass the same series or fit() on the new ones.")
        return variables

    # the three verbs
    def fit(self, df) -> Forecaster:
        """Train (or fine-tune the loaded weights) on ``df``; the last ``val_size`` of the rows select the epoch."""
        import tempfile

        import lightning as L
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        from gatedzoo.tasks.forecasting import Forecasting

        wide, ids = self._frame(df)
        n_vars = wide.shape[1] - 1
        starts, ends = tslib_borders(len(wide), self.input_size, "ratio", (1.0 - self.val_size, self.val_size, 0.0))
        if ends[1] - starts[1] < self.input_size + self.h:
            raise ValueError(f"the validation part ({self.val_size:.0%} of {len(wide)} rows) is shorter than "
                             f"input_size + h = {self.input_size + self.h}; give a longer series or raise val_size.")
        dm = TimeSeriesDataModule.from_frame(wide, seq_len=self.input_size, pred_len=self.h, split="ratio",
                                             ratios=[1.0 - self.val_size, self.val_size, 0.0],
                                             batch_size=self.batch_size, freq=self.user_freq)
        dm.setup("fit")
        L.seed_everything(self.seed, verbose=False)
        args = {**self.model_args, "seq_len": self.input_size, "pred_len": self.h, "n_vars": n_vars}
        task = Forecasting(self.name, model_args=args, pretrained=self.pretrained, lr=self.lr)
        if getattr(task.model, "reads_time", False) and dm.steps is None:
            raise ValueError(self._no_fixed_step(task.model, dm.freq))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/loss", mode="min")
            trainer = L.Trainer(max_epochs=self.max_epochs, accelerator=self.accelerator, devices=1, logger=False,
                                callbacks=[EarlyStopping("val/loss", patience=self.patience), ckpt],
                                limit_train_batches=self.limit_train_batches, default_root_dir=tmp,
                                enable_model_summary=False)
            trainer.fit(task, datamodule=dm)
            if ckpt.best_model_path:
                task.load_state_dict(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)
                                     ["state_dict"])
        self.model = task.model.cpu().eval()
        self.freq = self.user_freq or self.model.zoo_config.get("freq") or None
        self._wide, self._train_ids = wide, ids
        self._fit_dates = (wide[DATE].iloc[0], wide[DATE].iloc[ends[0]], wide[DATE].iloc[-1])
        return self

    def _data_freq(self, wide) -> str:
        """The data's own frequency (the ``freq`` given, checked against ``date``, else inferred from it).

        Raises when it cannot be inferred, or when the weights were trained at another frequency: their forecasts
        would be stamped, and a residual cycle phased, on the wrong grid.
        """
        freq = check_frequency(wide[DATE], self.user_freq, "DataFrame")
        if not freq:
            raise ValueError("cannot infer the series' frequency from 'date' (irregular timestamps); resample them "
                             "to a regular grid or pass freq= (e.g. 'h', '30min', 'D').")
        trained = self.model.zoo_config.get("freq") if self.model is not None else None
        if trained and not same_frequency(trained, freq):
            fixed = fixed_frequency(freq)
            if self.user_freq or not fixed or not same_frequency(trained, fixed):
                raise ValueError(f"the data's frequency is {freq!r} but the weights {self.name} were trained on "
                                 f"{trained!r} data; resample the data to {trained!r}, or fit() on it to fine-tune "
                                 f"the weights at {freq!r}.")
            # weekly rows inferred as anchored weeks ('W-SUN') are the weights' fixed 7-day steps ('7D')
            freq = trained
        if getattr(self.model, "reads_time", False) and fixed_frequency(freq) != freq:
            raise ValueError(self._no_fixed_step(self.model, freq))
        return freq

    def _no_fixed_step(self, model, freq: str | None) -> str:
        """The refusal of a model with a residual cycle on data of frequency ``freq`` (no fixed duration), in the
        arguments a Forecaster user can pass."""
        fixed = fixed_frequency(freq)
        if fixed:
            what = f"the data's frequency {freq!r} is a calendar step of no fixed duration"
            fix = (f"pass Forecaster(..., freq={fixed!r}): the same rows as steps of fixed length (weeks anchored on "
                   "a weekday are 7-day steps), or ")
        elif freq:
            what = f"the data's frequency {freq!r} (months, business days, ...) has no fixed duration"
            fix = ""
        else:
            what = "the timestamps follow no regular step"
            fix = "resample them to a regular grid and pass Forecaster(..., freq=...) ('h', '30min', 'D'), or "
        drop = (f"train a model without one: Forecaster('gateformer', model_args={{'cycle_len': 0}}, ...) (the "
                f"weights {self.name} have a cycle)" if self.pretrained else
                "drop the cycle: model_args={..., 'cycle_len': 0}")
        return (f"the model has a residual cycle (cycle_len={model.cycle_len}), which reads each window's time step, "
                f"but {what}; {fix}{drop}.")

    @torch.no_grad()
    def _forecast(self, history: np.ndarray, start, freq: str) -> np.ndarray:
        """``history`` ``[input_size, N]`` on the data scale, whose first row is at timestamp ``start`` of data of
        frequency ``freq`` -> forecast ``[h, N]`` on the data scale."""
        from gatedzoo.tasks.forecasting import predict_windows

        mean, std, _ = self._scaler()
        x = torch.as_tensor((history - mean) / std, dtype=torch.float32)[None]
        steps = time_steps([start], freq) if getattr(self.model, "reads_time", False) else None
        step = None if steps is None else torch.as_tensor(steps)
        y = predict_windows(self.model.eval(), x, step)[0].double().numpy()
        return y * std + mean

    def predict(self, df=None):
        """Forecast the ``h`` steps after the last row of ``df`` (default: the data given to :meth:`fit`).

        Returns ``h`` rows per series in the layout of ``df`` (for ``df=None``, of the training data), whatever an
        earlier call was given: long ``unique_id, ds, Gateformer`` or wide ``date`` + one column per series.

        The forecasts are stamped at the data's frequency, from the step after its last timestamp. Every series must
        be observed in the last row: trailing missing values would move the forecast's origin past the last
        observation and feed the look-back invented values, so they are refused (drop future rows with ``y = NaN``
        or fill the gap yourself). Gaps inside the look-back are filled forward.
        """
        import pandas as pd

        if self.model is None:
            raise ValueError("the forecaster has no weights: call fit(df) or load a pretrained model first.")
        wide, ids = self._frame(df)
        variables = self._check_vars(wide)
        if len(wide) < self.input_size:
            raise ValueError(f"predict needs the last input_size={self.input_size} rows; the data has {len(wide)}.")
        self._check_h()
        freq = self._data_freq(wide)
        trailing = {v: int(wide[v].iloc[::-1].notna().to_numpy().argmax()) for v in variables}
        late = {v: n for v, n in trailing.items() if n}
        if late:
            v, n = max(late.items(), key=lambda kv: kv[1])
            raise ValueError(
                f"series {list(late)[:10]} are missing in the last rows ({v!r}: the last {n}, from "
                f"{wide[DATE].iloc[-n]}); predict forecasts from the last row, so its look-back would end in "
                "invented values: drop the trailing rows (future rows with y = NaN: df.dropna(subset=['y'])), end "
                "the data at the last row where every series is observed, or fill them yourself."
            )
        fc = self._forecast(self._inputs(wide, variables)[-self.input_size:], wide[DATE].iloc[-self.input_size], freq)
        dates = pd.date_range(wide[DATE].iloc[-1], periods=self.h + 1, freq=freq)[1:]
        order = [c for c in wide.columns if c != DATE]  # the caller's column order
        return self._out(pd.DataFrame({DATE: dates, **{v: fc[:, variables.index(v)] for v in order}}), ids)

    def _check_h(self):
        if self.model.pred_len != self.h:
            raise ValueError(f"h={self.h} but the weights forecast {self.model.pred_len} steps; fit() to adapt the "
                             "head or use the weights' horizon.")

    def cross_validation(self, df=None, n_windows: int = 3, step_size: int | None = None):
        """Rolling-origin evaluation without refitting: ``n_windows`` forecasts whose last one ends at the data's end.

        Args:
            df: long or wide DataFrame or wide CSV path. Default: the data given to :meth:`fit`.
            n_windows (int): number of forecast windows, >= 1. Default: ``3``.
            step_size (int, Optional): rows between consecutive cutoffs, >= 1. Default: `None` (``h``: windows
                back to back).

        Not refitting means the model is the one :meth:`fit` made: windows on rows it was fitted on score it on data
        it has seen. In particular ``fit(df)`` then ``cross_validation(df)`` evaluates on the last ``val_size`` rows
        of ``df``, the rows early stopping and the checkpoint choice used, so the errors are optimistic (a
        ``UserWarning`` says so when the windows overlap the training data). For an honest estimate, as
        neuralforecast's refitting cross-validation gives, fit on the rows up to the first cutoff only, e.g.
        ``Forecaster(...).fit(df[df.ds <= cutoff]).cross_validation(df)`` with ``cutoff`` the timestamp
        ``h + (n_windows - 1) * step_size`` rows before the end.

        Returns the forecasts with the truth beside them: long ``unique_id, ds, cutoff, y, Gateformer``, or wide
        with ``cutoff`` and, per series, ``<name>`` (truth) and ``<name>_hat`` (forecast). The truth is the data as
        given: NaN where a value was missing (never a filled value), so compute metrics skipping NaN (e.g.
        ``utilsforecast.evaluation.evaluate`` or ``np.nanmean``); a window whose truth is all missing is still
        forecast, with ``y`` all NaN. The model's look-back fills gaps forward from the last observation before them.
        """
        import pandas as pd

        if self.model is None:
            raise ValueError("the forecaster has no weights: call fit(df) or load a pretrained model first.")
        n_windows = _count("n_windows", n_windows, "the number of forecast windows")
        step = self.h if step_size is None else _count(
            "step_size", step_size, f"the rows between two cutoffs; unset: h={self.h}, windows back to back")
        wide, ids = self._frame(df)
        variables = self._check_vars(wide)
        self._check_h()
        values = self._inputs(wide, variables)
        truth = wide[variables].to_numpy(dtype=np.float64)  # NaN kept: missing truth must not be scored
        first = len(values) - self.h - (n_windows - 1) * step
        if first < self.input_size:
            raise ValueError(f"{n_windows} windows of h={self.h} every {step} steps need "
                             f"{self.input_size + self.h + (n_windows - 1) * step} rows; the data has {len(values)}.")
        freq = self._data_freq(wide)
        self._warn_if_seen(wide[DATE].iloc[first], wide[DATE].iloc[-1], wide[DATE].iloc[first - 1])
        parts = []
        for k in range(n_windows):
            cut = first + k * step
            fc = self._forecast(values[cut - self.input_size:cut], wide[DATE].iloc[cut - self.input_size], freq)
            part = pd.DataFrame({DATE: wide[DATE].iloc[cut:cut + self.h].to_numpy(),
                                 "cutoff": wide[DATE].iloc[cut - 1]})
            for i, v in enumerate(variables):
                part[v], part[f"{v}_hat"] = truth[cut:cut + self.h, i], fc[:, i]
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        if ids is None:
            return out
        id_col, time_col, target_col = self.cols
        rows = [pd.DataFrame({id_col: ids.get(v, v), time_col: out[DATE], "cutoff": out["cutoff"],
                              target_col: out[v], MODEL_COL: out[f"{v}_hat"]}) for v in variables]
        return pd.concat(rows, ignore_index=True)

    def _warn_if_seen(self, start, end, cutoff):
        """One ``UserWarning`` when the cross-validation targets ``[start, end]`` overlap the rows :meth:`fit` used
        (its training part, or its validation part, which chose the epoch); ``cutoff`` is the first cutoff."""
        if self._fit_dates is None:
            return
        first, val_from, last = self._fit_dates
        if start > last or end < first:
            return
        part = "validated on (they chose the epoch)" if end >= val_from else "trained on"
        warnings.warn(f"cross_validation scores windows from {start} to {end}, rows that fit() {part}: it trained on "
                      f"the rows before {val_from} and validated on those from {val_from} to {last}, so the errors "
                      "are optimistic. For an honest evaluation fit a new Forecaster on the data up to the first "
                      f"cutoff {cutoff} only (e.g. df[df.ds <= cutoff], df.date for a wide frame) and cross-validate "
                      "that one.", UserWarning, stacklevel=3)

    # persistence and plots
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model (weights + config with scaler, series names, look-back, horizon, frequency)."""
        if self.model is None:
            raise ValueError("nothing to save: call fit(df) first.")
        self.model.zoo_config["freq"] = self.freq or self.model.zoo_config.get("freq", "")
        return self.model.save_pretrained(path)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> Forecaster:
        """A forecaster from a folder written by :meth:`save` (a path, or a bare name in the working directory) or
        zoo forecasting weights (``"gateformer.etth1_96"``, ``hf-hub:``, ``local-dir:``); ``kwargs`` go to
        :class:`Forecaster`. Raises when ``path`` names neither, instead of returning a forecaster without weights.
        """
        name = str(path)
        forecaster = cls(name, **kwargs)
        if forecaster.model is None:
            raise ValueError(f"Forecaster.load({name!r}): there is no folder {name!r} (in {os.getcwd()}) and "
                             f"{name!r} names no weights; give the folder written by save() or weights such as "
                             f"'gateformer.etth1_96' (Forecaster({name!r}) trains an architecture from scratch).")
        return forecaster

    def plot(self, df, forecasts, unique_ids: list[str] | None = None, path: str | os.PathLike = "forecast.png",
             history: int | None = None) -> Path:
        """PNG of truth against forecast for the chosen series (default: up to four).

        ``forecasts`` is the output of :meth:`predict` or :meth:`cross_validation`; ``history`` is how many steps of
        the truth before the first forecast to show (default: ``input_size``).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        wide, _ = self._frame(df)
        id_col, time_col, target_col = self.cols
        if id_col in forecasts.columns:  # long -> wide forecasts (and cutoffs)
            keys = [time_col] + (["cutoff"] if "cutoff" in forecasts.columns else [])
            fw = forecasts.pivot_table(index=keys, columns=id_col, values=MODEL_COL).reset_index()
            fw = fw.rename(columns={time_col: DATE, **{c: f"{c}_hat" for c in fw.columns if c not in keys}})
        else:
            fw = forecasts.rename(columns={c: f"{c}_hat" for c in forecasts.columns if c in wide.columns
                                           and c != DATE and "cutoff" not in forecasts.columns})
        series = [c for c in wide.columns if c != DATE]
        chosen = [str(u) for u in unique_ids] if unique_ids else series[:4]
        unknown = [s for s in chosen if s not in series]
        if unknown:
            raise ValueError(f"unknown series {unknown}; available: {series[:20]}.")
        start = fw[DATE].min()
        back = history if history is not None else self.input_size
        before = wide[wide[DATE] < start].tail(back)
        after = wide[(wide[DATE] >= start) & (wide[DATE] <= fw[DATE].max())]
        fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
        for ax, s in zip(axes[:, 0], chosen):
            ax.plot(before[DATE], before[s], color="0.3", lw=1, label="history")
            ax.plot(after[DATE], after[s], color="k", lw=1, label="truth")
            groups = fw.groupby("cutoff") if "cutoff" in fw.columns else [(None, fw)]
            for i, (_, g) in enumerate(groups):
                ax.plot(g[DATE], g[f"{s}_hat"], color="tab:red", lw=1.2, label="forecast" if i == 0 else None)
            ax.set_title(str(s), fontsize=10)
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
