"""Forecasting: MSE (or MAE / Huber) training on normalised windows, per-sample MSE / MAE evaluation, ``gatedzoo eval``.

Batches are ``(x [B, seq_len, N], y [B, pred_len, N])``, with ``step [B]`` (int64, the first look-back row's time
index) third when the data have a regular frequency, on the scale of the training split's standard scaler (see
:class:`gatedzoo.data.timeseries.TimeSeriesDataModule`); metrics are reported on that scale, as the
Time-Series-Library protocol does, averaged over samples (every window counts once, whatever the batch size).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    TEST_LOSS,
    TRAIN_LOSS,
    VAL_LOSS,
    SaveZooWeights,
    ZooTask,
    full_model_state,
    is_sharded,
    register_evaluator,
    unsharded_copy,
)

log = logging.getLogger("gatedzoo")

VAL_MSE, VAL_MAE = "val/mse", "val/mae"
TEST_MSE, TEST_MAE = "test/mse", "test/mae"


def predict_windows(model: nn.Module, x: torch.Tensor, step: torch.Tensor | None = None) -> torch.Tensor:
    """``model(x)``, or ``model(x, step)`` for a model that reads time (``model.reads_time``, e.g. a residual cycle).

    Raises:
        ValueError: the model reads time and ``step`` is `None` (data without a fixed-length frequency).
    """
    if not getattr(model, "reads_time", False):
        return model(x)
    if step is None:
        raise ValueError(
            "the model reads each window's time step (a residual cycle, cycle_len > 0) but the data carry none: their "
            "'date' has no regular fixed-length frequency; give the data one (Forecaster(freq=...), "
            "TimeSeriesDataModule(freq=...): 'h', '30min', 'D', and '7D' for weekly data) or use cycle_len=0."
        )
    return model(x, step.to(x.device))


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` or ``(x, y, step)`` -> ``(x, y, step or None)``."""
    x, y, *rest = batch
    return x, y, (rest[0] if rest else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device | None = None) -> dict[str, float]:
    """MSE and MAE of ``model`` over every window of ``loader``, averaged per element in float64.

    Returns:
        ``{"mse": float, "mae": float, "samples": int}``.
    """
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    se = ae = 0.0
    count = samples = 0
    for batch in loader:
        x, y, step = split_batch(batch)
        pred = predict_windows(model, x.to(device), step).double()
        y = y.to(device).double()
        se += float(((pred - y) ** 2).sum())
        ae += float((pred - y).abs().sum())
        count += y.numel()
        samples += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no windows; the split is shorter than seq_len + pred_len.")
    return {"mse": se / count, "mae": ae / count, "samples": samples}


def weights_source(arch: str, pretrained: bool = False) -> str | None:
    """``arch`` when it names weights that :func:`gatedzoo.create_model` loads (``arch.tag``, a folder, ``local-dir:``,
    ``hf-hub:``, or a bare ``arch`` with ``pretrained``), else `None` (a model built from scratch)."""
    named = ("." in arch or os.sep in arch or arch.startswith(("local-dir:", "hf-hub:"))
             or Path(arch).expanduser().is_dir())
    return arch if named or pretrained else None


