"""Forecasting task: a real (tiny) fit on vic_elec, per-sample metrics, the evaluator, the golden shipped weights."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from datafiles import need

import gatedzoo
from gatedzoo import cli
from gatedzoo.data.timeseries import ETTH1, TimeSeriesDataModule, WindowDataset, load_frame, time_steps
from gatedzoo.forecast import to_long
from gatedzoo.tasks import EVALUATORS, SaveZooWeights
from gatedzoo.tasks.base import TRAIN_LOSS, VAL_LOSS, lr_factor
from gatedzoo.tasks.forecasting import TEST_MSE, VAL_MAE, VAL_MSE, Forecasting, check_data_fits, evaluate

# `gatedzoo eval gateformer.etth1_<H> --json` on CPU (2026-11-24, torch 2.15 CPU); the GPU run that trained the
# weights (recipes etth1_<H>_cycle_ema, seed 2021) measured the same test MSE to 1e-8 (docs/models/gateformer.md)
GOLDEN_TEST_MSE = {96: 0.3812823075536674, 192: 0.4258004498279264, 336: 0.45771851062790214,
                   720: 0.4753065482397387}
TINY = dict(d_model=16, d_ff=32, n_heads=2, e_layers=1)


@pytest.fixture(scope="module")
def vic_csv(tmp_path_factory):
    """The first 4000 half-hours of vic_elec as a user CSV (date, Temperature, Demand)."""
    path = tmp_path_factory.mktemp("vic") / "vic.csv"
    load_frame("vic_elec").iloc[:4000].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(vic_csv, tmp_path_factory):
    """A Gateformer trained for a few real steps through Lightning, with its zoo folder and test metrics."""
    out = tmp_path_factory.mktemp("fit")
    L.seed_everything(0, verbose=False)
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=96, pred_len=24, batch_size=16)
    task = Forecasting("gateformer", model_args={"pred_len": 24, "n_vars": 2, **TINY}, lr=3e-3, test_after_fit=True)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=20, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
                        callbacks=[SaveZooWeights(str(out / "zoo"))])
    trainer.fit(task, datamodule=dm)
    return task, dm, out


def test_fit_writes_test_metrics_and_zoo_config(fitted):
    task, dm, out = fitted
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved[TEST_MSE] == pytest.approx(task.test_metrics[TEST_MSE])
    assert saved["samples"] == len(dm.sets["test"])
    # a few steps of training must beat the "repeat the mean" forecast of a standardised series (MSE about 1)
    assert task.test_metrics[TEST_MSE] < 0.9
    cfg = json.loads((out / "zoo" / "config.json").read_text())
    assert cfg["variables"] == ["Temperature", "Demand"] and cfg["lookback"] == 96 and cfg["horizon"] == 24
    assert cfg["freq"] == "30min" and cfg["metrics"][TEST_MSE] == pytest.approx(task.test_metrics[TEST_MSE])
    assert cfg["scaler"]["mean"] == pytest.approx(list(dm.mean))
    # the validation metrics stored are those of the weights kept, not of the last epoch
    assert cfg["metrics"]["val/mse"] == pytest.approx(evaluate(task.model, dm.val_dataloader())["mse"], rel=1e-6)


def test_evaluator_reproduces_the_fit_from_the_saved_folder(fitted, vic_csv):
    task, _, out = fitted
    model = gatedzoo.create_model(str(out / "zoo"))
    metrics = EVALUATORS["forecasting"](model, data=str(vic_csv), split="test")
    assert metrics["mse"] == pytest.approx(task.test_metrics[TEST_MSE], rel=1e-6)


def test_metrics_average_per_sample_whatever_the_batch(fitted):
    task, dm, _ = fitted
    sets = dm.sets["test"]
    # both sizes leave a short last batch (777 test windows = 77 x 10 + 7 = 500 + 277): averaging per batch instead
    # of per sample moves the MSE by 2.6e-3 (batch 10) and 8 % (batch 500) relative here, while float32 outputs
    # move by ~1e-9 with the batch size (BLAS blocking), so rel=1e-6 catches the one and not the other
    a = evaluate(task.model, torch.utils.data.DataLoader(sets, batch_size=10))
    b = evaluate(task.model, torch.utils.data.DataLoader(sets, batch_size=500))
    assert a["samples"] == b["samples"] == len(sets) and len(sets) % 10 and len(sets) % 500
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-6) and a["mae"] == pytest.approx(b["mae"], rel=1e-6)


def test_mismatches_fail_before_training(fitted, vic_csv, tmp_path):
    _, dm, out = fitted
    wrong = gatedzoo.create_model("gateformer", n_vars=3, pred_len=24, **TINY)
    with pytest.raises(ValueError, match="n_vars=2 but the model was built with n_vars=3"):
        check_data_fits(wrong, dm)
    model = gatedzoo.create_model(str(out / "zoo"))
    other = tmp_path / "other.csv"
    load_frame(str(vic_csv)).rename(columns={"Demand": "Load"}).to_csv(other, index=False)
    with pytest.raises(ValueError, match="the weights expect 2"):
        EVALUATORS["forecasting"](model, data=str(other), split="test")
    with pytest.raises(ValueError, match="split='holdout'"):
        EVALUATORS["forecasting"](model, data=str(vic_csv), split="holdout")


def _vic_task(loss, seed=0, **kwargs):
    """A tiny Gateformer task for vic_elec (2 variables, horizon 24) without dropout, so its forward is repeatable."""
    torch.manual_seed(seed)
    return Forecasting("gateformer", model_args={"pred_len": 24, "n_vars": 2, "dropout": 0.0, **TINY}, lr=3e-3,
                       loss=loss, **kwargs)


# training_step is called here outside a Trainer on purpose (one batch, fixed weights); Lightning then warns that
# self.log has no trainer to log to, which is expected
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")
def test_training_loss_follows_the_loss_argument(vic_csv):
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=96, pred_len=24, batch_size=32)
    dm.setup("fit")
    x, y, _ = next(iter(dm.train_dataloader()))
    expected = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}
    got = {}
    for loss, fn in expected.items():
        task = _vic_task(loss)  # same seed: the same initial weights for every loss
        with torch.no_grad():
            got[loss] = float(task.training_step((x, y), 0))
            assert got[loss] == pytest.approx(float(fn(task.model(x), y)), rel=1e-6)
    # the three objectives really differ on this batch (an untrained model's errors are of order 1)
    assert len({round(v, 6) for v in got.values()}) == 3
    # Huber limits, independent of F.huber_loss: a huge delta gives half the MSE, a tiny one delta times the MAE
    with torch.no_grad():
        big = float(_vic_task("huber", huber_delta=1e6).training_step((x, y), 0))
        small = float(_vic_task("huber", huber_delta=1e-4).training_step((x, y), 0))
    assert big == pytest.approx(got["mse"] / 2, rel=1e-5)
    assert small == pytest.approx(1e-4 * got["mae"], rel=1e-3)


def test_bad_loss_settings_fail_at_construction():
    with pytest.raises(ValueError, match="loss='l2'; use one of 'mse', 'mae', 'huber'"):
        Forecasting("gateformer", model_args={"pred_len": 24, "n_vars": 2, **TINY}, loss="l2")
    with pytest.raises(ValueError, match="huber_delta=0.0"):
        Forecasting("gateformer", model_args={"pred_len": 24, "n_vars": 2, **TINY}, loss="huber", huber_delta=0.0)


class _StepRecorder(L.Callback):
    """Per training step: F.l1_loss of the batch under the weights before the step, and the value the step returned."""

    def __init__(self):
        self.l1, self.returned = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.l1.append(float(F.l1_loss(pl_module.model(batch[0]), batch[1])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.returned.append(float(outputs["loss"]))


def test_mae_training_still_selects_on_validation_mse(vic_csv, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=96, pred_len=24, batch_size=16)
    task = _vic_task("mae")
    rec = _StepRecorder()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path), callbacks=[rec])
    trainer.fit(task, datamodule=dm)
    # every optimised (and logged) value was the L1 loss of its batch
    assert len(rec.returned) == 4 and rec.returned == pytest.approx(rec.l1, rel=1e-5)
    m = trainer.callback_metrics
    assert float(m[TRAIN_LOSS]) == pytest.approx(rec.returned[-1], rel=1e-6)
    # the monitored validation loss is the full-split MSE of the trained weights, not the training objective
    full = evaluate(task.model, dm.val_dataloader())
    assert float(m[VAL_LOSS]) == pytest.approx(full["mse"], rel=1e-5) == float(m[VAL_MSE])
    assert float(m[VAL_MAE]) == pytest.approx(full["mae"], rel=1e-5)
    assert abs(full["mse"] - full["mae"]) > 1e-3


class _EpochLr(L.Callback):
    """The optimiser's learning rate at the start of every training epoch and at every step."""

    def __init__(self):
        self.epoch, self.step = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_halving_schedule_is_tslib_type1(vic_csv, tmp_path):
    """TSLib lradj=type1 sets lr * 0.5 ** (k - 1) after epoch k: epochs 1 and 2 at the peak, then halving."""
    L.seed_everything(0, verbose=False)
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=96, pred_len=24, batch_size=16)
    task = _vic_task("mse", schedule="halving")
    rec = _EpochLr()
    trainer = L.Trainer(max_epochs=4, limit_train_batches=3, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path), callbacks=[rec])
    trainer.fit(task, datamodule=dm)
    assert rec.epoch == pytest.approx([3e-3, 3e-3, 1.5e-3, 0.75e-3])
    # constant within an epoch: the change happens at the epoch boundary, as TSLib's per-epoch call
    assert rec.step == pytest.approx([lr for lr in rec.epoch for _ in range(3)])
    assert [lr_factor(s, "halving", 10, 0, 60, 0.01) for s in (0, 9, 10, 19, 20, 29, 30, 59)] == \
        [1, 1, 1, 1, 0.5, 0.5, 0.25, 0.0625]


