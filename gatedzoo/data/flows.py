"""Flow tables for intrusion detection: a canonical feature vocabulary, readers, preprocessing and windows.

Every source (CICFlowMeter CSVs, Argus records, NSL-KDD connection records) is mapped onto the **46 canonical
features** named after CICFlowMeter (TCH-Net's BRIDGE vocabulary, ``CANONICAL_FEATURES``). A source that lacks a
canonical feature gets zeros there and the per-dataset :class:`CoverageReport` says so. Features a source has
beyond the vocabulary (NSL-KDD's host/content features) are kept as *extras* under a ``<source>:`` prefix, because
dropping them would throw away most of what NSL-KDD measures.

:class:`FlowPreprocessor` is fitted on training rows only: categorical vocabularies with an explicit unknown
bucket (index 0), ``log1p`` for non-negative heavy-tailed columns, a robust scaler (median, 5-95 % range) and a
clip at +-10. Its state is a JSON-able dict that travels in the model's ``zoo_config``.

Windows: a flow's window is the ``window`` flows of the same source that end with it, in true time order when a
timestamp column exists (parsed as times, :func:`flow_times`; left-padded by repeating the first flow), so every
flow gets a prediction. With ``window > 1`` :class:`FlowDataModule` builds the windows on the whole training table
and splits it by blocks of consecutive flows (:func:`block_split`), so training sees the windows inference builds.
NSL-KDD has neither timestamps nor source addresses and its files are random samples, so consecutive rows are
unrelated; its recipes use ``window=1`` (the time context it has lives in its own 2-second / 100-connection traffic
features).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .paths import DatasetFile, data_dir, fetch

log = logging.getLogger("gatedzoo")

CANONICAL_FEATURES: tuple[str, ...] = (
    # 0-16: durations, counts and rates (durations in microseconds, sizes in bytes, rates per second)
    "flow_duration", "pkt_count_fwd", "pkt_count_bwd", "byte_count_fwd", "byte_count_bwd", "pkt_rate", "byte_rate",
    "fwd_pkt_rate", "bwd_pkt_rate", "fwd_byte_rate", "bwd_byte_rate", "pkt_count_total", "byte_count_total",
    "fwd_pkt_len_total", "bwd_pkt_len_total", "subflow_fwd_pkts", "subflow_bwd_pkts",
    # 17-37: packet sizes and inter-arrival times
    "pkt_len_min", "pkt_len_max", "pkt_len_mean", "pkt_len_std", "pkt_len_var", "fwd_pkt_len_min", "fwd_pkt_len_max",
    "fwd_pkt_len_mean", "fwd_pkt_len_std", "bwd_pkt_len_min", "bwd_pkt_len_max", "bwd_pkt_len_mean", "bwd_pkt_len_std",
    "iat_mean", "iat_std", "iat_max", "iat_min", "fwd_iat_mean", "fwd_iat_std", "bwd_iat_mean", "bwd_iat_std",
    # 38-45: TCP flags and headers
    "syn_flag_count", "ack_flag_count", "fin_flag_count", "rst_flag_count", "psh_flag_count", "urg_flag_count",
    "fwd_header_len", "init_win_fwd",
)

#: CICFlowMeter column -> canonical feature. Keys are matched after stripping spaces and lower-casing, so both the
#: CIC-IDS-2017 spellings ("Total Fwd Packets") and CICFlowMeter-V4 ones ("Tot Fwd Pkts") are listed.
CICFLOWMETER_MAP: dict[str, str] = {
    "Flow Duration": "flow_duration",
    "Total Fwd Packets": "pkt_count_fwd", "Tot Fwd Pkts": "pkt_count_fwd",
    "Total Backward Packets": "pkt_count_bwd", "Tot Bwd Pkts": "pkt_count_bwd",
    "Total Length of Fwd Packets": "byte_count_fwd", "TotLen Fwd Pkts": "byte_count_fwd",
    "Total Length of Bwd Packets": "byte_count_bwd", "TotLen Bwd Pkts": "byte_count_bwd",
    "Flow Packets/s": "pkt_rate", "Flow Pkts/s": "pkt_rate",
    "Flow Bytes/s": "byte_rate", "Flow Byts/s": "byte_rate",
    "Fwd Packets/s": "fwd_pkt_rate", "Fwd Pkts/s": "fwd_pkt_rate",
    "Bwd Packets/s": "bwd_pkt_rate", "Bwd Pkts/s": "bwd_pkt_rate",
    "Subflow Fwd Bytes": "fwd_pkt_len_total", "Subflow Fwd Byts": "fwd_pkt_len_total",
    "Subflow Bwd Bytes": "bwd_pkt_len_total", "Subflow Bwd Byts": "bwd_pkt_len_total",
    "Subflow Fwd Packets": "subflow_fwd_pkts", "Subflow Fwd Pkts": "subflow_fwd_pkts",
    "Subflow Bwd Packets": "subflow_bwd_pkts", "Subflow Bwd Pkts": "subflow_bwd_pkts",
    "Min Packet Length": "pkt_len_min", "Pkt Len Min": "pkt_len_min",
    "Max Packet Length": "pkt_len_max", "Pkt Len Max": "pkt_len_max",
    "Packet Length Mean": "pkt_len_mean", "Pkt Len Mean": "pkt_len_mean",
    "Packet Length Std": "pkt_len_std", "Pkt Len Std": "pkt_len_std",
    "Packet Length Variance": "pkt_len_var", "Pkt Len Var": "pkt_len_var",
    "Fwd Packet Length Min": "fwd_pkt_len_min", "Fwd Pkt Len Min": "fwd_pkt_len_min",
    "Fwd Packet Length Max": "fwd_pkt_len_max", "Fwd Pkt Len Max": "fwd_pkt_len_max",
    "Fwd Packet Length Mean": "fwd_pkt_len_mean", "Fwd Pkt Len Mean": "fwd_pkt_len_mean",
    "Fwd Packet Length Std": "fwd_pkt_len_std", "Fwd Pkt Len Std": "fwd_pkt_len_std",
    "Bwd Packet Length Min": "bwd_pkt_len_min", "Bwd Pkt Len Min": "bwd_pkt_len_min",
    "Bwd Packet Length Max": "bwd_pkt_len_max", "Bwd Pkt Len Max": "bwd_pkt_len_max",
    "Bwd Packet Length Mean": "bwd_pkt_len_mean", "Bwd Pkt Len Mean": "bwd_pkt_len_mean",
    "Bwd Packet Length Std": "bwd_pkt_len_std", "Bwd Pkt Len Std": "bwd_pkt_len_std",
    "Flow IAT Mean": "iat_mean", "Flow IAT Std": "iat_std", "Flow IAT Max": "iat_max", "Flow IAT Min": "iat_min",
    "Fwd IAT Mean": "fwd_iat_mean", "Fwd IAT Std": "fwd_iat_std",
    "Bwd IAT Mean": "bwd_iat_mean", "Bwd IAT Std": "bwd_iat_std",
    "SYN Flag Count": "syn_flag_count", "SYN Flag Cnt": "syn_flag_count",
    "ACK Flag Count": "ack_flag_count", "ACK Flag Cnt": "ack_flag_count",
    "FIN Flag Count": "fin_flag_count", "FIN Flag Cnt": "fin_flag_count",
    "RST Flag Count": "rst_flag_count", "RST Flag Cnt": "rst_flag_count",
    "PSH Flag Count": "psh_flag_count", "PSH Flag Cnt": "psh_flag_count",
    "URG Flag Count": "urg_flag_count", "URG Flag Cnt": "urg_flag_count",
    "Fwd Header Length": "fwd_header_len", "Fwd Header Len": "fwd_header_len",
    "Init_Win_bytes_forward": "init_win_fwd", "Init Fwd Win Byts": "init_win_fwd",
}

#: Argus (Bot-IoT) field -> canonical feature. Argus ``mean``/``stddev``/``min``/``max`` describe record durations,
#: not packet sizes, so they are deliberately not mapped.
ARGUS_MAP: dict[str, str] = {
    "dur": "flow_duration", "spkts": "pkt_count_fwd", "dpkts": "pkt_count_bwd", "sbytes": "byte_count_fwd",
    "dbytes": "byte_count_bwd", "rate": "pkt_rate", "srate": "fwd_pkt_rate", "drate": "bwd_pkt_rate",
    "pkts": "pkt_count_total", "bytes": "byte_count_total",
}

#: NSL-KDD column -> canonical feature (the other NSL-KDD numeric columns become ``nsl_kdd:`` extras).
NSLKDD_MAP: dict[str, str] = {
    "duration": "flow_duration", "src_bytes": "byte_count_fwd", "dst_bytes": "byte_count_bwd",
    "urgent": "urg_flag_count",
}

#: unit conversions applied after renaming: seconds -> microseconds (CICFlowMeter's unit)
UNIT_SCALE: dict[str, dict[str, float]] = {"argus": {"flow_duration": 1e6}, "nslkdd": {"flow_duration": 1e6}}

#: canonical features derived from others when a source lacks them: name -> (a, b, op)
DERIVED: dict[str, tuple[str, str, str]] = {
    "pkt_count_total": ("pkt_count_fwd", "pkt_count_bwd", "sum"),
    "byte_count_total": ("byte_count_fwd", "byte_count_bwd", "sum"),
    "fwd_byte_rate": ("byte_count_fwd", "flow_duration", "per_second"),
    "bwd_byte_rate": ("byte_count_bwd", "flow_duration", "per_second"),
}

NSLKDD_COLUMNS: tuple[str, ...] = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment", "urgent",
    "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted", "num_root",
    "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login",
    "count", "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate", "same_srv_rate",
    "diff_srv_rate", "srv_diff_host_rate", "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate", "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate", "label", "difficulty",
)
NSLKDD_CATEGORICAL = ("protocol_type", "service", "flag")

CATEGORIES_5 = ("normal", "DoS", "Probe", "R2L", "U2R")
#: NSL-KDD attack name -> category (Tavallaee et al. 2009 / the KDD'99 task description; ``worm`` follows the common
#: DoS assignment). Training and test files together use 39 attack names, all listed.
ATTACK_CATEGORY: dict[str, str] = {
    **dict.fromkeys(("back", "land", "neptune", "pod", "smurf", "teardrop", "apache2", "udpstorm", "processtable",
                     "mailbomb", "worm"), "DoS"),
    **dict.fromkeys(("satan", "ipsweep", "nmap", "portsweep", "mscan", "saint"), "Probe"),
    **dict.fromkeys(("guess_passwd", "ftp_write", "imap", "phf", "multihop", "warezmaster", "warezclient", "spy",
                     "xlock", "xsnoop", "snmpguess", "snmpgetattack", "httptunnel", "sendmail", "named"), "R2L"),
    **dict.fromkeys(("buffer_overflow", "loadmodule", "rootkit", "perl", "sqlattack", "xterm", "ps"), "U2R"),
}

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

FORMATS = ("nslkdd", "cicflowmeter", "argus")
UNKNOWN = "<unknown>"
#: columns that are never features: labels, time stamps, addresses, ports and record ids
LABEL_COLUMNS = ("label", "Label", "attack", "category")
TIME_COLUMNS = ("Timestamp", "stime", "timestamp")
SOURCE_COLUMNS = ("Source IP", "Src IP", "saddr", "src_ip")
ID_COLUMNS = ("Flow ID", "Destination IP", "Dst IP", "daddr", "Source Port", "Src Port", "sport", "dport",
              "Destination Port", "Dst Port", "ltime", "seq", "pkSeqID", "subcategory")
#: columns that hold counts, sizes or durations and therefore cannot be negative
COUNT_LIKE = {*CANONICAL_FEATURES[:5], *CANONICAL_FEATURES[11:17], "src_bytes", "dst_bytes", "duration", "count",
              "srv_count", "dst_host_count", "dst_host_srv_count", "num_failed_logins", "num_compromised",
              "num_root", "num_file_creations", "num_shells", "num_access_files", "wrong_fragment", "hot"}
#: NSL-KDD protocol values: a headerless file is recognised by them in its second column
NSLKDD_PROTOCOLS = ("tcp", "udp", "icmp")


def _norm(name: str) -> str:
    return "".join(str(name).split()).lower()


@dataclass
class CoverageReport:
    """Which canonical features a table provides.

    Attributes:
        source (str): the input format.
        present (list[str]): canonical features read (or derived) from the table.
        missing (list[str]): canonical features zero-filled.
        extras (list[str]): source-specific numeric columns kept beside the vocabulary.
    """

    source: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Share of the 46 canonical features present."""
        return len(self.present) / len(CANONICAL_FEATURES)

    def __str__(self) -> str:
        return (f"{self.source}: {len(self.present)}/{len(CANONICAL_FEATURES)} canonical features "
                f"({100 * self.fraction:.0f} %), {len(self.extras)} extra columns; zero-filled: "
                f"{', '.join(self.missing[:8])}{' ...' if len(self.missing) > 8 else ''}")


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
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: the file is empty or starts with a blank line; an NSL-KDD file holds one flow per "
                         "line: 41 features, then optionally label and difficulty, comma-separated.")
    tokens = [t.strip().lower() for t in next(csv.reader([first]))]
    known = set(NSLKDD_COLUMNS)
    # a flow line can name at most one column (the attack 'land'); a header names (nearly) all of them
    if sum(t in known for t in tokens) < 3:
        df = pd.read_csv(path, header=None, encoding="utf-8-sig")
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
    df = pd.read_csv(path, header=0, encoding="utf-8-sig")
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
    """
    import pandas as pd

    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"format={fmt!r}; use 'auto' or one of {FORMATS}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"flow table {path} does not exist.")
    if fmt == "nslkdd" or (fmt == "auto" and (path.suffix == ".txt" or _headerless_nslkdd(path))):
        return read_nslkdd(path), "nslkdd"
    df = pd.read_csv(path, low_memory=False)
    df.columns = [str(c).strip() for c in df.columns]
    if fmt == "auto":
        cols = {_norm(c) for c in df.columns}
        if "protocol_type" in cols and "src_bytes" in cols:
            # by name, through the NSL-KDD reader's checks
            return read_nslkdd(path), "nslkdd"
        fmt = "argus" if {"spkts", "dpkts"} <= cols else "cicflowmeter"
    return df, fmt


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

    mapping = {"nslkdd": NSLKDD_MAP, "cicflowmeter": CICFLOWMETER_MAP, "argus": ARGUS_MAP}[fmt]
    lookup = {_norm(k): v for k, v in mapping.items()}
    cats = {"nslkdd": NSLKDD_CATEGORICAL, "argus": ("proto", "state", "flgs"), "cicflowmeter": ("Protocol",)}[fmt]
    cat_names = {_norm(c): c for c in cats}
    skip = {_norm(c) for c in (*cats, *LABEL_COLUMNS, "difficulty", *TIME_COLUMNS, *SOURCE_COLUMNS, *ID_COLUMNS)}
    out, extras, bad, text, index_cols = {}, {}, [], [], []
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
                       f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}")
            continue
        num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
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
    report = CoverageReport(fmt, present, [f for f in CANONICAL_FEATURES if f not in out], sorted(extras))
    n = len(df)
    num = pd.DataFrame({f: out.get(f, np.zeros(n)) for f in CANONICAL_FEATURES} | extras, index=df.index)
    cat_cols = [c for c in df.columns if _norm(c) in cat_names]
    cat = df[cat_cols].astype(str)
    cat.columns = [cat_names[_norm(c)] for c in cat_cols]
    return num, cat, report


def _label_strings(col):
    """Label strings of a label column (pandas.Series ``[N]``): spaces and KDD Cup '99's trailing ``.``
    (``normal.``, ``smurf.``) removed."""
    return col.astype(str).str.strip().str.rstrip(".").str.strip()


def attack_names(df) -> np.ndarray:
    """The raw label string of every row (``"normal"``, ``"neptune"``, ...), stripped of spaces and of KDD Cup '99's
    trailing ``.``; ``[N]`` object array.

    Raises:
        ValueError: no label column (one of ``label``, ``Label``, ``attack``).
    """
    col = next((c for c in ("label", "Label", "attack") if c in df.columns), None)
    if col is None:
        raise ValueError("the table has no label column (one of 'label', 'Label', 'attack').")
    return _label_strings(df[col]).to_numpy(object)


def labels_of(df, fmt: str, task: str) -> np.ndarray:
    """Integer labels ``[N]`` int64: binary 0 = normal / benign, 1 = attack; ``"5class"`` indexes
    :data:`CATEGORIES_5`. Label strings are read without surrounding spaces and without KDD Cup '99's trailing ``.``
    (``normal.`` is normal, ``smurf.`` is ``smurf``).

    Raises:
        ValueError: no label column, or (5-class) an attack name without a category.
    """
    col = next((c for c in ("label", "Label", "attack") if c in df.columns), None)
    if col is None:
        raise ValueError(f"the {fmt} table has no label column (one of 'label', 'Label', 'attack'); "
                         "add it, or score unlabelled flows with gatedzoo.tasks.flows.predict_table.")
    raw = _label_strings(df[col])
    benign = raw.str.lower().isin(("normal", "benign", "0"))
    if task == "binary":
        return (~benign).to_numpy(np.int64)
    if task != "5class":
        raise ValueError(f"task={task!r}; use 'binary' or '5class'.")
    cats = raw.map(lambda s: "normal" if s.lower() in ("normal", "benign", "0") else ATTACK_CATEGORY.get(s))
    unknown = sorted(set(raw[cats.isna()]))
    if unknown:
        raise ValueError(f"attack names without a 5-class category: {unknown[:10]}; add them to "
                         "gatedzoo.data.flows.ATTACK_CATEGORY (name -> DoS/Probe/R2L/U2R) or use task='binary'.")
    return cats.map({c: i for i, c in enumerate(CATEGORIES_5)}).to_numpy(np.int64)


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
            bad.append(f"{name!r}: {len(rows)} {what} value(s) such as {v[odd][0]:g}, rows {rows[:5].tolist()}"
                       f"{' ...' if len(rows) > 5 else ''}")
    if bad:
        raise ValueError(
            f"negative values or rates outside [0, 1] in NSL-KDD columns (rows by the table's index, from 0 for a "
            f"file): {'; '.join(bad[:6])}. "
            "NSL-KDD counts, sizes and durations cannot be negative and its *_rate columns are shares in [0, 1]: "
            "the file is corrupted or its columns are shifted; fix those cells or drop those rows, e.g. "
            "df = df[(df[COLUMN] >= 0)] (and <= 1 for a rate).")


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
        self._check_values(num)
        return num, cat, report

    def _check_values(self, num) -> None:
        """Refuse NaN / infinite values, negative counts and (NSL-KDD) rates outside [0, 1] in ``num`` (the
        ``[N, F]`` numeric DataFrame of :func:`to_canonical`)."""
        values = num.to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            cols = [c for c, b in zip(num.columns, bad.any(0)) if b]
            rows = np.flatnonzero(bad.any(1))
            raise ValueError(f"{len(rows)} flows have NaN or infinite values in {cols[:6]} (rows from 0: "
                             f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}); drop or impute those rows first "
                             "(CICFlowMeter writes 'Infinity' for rates of zero-length flows).")
        if self.fmt == "nslkdd":  # every NSL-KDD column by its own name, with rows
            _check_nslkdd_ranges(num)
        neg = [c for c in num.columns if c.split(":")[-1] in COUNT_LIKE and (num[c].to_numpy() < 0).any()]
        if neg:
            raise ValueError(f"negative values in count/size columns {neg[:6]}; counts and byte sizes cannot be "
                             "negative: the file is corrupted or a column is mis-mapped.")


    def fit(self, df) -> CoverageReport:
        """Fit on a training table (raw columns of ``self.fmt``); returns the coverage report."""
        num, cat, report = self._numeric(df)
        log.info("flow coverage %s", report)
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
            ValueError: coverage below ``min_coverage``, NaN/inf or negative counts.
        """
        if not self.fitted:
            raise RuntimeError("FlowPreprocessor.transform before fit; call fit(train_df) or load a state.")
        # only the features the model reads are converted and checked: an unused column cannot block scoring
        num, cat, report = self._numeric(df, set(self.features))
        have = set(num.columns)
        lacking = [f for f in self.observed if f not in have or (f in report.missing)]
        cover = 1 - len(lacking) / max(len(self.observed), 1)
        if cover < self.min_coverage:
            raise ValueError(
                f"the table provides {100 * cover:.0f} % of the {len(self.observed)} features this model was trained "
                f"on (min_coverage={self.min_coverage}); missing: {lacking[:10]}. Give a {self.fmt} table with those "
                "columns (see gatedzoo.data.flows mappings)."
            )
        if lacking:
            log.warning("flow table lacks %d trained features, zero-filled: %s", len(lacking), lacking[:10])
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


