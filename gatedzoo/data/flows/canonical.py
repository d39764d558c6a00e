"""A raw table onto the canonical vocabulary: renaming, units, derived features and the checks on its values."""

from __future__ import annotations

import logging
import re

import numpy as np

from .vocabulary import (
    CANONICAL_FEATURES,
    COUNT_LIKE,
    DERIVED,
    ID_COLUMNS,
    LABEL_COLUMNS,
    NSLKDD_CATEGORICAL,
    NSLKDD_MAP,
    SOURCE_COLUMNS,
    SOURCE_MAPS,
    TIME_COLUMNS,
    UNIT_SCALE,
    CoverageReport,
    _norm,
)

log = logging.getLogger("gatedzoo")

#: column names that usually hold a row or record number (``id``, ``index``, ``row_id``, ``No.``, ``conn id``)
_ID_NAME = re.compile(r"^(?:.*[\s_.\-])?(?:id|idx|index|uid|row|row_?num(?:ber)?|record|seq|no\.?|#)$", re.IGNORECASE)


def _rows(rows) -> str:
    """``[3, 8, 11, 12, 40] ...``: the first five of ``rows`` (an array of row labels), for messages."""
    rows = np.asarray(rows).tolist()
    return f"{rows[:5]}{' ...' if len(rows) > 5 else ''}"


