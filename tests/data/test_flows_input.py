"""Flow tables as users write them, on real NSL-KDD rows: headers read by name, non-numeric cells, text time stamps,
CICFlowMeter's spaced column names, unused columns, and train / validation windows of consecutive flows."""

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
    table_windows,
    window_index,
)

#: NSL-KDD columns written under CICFlowMeter names (mapped) and under their own (extras)
CIC_NAMES = {"duration": "Flow Duration", "src_bytes": "Total Length of Fwd Packets",
             "dst_bytes": "Total Length of Bwd Packets", "protocol_type": "Protocol", "label": "Label"}
CIC_EXTRAS = ("count", "srv_count", "serror_rate", "same_srv_rate", "dst_host_count", "dst_host_srv_count")


@pytest.fixture(scope="module")
def test_df():
    return pd.read_csv(need(NSLKDD_FILES["test"]), header=None, names=list(NSLKDD_COLUMNS), nrows=1500)


def cic_table(rows: pd.DataFrame, seed: int = 0, sources: int = 6, start: str = "2018-02-12 22:00:00",
              stamp: str = "%Y-%m-%d %H:%M:%S"):
    """Real NSL-KDD flows as a CICFlowMeter-style table: a ``Source IP`` and a ``Timestamp`` per flow, listed out of
    time order. Returns ``(table, times [N] datetime64)``; ``stamp`` formats the time stamps."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    # 4 hours of traffic: the default start crosses midnight from 12 to 13 February (day-first stamps: day > 12)
    times = pd.Timestamp(start) + pd.to_timedelta(rng.permutation(n) * (4 * 3600 // n), unit="s")
    table = rows[list(CIC_NAMES) + list(CIC_EXTRAS)].rename(columns=CIC_NAMES).reset_index(drop=True)
    table["Flow Duration"] = table["Flow Duration"] * 1_000_000
    table["Source IP"] = [f"192.168.10.{k}" for k in rng.integers(1, sources + 1, n)]
    table["Timestamp"] = times.strftime(stamp)
    return table, times.to_numpy()


def true_windows(table, times, window):
    return window_index(len(table), window, pd.factorize(table["Source IP"])[0], times.astype("int64"))


# --- item 1: a header names the columns ----------------------------------------------------------------------------

def test_header_columns_are_read_by_name_in_any_order(test_df, tmp_path):
    rows = test_df.head(80)
    order = ["label", *[c for c in NSLKDD_COLUMNS if c not in ("label", "src_bytes", "dst_bytes")], "dst_bytes",
             "src_bytes"]
    path = tmp_path / "reordered.csv"
    rows[order].to_csv(path, index=False)
    for fmt in ("nslkdd", "auto"):
        df, got = read_flow_table(path, fmt)
        assert got == "nslkdd" and list(df.columns) == list(NSLKDD_COLUMNS)
        pd.testing.assert_frame_equal(df, rows.reset_index(drop=True), check_dtype=False)
    assert (rows["src_bytes"] != rows["dst_bytes"]).any()  # the swap would have shown


def test_header_with_difficulty_but_no_label_is_unlabelled(test_df, tmp_path, caplog):
    path = tmp_path / "no_label.csv"
    test_df.head(40).drop(columns="label").to_csv(path, index=False)
    df, _ = read_flow_table(path, "nslkdd")
    assert "label" not in df.columns and (df["difficulty"] == test_df.head(40)["difficulty"]).all()
    assert "difficulty is not a label" in caplog.text
    with pytest.raises(ValueError, match="no label column"):
        labels_of(df, "nslkdd", "binary")


def test_bad_headers_and_empty_files_are_refused_by_name(test_df, tmp_path):
    rows = test_df.head(30)
    rows.to_csv(tmp_path / "index.csv")  # a saved pandas index: an unnamed first column
    with pytest.raises(ValueError, match=r"'Unnamed: 0'.*index=False"):
        read_flow_table(tmp_path / "index.csv", "nslkdd")
    rows.drop(columns=["count", "hot"]).to_csv(tmp_path / "missing.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks NSL-KDD feature columns \['hot', 'count'\]"):
        read_flow_table(tmp_path / "missing.csv", "nslkdd")
    rows.head(0).to_csv(tmp_path / "header_only.csv", index=False)
    with pytest.raises(ValueError, match="a header but no flows"):
        read_flow_table(tmp_path / "header_only.csv", "nslkdd")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_flow_table(tmp_path / "empty.txt")
    rows.drop(columns="label").to_csv(tmp_path / "diff_no_label.txt", header=False, index=False)
    with pytest.raises(ValueError, match="holds numbers, not attack names"):
        read_flow_table(tmp_path / "diff_no_label.txt")


def test_headerless_41_columns_and_quoted_bom_header(test_df, tmp_path):
    rows = test_df.head(25)
    rows[list(NSLKDD_COLUMNS[:41])].to_csv(tmp_path / "flows.txt", header=False, index=False)
    df, _ = read_flow_table(tmp_path / "flows.txt")
    assert df.shape == (25, 41) and list(df.columns) == list(NSLKDD_COLUMNS[:41])
    rows.to_csv(tmp_path / "excel.csv", index=False, quoting=1, encoding="utf-8-sig")  # QUOTE_ALL + BOM
    df, _ = read_flow_table(tmp_path / "excel.csv", "nslkdd")
    pd.testing.assert_frame_equal(df, rows.reset_index(drop=True), check_dtype=False)


# --- item 2: a non-numeric cell is refused, never a dropped column ---------------------------------------------------

def test_non_numeric_cell_is_refused_with_column_row_and_value(test_df, tmp_path):
    rows = test_df.head(200).astype({"count": object, "src_bytes": object})
    rows.loc[7, "count"] = "?"
    path = tmp_path / "qmark.txt"
    rows.to_csv(path, header=False, index=False)
    df, _ = read_flow_table(path)
    one = r"'count': 1 non-numeric value\(s\) such as '\?', rows \[7\].*drop those rows"
    with pytest.raises(ValueError, match=one):
        FlowPreprocessor("nslkdd").fit(df)
    pre = FlowPreprocessor("nslkdd")
    pre.fit(test_df.iloc[200:1200])
    with pytest.raises(ValueError, match=r"'count'.*rows \[7\]"):
        pre.transform(df)
    rows.loc[[3, 9], "src_bytes"] = "-"  # a mapped column: the same message, not a NaN one
    with pytest.raises(ValueError, match=r"'src_bytes': 2 non-numeric value\(s\) such as '-', rows \[3, 9\]"):
        pre.transform(rows)
    with pytest.raises(ValueError, match="'count'"):  # the data module stops before fitting
        FlowDataModule(train_path=str(path), test_path=str(path)).setup()


# --- item 3: windows of consecutive flows in training and validation ------------------------------------------------

def test_window_split_keeps_the_windows_inference_builds(test_df, tmp_path):
    table, times = cic_table(test_df.head(1200))
    path = tmp_path / "cic.csv"
    table.to_csv(path, index=False)
    dm = FlowDataModule(train_path=str(path), format="cicflowmeter", window=4, batch_size=64)
    dm.setup()
    full = true_windows(table, times, 4)
    train, val = dm.datasets["train"], dm.datasets["val"]
    for ds in (train, val):  # every window is the table's own window of its scored flow
        rows = ds.index[:, -1].numpy()
        np.testing.assert_array_equal(ds.index.numpy(), full[rows])
    tr, va = train.index[:, -1].numpy(), val.index[:, -1].numpy()
    assert not set(tr) & set(va) and 0.15 < len(va) / len(table) < 0.25
    assert not set(train.index.numpy().ravel()) & set(va)  # no training window holds a validation flow
    assert (train.y.numpy() == labels_of(table.iloc[tr], "cicflowmeter", "binary")).all()
    # validation flows come in runs of consecutive flows of one source (blocks of 8 windows), not scattered rows
    src = pd.factorize(table["Source IP"])[0]
    rank = np.empty(len(table), int)
    rank[np.lexsort((times, src))] = np.arange(len(table))
    runs = np.diff(np.sort(rank[va])) > 1
    assert runs.sum() < len(va) / 8
    quick = FlowDataModule(train_path=str(path), format="cicflowmeter", window=4, max_train_rows=600)
    quick.setup()
    kept = np.concatenate([quick.datasets[s].index[:, -1].numpy() for s in ("train", "val")])
    assert len(set(kept)) <= 600 and len(quick.datasets["val"]) > 100  # the earliest 600 flows, windows intact


# --- item 4: time stamps stored as text are times -------------------------------------------------------------------

def test_text_time_stamps_are_ordered_as_times(test_df):
    table, times = cic_table(test_df.head(300), stamp="%d/%m/%Y %H:%M:%S", start="2018-02-12 22:00:00")
    want = true_windows(table, times, 3)
    np.testing.assert_array_equal(table_windows(table, "cicflowmeter", 3), want)  # day-first: 13/02 after 12/02
    as_string = table.convert_dtypes()  # pandas' string dtype (also pandas 3's default str)
    assert as_string["Timestamp"].dtype != object
    np.testing.assert_array_equal(table_windows(as_string, "cicflowmeter", 3), want)
    table, times = cic_table(test_df.head(300), stamp="%m/%d/%Y %I:%M:%S %p", start="2017-07-07 09:00:00")
    np.testing.assert_array_equal(table_windows(table.convert_dtypes(), "cicflowmeter", 3),
                                  true_windows(table, times, 3))


def test_ambiguous_or_unparseable_time_stamps_are_refused(test_df, tmp_path):
    table, times = cic_table(test_df.head(300), start="2018-02-05 10:00:00")
    # two capture days, 5 February and 2 March: read month-first they are 2 May and 3 February, the other order
    # (consecutive days keep their order either way, so those alone are not ambiguous)
    times = times + np.where(np.arange(300) % 2, np.timedelta64(25, "D"), np.timedelta64(0, "D"))
    table["Timestamp"] = pd.DatetimeIndex(times).strftime("%d/%m/%Y %H:%M:%S")
    with pytest.raises(ValueError, match="day-first and month-first give different time orders.*time_format"):
        table_windows(table, "cicflowmeter", 3)
    np.testing.assert_array_equal(table_windows(table, "cicflowmeter", 3, "%d/%m/%Y %H:%M:%S"),
                                  true_windows(table, times, 3))
    table.loc[5, "Timestamp"] = "not a time"
    with pytest.raises(ValueError, match=r"1 of 300 time stamps .* row 5 from 0, 'not a time'"):
        table_windows(table, "cicflowmeter", 3, "%d/%m/%Y %H:%M:%S")
    path = tmp_path / "bad_time.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="time stamps"):  # before any fitting
        FlowDataModule(train_path=str(path), format="cicflowmeter", window=3).setup()


# --- CICFlowMeter's own column names, unused and index columns ------------------------------------------------------

def test_spaced_cicflowmeter_names_unused_nan_and_index_columns(test_df, caplog):
    table, _ = cic_table(test_df.head(400))
    pre = FlowPreprocessor("cicflowmeter")
    pre.fit(table.assign(**{"Unnamed: 0": np.arange(len(table))}))
    assert "cicflowmeter:count" in pre.features and not any("Unnamed" in f for f in pre.features)
    assert "saved row index" in caplog.text
    x, c, _ = pre.transform(table)
    spaced = table.rename(columns={k: " " + k for k in ("Protocol", "Source IP", "Timestamp", *CIC_EXTRAS)})
    x2, c2, _ = pre.transform(spaced.assign(analyst_note=np.where(np.arange(len(table)) % 3, np.nan, 1.0)))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(table_windows(spaced, "cicflowmeter", 4), table_windows(table, "cicflowmeter", 4))


# --- KDD Cup '99 labels, headerless .csv files, value ranges --------------------------------------------------------

def test_kdd99_labels_with_a_trailing_dot_are_their_names(test_df, tmp_path):
    rows = test_df.head(300).drop(columns="difficulty")
    dotted = rows.assign(label=rows["label"] + ".")  # KDD Cup '99 writes 'normal.', 'smurf.'
    path = tmp_path / "kdd99.txt"
    dotted.to_csv(path, header=False, index=False)
    df, fmt = read_flow_table(path)
    assert fmt == "nslkdd" and df["label"].str.endswith(".").all()
    for task in ("binary", "5class"):
        np.testing.assert_array_equal(labels_of(df, fmt, task), labels_of(rows, "nslkdd", task))
    assert 0.3 < labels_of(df, fmt, "binary").mean() < 0.7
    assert list(attack_names(df)) == list(rows["label"])


def test_headerless_nslkdd_csv_is_detected_by_its_first_flow(test_df, tmp_path):
    rows = test_df.head(200)
    for n in (43, 42, 41):
        path = tmp_path / f"my_test_{n}.csv"
        rows[list(NSLKDD_COLUMNS[:n])].to_csv(path, header=False, index=False)
        df, fmt = read_flow_table(path)
        assert fmt == "nslkdd" and df.shape == (200, n) and list(df.columns) == list(NSLKDD_COLUMNS[:n])
        pd.testing.assert_frame_equal(df, rows[list(NSLKDD_COLUMNS[:n])].reset_index(drop=True), check_dtype=False)
    table, _ = cic_table(rows)  # a CICFlowMeter table (its header names columns) stays one
    table.to_csv(tmp_path / "cic.csv", index=False)
    assert read_flow_table(tmp_path / "cic.csv")[1] == "cicflowmeter"


def test_negative_counts_and_rates_out_of_range_are_refused_by_name(test_df, tmp_path):
    rows = test_df.head(300).astype(dict.fromkeys(("urgent", "num_outbound_cmds", "serror_rate", "same_srv_rate",
                                                   "land"), float))
    pre = FlowPreprocessor("nslkdd")
    pre.fit(test_df.iloc[300:1300])
    for col, value, what in (("urgent", -4, "negative"), ("num_outbound_cmds", -7, "negative"),
                             ("land", -1, "negative"), ("serror_rate", 1.5, r"outside \[0, 1\]"),
                             ("same_srv_rate", -0.5, r"outside \[0, 1\]")):
        bad = rows.copy()
        bad.loc[[3, 8], col] = value
        path = tmp_path / f"bad_{col}.csv"
        bad.to_csv(path, header=False, index=False)
        df, _ = read_flow_table(path)
        want = rf"'{col}': 2 {what} value\(s\) such as {value:g}, rows \[3, 8\].*drop those rows"
        with pytest.raises(ValueError, match=want):
            FlowPreprocessor("nslkdd").fit(df)
        with pytest.raises(ValueError, match=want):
            pre.transform(df)
    x, _, _ = pre.transform(rows)  # the real rows pass: every rate in [0, 1], no negative count
    assert x.shape[0] == 300
