"""Reading flow tables: the NSL-KDD files, format detection and the checks on a file's layout."""

from __future__ import annotations

import logging
from pathlib import Path

from ..paths import DatasetFile
from .vocabulary import FORMATS, NSLKDD_COLUMNS, NSLKDD_PROTOCOLS, _norm

log = logging.getLogger("gatedzoo")

_GITHUB = "https://raw.githubusercontent.com/jmnwong/NSL-KDD-Dataset/master/"
_SOURCE = "NSL-KDD, Canadian Institute for Cybersecurity (UNB), https://www.unb.ca/cic/datasets/nsl.html"
NSLKDD_FILES: dict[str, DatasetFile] = {
    "train20": DatasetFile("nsl_kdd/KDDTrain+_20Percent.txt",
                           "7ea86479faab5ca2190b7f18b4982fb058ce5bf2b46e0e1017d0d9ef90f9c16e",
                           _GITHUB + "KDDTrain%2B_20Percent.txt", "research use with citation", _SOURCE),
    "test": DatasetFile("nsl_kdd/KDDTest+.txt", "fa46b0935342616aa83b7c2578db355b6a7aaabbc492248172c7a1e8b7ab8f84",
                        _GITHUB + "KDDTest%2B.txt", "research use with citation", _SOURCE),
    # used only when present: its checksum is not pinned here, so it is never downloaded
    "train": DatasetFile("nsl_kdd/KDDTrain+.txt", None, None, "research use with citation", _SOURCE),
}


