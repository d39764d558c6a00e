"""The canonical flow vocabulary and the column names of each source.

Every source (CICFlowMeter CSVs, Argus records, NSL-KDD connection records) is mapped onto the **46 canonical
features** named after CICFlowMeter (TCH-Net's BRIDGE vocabulary, :data:`CANONICAL_FEATURES`) through its map
(:data:`CICFLOWMETER_MAP`, :data:`ARGUS_MAP`, :data:`NSLKDD_MAP`); :class:`CoverageReport` says which ones a table
provides. The column roles (labels, time stamps, source addresses, ids) tell which columns are never features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

#: each format's column map
SOURCE_MAPS: dict[str, dict[str, str]] = {"nslkdd": NSLKDD_MAP, "cicflowmeter": CICFLOWMETER_MAP, "argus": ARGUS_MAP}

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


def _find_column(df, names: tuple[str, ...]):
    """The first column of ``df`` whose name matches one of ``names`` (spaces and case ignored), or `None`."""
    have = {_norm(c): c for c in df.columns}
    return next((have[_norm(n)] for n in names if _norm(n) in have), None)


def source_names(feature: str, fmt: str) -> list[str]:
    """The column names of a ``fmt`` table that give ``feature``, for messages in the user's terms.

    Args:
        feature (str): a canonical feature (``"byte_count_fwd"``) or an extra (``"nslkdd:count"``).
        fmt (str): ``"nslkdd"``, ``"cicflowmeter"`` or ``"argus"``.

    Returns:
        list[str]: an extra's own name; every spelling ``fmt``'s map has for a canonical feature (CICFlowMeter has
        two: ``["Total Fwd Packets", "Tot Fwd Pkts"]``); for a feature only derived (:data:`DERIVED`), the names of
        the two it is derived from; ``[]`` when ``fmt`` cannot give it.
    """
    if feature.startswith(f"{fmt}:"):
        return [feature[len(fmt) + 1:]]
    names = [k for k, v in SOURCE_MAPS[fmt].items() if v == feature]
    if not names and feature in DERIVED:
        a, b, _ = DERIVED[feature]
        names = [*source_names(a, fmt), *source_names(b, fmt)]
    return names


@dataclass
class CoverageReport:
    """Which canonical features a table provides.

    Attributes:
        source (str): the input format.
        present (list[str]): canonical features read (or derived) from the table.
        missing (list[str]): canonical features zero-filled.
        extras (list[str]): source-specific numeric columns kept beside the vocabulary.
        columns (dict[str, str]): each feature read from a column (canonical or extra) -> that column's name in the
            table (stripped of spaces); derived and zero-filled features are not listed. Messages name the user's
            columns through it.
    """

    source: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Share of the 46 canonical features present."""
        return len(self.present) / len(CANONICAL_FEATURES)

    def __str__(self) -> str:
        return (f"{self.source}: {len(self.present)}/{len(CANONICAL_FEATURES)} canonical features "
                f"({100 * self.fraction:.0f} %), {len(self.extras)} extra columns; zero-filled: "
                f"{', '.join(self.missing[:8])}{' ...' if len(self.missing) > 8 else ''}")
