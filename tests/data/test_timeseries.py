"""The TSLib benchmark protocol on the real ETTh1 / Exchange files, vic_elec, and every bad-input error."""

import numpy as np
import pandas as pd
import pytest
from datafiles import need

from gatedzoo.data.timeseries import (
    ETTH1,
    EXCHANGE,
    TimeSeriesDataModule,
    check_frame,
    load_frame,
    tslib_borders,
)


def test_etth1_follows_the_tslib_borders():
    need(ETTH1)
    dm = TimeSeriesDataModule("etth1", seq_len=96, pred_len=96)
    dm.setup()
    assert dm.variables == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"] and dm.freq == "h"
    # 12/4/4 months of 30 days: 8640 / 2880 / 2880 rows; val and test look back 96 rows into the previous split
    assert dm.starts == [0, 8544, 11424] and dm.ends == [8640, 11520, 14400]
    # the window counts TSLib reports for ETTh1 at H=96
    assert {k: len(v) for k, v in dm.sets.items()} == {"train": 8449, "val": 2785, "test": 2785}
    raw = load_frame("etth1")
    train = raw.iloc[:8640, 1:].to_numpy()
    np.testing.assert_allclose(dm.mean, train.mean(0))
    np.testing.assert_allclose(dm.std, train.std(0))  # population std, as scikit-learn's StandardScaler
    x, y, step = dm.sets["test"][0]
    # the window's time index counts hours since 1970-01-01 to its first look-back row (row 11424, 2017-10-20
    # 00:00), so its phase in a daily cycle is that row's hour of the day
    first = raw["date"].iloc[11424]
    assert int(step) == (first - pd.Timestamp("1970-01-01")) // pd.Timedelta("1h") and int(step) % 24 == first.hour
    np.testing.assert_allclose(x[0].numpy(), ((raw.iloc[11424, 1:].to_numpy(float) - dm.mean) / dm.std), rtol=1e-5)
    np.testing.assert_allclose(y[0].numpy(), ((raw.iloc[11520, 1:].to_numpy(float) - dm.mean) / dm.std), rtol=1e-5)
    meta = dm.zoo_metadata()
    assert meta["lookback"] == 96 and meta["horizon"] == 96 and len(meta["scaler"]["mean"]) == 7
    assert meta["source_data"]["dataset"] == "etth1" and meta["source_data"]["split"] == "ett_hour"


def test_exchange_gets_the_ltsf_date_and_a_70_10_20_split():
    need(EXCHANGE)
    df = load_frame("exchange")
    assert list(df.columns) == ["date", "0", "1", "2", "3", "4", "5", "6", "OT"] and len(df) == 7588
    assert df["date"].iloc[0] == pd.Timestamp("1990-01-01") and df["date"].iloc[-1] == pd.Timestamp("2010-10-10")
    dm = TimeSeriesDataModule("exchange", pred_len=96)
    dm.setup()
    assert dm.ends == [5311, 6071, 7588] and dm.starts == [0, 5215, 5975]
    assert len(dm.sets["test"]) == 1422  # TSLib's Exchange test size at H=96


def test_evaluation_keeps_every_window():
    need(EXCHANGE)
    dm = TimeSeriesDataModule("exchange", pred_len=720, batch_size=8, eval_batch_size=100)
    dm.setup()
    sizes = [len(x) for x, _, _ in dm.test_dataloader()]
    assert sum(sizes) == len(dm.sets["test"]) == 798 and sizes[-1] == 98  # drop_last=False
    train_sizes = {len(x) for x, _, _ in dm.train_dataloader()}
    assert train_sizes == {8}  # training drops the short last batch, as TSLib


def test_vic_elec_loads_offline():
    dm = TimeSeriesDataModule("vic_elec", seq_len=96, pred_len=48)
    dm.setup()
    assert dm.variables == ["Temperature", "Demand"] and dm.freq == "30min" and len(dm.dates) == 52608
    x, y, step = dm.sets["train"][0]
    assert x.shape == (96, 2) and y.shape == (48, 2)
    # half-hours from 1970-01-01 to the first row's timestamp (UTC, stored tz-naive)
    assert int(step) == (dm.dates.iloc[0] - pd.Timestamp("1970-01-01")) // pd.Timedelta("30min")


def test_ratio_borders_match_tslib_arithmetic():
    starts, ends = tslib_borders(1000, 96, "ratio")
    assert ends == [700, 800, 1000] and starts == [0, 604, 704]
    with pytest.raises(ValueError, match="needs 14400 rows"):
        tslib_borders(1000, 96, "ett_hour")
    with pytest.raises(ValueError, match="summing to 1"):
        tslib_borders(1000, 96, "ratio", (0.5, 0.1, 0.1))


def _frame(n=300):
    src = load_frame("vic_elec").iloc[:n]
    return src.rename(columns={"Demand": "OT"})


