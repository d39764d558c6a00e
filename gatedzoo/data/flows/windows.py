"""Windows of consecutive flows: time stamps, per-source time order, the window index and the block split.

A flow's window is the ``window`` flows of the same source that end with it, in true time order when a timestamp
column exists (parsed as times, :func:`flow_times`; left-padded by repeating the first flow), so every flow gets a
prediction.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from .vocabulary import SOURCE_COLUMNS, TIME_COLUMNS, _find_column

log = logging.getLogger("gatedzoo")

#: a window > 1 splits train / validation by blocks of this many windows' worth of consecutive flows of one source
SPLIT_BLOCK_WINDOWS = 8
_DATE = r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}\b"


def window_index(n: int, window: int, groups: np.ndarray | None = None, order: np.ndarray | None = None) -> np.ndarray:
    """Row indices ``[n, window]`` of each flow's window: the flows of its group that end with it, in ``order``.

    Windows never cross groups (sources); the first flows of a group are left-padded by repeating the group's first
    flow. Row ``i`` of the result ends with flow ``i``, so every flow gets exactly one prediction.
    """
    if window < 1:
        raise ValueError(f"window={window}; use a positive number of flows.")
    idx = np.arange(n)
    if window == 1:
        return idx[:, None]
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    key = np.arange(n) if order is None else np.asarray(order)
    perm = np.lexsort((key, groups))
    g = groups[perm]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, n]))
    pos = np.arange(n)[:, None] + np.arange(-window + 1, 1)[None]
    pos = np.maximum(pos, first[:, None])
    out = np.empty((n, window), np.int64)
    out[perm] = perm[pos]
    return out


class FlowWindows(Dataset):
    """``(x_num [W, F], x_cat [W, K], y)`` per flow, gathered through :func:`window_index`."""

    def __init__(self, x_num: np.ndarray, x_cat: np.ndarray, y: np.ndarray | None, index: np.ndarray):
        self.x_num, self.x_cat = torch.from_numpy(x_num), torch.from_numpy(x_cat)
        self.y = None if y is None else torch.from_numpy(np.array(y, np.int64))
        self.index = torch.from_numpy(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        rows = self.index[i]
        item = (self.x_num[rows], self.x_cat[rows])
        return item if self.y is None else (*item, self.y[i])


def flow_times(values, time_format: str | None = None, column: str = "Timestamp") -> np.ndarray:
    """Order key ``[N]`` (int64 or float64; larger = later) of a time-stamp column, parsed as times, never as text.

    Numbers (epoch seconds) and datetime columns are used as they are. Text of any dtype (object, ``string``,
    pandas 3's ``str``, pyarrow) is parsed with ``time_format`` when given, else with the format pandas infers.
    Stamps like ``04/07/2017 10:00:00`` are read day-first when some first field exceeds 12 (``14/02/2018``, as
    CSE-CIC-IDS2018 writes them), month-first when some second field does; when neither does and the two readings
    would order the flows differently, the column is refused rather than guessed.

    Args:
        values (pandas.Series): the column, ``[N]``.
        time_format (str, Optional): a ``strftime`` pattern (``"%d/%m/%Y %H:%M:%S"``). Default: `None` (inferred).
        column (str): the column's name, for messages. Default: ``"Timestamp"``.

    Raises:
        ValueError: stamps that do not parse (count, first row and value), day-first and month-first stamps mixed,
            or ambiguous day/month order; each with the ``time_format`` to pass.
    """
    import pandas as pd

    fix = ("pass time_format (a strftime pattern such as '%d/%m/%Y %H:%M:%S' or '%m/%d/%Y %I:%M:%S %p') to "
           "FlowDataModule or predict_table")
    if time_format is None and (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values)):
        t = values
    else:
        text = values.astype(object).where(values.notna(), None)
        text = pd.Series([None if v is None else str(v).strip() for v in text], index=values.index, dtype=object)
        if time_format is not None:
            t = pd.to_datetime(text, format=time_format, errors="coerce")
        else:
            parts = text.str.extract(_DATE).dropna().astype(int)
            if parts.empty:
                t = pd.to_datetime(text, errors="coerce")
            else:
                day_first, month_first = bool((parts[0] > 12).any()), bool((parts[1] > 12).any())
                if day_first and month_first:
                    raise ValueError(f"column {column!r} mixes day-first and month-first dates (a first field above 12 "
                                     f"and a second field above 12); {fix}, or fix the column.")
                t = pd.to_datetime(text, errors="coerce", dayfirst=day_first)
                if not (day_first or month_first):
                    other = pd.to_datetime(text, errors="coerce", dayfirst=True)
                    if not (t.isna().any() or other.isna().any()) and not np.array_equal(
                            np.argsort(t.to_numpy(), kind="stable"), np.argsort(other.to_numpy(), kind="stable")):
                        raise ValueError(
                            f"column {column!r}: dates such as {text.iloc[parts.index[0]]!r} read day-first and "
                            f"month-first give different time orders, and no day or month above 12 tells which one "
                            f"is meant; {fix}.")
    bad = np.flatnonzero(pd.isna(t).to_numpy())
    if len(bad):
        raise ValueError(f"column {column!r}: {len(bad)} of {len(values)} time stamps are empty or do not parse as "
                         f"times (first: row {bad[0]} from 0, {values.iloc[bad[0]]!r}); {fix}, or drop those rows.")
    if pd.api.types.is_numeric_dtype(t):
        return t.to_numpy(np.float64)
    return t.astype("int64").to_numpy()


def flow_order(df, time_format: str | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(groups [N] int64 or None, order [N] or None)``: each flow's source (factorised ``Source IP`` / ``Src IP`` /
    ``saddr`` / ``src_ip``) and its time key (:func:`flow_times` of ``Timestamp`` / ``stime`` / ``timestamp``).
    Column names are matched with spaces and case ignored (CICFlowMeter writes ``" Source IP"``)."""
    import pandas as pd

    src, ts = _find_column(df, SOURCE_COLUMNS), _find_column(df, TIME_COLUMNS)
    groups = None if src is None else pd.factorize(df[src])[0]
    order = None if ts is None else flow_times(df[ts], time_format, str(ts).strip())
    return groups, order


def table_windows(df, fmt: str, window: int, time_format: str | None = None) -> np.ndarray:
    """Window indices ``[N, window]`` for a raw table: per source address, in time order when those columns exist.

    Time stamps are parsed as times (see :func:`flow_times`; ``time_format`` forces a pattern). With ``window=1``
    the order does not matter and the columns are not read.
    """
    if window == 1:
        return window_index(len(df), 1)
    groups, order = flow_order(df, time_format)
    if order is None:
        log.warning("%s table has no timestamp column: windows follow file order, which is not time order.", fmt)
    return window_index(len(df), window, groups, order)


def block_split(y: np.ndarray, val_fraction: float, block: int, seed: int = 0, groups: np.ndarray | None = None,
                order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation rows from whole blocks of ``block`` consecutive flows of one source, in time order.

    Each source's flows (``groups``, in ``order``; file order without it) are cut into blocks of ``block`` flows;
    about ``val_fraction`` of the blocks go to validation, stratified by each block's majority class. Windows built
    on the whole table then hold consecutive flows, and only flows at block edges have neighbours in the other split.

    Returns:
        ``(train rows, validation rows)``: sorted int64 arrays that partition ``0..N-1``.

    Raises:
        ValueError: fewer than two blocks.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    key = np.arange(n) if order is None else np.asarray(order)
    perm = np.lexsort((key, groups))
    g = groups[perm]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    pos = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    bid = np.empty(n, np.int64)
    bid[perm] = np.cumsum(pos % block == 0) - 1
    nb = int(bid.max()) + 1 if n else 0
    if nb < 2:
        raise ValueError(f"{n} flows make {nb} block(s) of {block} consecutive flows; a window split needs at least "
                         "two: give more flows or a smaller window.")
    votes = np.zeros((nb, int(y.max()) + 1), np.int64)
    np.add.at(votes, (bid, y), 1)
    strat = votes.argmax(1)
    sizes = np.bincount(strat)
    # strata of a single block cannot be stratified: they join the largest stratum
    strat = np.where(sizes[strat] >= 2, strat, int(sizes.argmax()))
    blocks = np.arange(nb)
    try:
        _, va_blocks = train_test_split(blocks, test_size=val_fraction, random_state=seed, stratify=strat)
    except ValueError:  # fewer validation blocks than strata: a plain random draw of blocks
        _, va_blocks = train_test_split(blocks, test_size=val_fraction, random_state=seed)
    in_val = np.isin(bid, va_blocks)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
