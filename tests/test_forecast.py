"""The user layer: fit / predict / cross-validate / plot / save on a long (Nixtla-style) and a wide DataFrame."""

import warnings

import numpy as np
import pandas as pd
import pytest

from gatedzoo.data.timeseries import load_frame
from gatedzoo.forecast import MODEL_COL, Forecaster, to_long, to_wide

TINY = dict(d_model=16, d_ff=32, n_heads=2, e_layers=1)
# most tests cross-validate the module's forecaster on its own training data on purpose (same data, fast); the
# warning this gives is checked in test_cross_validation_on_the_fitted_rows_says_it_is_optimistic
pytestmark = pytest.mark.filterwarnings("ignore:cross_validation scores windows:UserWarning")


@pytest.fixture(scope="module")
def wide():
    """3000 real half-hours of vic_elec: date, Temperature, Demand."""
    return load_frame("vic_elec").iloc[:3000].reset_index(drop=True)


@pytest.fixture(scope="module")
def long(wide):
    return to_long(wide, value_col="y")


@pytest.fixture(scope="module")
def fc(long):
    return Forecaster(h=24, input_size=48, model_args=TINY, max_epochs=1, limit_train_batches=10, lr=3e-3,
                      accelerator="cpu").fit(long)


def test_long_wide_round_trip(wide, long):
    assert list(long.columns) == ["unique_id", "ds", "y"] and len(long) == 2 * len(wide)
    back = to_wide(long)
    pd.testing.assert_frame_equal(back[["date", "Temperature", "Demand"]], wide, check_dtype=False)


def test_predict_continues_the_calendar(fc, long, wide):
    pred = fc.predict()
    assert list(pred.columns) == ["unique_id", "ds", MODEL_COL] and len(pred) == 2 * 24
    demand = pred[pred.unique_id == "Demand"]
    expected = pd.date_range(wide["date"].iloc[-1], periods=25, freq="30min")[1:]
    assert (demand["ds"].to_numpy() == expected.to_numpy()).all()
    # forecasts come back on the data's scale (MW of demand, not standardised values)
    assert demand[MODEL_COL].between(2000, 10000).all()