#: a window > 1 splits train / validation by blocks of this many windows' worth of consecutive flows of one source
SPLIT_BLOCK_WINDOWS = 8
_DATE = r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}\b"


def _find_column(df, names: tuple[str, ...]):
    """The first column of ``df`` whose name matches one of ``names`` (spaces and case ignored), or `None`."""
    have = {_norm(c): c for c in df.columns}
    return next((have[_norm(n)] for n in names if _norm(n) in have), None)


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


class FlowDataModule(L.LightningDataModule):
    """Flow tables -> per-flow windows for TCH-Net (train / validation / test, preprocessing fitted on train only).

    Args:
        train_path (str, Optional): training table. Default (NSL-KDD): ``KDDTrain+.txt`` when present in the data
            directory, else ``KDDTrain+_20Percent.txt``.
        test_path (str, Optional): test table. Default (NSL-KDD): ``KDDTest+.txt``.
        format (str): ``"nslkdd"``, ``"cicflowmeter"``, ``"argus"`` or ``"auto"``. Default: ``"nslkdd"``.
        task (str): ``"binary"`` (normal vs attack) or ``"5class"`` (normal, DoS, Probe, R2L, U2R). Default:
            ``"binary"``.
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
        if task not in ("binary", "5class"):
            raise ValueError(f"task={task!r}; use 'binary' or '5class'.")
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


__all__ = [
    "ARGUS_MAP", "ATTACK_CATEGORY", "CANONICAL_FEATURES", "CATEGORIES_5", "CICFLOWMETER_MAP", "NSLKDD_COLUMNS",
    "NSLKDD_FILES", "NSLKDD_MAP", "CoverageReport", "FlowDataModule", "FlowPreprocessor", "FlowWindows",
    "SPLIT_BLOCK_WINDOWS", "attack_names", "block_split", "data_dir", "flow_order", "flow_times", "labels_of",
    "load_preprocessing", "read_flow_table", "read_nslkdd", "table_windows", "to_canonical", "window_index",
]
