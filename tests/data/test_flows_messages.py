"""What flow-table users are told, on real NSL-KDD rows: bad files refused with the file and the fix, bad values and
missing columns named as the user's table names them, id-like columns, label columns with CICFlowMeter's spaces,
and label sets beyond the two flow tasks."""

import logging

import numpy as np
import pandas as pd
import pytest
from datafiles import need

from gatedzoo.data.flows import (
    NSLKDD_COLUMNS,
    NSLKDD_FILES,
    FlowDataModule,
    FlowPreprocessor,
    attack_names,
    labels_of,
    read_flow_table,
)

ID_WARNING = "look like row or record numbers"


@pytest.fixture(scope="module")
def rows():
    return pd.read_csv(need(NSLKDD_FILES["test"]), header=None, names=list(NSLKDD_COLUMNS), nrows=1200)


def cic_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Real flows under CICFlowMeter-2017 names, with the leading spaces its CSVs have; ``Flow Bytes/s`` is computed
    from bytes and duration (0 for zero-length flows, where CICFlowMeter would write ``Infinity``)."""
    seconds = rows["duration"].to_numpy(np.float64)
    size = (rows["src_bytes"] + rows["dst_bytes"]).to_numpy(np.float64)
    return pd.DataFrame({
        " Flow Duration": rows["duration"] * 1_000_000, "Total Length of Fwd Packets": rows["src_bytes"],
        " Total Length of Bwd Packets": rows["dst_bytes"], "Flow Bytes/s": np.divide(size, seconds, where=seconds > 0,
                                                                                     out=np.zeros(len(rows))),
        " Protocol": rows["protocol_type"], " count": rows["count"], " srv_count": rows["srv_count"],
        " same_srv_rate": rows["same_srv_rate"], " Label": rows["label"],
    }).reset_index(drop=True)


# --- files that are not flow tables ----------------------------------------------------------------------------------

def test_bad_files_are_refused_with_the_file_and_the_fix(rows, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    for fmt in ("auto", "cicflowmeter", "argus"):
        with pytest.raises(ValueError, match=r"empty\.csv: the file is empty; a flow table is comma-separated"):
            read_flow_table(tmp_path / "empty.csv", fmt)
    cic_frame(rows).head(0).to_csv(tmp_path / "header_only.csv", index=False)
    with pytest.raises(ValueError, match="a header but no flows"):
        read_flow_table(tmp_path / "header_only.csv")
    (tmp_path / "capture.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x10")
    with pytest.raises(ValueError, match="not a text file in UTF-8.*CSV UTF-8"):
        read_flow_table(tmp_path / "capture.csv", "cicflowmeter")
    text = cic_frame(rows).head(20).to_csv(index=False).splitlines()
    text[6] += ",7,7"  # a line with two fields too many
    (tmp_path / "ragged.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"ragged\.csv: rows with different numbers of fields \(.*line 7"):
        read_flow_table(tmp_path / "ragged.csv")
    with pytest.raises(ValueError, match="is a folder"):
        read_flow_table(tmp_path)


# --- values and columns under the user's names -----------------------------------------------------------------------

def test_bad_values_are_named_by_the_tables_own_columns(rows):
    pre = FlowPreprocessor("nslkdd")
    pre.fit(rows.iloc[300:])
    bad = rows.head(300).astype({"src_bytes": float})
    bad.loc[[3, 17], "src_bytes"] = np.nan
    with pytest.raises(ValueError, match=r"2 flows have NaN or infinite .*'src_bytes': 2 value\(s\) such as nan, "
                                         r"rows \[3, 17\]\. Drop or impute") as err:
        pre.transform(bad)
    assert "byte_count" not in str(err.value)  # the model's own names for src_bytes and the totals made from it
    cic = cic_frame(rows)
    pre = FlowPreprocessor("cicflowmeter")
    pre.fit(cic.iloc[300:])
    bad = cic.head(300).copy()
    bad.loc[5, "Flow Bytes/s"] = np.inf  # what CICFlowMeter writes for a zero-length flow
    with pytest.raises(ValueError, match=r"'Flow Bytes/s': 1 value\(s\) such as inf, rows \[5\]") as err:
        pre.transform(bad)
    assert "byte_rate" not in str(err.value)
    bad = cic.head(300).copy()
    bad.loc[[8, 9, 40], " Flow Duration"] = -1
    with pytest.raises(ValueError, match=r"negative values in count, size or duration columns .*'Flow Duration': 3 "
                                         r"value\(s\) such as -1, rows \[8, 9, 40\]"):
        pre.transform(bad)


def test_missing_columns_are_named_as_the_source_writes_them(rows, caplog):
    pre = FlowPreprocessor("nslkdd")
    pre.fit(rows.iloc[300:])
    dropped = ["duration", "src_bytes", "dst_bytes", "count", "hot"]
    with pytest.raises(ValueError, match=r"missing columns: 'duration', 'src_bytes', 'dst_bytes', 'count', 'hot'\. "
                                         r"Add them under those names \(the NSL-KDD names") as err:
        pre.transform(rows.head(300).drop(columns=dropped))
    assert "byte_count" not in str(err.value) and "nslkdd:" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        pre.transform(rows.head(300).drop(columns=["count", "srv_count"]))
    assert "columns 'count', 'srv_count' are zero-filled, which shifts the scores" in caplog.text
    cic = cic_frame(rows)
    pre = FlowPreprocessor("cicflowmeter")
    pre.fit(cic.iloc[300:])
    with pytest.raises(ValueError, match=r"missing columns: 'Total Length of Fwd Packets' / 'TotLen Fwd Pkts', "
                                         r"'Total Length of Bwd Packets' / 'TotLen Bwd Pkts'\. .*either CICFlowMeter"):
        pre.transform(cic.head(300).drop(columns=["Total Length of Fwd Packets", " Total Length of Bwd Packets"]))


# --- columns that number the rows ------------------------------------------------------------------------------------

def test_id_like_columns_are_reported_and_real_flows_are_not(rows, caplog):
    cic = cic_frame(rows)
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        FlowPreprocessor("cicflowmeter").fit(cic)
    assert ID_WARNING not in caplog.text  # counts and rates of real flows are no row numbers
    caplog.clear()
    rng = np.random.default_rng(0)
    # an id by its name (scattered values), and a row counter by its values (any name)
    numbered = cic.assign(**{"conn id": rng.choice(10**6, len(cic), replace=False), "seq_number": np.arange(len(cic))})
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        pre = FlowPreprocessor("cicflowmeter")
        pre.fit(numbered.assign(**{"Unnamed: 0": np.arange(len(cic))}))
    assert f"['conn id', 'seq_number'] {ID_WARNING}" in caplog.text
    assert "cicflowmeter:conn id" in pre.features and not any("Unnamed" in f for f in pre.features)


# --- label columns and label sets ------------------------------------------------------------------------------------

def test_label_column_is_found_under_cicflowmeter_spacing(rows, tmp_path):
    cic = cic_frame(rows).head(200)
    cic.to_csv(tmp_path / "cic.csv", index=False)
    raw = pd.read_csv(tmp_path / "cic.csv")  # the user's own read keeps " Label"
    assert " Label" in raw.columns
    want = (rows["label"].head(200) != "normal").to_numpy(np.int64)
    np.testing.assert_array_equal(labels_of(raw, "cicflowmeter", "binary"), want)
    assert list(attack_names(raw)) == list(rows["label"].head(200))
    np.testing.assert_array_equal(labels_of(raw, "cicflowmeter", "5class"), labels_of(rows.head(200), "nslkdd",
                                                                                       "5class"))


def test_label_sets_beyond_the_two_tasks_say_how_to_map(rows, tmp_path):
    own = rows.head(400).assign(label=lambda d: d["label"].map(
        lambda s: "BENIGN" if s == "normal" else ("DDoS" if s in ("neptune", "smurf") else "PortScan")))
    with pytest.raises(ValueError, match=r"labels without a 5-class category: \['DDoS', 'PortScan'\]\..*map your "
                                         r"labels .*replace\(\{'DDoS': 'DoS'"):
        labels_of(own, "nslkdd", "5class")
    # mapped onto the categories, the user's table trains as 5-class
    mapped = own.assign(label=own["label"].replace({"DDoS": "DoS", "PortScan": "Probe"}))
    y = labels_of(mapped, "nslkdd", "5class")
    assert set(np.unique(y)) == {0, 1, 2} and (y == 1).sum() == (own["label"] == "DDoS").sum()
    mapped.to_csv(tmp_path / "mapped.csv", index=False)
    dm = FlowDataModule(train_path=str(tmp_path / "mapped.csv"), load_test=False, task="5class")
    dm.setup()
    assert dm.num_classes == 5 and sum(dm.class_counts[3:]) == 0
    with pytest.raises(ValueError, match=r"task='multiclass'; use 'binary' .* or '5class' .*map your labels onto the "
                                         r"five categories"):
        FlowDataModule(task="multiclass")