def check_data_fits(model: nn.Module, dm, weights: str | None = None) -> None:
    """Raise before training when the data's look-back, horizon or variable count differ from the model's, or the
    model has a residual cycle and the data no fixed-length step.

    ``weights`` names the weights the model was loaded from (`None`: built from scratch); their look-back cannot
    change, so the advice for a ``seq_len`` mismatch is then to change the data's.
    """
    for name, want, have in (("seq_len", getattr(model, "seq_len", None), dm.seq_len),
                             ("pred_len", getattr(model, "pred_len", None), dm.pred_len),
                             ("n_vars", getattr(model, "n_vars", None), getattr(dm, "n_vars", None))):
        if want is None or have is None or want == have:
            continue
        if name == "seq_len" and weights is not None:
            raise ValueError(
                f"the data gives seq_len={have} but the weights {weights} look back {want} steps, and a look-back is "
                f"part of the weights (only the horizon, pred_len, adapts): set the data's seq_len to {want} "
                f"(data.init_args.seq_len: {want}; command line --data.init_args.seq_len {want}), or train a "
                f"{have}-step look-back from scratch (model.init_args: arch: {model.zoo_config.get('architecture')}, "
                f"pretrained: false, model_args.seq_len: {have})."
            )
        raise ValueError(
            f"the data gives {name}={have} but the model was built with {name}={want}; set "
            f"model.init_args.model_args.{name}: {have}"
            + (" (a different pred_len re-initialises the head of the loaded weights)." if weights else ".")
        )
    if getattr(model, "reads_time", False) and getattr(dm, "steps", 0) is None:
        from gatedzoo.data.timeseries import fixed_frequency

        fixed = fixed_frequency(dm.freq)
        if fixed:
            fix = (f"give the data module the same rows as steps of fixed length, TimeSeriesDataModule(freq={fixed!r}) "
                   f"(command line: --data.init_args.freq {fixed}), or ")
        elif not dm.freq:
            fix = ("resample 'date' to a regular grid and give its frequency, TimeSeriesDataModule(freq='h') "
                   "(command line: --data.init_args.freq h; 'h', '30min', 'D', ...), or ")
        else:
            fix = ""
        scratch = (f", trained from scratch (arch: {model.zoo_config.get('architecture')}, pretrained: false) since "
                   f"the weights {weights} have one" if weights else "")
        raise ValueError(
            f"the model has a residual cycle (cycle_len={model.cycle_len}) and reads each window's time step, but "
            f"the data's frequency {dm.freq!r} is not a fixed duration ('date' is irregular or calendar-based: "
            f"months, business days, weeks anchored on a weekday); {fix}use a model without a cycle, "
            f"model_args.cycle_len: 0 (command line: --model.init_args.model_args.cycle_len 0){scratch}."
        )


# training objectives of Forecasting(loss=...); evaluation is always MSE and MAE
LOSSES = ("mse", "mae", "huber")