def test_csv_round_trip_and_column_order(tmp_path):
    path = tmp_path / "series.csv"
    _frame()[["date", "OT", "Temperature"]].to_csv(path, index=False)
    df = load_frame(str(path))
    assert list(df.columns) == ["date", "Temperature", "OT"]  # the target goes last, as TSLib's Dataset_Custom
    df2 = load_frame(str(path), target="Temperature", columns=["OT", "Temperature"])
    assert list(df2.columns) == ["date", "OT", "Temperature"]


def test_bad_input_errors_name_the_problem(tmp_path):
    good = _frame()
    with pytest.raises(ValueError, match="no 'date' column"):
        check_frame(good.rename(columns={"date": "time"}))
    bad = good.astype({"date": str})
    bad.loc[3, "date"] = "yesterday"
    with pytest.raises(ValueError, match="do not parse as timestamps"):
        check_frame(bad)
    with pytest.raises(ValueError, match="increase strictly"):
        check_frame(good.iloc[::-1])
    text = good.astype({"OT": object})
    text.loc[5, "OT"] = "n/a"
    with pytest.raises(ValueError, match="non-numeric values such as \\['n/a'\\]"):
        check_frame(text)
    with pytest.raises(ValueError, match="'Temperature' has no numeric values"):
        check_frame(good.assign(Temperature=np.nan))
    with pytest.raises(ValueError, match="no variate columns"):
        check_frame(good[["date"]])
    short = tmp_path / "short.csv"
    good.iloc[:150].to_csv(short, index=False)
    with pytest.raises(ValueError, match="needs seq_len \\+ pred_len = 192"):
        TimeSeriesDataModule(str(short), seq_len=96, pred_len=96).setup()
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        load_frame(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="split='weekly'"):
        TimeSeriesDataModule("vic_elec", split="weekly")


def test_gaps_are_filled_forward():
    df = _frame(10)
    df.loc[4, "OT"] = np.nan
    out = check_frame(df)
    assert out["OT"].iloc[4] == df["OT"].iloc[3]


def test_missing_file_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDZOO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="ett/ETTh1.csv is missing: put it at"):
        load_frame("etth1", root=tmp_path)


def test_time_steps_count_fixed_length_steps_from_1970():
    from gatedzoo.data.timeseries import time_steps

    daily = pd.Series(pd.date_range("1990-01-01", periods=3, freq="D"))
    # days (a calendar offset in pandas 3, a Tick before) count as 24 hours on tz-naive timestamps
    assert time_steps(daily, "D").tolist() == [7305, 7306, 7307]
    assert time_steps(daily, "h").tolist() == [175320, 175344, 175368]
    assert time_steps(pd.Series(pd.to_datetime(["1969-12-31 23:30"])), "h").tolist() == [-1]  # floor, not truncation
    # months, business days, anchored weeks and no frequency have no fixed step ("MS" must not read as milliseconds)
    for freq in ("MS", "B", "W-SUN", "", None):
        assert time_steps(daily, freq) is None


def test_a_leading_gap_is_refused_not_filled_from_the_test_rows():
    # Temperature unobserved in rows 0-2399 of 3000: back-filling made row 2400 (the test part) the whole training
    # history of the column and its scaler (mean 20.6, std 1.0)
    v = load_frame("vic_elec").iloc[:3000].reset_index(drop=True)
    v.loc[:2399, "Temperature"] = np.nan
    with pytest.raises(ValueError, match="'Temperature' is missing in its first 2400 rows .*df.iloc\\[2400:\\]"):
        TimeSeriesDataModule.from_frame(v, seq_len=96, pred_len=24).setup()
    dm = TimeSeriesDataModule.from_frame(v.iloc[2400:].reset_index(drop=True), seq_len=96, pred_len=24)
    dm.setup()  # the fix the message gives
    np.testing.assert_allclose(dm.mean[0], v["Temperature"].iloc[2400:2400 + dm.ends[0]].mean())


def test_rows_without_any_observation_at_the_end_are_refused():
    df = _frame(50)
    df.loc[45:, ["Temperature", "OT"]] = np.nan
    with pytest.raises(ValueError, match="the last 5 rows .* have no value in any series"):
        check_frame(df)
    # one series missing at the end is a gap of that series: filled forward, or kept as NaN with fill=False
    df.loc[45:, "Temperature"] = 20.0
    assert check_frame(df)["OT"].iloc[-1] == df["OT"].iloc[44]
    assert check_frame(df, fill=False)["OT"].iloc[45:].isna().all()