def _read_csv(path: Path, **kwargs):
    """``pd.read_csv(path, **kwargs)`` whose failures on a file that is not a comma-separated text table (empty,
    binary, ragged rows) say so, naming the file, instead of pandas' own words."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; a flow table is comma-separated text, one flow per line (with "
                         "a header line naming the columns, or NSL-KDD's 41-43 columns without one).") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file in UTF-8; a flow table is a comma-separated text file (from Excel: "
                         "save as 'CSV UTF-8'; a parquet file: read it with pandas.read_parquet and score the "
                         "DataFrame with gatedzoo.tasks.flows.predict_table).") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: rows with different numbers of fields ({str(err).strip()}); a flow table has the "
                         "same comma-separated columns on every line: fix or drop those lines.") from None


def read_nslkdd(path: str | Path):
    """Read an NSL-KDD file into a DataFrame whose columns are named as in :data:`NSLKDD_COLUMNS`.

    Without a header (the official files) the columns are taken by position: 43 (41 features, ``label``,
    ``difficulty``), 42 (without ``difficulty``) or 41 (unlabelled flows, to score). With a header (a first line that
    names at least three NSL-KDD columns; quoted names and a UTF-8 byte-order mark are accepted), the columns are taken
    **by name**, in any order: the 41 features are required, ``label`` and ``difficulty`` are optional, and the result
    lists the columns in :data:`NSLKDD_COLUMNS` order. A header with ``difficulty`` but no ``label`` gives an
    unlabelled table (``difficulty`` is never read as a label).

    Returns:
        pandas.DataFrame: one row per flow, 41-43 columns, index ``0..N-1``.

    Raises:
        ValueError: an empty file, a header without flows, header names that are not NSL-KDD columns (or repeat, or
            lack features), or a headerless file without 41-43 columns.
    """
    import csv

    import pandas as pd

    path = Path(path)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: the file is empty or starts with a blank line; an NSL-KDD file holds one flow per "
                         "line: 41 features, then optionally label and difficulty, comma-separated.")
    tokens = [t.strip().lower() for t in next(csv.reader([first]))]
    known = set(NSLKDD_COLUMNS)
    # a flow line can name at most one column (the attack 'land'); a header names (nearly) all of them
    if sum(t in known for t in tokens) < 3:
        df = _read_csv(path, header=None, encoding="utf-8-sig")
        n = df.shape[1]
        if n not in (41, 42, 43):
            raise ValueError(f"{path}: {n} columns and no header; an NSL-KDD file has 43 (41 features, label, "
                             "difficulty), 42 (without difficulty) or 41 (features only, unlabelled), comma-separated. "
                             "If its columns are in another order, add a header line with the NSL-KDD names "
                             "(gatedzoo.data.flows.NSLKDD_COLUMNS).")
        df.columns = list(NSLKDD_COLUMNS[:n])
        if n >= 42 and pd.api.types.is_numeric_dtype(df["label"]):
            raise ValueError(f"{path}: column 42 (label) holds numbers, not attack names ('normal', 'neptune', ...): "
                             "the file looks like features + difficulty without the label. Add the label column, or "
                             "drop the last column to score the flows unlabelled.")
        return df
    df = _read_csv(path, header=0, encoding="utf-8-sig")
    names = [str(c).strip().lower() for c in df.columns]
    unknown = [str(c) for c, k in zip(df.columns, names) if k not in known]
    if unknown:
        hint = (" An unnamed column is usually a saved pandas index: write the file with index=False or drop it."
                if any(c.startswith("Unnamed:") for c in unknown) else "")
        raise ValueError(f"{path}: header columns that are not NSL-KDD columns: {unknown[:8]}. Rename them to the "
                         f"NSL-KDD names (gatedzoo.data.flows.NSLKDD_COLUMNS) or drop them.{hint}")
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise ValueError(f"{path}: header names {repeated} more than once; keep one column of each name.")
    missing = [c for c in NSLKDD_COLUMNS[:41] if c not in names]
    if missing:
        raise ValueError(f"{path}: the header lacks NSL-KDD feature columns {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} ({len(missing)} of 41); add them, with those names.")
    if df.empty:
        raise ValueError(f"{path}: a header but no flows.")
    df.columns = names
    if "label" not in names:
        log.warning("%s has no label column%s: its flows can be scored, not evaluated.", path,
                    " (difficulty is not a label)" if "difficulty" in names else "")
    return df[[c for c in NSLKDD_COLUMNS if c in names]]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _headerless_nslkdd(path: Path) -> bool:
    """Whether the first line of ``path`` is an NSL-KDD flow: 41-43 comma-separated fields, numbers except the
    protocol (``tcp`` / ``udp`` / ``icmp``), service and flag at positions 1-3 and the label at position 41."""
    import csv

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    tokens = [t.strip() for t in next(csv.reader([first]), [])]
    if not 41 <= len(tokens) <= 43 or tokens[1].lower() not in NSLKDD_PROTOCOLS:
        return False
    numeric = [0, *range(4, 41), *range(42, len(tokens))]
    return all(_is_number(tokens[i]) for i in numeric) and not any(_is_number(t) for t in tokens[2:4])


def read_flow_table(path: str | Path, fmt: str = "auto"):
    """Read a flow table and return ``(DataFrame, format)``.

    Args:
        path (str | Path): the table, comma-separated.
        fmt (str): ``"nslkdd"``, ``"cicflowmeter"``, ``"argus"`` or ``"auto"``. ``"auto"`` reads NSL-KDD from a
            ``.txt`` file, from a headerless file of any extension whose first line is an NSL-KDD flow (41-43
            fields, protocol ``tcp`` / ``udp`` / ``icmp`` then service and flag as text at positions 1-3) and from a
            header naming ``protocol_type`` and ``src_bytes``; Argus from a header with ``spkts`` and ``dpkts``;
            CICFlowMeter otherwise. Default: ``"auto"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an empty file, a header without flows, a file that is not comma-separated UTF-8 text,
            and the NSL-KDD layout checks of :func:`read_nslkdd`.
    """
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"format={fmt!r}; use 'auto' or one of {FORMATS}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"flow table {path} does not exist.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the flow table's file (one table per call).")
    if fmt == "nslkdd" or (fmt == "auto" and (path.suffix == ".txt" or _headerless_nslkdd(path))):
        return read_nslkdd(path), "nslkdd"
    df = _read_csv(path, low_memory=False)
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise ValueError(f"{path}: a header but no flows.")
    if fmt == "auto":
        cols = {_norm(c) for c in df.columns}
        if "protocol_type" in cols and "src_bytes" in cols:
            # by name, through the NSL-KDD reader's checks
            return read_nslkdd(path), "nslkdd"
        fmt = "argus" if {"spkts", "dpkts"} <= cols else "cicflowmeter"
    return df, fmt
