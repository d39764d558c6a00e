"""The user layer: fit / predict / cross-validate / plot / save on a long (Nixtla-style) and a wide DataFrame."""

import numpy as np
import pandas as pd
import pytest

from gatedzoo.data.timeseries import load_frame
from gatedzoo.forecast import MODEL_COL, Forecaster, to_long, to_wide

TINY = dict(d_model=16, d_ff=32, n_heads=2, e_layers=1)


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
