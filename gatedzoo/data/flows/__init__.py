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

Modules (every public name is importable from ``gatedzoo.data.flows``):

- ``vocabulary``: the 46 canonical features, each source's column map, units, derived features, column roles,
  :class:`CoverageReport`;
- ``labels``: binary and NSL-KDD 5-class labels from a table's label column;
- ``readers``: the NSL-KDD files, :func:`read_nslkdd`, :func:`read_flow_table` (format detection, layout checks);
- ``canonical``: :func:`to_canonical` (a raw table onto the vocabulary) and the checks on its values;
- ``preprocess``: :class:`FlowPreprocessor` (fitted encodings and scaling), :func:`load_preprocessing`;
- ``windows``: time stamps, per-source order, :func:`window_index`, :class:`FlowWindows`, :func:`block_split`;
- ``datamodule``: :class:`FlowDataModule`.
"""

from ..paths import data_dir, fetch
from .canonical import to_canonical
from .datamodule import FlowDataModule
from .labels import ATTACK_CATEGORY, CATEGORIES_5, TASKS, attack_names, check_task, label_column, labels_of
from .preprocess import FlowPreprocessor, load_preprocessing
from .readers import NSLKDD_FILES, read_flow_table, read_nslkdd
from .vocabulary import (
    ARGUS_MAP,
    CANONICAL_FEATURES,
    CICFLOWMETER_MAP,
    COUNT_LIKE,
    DERIVED,
    FORMATS,
    ID_COLUMNS,
    LABEL_COLUMNS,
    NSLKDD_CATEGORICAL,
    NSLKDD_COLUMNS,
    NSLKDD_MAP,
    NSLKDD_PROTOCOLS,
    SOURCE_COLUMNS,
    SOURCE_MAPS,
    TIME_COLUMNS,
    UNIT_SCALE,
    UNKNOWN,
    CoverageReport,
    source_names,
)
from .windows import SPLIT_BLOCK_WINDOWS, FlowWindows, block_split, flow_order, flow_times, table_windows, window_index

__all__ = [
    "ARGUS_MAP", "ATTACK_CATEGORY", "CANONICAL_FEATURES", "CATEGORIES_5", "CICFLOWMETER_MAP", "COUNT_LIKE", "DERIVED",
    "FORMATS", "ID_COLUMNS", "LABEL_COLUMNS", "NSLKDD_CATEGORICAL", "NSLKDD_COLUMNS", "NSLKDD_FILES", "NSLKDD_MAP",
    "NSLKDD_PROTOCOLS", "SOURCE_COLUMNS", "SOURCE_MAPS", "SPLIT_BLOCK_WINDOWS", "TASKS", "TIME_COLUMNS", "UNIT_SCALE",
    "UNKNOWN", "CoverageReport", "FlowDataModule", "FlowPreprocessor", "FlowWindows", "attack_names", "block_split",
    "check_task", "data_dir", "fetch", "flow_order", "flow_times", "label_column", "labels_of", "load_preprocessing",
    "read_flow_table", "read_nslkdd", "source_names", "table_windows", "to_canonical", "window_index",
]