@pytest.mark.parametrize("horizon", [96, 720])
def test_golden_shipped_weights(horizon, capsys):
    need(ETTH1)
    assert cli.main(["eval", f"gateformer.etth1_{horizon}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["windows"] == 2881 - horizon
    assert out["metrics"]["mse"] == pytest.approx(GOLDEN_TEST_MSE[horizon], rel=1e-4)


def test_a_residual_cycle_trains_and_evaluates_at_the_timestamps_phase(vic_csv, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=96, pred_len=24, batch_size=16)
    task = Forecasting("gateformer", model_args={"pred_len": 24, "n_vars": 2, "cycle_len": 48, **TINY}, lr=3e-3,
                       test_after_fit=True)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=20, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[SaveZooWeights(str(tmp_path / "zoo"))])
    trainer.fit(task, datamodule=dm)
    assert task.model.cycle.profile.abs().sum() > 0  # the daily profile was learned
    model = gatedzoo.create_model(str(tmp_path / "zoo"))
    assert model.cycle_len == 48
    # the evaluator re-reads the CSV, takes each window's phase from its timestamps and reproduces the fit's figure
    metrics = EVALUATORS["forecasting"](model, data=str(vic_csv), split="test")
    assert metrics["mse"] == pytest.approx(task.test_metrics[TEST_MSE], rel=1e-6)
    # a file that starts 7 rows later (a different row index for every timestamp) gives every window the same phase
    shifted = tmp_path / "shifted.csv"
    load_frame(str(vic_csv)).iloc[7:].to_csv(shifted, index=False)
    b = EVALUATORS["forecasting"](model, data=str(shifted), split="all")
    cfg, df = model.zoo_config, load_frame(str(vic_csv))
    values = (df[cfg["variables"]].to_numpy() - np.asarray(cfg["scaler"]["mean"])) / np.asarray(cfg["scaler"]["std"])

    def windows_from_7(steps):
        ds = torch.utils.data.Subset(WindowDataset(values, 96, 24, steps), range(7, len(values) - 96 - 24 + 1))
        return evaluate(model, torch.utils.data.DataLoader(ds, batch_size=256))

    same = windows_from_7(time_steps(df["date"], "30min"))
    assert b["windows"] == same["samples"] and b["mse"] == pytest.approx(same["mse"], rel=1e-6)
    # phases read from row positions instead would differ by 7 half-hours, and so would the forecasts
    assert abs(windows_from_7(np.arange(len(df)) - 7)["mse"] - b["mse"]) > 1e-6
    # irregular timestamps have no fixed-length step, so a cycle model refuses them before any training
    odd = load_frame(str(vic_csv))
    odd["date"] = odd["date"] + pd.to_timedelta((np.arange(len(odd)) % 3) * 7, unit="min")
    dm_odd = TimeSeriesDataModule.from_frame(odd, seq_len=96, pred_len=24)
    dm_odd.setup()
    assert dm_odd.steps is None
    with pytest.raises(ValueError, match="residual cycle .* not a fixed duration"):
        check_data_fits(task.model, dm_odd)


def test_eval_of_a_users_file_splits_it_by_ratio_and_bad_input_is_one_line(tmp_path, capsys):
    from gatedzoo.data.timeseries import tslib_borders

    need(ETTH1)
    path = tmp_path / "short.csv"
    load_frame("etth1").iloc[:5000].to_csv(path, index=False)  # shorter than ETTh1's 20 TSLib months
    assert cli.main(["eval", "gateformer.etth1_96", "--data", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    starts, ends = tslib_borders(5000, 96, "ratio", (0.7, 0.1, 0.2))
    assert out["metrics"]["windows"] == ends[2] - starts[2] - 96 - 96 + 1
    load_frame("etth1").iloc[:5000].drop(columns="OT").to_csv(path, index=False)
    assert cli.main(["eval", "gateformer.etth1_96", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedzoo eval: the data has 6 variables") and "Traceback" not in err


def test_a_look_back_other_than_the_weights_names_theirs_and_the_fix(vic_csv, tmp_path, monkeypatch, capsys):
    # it was "flatten_proj.weight is [64, 832] in the checkpoint but [64, 1600]", under a jsonargparse dump
    fix = r"the weights gateformer.etth1_96 look back 96 steps.*--data.init_args.seq_len 96.*pretrained false"
    for seq in (192, "192"):  # a recipe value, a command-line override
        with pytest.raises(ValueError, match=r"model_args.seq_len=192, but " + fix):
            Forecasting("gateformer.etth1_96", model_args={"n_vars": 2, "seq_len": seq}, pretrained=True)
    # the data's look-back against loaded weights: change the data's, not the model's (which cannot load)
    model = gatedzoo.create_model("gateformer.etth1_96", n_vars=2)
    dm = TimeSeriesDataModule(str(vic_csv), seq_len=192, pred_len=96)
    dm.setup()
    with pytest.raises(ValueError, match=r"seq_len=192 but the weights gateformer.etth1_96 look back 96 steps.*"
                                         r"set the data's seq_len to 96"):
        check_data_fits(model, dm, weights="gateformer.etth1_96")
    monkeypatch.chdir(tmp_path)
    recipe = str(Path(__file__).parents[2] / "recipes" / "gateformer" / "finetune_csv.yaml")
    assert cli.main(["fit", "-c", recipe, "--data.init_args.dataset", str(vic_csv),
                     "--model.init_args.model_args.seq_len", "192"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedzoo fit: model_args.seq_len=192, but the weights gateformer.etth1_96 look back 96")
    assert "Union subtypes" not in err and "Traceback" not in err
    # a data error found at setup, before any training, is one line too
    long = tmp_path / "long.csv"
    to_long(load_frame(str(vic_csv)), value_col="y").to_csv(long, index=False)
    assert cli.main(["fit", "-c", recipe, "--data.init_args.dataset", str(long)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gatedzoo fit: {long}: no 'date' column") and "Traceback" not in err
    assert not (tmp_path / "runs" / "gateformer" / "finetune_csv" / "zoo").exists()


def test_a_cycle_on_weekly_data_names_the_data_modules_fixed_step():
    model = gatedzoo.create_model("gateformer", n_vars=2, pred_len=4, seq_len=16, cycle_len=4, **TINY)
    weekly = load_frame("vic_elec").set_index("date").resample("W-SUN").mean().iloc[1:-1].reset_index()
    dm = TimeSeriesDataModule.from_frame(weekly, seq_len=16, pred_len=4)
    dm.setup()
    assert dm.freq == "W-SUN" and dm.steps is None
    with pytest.raises(ValueError, match=r"not a fixed duration .*TimeSeriesDataModule\(freq='7D'\) \(command line: "
                                         r"--data.init_args.freq 7D\).*--model.init_args.model_args.cycle_len 0"):
        check_data_fits(model, dm)
    fixed = TimeSeriesDataModule.from_frame(weekly, seq_len=16, pred_len=4, freq="7D")  # the advice, followed
    fixed.setup()
    check_data_fits(model, fixed)