def test_missing_timestamps_are_refused_with_the_first_one_named(tmp_path):
    need(ETTH1)
    df = load_frame("etth1").iloc[:2000]
    gappy = df.drop(index=range(1500, 1548)).reset_index(drop=True)  # two days missing
    first = df["date"].iloc[1500]  # 2016-09-01 12:00
    with pytest.raises(ValueError, match=f"frequency 'h': no row at {first} .*asfreq\\('h'\\)"):
        check_frame(gappy)
    path = tmp_path / "gappy.csv"
    gappy.to_csv(path, index=False)
    with pytest.raises(ValueError, match=f"no row at {first}"):
        TimeSeriesDataModule(str(path), seq_len=96, pred_len=96).setup()
    # scattered single holes, also in the first and the last rows that pandas.infer_freq would read
    holes = df.drop(index=[3, 900, 1995]).reset_index(drop=True)
    with pytest.raises(ValueError, match=f"no row at {df['date'].iloc[3]}"):
        check_frame(holes)
    with pytest.raises(ValueError, match="against the frequency '30min'"):
        check_frame(df, freq="30min")  # the stated frequency is checked too
    # the advised fix: reindex; the new rows are filled forward
    fixed = check_frame(gappy.set_index("date").asfreq("h").reset_index())
    assert len(fixed) == 2000 and (fixed["OT"].iloc[1500:1548] == gappy["OT"].iloc[1499]).all()
    # irregular timestamps with no regular step at all stay accepted (their frequency is None)
    from gatedzoo.data.timeseries import check_frequency

    odd = df["date"] + pd.to_timedelta((np.arange(len(df)) % 3) * 7, unit="min")
    assert check_frequency(odd) is None and check_frequency(df["date"]) == "h"
    with pytest.raises(ValueError, match="'date' holds numbers"):
        check_frame(df.assign(date=np.arange(len(df))))


def test_a_too_short_test_part_is_refused_at_setup_before_training(tmp_path):
    path = tmp_path / "n900.csv"
    load_frame("vic_elec").iloc[:900].to_csv(path, index=False)
    # 10 % of 900 rows + the 96-row look-back = 186 rows: no 192-row window; this used to surface after fit
    with pytest.raises(ValueError, match="the test part has 186 rows .* seq_len \\+ pred_len = 192"):
        TimeSeriesDataModule(str(path), ratios=[0.7, 0.2, 0.1]).setup()
    with pytest.raises(ValueError, match="the val part has 186 rows"):
        TimeSeriesDataModule(str(path), ratios=[0.7, 0.1, 0.2]).setup()
    dm = TimeSeriesDataModule(str(path), ratios=[0.7, 0.3, 0.0])  # no test part wanted: accepted
    dm.setup()
    assert set(dm.sets) == {"train", "val"}


def test_a_saved_pandas_index_is_dropped_with_a_warning(tmp_path):
    # df.to_csv(path) writes the index under a blank header (read back as "Unnamed: 0"); taken as a series it was
    # forecast and counted in n_vars, and the n_vars error then asked for one variable too many
    vic = load_frame("vic_elec").iloc[:500]
    for part, name in ((vic, "whole.csv"), (vic.iloc[100:], "slice.csv")):  # a slice keeps its labels 100, 101, ...
        part.to_csv(tmp_path / name)
        with pytest.warns(UserWarning, match=r"column 'Unnamed: 0' holds the row numbers of a saved pandas index.*"
                                             r"index=False"):
            df = load_frame(str(tmp_path / name))
        assert list(df.columns) == ["date", "Temperature", "Demand"]
        pd.testing.assert_frame_equal(df, part.reset_index(drop=True), check_freq=False)
    # a blank-header column of measurements is data, not an index
    kept = check_frame(vic.assign(**{"Unnamed: 3": vic["Demand"].to_numpy()}))
    assert "Unnamed: 3" in kept.columns


def test_a_long_table_is_refused_with_how_to_read_it(tmp_path):
    from gatedzoo.forecast import to_long

    long = to_long(load_frame("vic_elec").iloc[:500], value_col="y")
    path = tmp_path / "long.csv"
    long.to_csv(path, index=False)
    # the old advice (load_frame(..., date_col='<name>')) led to "'date' must increase strictly"
    how = r"Forecaster\(\.\.\., id_col='unique_id', time_col='ds', target_col='y'\).*to_wide\(df, id_col='unique_id'"
    with pytest.raises(ValueError, match=r"no 'date' column .*this looks like a long table .*" + how):
        load_frame(str(path))
    with pytest.raises(ValueError, match=r"'ds' repeats its timestamps: this looks like a long table .*" + how):
        load_frame(str(path), date_col="ds")
    other = long.rename(columns={"unique_id": "series", "ds": "timestamp", "y": "value"})
    with pytest.raises(ValueError, match=r"id_col='series', time_col='timestamp', target_col='value'"):
        check_frame(other)
    with pytest.raises(ValueError, match=r"increase strictly .*this looks like a long table"):
        check_frame(long.rename(columns={"ds": "date"}))
    # a wide frame with a repeated timestamp is no long table: the plain advice stays
    wide = load_frame("vic_elec").iloc[:10]
    with pytest.raises(ValueError, match="increase strictly .*: sort the rows by date and drop repeated timestamps"):
        check_frame(pd.concat([wide, wide.iloc[[3]]]))


def test_fixed_frequency_names_the_fixed_step_of_a_calendar_one():
    from gatedzoo.data.timeseries import fixed_frequency

    for freq, fixed in (("h", "h"), ("30min", "30min"), ("7D", "7D"), ("W-SUN", "7D"), ("W", "7D"),
                        ("2W-MON", "14D"), ("MS", None), ("B", None), ("", None), (None, None)):
        assert fixed_frequency(freq) == fixed, freq