class Forecasting(ZooTask):
    """Trains ``model(x [B, L, N]) -> [B, H, N]``; logs ``val/mse``, ``val/mae`` (``val/loss`` = ``val/mse``), test too.

    TSLib defaults: Adam (``weight_decay=0``, so AdamW equals Adam), learning rate halved every epoch from the third
    (``schedule="halving"``, TSLib ``lradj=type1``), MSE training loss.

    Only the training objective follows ``loss``: validation and test always report MSE and MAE, and ``val/loss``
    (what early stopping and checkpoint selection monitor) is always the validation **MSE**, so a run trained with
    MAE or Huber is still selected on the protocol's metric.

    Args:
        loss (str): training loss on the normalised scale, averaged over every element of the batch
            (``[B, H, N]``): ``"mse"`` (``F.mse_loss``), ``"mae"`` (``F.l1_loss``) or ``"huber"``
            (``F.huber_loss`` with ``delta=huber_delta``: quadratic ``0.5 * e**2`` for ``|e| <= delta``, linear
            beyond). Logged as ``train/loss``. Default: ``"mse"``.
        huber_delta (float): the Huber threshold, in units of the training split's standard deviation (the data
            are standardised); must be positive. Read only when ``loss="huber"``. Default: ``1.0``.
        test_after_fit (bool): after fitting, evaluate the best checkpoint on the test split, print the metrics,
            write ``test_metrics.json`` into the log folder and add them (with the validation metrics of the kept
            checkpoint) to the zoo weights of any :class:`~gatedzoo.tasks.SaveZooWeights` callback.
            Default: `False`.
        **kwargs: see :class:`~gatedzoo.tasks.ZooTask` (``arch``, ``model_args``, ``pretrained``, ``lr``, ...).

    Raises:
        ValueError: ``loss`` is not one of ``"mse"``, ``"mae"``, ``"huber"``, or ``loss="huber"`` with
            ``huber_delta <= 0``.
    """

    def __init__(self, *args, loss: str = "mse", huber_delta: float = 1.0, test_after_fit: bool = False,
                 weight_decay: float = 0.0, schedule: str = "halving", **kwargs):
        # checked before the model is built: a typo in a recipe fails at once, not after the weights are created
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; use one of {', '.join(map(repr, LOSSES))}.")
        if loss == "huber" and not huber_delta > 0:
            raise ValueError(f"huber_delta={huber_delta!r}; the Huber threshold must be positive.")
        try:
            super().__init__(*args, weight_decay=weight_decay, schedule=schedule, **kwargs)
        except ValueError as err:
            # a seq_len override of loaded weights fails deep in the loader, naming a projection's shape
            self._explain_lookback(err)
            raise
        self.save_hyperparameters()
        self.test_metrics: dict[str, float] = {}

    def _explain_lookback(self, err: ValueError) -> None:
        """Raise a clear error from ``err`` when it comes from a ``model_args.seq_len`` that differs from the loaded
        weights' look-back; return otherwise (``ZooTask`` recorded the arguments before building the model)."""
        import yaml

        from gatedzoo.zoo.pretrained import pretrained_config

        hp = self.hparams
        seq = (hp.get("model_args") or {}).get("seq_len")
        weights = weights_source(str(hp.get("arch", "")), bool(hp.get("pretrained")))
        if seq is None or weights is None:
            return
        seq = yaml.safe_load(seq) if isinstance(seq, str) else seq
        try:
            cfg = pretrained_config(weights)
        except (KeyError, ValueError, FileNotFoundError):
            return
        lookback = cfg.get("lookback") or cfg.get("model_args", {}).get("seq_len")
        if lookback is None or seq == lookback:
            return
        arch = cfg.get("architecture", "gateformer")
        raise ValueError(
            f"model_args.seq_len={seq}, but the weights {weights} look back {lookback} steps, and a look-back is part "
            f"of the weights (only the horizon, pred_len, adapts when they load). Keep their look-back: drop the "
            f"seq_len override and give the data seq_len: {lookback} (command line: --data.init_args.seq_len "
            f"{lookback}); or train a {seq}-step look-back from scratch: arch: {arch}, pretrained: false (command "
            f"line: --model.init_args.arch {arch} --model.init_args.pretrained false)."
        ) from err

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "seq_len"):
            dm.setup("fit")
            check_data_fits(self.model, dm, weights_source(self.hparams.arch, self.hparams.pretrained))
        super().on_fit_start()

    def training_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective chosen by ``loss``: a scalar, the mean over every element of ``pred - y``."""
        if self.hparams.loss == "mae":
            return F.l1_loss(pred, y)
        if self.hparams.loss == "huber":
            return F.huber_loss(pred, y, delta=float(self.hparams.huber_delta))
        return F.mse_loss(pred, y)

    def training_step(self, batch, batch_idx):
        x, y, step = split_batch(batch)
        loss = self.training_loss(predict_windows(self.model, x, step), y)
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, names):
        x, y, step = split_batch(batch)
        pred = predict_windows(self.model, x, step)
        mse, mae = F.mse_loss(pred, y), F.l1_loss(pred, y)
        # weighted by batch size, so the epoch value is the per-sample average even with a short last batch
        for name, value in zip(names, (mse, mse, mae)):
            self.log(name, value, batch_size=len(y), prog_bar=name.endswith("mse"), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, (VAL_LOSS, VAL_MSE, VAL_MAE))

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, (TEST_LOSS, TEST_MSE, TEST_MAE))

    def predict_step(self, batch, batch_idx):
        if not isinstance(batch, (tuple, list)):
            return predict_windows(self.model, batch)
        return predict_windows(self.model, batch[0], batch[2] if len(batch) > 2 else None)

    def on_fit_end(self) -> None:
        if not self.hparams.test_after_fit or self.trainer.datamodule is None:
            return
        model = self.model
        if is_sharded(self.trainer):
            # FSDP: no rank holds the whole model; rank 0 evaluates a plain copy with the gathered weights
            state = full_model_state(self.trainer, self, best=True)
            if not self.trainer.is_global_zero:
                return
            model = unsharded_copy(self.model, state).to(self.device)
        else:
            ckpt = self.trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_path", "") and Path(ckpt.best_model_path).is_file():
                state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
                self.load_state_dict(state)
        m = evaluate(model, self.trainer.datamodule.test_dataloader(), self.device)
        # the validation metrics of the weights actually kept (callback_metrics hold the last epoch's)
        v = evaluate(model, self.trainer.datamodule.val_dataloader(), self.device)
        self.test_metrics = {TEST_MSE: m["mse"], TEST_MAE: m["mae"], VAL_MSE: v["mse"], VAL_MAE: v["mae"],
                             VAL_LOSS: v["mse"]}
        if not self.trainer.is_global_zero:
            return
        print(f"test (normalised scale, {m['samples']} windows): mse={m['mse']:.4f} mae={m['mae']:.4f}")
        folder = Path(self.trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test_metrics.json").write_text(json.dumps({**self.test_metrics, "samples": m["samples"]}) + "\n")
        for cb in self.trainer.callbacks:
            if isinstance(cb, SaveZooWeights):
                out = Path(cb.dirpath or folder / "zoo")
                cfg_path = out / "config.json"
                old = json.loads(cfg_path.read_text()).get("metrics", {}) if cfg_path.exists() else {}
                rest = {k: val for k, val in old.items() if k not in self.test_metrics}  # e.g. the last train loss
                model.save_pretrained(out, metrics={**self.test_metrics, **rest}, **cb.extra)


@register_evaluator("forecasting")
def evaluate_forecaster(model: nn.Module, data: str | None = None, split: str = "test",
                        batch_size: int = 256) -> dict[str, float]:
    """``gatedzoo eval`` for forecasting weights: MSE / MAE on the normalised scale (the weights' own scaler).

    ``data`` is a CSV in the weights' format (``date`` + the same variables); default: the weights' training
    dataset, split as it was for training (TSLib borders). A ``data`` file is split chronologically by the weights'
    ratios when they have a test part, else 70 / 10 / 20 (TSLib's ratio protocol): fixed month borders of another
    dataset would not fit it. ``split`` is ``train``, ``val``, ``test`` or ``all`` (every window of the file).
    """
    import numpy as np

    from gatedzoo.data.timeseries import SPLIT_NAMES, WindowDataset, load_frame, time_steps, tslib_borders

    cfg = getattr(model, "zoo_config", {})
    td = cfg.get("source_data") or {}
    if not cfg.get("scaler") or not cfg.get("variables"):
        raise ValueError("these weights carry no scaler / variables in their config; they were not trained by a "
                         "gatedzoo forecasting recipe.")
    if split not in (*SPLIT_NAMES, "all"):
        raise ValueError(f"split={split!r}; use train, val, test or all.")
    if data is None and td.get("dataset") in (None, "frame"):
        raise ValueError("these weights were trained on an in-memory frame; pass --data PATH to evaluate them.")
    variables = cfg["variables"]
    df = load_frame(data or td["dataset"])
    have = [c for c in df.columns if c != "date"]
    if sorted(have) != sorted(variables):
        raise ValueError(
            f"the data has {len(have)} variables {have[:10]} but the weights expect {len(variables)}: "
            f"{variables[:10]}; "
            "give a file with exactly these columns (fine-tune with a new n_vars for other data)."
        )
    values = df[variables].to_numpy(dtype=np.float64)
    values = (values - np.asarray(cfg["scaler"]["mean"])) / np.asarray(cfg["scaler"]["std"])
    steps = time_steps(df["date"], cfg.get("freq") or "")
    lookback, horizon = int(cfg["lookback"]), int(cfg["horizon"])
    if horizon != getattr(model, "pred_len", horizon) or lookback != getattr(model, "seq_len", lookback):
        raise ValueError(f"the config's lookback/horizon {lookback}/{horizon} do not match the model's "
                         f"{model.seq_len}/{model.pred_len}.")
    if split != "all":
        policy, ratios = td.get("split", "ratio"), tuple(td.get("ratios", (0.7, 0.1, 0.2)))
        if data is not None and (policy != "ratio" or len(ratios) < 3 or ratios[2] <= 0):
            policy, ratios = "ratio", (0.7, 0.1, 0.2)
        starts, ends = tslib_borders(len(values), lookback, policy, ratios)
        i = SPLIT_NAMES.index(split)
        values = values[starts[i]:ends[i]]
        steps = None if steps is None else steps[starts[i]:ends[i]]
    ds = WindowDataset(values, lookback, horizon, steps)
    if len(ds) == 0:
        raise ValueError(f"the {split} part has {len(values)} rows; one window needs lookback + horizon = "
                         f"{lookback + horizon}; give a longer file or score every window with --split all.")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    m = evaluate(model.float().eval(), loader, "cpu" if not next(model.parameters()).is_cuda else None)
    return {"mse": m["mse"], "mae": m["mae"], "windows": m["samples"]}
