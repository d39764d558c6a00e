"""Flow-table data layer on real NSL-KDD rows: vocabulary mapping, coverage, preprocessing, bad input, windows."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from datafiles import need

from gatedzoo.data.flows import (
    ATTACK_CATEGORY,
    CANONICAL_FEATURES,
    CATEGORIES_5,
    NSLKDD_FILES,
    FlowDataModule,
    FlowPreprocessor,
    labels_of,
    read_flow_table,
    read_nslkdd,
    table_windows,
    to_canonical,
    window_index,
)


def _need(key):
    return need(NSLKDD_FILES[key])


@pytest.fixture(scope="module")
def train_df():
    return read_nslkdd(_need("train20"))


@pytest.fixture(scope="module")
def test_df():
    return read_nslkdd(_need("test"))


def test_vocabulary_is_the_46_canonical_features():
    assert len(CANONICAL_FEATURES) == len(set(CANONICAL_FEATURES)) == 46
    assert CANONICAL_FEATURES[0] == "flow_duration" and CANONICAL_FEATURES[-1] == "init_win_fwd"


def test_nslkdd_reader_and_coverage(train_df):
    assert train_df.shape == (25192, 43)
    num, cat, report = to_canonical(train_df.head(50), "nslkdd")
    assert list(cat.columns) == ["protocol_type", "service", "flag"]
    assert report.present == ["flow_duration", "byte_count_fwd", "byte_count_bwd", "fwd_byte_rate", "bwd_byte_rate",
                              "byte_count_total", "urg_flag_count"]
    assert len(report.missing) == 39 and "7/46" in str(report)
    # durations are converted from seconds to CICFlowMeter microseconds; totals are derived
    np.testing.assert_allclose(num["flow_duration"], train_df.head(50)["duration"] * 1e6)
    np.testing.assert_allclose(num["byte_count_total"], train_df.head(50)[["src_bytes", "dst_bytes"]].sum(1))
    assert "nslkdd:count" in report.extras and "nslkdd:difficulty" not in report.extras
    assert (num[report.missing] == 0).all().all()


def test_nslkdd_header_line_is_accepted(train_df, tmp_path):
    path = tmp_path / "mine.csv"
    train_df.head(20).to_csv(path, index=False)
    df, fmt = read_flow_table(path, "nslkdd")
    assert fmt == "nslkdd" and df.shape == (20, 43) and (df["service"] == train_df.head(20)["service"]).all()


def test_cicflowmeter_and_argus_headers_map():
    cic = pd.DataFrame({" Flow Duration": [1000, 2000], "Tot Fwd Pkts": [3, 4], " Total Backward Packets": [1, 2],
                        "Total Length of Fwd Packets": [120, 80], "Flow IAT Mean": [5.0, 6.0],
                        "Label": ["BENIGN", "DDoS"], "Source IP": ["a", "b"], "Timestamp": ["1", "2"]})
    cic.columns = [c.strip() for c in cic.columns]
    num, _, report = to_canonical(cic, "cicflowmeter")
    assert {"flow_duration", "pkt_count_fwd", "pkt_count_bwd", "byte_count_fwd", "iat_mean",
            "pkt_count_total"} <= set(report.present)
    assert num["pkt_count_total"].tolist() == [4, 6] and report.extras == []
    argus = pd.DataFrame({"dur": [0.5], "spkts": [2], "dpkts": [1], "sbytes": [100], "dbytes": [60], "mean": [0.1]})
    num, _, report = to_canonical(argus, "argus")
    assert num["flow_duration"].iloc[0] == 0.5e6 and "fwd_byte_rate" in report.present
    assert "argus:mean" in report.extras  # Argus 'mean' is a duration statistic, not a packet size


def test_preprocessor_fit_transform_and_state(train_df, test_df, caplog):
    pre = FlowPreprocessor("nslkdd")
    pre.fit(train_df)
    assert len(pre.features) == 46 + 34 and pre.categorical["protocol_type"][0] == "<unknown>"
    assert "byte_count_fwd" in pre.log_cols and "nslkdd:serror_rate" not in pre.log_cols
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        x, c, _ = pre.transform(test_df)
    assert "tftp_u" in caplog.text  # the one test service never seen in training goes to the unknown bucket
    assert x.dtype == np.float32 and x.shape == (22544, 80) and np.abs(x).max() <= 10
    assert (c[:, 1] == 0).sum() == 1
    clone = FlowPreprocessor.from_state(json.loads(json.dumps(pre.state())))
    x2, c2, _ = clone.transform(test_df)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(c, c2)


def test_bad_input_is_refused(train_df):
    pre = FlowPreprocessor("nslkdd")
    pre.fit(train_df.head(2000))
    rows = train_df.iloc[2000:2100].copy()
    with pytest.raises(ValueError, match="provides .* % .* missing"):
        pre.transform(rows.drop(columns=["count", "srv_count", "dst_host_count", "same_srv_rate", "src_bytes",
                                         "dst_bytes", "serror_rate", "rerror_rate", "hot", "logged_in"]))
    bad = rows.copy()
    bad.loc[bad.index[3], "srv_count"] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        pre.transform(bad)
    bad = rows.astype({"src_bytes": float})
    bad.loc[bad.index[0], "src_bytes"] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        pre.transform(bad)
    bad = rows.copy()
    bad.loc[bad.index[0], "src_bytes"] = -5
    with pytest.raises(ValueError, match="negative values"):
        pre.transform(bad)
    with pytest.raises(RuntimeError, match="before fit"):
        FlowPreprocessor().transform(rows)


def test_single_class_training_file_is_refused(train_df, tmp_path):
    path = tmp_path / "normal_only.txt"
    train_df[train_df["label"] == "normal"].head(300).to_csv(path, header=False, index=False)
    with pytest.raises(ValueError, match="only one class"):
        FlowDataModule(train_path=str(path), test_path=str(path)).setup()


def test_labels_cover_every_attack_name(train_df, test_df):
    names = set(train_df["label"]) | set(test_df["label"])
    assert names - {"normal"} <= set(ATTACK_CATEGORY)
    y = labels_of(test_df, "nslkdd", "5class")
    counts = dict(zip(CATEGORIES_5, np.bincount(y, minlength=5)))
    assert counts == {"normal": 9711, "DoS": 7460, "Probe": 2421, "R2L": 2885, "U2R": 67}
    assert labels_of(test_df, "nslkdd", "binary").sum() == 22544 - 9711
    odd = test_df.head(3).assign(label=["normal", "neptune", "zero_day"])
    with pytest.raises(ValueError, match="zero_day"):
        labels_of(odd, "nslkdd", "5class")


def test_window_index_stays_in_source_and_time_order():
    groups = np.array([0, 1, 0, 1, 0, 0, 1])
    order = np.array([5, 4, 3, 2, 1, 0, 6])
    w = window_index(7, 3, groups, order)
    assert (w[:, -1] == np.arange(7)).all()  # one window per flow, ending with it
    assert (groups[w] == groups[:, None]).all()  # never crossing sources
    assert w[0].tolist() == [4, 2, 0] and w[5].tolist() == [5, 5, 5] and w[6].tolist() == [3, 1, 6]
    assert window_index(4, 1).tolist() == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="window"):
        window_index(3, 0)


def test_table_windows_use_source_ip_and_timestamp():
    df = pd.DataFrame({"Source IP": ["a", "b", "a", "a"], "Timestamp": ["2017-07-07 10:00:03", "2017-07-07 10:00:00",
                                                                      "2017-07-07 10:00:01", "2017-07-07 10:00:02"]})
    w = table_windows(df, "cicflowmeter", 2)
    assert w.tolist() == [[3, 0], [1, 1], [2, 2], [2, 3]]


def test_datamodule_splits_and_metadata():
    _need("train20")
    dm = FlowDataModule(task="5class", max_train_rows=3000, batch_size=64, seed=1)
    dm.setup()
    tr, va = dm.datasets["train"], dm.datasets["val"]
    assert len(tr) + len(va) == 3000 and abs(len(va) - 600) <= 1 and len(dm.datasets["test"]) == 22544
    assert sum(dm.class_counts) == len(tr)
    x, c, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 80) and c.shape == (64, 1, 3) and y.dtype.is_floating_point is False
    meta = dm.zoo_metadata()
    assert meta["label_names"] == list(CATEGORIES_5) and meta["preprocessing"]["format"] == "nslkdd"
    json.dumps(meta)
    assert dm.model_args()["in_features"] == 80 and dm.model_args()["num_classes"] == 5