def _non_numeric(values) -> np.ndarray:
    """``[N]`` bool: cells that hold something (not empty / NaN) that does not parse as a number."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values):
        return np.zeros(len(values), bool)
    return (pd.to_numeric(values, errors="coerce").isna() & values.notna()).to_numpy()


def to_canonical(df, fmt: str, only: set[str] | None = None):
    """Rename a raw table's columns onto the vocabulary.

    Column names are matched after stripping spaces (CICFlowMeter writes ``" Flow Duration"``, ``" Protocol"``), so
    a DataFrame straight from ``pd.read_csv`` reads like one from :func:`read_flow_table`. Every feature column must
    hold numbers: a non-numeric cell (``?``, ``-``, text) is refused with the column, the rows and the value, never
    turned into a missing value or a dropped column. Empty cells stay NaN (refused later by the NaN check).
    Unnamed columns (a saved pandas index, ``Unnamed: 0``) are row numbers, never features, and are skipped. A
    CICFlowMeter / Argus column in which no cell is a number is text (not a feature) and is skipped, with a warning.

    Args:
        df (pandas.DataFrame): the raw table, ``fmt``'s column names.
        fmt (str): ``"nslkdd"``, ``"cicflowmeter"`` or ``"argus"``.
        only (set[str], Optional): read (and check) only these extra columns (``"<fmt>:<name>"``): the features a
            fitted preprocessor uses, so an unused column cannot block scoring. Default: `None` (every column).

    Returns:
        ``(numeric DataFrame [N, 46 + extras] float64 of canonical + extra columns, categorical DataFrame [N, K] of
        str, CoverageReport)``; canonical features the source lacks are zero-filled (after trying :data:`DERIVED`).

    Raises:
        ValueError: non-numeric cells in feature columns (each column with its count, first rows and a value).
    """
    import pandas as pd

    lookup = {_norm(k): v for k, v in SOURCE_MAPS[fmt].items()}
    cats = {"nslkdd": NSLKDD_CATEGORICAL, "argus": ("proto", "state", "flgs"), "cicflowmeter": ("Protocol",)}[fmt]
    cat_names = {_norm(c): c for c in cats}
    skip = {_norm(c) for c in (*cats, *LABEL_COLUMNS, "difficulty", *TIME_COLUMNS, *SOURCE_COLUMNS, *ID_COLUMNS)}
    out, extras, columns, bad, text, index_cols = {}, {}, {}, [], [], []
    for col in df.columns:
        key, name = _norm(col), str(col).strip()
        if key in lookup:
            if lookup[key] in out:
                continue
            target = lookup[key]
        elif key in skip:
            continue
        elif not name or name.startswith("Unnamed:"):
            index_cols.append(name)
            continue
        elif only is not None and f"{fmt}:{name}" not in only:
            continue
        else:
            target = f"{fmt}:{name}"
        values = df[col]
        odd = _non_numeric(values)
        if odd.any():
            # a CICFlowMeter / Argus column with no number at all is a text column, not a feature with bad cells;
            # every NSL-KDD column outside the categories and labels is numeric by definition
            if fmt != "nslkdd" and target.startswith(f"{fmt}:") and odd.sum() == values.notna().sum():
                text.append(name)
                continue
            rows = np.flatnonzero(odd)
            bad.append(f"{name!r}: {len(rows)} non-numeric value(s) such as {values.iloc[rows[0]]!r}, rows "
                       f"{_rows(rows)}")
            continue
        num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        columns[target] = name
        if target.startswith(f"{fmt}:"):
            extras[target] = num
        else:
            out[target] = num
    if bad:
        raise ValueError(
            f"non-numeric cells in feature columns (rows counted from 0, header excluded): {'; '.join(bad[:6])}. "
            "These columns must hold numbers: replace those cells with numbers or drop those rows, e.g. "
            "df = df[pd.to_numeric(df[COLUMN], errors='coerce').notna()]."
        )
    if text:
        log.warning("%s table: text columns %s hold no numbers and are not used as features.", fmt, text[:8])
    if index_cols:
        log.warning("%s table: unnamed columns %s (a saved row index) are not used as features.", fmt, index_cols)
    for name, factor in UNIT_SCALE.get(fmt, {}).items():
        if name in out:
            out[name] = out[name] * factor
    for name, (a, b, op) in DERIVED.items():
        if name not in out and a in out and b in out:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = out[a] + out[b] if op == "sum" else np.where(out[b] > 0, out[a] / (out[b] / 1e6), 0.0)
    present = [f for f in CANONICAL_FEATURES if f in out]
    report = CoverageReport(fmt, present, [f for f in CANONICAL_FEATURES if f not in out], sorted(extras), columns)
    n = len(df)
    num = pd.DataFrame({f: out.get(f, np.zeros(n)) for f in CANONICAL_FEATURES} | extras, index=df.index)
    cat_cols = [c for c in df.columns if _norm(c) in cat_names]
    cat = df[cat_cols].astype(str)
    cat.columns = [cat_names[_norm(c)] for c in cat_cols]
    return num, cat, report


def _check_nslkdd_ranges(num) -> None:
    """Refuse NSL-KDD values out of range: every numeric NSL-KDD column is a count, a size, a duration or a 0/1 flag
    (never negative), and the ``*_rate`` columns are shares in [0, 1].

    Args:
        num (pandas.DataFrame): ``[N, F]`` numeric columns of :func:`to_canonical` for an NSL-KDD table (canonical
            names and ``nslkdd:`` extras); columns derived from others or zero-filled are not checked.

    Raises:
        ValueError: each offending column under its NSL-KDD name, with its count, first rows (the table's index) and
            a value, and how to fix the file.
    """
    source = {v: k for k, v in NSLKDD_MAP.items()}
    bad = []
    for c in num.columns:
        name = c[len("nslkdd:"):] if c.startswith("nslkdd:") else source.get(c)
        if name is None:
            continue
        v = num[c].to_numpy(np.float64) / UNIT_SCALE["nslkdd"].get(c, 1.0)  # the file's unit
        rate = name.endswith("_rate")
        odd = (v < 0) | (v > 1) if rate else v < 0
        if odd.any():
            rows = num.index[odd]
            what = "outside [0, 1]" if rate else "negative"
            bad.append(f"{name!r}: {len(rows)} {what} value(s) such as {v[odd][0]:g}, rows {_rows(rows)}")
    if bad:
        raise ValueError(
            f"negative values or rates outside [0, 1] in NSL-KDD columns (rows by the table's index, from 0 for a "
            f"file): {'; '.join(bad[:6])}. "
            "NSL-KDD counts, sizes and durations cannot be negative and its *_rate columns are shares in [0, 1]: "
            "the file is corrupted or its columns are shifted; fix those cells or drop those rows, e.g. "
            "df = df[(df[COLUMN] >= 0)] (and <= 1 for a rate).")


def _check_values(num, fmt: str, report: CoverageReport) -> None:
    """Refuse NaN / infinite values, negative counts, sizes and durations, and (NSL-KDD) rates outside [0, 1].

    Args:
        num (pandas.DataFrame): ``[N, F]`` numeric columns of :func:`to_canonical`.
        fmt (str): the table's format.
        report (CoverageReport): :func:`to_canonical`'s report on the same table; its ``columns`` name each feature
            by the table's own column, so that messages say ``'Flow Bytes/s'`` where the model says ``byte_rate``.

    Raises:
        ValueError: each offending column under its name in the table, with its count, first rows (from 0) and a
            value, and how to fix the table.
    """
    values = num.to_numpy(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(1))
        raise ValueError(f"{len(rows)} flows have NaN or infinite values (rows counted from 0): "
                         f"{'; '.join(_by_column(num, ~finite, report))}. Drop or impute those rows first, e.g. "
                         "df = df.replace([np.inf, -np.inf], np.nan).dropna(subset=[COLUMNS]) (CICFlowMeter writes "
                         "'Infinity' for the rates of zero-length flows).")
    if fmt == "nslkdd":  # every NSL-KDD column by its own name, with rows
        _check_nslkdd_ranges(num)
    counts = np.array([c.split(":")[-1] in COUNT_LIKE for c in num.columns])
    negative = (values < 0) & counts
    if negative.any():
        raise ValueError(f"negative values in count, size or duration columns (rows counted from 0): "
                         f"{'; '.join(_by_column(num, negative, report))}. Counts, byte sizes and durations cannot be "
                         "negative: the file is corrupted or a column is mis-mapped; fix those cells or drop those "
                         "rows, e.g. df = df[df[COLUMN] >= 0].")


def _by_column(num, odd: np.ndarray, report: CoverageReport) -> list[str]:
    """``"'Flow Duration': 2 value(s) such as -5, rows [3, 8]"`` for each column of ``num`` with an ``odd [N, F]``
    cell, under its name in the table. A derived feature inherits its odd cells from the columns it is made of, so it
    is named only when no column read from the table is odd."""
    values = num.to_numpy(np.float64)
    read, derived = [], []
    for j, c in enumerate(num.columns):
        rows = np.flatnonzero(odd[:, j])
        if len(rows):
            name = report.columns.get(c)
            value = values[rows[0], j] / UNIT_SCALE.get(report.source, {}).get(c, 1.0)  # in the table's unit
            text = f"{name or c!r}: {len(rows)} value(s) such as {value:g}, rows {_rows(rows)}"
            (read if name else derived).append(text)
    return (read or derived)[:6]


def _id_like_columns(num, report: CoverageReport) -> list[str]:
    """Names (as in the table) of the extra columns that look like row or record numbers: a name such as ``id``,
    ``index``, ``row_id`` or ``No.``, or values that count the rows (50 or more distinct integers that are consecutive
    once sorted). ``num``: ``[N, F]`` checked numeric columns of :func:`to_canonical`."""
    found = []
    for c in report.extras:
        name = report.columns.get(c, c.split(":", 1)[-1])
        v = num[c].to_numpy(np.float64)
        counter = (len(v) >= 50 and bool((v == np.round(v)).all()) and len(np.unique(v)) == len(v)
                   and v.max() - v.min() == len(v) - 1)
        if counter or _ID_NAME.match(name):
            found.append(name)
    return found