def test_cross_validation_and_plot(fc, long, tmp_path):
    cv = fc.cross_validation(long, n_windows=2, step_size=24)
    assert set(cv.columns) == {"unique_id", "ds", "cutoff", "y", MODEL_COL} and len(cv) == 2 * 2 * 24
    assert cv["cutoff"].nunique() == 2
    mse_model = ((cv["y"] - cv[MODEL_COL]) ** 2).groupby(cv["unique_id"]).mean()
    assert np.isfinite(mse_model).all()
    path = fc.plot(long, cv, unique_ids=["Demand"], path=tmp_path / "cv.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_save_load_gives_the_same_forecast(fc, tmp_path, wide):
    fc.save(tmp_path / "fc")
    again = Forecaster.load(str(tmp_path / "fc"))
    assert again.h == 24 and again.input_size == 48 and again.freq == "30min"
    wide.to_csv(tmp_path / "wide.csv", index=False)
    a, b = fc.predict(wide), again.predict(str(tmp_path / "wide.csv"))  # wide in (frame or CSV), wide out
    assert list(b.columns) == ["date", "Temperature", "Demand"]
    np.testing.assert_allclose(a[["Temperature", "Demand"]], b[["Temperature", "Demand"]], rtol=1e-6)


def test_user_errors(fc, long, wide):
    ragged = long.drop(index=long.index[long.unique_id == "Demand"][:5])
    with pytest.raises(ValueError, match="do not share the same timestamps"):
        to_wide(ragged)
    with pytest.raises(ValueError, match="lacks columns \\['y'\\]"):
        to_wide(long.rename(columns={"y": "value"}))
    with pytest.raises(ValueError, match="fitted on 2"):
        fc.predict(wide.assign(Extra=1.0))
    with pytest.raises(ValueError, match="need 192 rows"):
        fc.cross_validation(wide.iloc[:100], n_windows=6, step_size=24)
    with pytest.raises(ValueError, match="val_size"):
        Forecaster(val_size=1.5)


def test_a_cycle_forecaster_reads_the_phase_from_the_timestamps(wide):
    fc = Forecaster(h=24, input_size=48, model_args={**TINY, "cycle_len": 48}, max_epochs=1, limit_train_batches=10,
                    lr=3e-3, accelerator="cpu").fit(wide)
    assert fc.model.cycle.profile.abs().sum() > 0
    cv = fc.cross_validation(wide, n_windows=2, step_size=7)
    # the last window of the cross-validation is the forecast from the series cut 24 rows before its end: the same
    # timestamps, though the history's first row sits at another position of the frame given
    cut = wide.iloc[: len(wide) - 24].iloc[5:]
    pred = fc.predict(cut)
    last = cv[cv["cutoff"] == cv["cutoff"].max()]
    np.testing.assert_allclose(pred["Demand"].to_numpy(), last["Demand_hat"].to_numpy(), rtol=1e-5)
    # the same values at timestamps one step later are another phase of the daily cycle, so another forecast
    later = cut.assign(date=cut["date"] + pd.Timedelta("30min"))
    assert not np.allclose(fc.predict(later)["Demand"].to_numpy(), pred["Demand"].to_numpy(), rtol=1e-5)


def test_cross_validation_keeps_missing_truth_missing(fc, long, wide, tmp_path):
    # the last 10 Demand observations are missing (a meter outage): the CV truth must say so, not repeat the last one
    gone = (long.unique_id == "Demand") & (long.ds > wide["date"].iloc[-11])
    holes = long.assign(y=long["y"].mask(gone))
    cv = fc.cross_validation(holes, n_windows=2, step_size=24)
    demand = cv[cv.unique_id == "Demand"].set_index(["cutoff", "ds"])
    assert demand["y"].isna().sum() == 10 and demand["y"].tail(10).isna().all()
    full = fc.cross_validation(long, n_windows=2, step_size=24)
    # the observed truth is untouched, and these windows' look-backs end before the outage: the same forecasts
    np.testing.assert_array_equal(cv["y"].dropna(), full["y"][cv["y"].notna()])
    np.testing.assert_allclose(cv[MODEL_COL], full[MODEL_COL], rtol=1e-6)
    # the wide layout too, and its forecasts from a look-back with a hole are made from the values before it
    wide_cv = fc.cross_validation(wide.assign(Demand=wide["Demand"].mask(wide.index >= len(wide) - 10)),
                                  n_windows=1, step_size=24)
    assert wide_cv["Demand"].isna().sum() == 10 and wide_cv["Temperature"].notna().all()
    wide.assign(Demand=wide["Demand"].mask(wide.index >= len(wide) - 10)).to_csv(tmp_path / "w.csv", index=False)
    assert fc.cross_validation(str(tmp_path / "w.csv"), n_windows=1)["Demand"].isna().sum() == 10  # a CSV too
    inner = wide.assign(Demand=wide["Demand"].mask(wide.index == len(wide) - 30))  # in the last look-back
    a = fc.cross_validation(inner, n_windows=1)
    b = fc.cross_validation(wide.assign(Demand=wide["Demand"].where(wide.index != len(wide) - 30,
                                                                    wide["Demand"].iloc[-31])), n_windows=1)
    np.testing.assert_allclose(a["Demand_hat"], b["Demand_hat"], rtol=1e-6)
    # predict cannot start from a look-back that ends in invented values
    with pytest.raises(ValueError, match=r"series \['Demand'\] are missing in the last rows .*the last 10"):
        fc.predict(holes)


def test_future_rows_with_missing_y_are_refused_not_forecast_from(fc, long, wide):
    future = pd.DataFrame([(u, d, np.nan) for u in ("Temperature", "Demand")
                           for d in pd.date_range(wide["date"].iloc[-1], periods=25, freq="30min")[1:]],
                          columns=["unique_id", "ds", "y"])
    with_future = pd.concat([long, future], ignore_index=True)
    with pytest.raises(ValueError, match="the last 24 rows .* have no value in any series.*dropna"):
        fc.predict(with_future)
    with pytest.raises(ValueError, match="have no value in any series"):
        fc.cross_validation(with_future, n_windows=1)
    # the fix the message gives restores the forecast from the last observation
    pd.testing.assert_frame_equal(fc.predict(with_future.dropna(subset=["y"])), fc.predict(long))


def test_missing_timestamps_are_refused_before_any_work(fc, long, wide):
    gappy = wide.drop(index=range(2990, 2994))  # two hours missing inside the last look-back
    with pytest.raises(ValueError, match=f"no row at {wide['date'].iloc[2990]} .*asfreq"):
        fc.predict(gappy)
    with pytest.raises(ValueError, match=f"no row at {wide['date'].iloc[2990]}"):
        fc.cross_validation(to_long(gappy, value_col="y"), n_windows=1)
    with pytest.raises(ValueError, match="missing timestamps"):
        Forecaster(h=24, input_size=48, model_args=TINY, max_epochs=1, accelerator="cpu").fit(gappy)
    # the fix the message names: reindex to the grid; the new rows are filled forward for the look-back
    regular = gappy.set_index("date").asfreq("30min").reset_index()
    assert len(fc.predict(regular)) == 24


def test_forecasts_follow_the_datas_frequency_or_refuse(fc, wide, tmp_path):
    # 15-minute data given to weights trained on half-hours: stamping the forecasts at 30 min was silently wrong
    quarter = wide.assign(date=pd.date_range(wide["date"].iloc[0], periods=len(wide), freq="15min"))
    with pytest.raises(ValueError, match="frequency is '15min' but the weights .* trained on '30min'"):
        fc.predict(quarter)
    with pytest.raises(ValueError, match="frequency is '15min'"):
        fc.cross_validation(quarter, n_windows=1)
    # a freq given that the timestamps do not follow is refused as well
    fc.save(tmp_path / "fc")
    with pytest.raises(ValueError, match="against the frequency 'h'"):
        Forecaster.load(str(tmp_path / "fc"), freq="h").predict(wide)
    pred, cv = fc.predict(wide), fc.cross_validation(wide, n_windows=1)
    assert (pred["date"].diff().dropna() == pd.Timedelta("30min")).all()
    assert (cv["date"].diff().dropna() == pd.Timedelta("30min")).all()


def test_dates_as_text_in_any_order_preserving_format(fc, long):
    us = long.assign(ds=long["ds"].dt.strftime("%m/%d/%Y %H:%M"))  # sorted by time, not as text (Dec 2011 first)
    assert not us["ds"].is_monotonic_increasing
    pd.testing.assert_frame_equal(fc.predict(us), fc.predict(long))


def test_load_a_folder_by_its_bare_name(fc, tmp_path, monkeypatch, wide):
    fc.save(tmp_path / "my_forecaster")
    monkeypatch.chdir(tmp_path)
    again = Forecaster.load("my_forecaster")
    assert again.model is not None and again.pretrained
    np.testing.assert_allclose(again.predict(wide)[["Demand"]], fc.predict(wide)[["Demand"]], rtol=1e-6)
    with pytest.raises(ValueError, match="no folder 'my_forecastr' .* names no weights"):
        Forecaster.load("my_forecastr")
    with pytest.raises(ValueError, match="names no weights"):
        Forecaster.load("gateformer")  # an architecture, not weights


def test_integer_ids_come_back_as_integers_and_integer_ds_is_refused(long):
    ids = long.assign(unique_id=long["unique_id"].map({"Temperature": 1, "Demand": 2}))
    fc = Forecaster(h=24, input_size=48, model_args=TINY, max_epochs=1, limit_train_batches=2,
                    accelerator="cpu").fit(ids)
    pred, cv = fc.predict(), fc.cross_validation(ids, n_windows=1)
    assert pred["unique_id"].dtype == ids["unique_id"].dtype and set(pred["unique_id"]) == {1, 2}
    assert cv["unique_id"].dtype == ids["unique_id"].dtype
    assert len(pred.merge(ids[["unique_id"]].drop_duplicates(), on="unique_id")) == 48  # merges back
    # integer steps would be read as nanoseconds since 1970: refused with the conversion to make
    steps = long.assign(ds=long.groupby("unique_id").cumcount())
    with pytest.raises(ValueError, match="'ds' holds numbers .*pd.to_timedelta"):
        fc.predict(steps)
    with pytest.raises(ValueError, match="freq=1: give a pandas frequency string"):
        Forecaster(freq=1)
    with pytest.raises(ValueError, match="same text"):
        to_wide(pd.concat([ids, long.assign(unique_id=long["unique_id"].map({"Temperature": "1", "Demand": "2"}))]))


def test_bad_window_arguments_are_refused_naming_them(fc, long):
    # 0 silently meant h, a negative step failed deep inside the model, n_windows=0 blamed the row count
    for kwargs, name in [({"step_size": 0}, "step_size=0"), ({"step_size": -50}, "step_size=-50"),
                         ({"step_size": 2.5}, "step_size=2.5"), ({"n_windows": 0}, "n_windows=0"),
                         ({"n_windows": -1}, "n_windows=-1"), ({"n_windows": 1.5}, "n_windows=1.5")]:
        with pytest.raises(ValueError, match=f"^{name} is invalid: give an integer >= 1"):
            fc.cross_validation(long, **kwargs)
    with pytest.raises(ValueError, match="step_size=0 .*unset: h=24"):
        fc.cross_validation("no_such.csv", step_size=0)  # checked before the data is read
    for h in (0, -24, 2.5, "24"):
        with pytest.raises(ValueError, match=f"^h={h!r} is invalid: give an integer >= 1"):
            Forecaster(h=h)
    with pytest.raises(ValueError, match="^input_size=0 is invalid"):
        Forecaster(input_size=0)
    assert Forecaster(h=np.int64(24), input_size=48.0).h == 24  # integral values of other types pass


def test_each_call_returns_the_layout_of_its_own_data(fc, long, wide):
    # fitted on the long layout: a wide predict must not turn a later predict() (the training data) wide
    assert list(fc.predict(wide.iloc[:2000]).columns) == ["date", "Temperature", "Demand"]
    pred = fc.predict()
    assert list(pred.columns) == ["unique_id", "ds", MODEL_COL]
    pd.testing.assert_frame_equal(pred, fc.predict(long))
    assert list(fc.cross_validation(wide, n_windows=1).columns)[:2] == ["date", "cutoff"]
    assert list(fc.cross_validation(n_windows=1).columns) == ["unique_id", "ds", "cutoff", "y", MODEL_COL]


def test_exogenous_columns_are_dropped_with_a_warning(fc, long):
    exog = long.assign(holiday=0, price=np.linspace(0.0, 1.0, len(long)))
    with pytest.warns(UserWarning, match=r"columns \['holiday', 'price'\] are ignored: Gateformer uses no exogenous"):
        pred = fc.predict(exog)
    pd.testing.assert_frame_equal(pred, fc.predict(long))


def test_cross_validation_on_the_fitted_rows_says_it_is_optimistic(fc, long):
    # fc was fitted on all of `long`: its last val_size rows chose the epoch, and these windows lie in them
    with pytest.warns(UserWarning, match=r"rows that fit\(\) validated on .*optimistic.*fit a new Forecaster on the "
                                         "data up to the first cutoff"):
        fc.cross_validation(long, n_windows=2, step_size=24)
    # windows after the training data (the honest set-up: fit on the rows up to the first cutoff) do not warn
    later = to_long(load_frame("vic_elec").iloc[:3048].reset_index(drop=True), value_col="y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cv = fc.cross_validation(later, n_windows=2, step_size=24)
    assert cv["cutoff"].min() == long["ds"].max()


def test_a_long_csv_path_is_read_as_long(fc, long, tmp_path):
    # a path used to be read as a wide TSLib CSV only: a long file met "no 'date' column ... date_col="
    long.to_csv(tmp_path / "long.csv", index=False)
    pred = fc.predict(str(tmp_path / "long.csv"))
    pd.testing.assert_frame_equal(pred, fc.predict(long))
    cv = fc.cross_validation(tmp_path / "long.csv", n_windows=1)
    assert list(cv.columns) == ["unique_id", "ds", "cutoff", "y", MODEL_COL]


def test_a_long_frame_with_other_names_gets_the_arguments_to_pass(fc, long, tmp_path):
    other = long.rename(columns={"unique_id": "series", "ds": "timestamp", "y": "value"})
    with pytest.raises(ValueError, match=r"long table .*Forecaster\(\.\.\., id_col='series', time_col='timestamp', "
                                         r"target_col='value'\)"):
        fc.predict(other)
    fc.save(tmp_path / "fc")  # the advice, followed
    again = Forecaster.load(str(tmp_path / "fc"), id_col="series", time_col="timestamp", target_col="value")
    np.testing.assert_allclose(again.predict(other)[MODEL_COL], fc.predict(long)[MODEL_COL], rtol=1e-6)


def test_series_with_other_start_or_end_get_the_common_range(fc, long, wide):
    # "align them (e.g. resample)" was wrong: resampling changes the step, not where a series starts or ends
    late = long.drop(index=long.index[long.unique_id == "Temperature"][:100])
    start, end = wide["date"].iloc[100], wide["date"].iloc[-1]
    with pytest.raises(ValueError, match=rf"Resampling does not align them: \['Temperature'\] start later: keep the "
                                         rf"rows from {start} to {end}.*fill_gaps") as err:
        fc.predict(late)
    assert "e.g. resample" not in str(err.value)
    common = late[late["ds"].between(start, end)]  # the advice, followed
    pd.testing.assert_frame_equal(fc.predict(common), fc.predict(long[long["ds"] >= start]))
    apart = pd.concat([long[(long.unique_id == "Demand") & (long.ds < wide["date"].iloc[1000])],
                       long[(long.unique_id == "Temperature") & (long.ds >= wide["date"].iloc[1000])]])
    with pytest.raises(ValueError, match="share no time range .*separate Forecasters"):
        to_wide(apart)


def test_a_cycle_on_weekly_data_is_refused_in_forecaster_arguments(tmp_path):
    # weekly means of vic_elec: pandas infers 'W-SUN', a calendar step that a residual cycle cannot phase; the
    # refusal used to tell Forecaster users to "pass the data module freq=", an argument they do not have
    weekly = load_frame("vic_elec").set_index("date").resample("W-SUN").mean().iloc[1:-1].reset_index()
    args = dict(h=4, input_size=16, model_args={**TINY, "cycle_len": 4}, max_epochs=1, val_size=0.3,
                accelerator="cpu")
    with pytest.raises(ValueError, match=r"frequency 'W-SUN' is a calendar step .*pass Forecaster\(\.\.\., "
                                         r"freq='7D'\).*model_args=\{\.\.\., 'cycle_len': 0\}") as err:
        Forecaster(**args).fit(weekly)
    assert "data module" not in str(err.value)
    fc = Forecaster(freq="7D", **args).fit(weekly)  # the advice, followed
    pred = fc.predict()
    assert (pred["date"].diff().dropna() == pd.Timedelta("7D")).all()
    assert pred["date"].iloc[0] == weekly["date"].iloc[-1] + pd.Timedelta("7D")
    # saved and loaded, its weekly data need no freq: inferred 'W-SUN' is the weights' '7D'
    fc.save(tmp_path / "weekly")
    pd.testing.assert_frame_equal(Forecaster.load(str(tmp_path / "weekly")).predict(weekly), pred)
    with pytest.raises(ValueError, match=r"'MS' \(months, business days, \.\.\.\) has no fixed duration; drop the "
                                         r"cycle"):
        Forecaster(**args).fit(load_frame("vic_elec").set_index("date").resample("MS").mean().reset_index())
