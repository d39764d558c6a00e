"""The base LightningModule every task derives from, the zoo-weights and weight-averaging callbacks, the evaluators."""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

from gatedzoo.zoo import create_model, zoo_config

# metric names: shared by logging, checkpoint monitors, early stopping and the model cards
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
TEST_LOSS = "test/loss"

#: ``torch.compile`` modes a task accepts, and those that capture CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

#: config entries that describe how the loaded weights were made and scored; training replaces those weights
STALE_AFTER_TRAINING = ("metrics", "metrics_note", "recipe", "hparams", "training_data", "training_run", "benchmark",
                        "device", "novelty_rule")

#: evaluators by task name: ``fn(model, data: str | None, split: str) -> dict[str, float]``
EVALUATORS: dict[str, Callable] = {}


def register_evaluator(task: str):
    """Register the function ``gatedzoo eval`` runs for models whose ``zoo_config["task"]`` is ``task``."""

    def wrap(fn):
        EVALUATORS[task] = fn
        return fn

    return wrap


def lr_factor(step: int, schedule: str, per_epoch: int, warm: int, total: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of a run of ``total`` steps.

    ``warm`` linear warm-up steps come first (all schedules). Then ``"constant"`` keeps 1; ``"cosine"`` anneals
    from 1 to ``min_lr_ratio`` at the last step; ``"halving"`` is Time-Series-Library ``lradj="type1"``: epochs
    1 and 2 at the peak, then half per epoch (1, 1, 0.5, 0.25, ...).
    """
    if step < warm:
        return (step + 1) / warm
    if schedule == "halving":
        # TSLib calls adjust_learning_rate(epoch=k) after the k-th epoch (1-based) and sets lr * 0.5 ** (k - 1):
        # the call after the first epoch keeps the peak, so halving starts with the third epoch
        return 0.5 ** max(step // per_epoch - 1, 0)
    if schedule == "constant":
        return 1.0
    t = (step - warm) / max(total - warm, 1)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class ZooTask(L.LightningModule):
    """Holds a zoo model and the optimisation shared by all tasks (AdamW, warm-up + cosine schedule).

    Args:
        arch (str): model name for :func:`gatedzoo.create_model` (``arch``, ``arch.tag``, a folder, ...).
        model_args (dict, Optional): architecture arguments / overrides. Default: `None`.
        pretrained (bool): start from zoo weights (fine-tuning). Default: `False`.
        lr (float): peak learning rate. Default: ``1e-3``.
        weight_decay (float): AdamW weight decay. Default: ``0.05``.
        warmup_epochs (float): linear warm-up length in epochs. Default: ``0``.
        schedule (str): ``"cosine"`` (to ``min_lr_ratio`` of the peak), ``"halving"`` (TSLib "type1": two epochs at
            the peak, then half per epoch; :func:`lr_factor`) or ``"constant"``. Default: ``"cosine"``.
        min_lr_ratio (float): floor of the cosine schedule. Default: ``0.01``.
        freeze (list[str], Optional): parameter-name prefixes to freeze (fine-tuning). Default: `None`.
        compile (str, Optional): compile the model with ``torch.compile`` in this mode before training or
            evaluating: ``"default"``, ``"reduce-overhead"`` (CUDA graphs: the per-step host work goes, which is
            what bounds the small image models, see docs/scaling.md), ``"max-autotune"`` or
            ``"max-autotune-no-cudagraphs"``. The parameter names, checkpoints and zoo weights are the same as
            without it. Default: `None` (eager).
        compile_backend (str): the ``torch.compile`` backend; ``"aot_eager"`` traces without generating code
            (debugging, CPUs without a compiler). Default: ``"inductor"``.
    """

    def __init__(
        self,
        arch: str,
        model_args: dict | None = None,
        pretrained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.0,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.01,
        freeze: list[str] | None = None,
        compile: str | None = None,
        compile_backend: str = "inductor",
    ):
        super().__init__()
        if schedule not in ("cosine", "halving", "constant"):
            raise ValueError(f"schedule={schedule!r}; use 'cosine', 'halving' or 'constant'.")
        if compile is not None and compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r}; use one of {list(COMPILE_MODES)}, or leave it unset for eager.")
        self.save_hyperparameters()
        # a dotted CLI override (--model.init_args.model_args.num_classes 3) arrives as the string "3": read
        # string values as YAML scalars, as the recipe file itself would
        args = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in (model_args or {}).items()}
        self.model: nn.Module = create_model(arch, pretrained=pretrained, **args)
        for name, p in self.model.named_parameters():
            if freeze and name.startswith(tuple(freeze)):
                p.requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def configure_model(self) -> None:
        # called before a sharding strategy wraps the model: FSDP (use_orig_params) turns every parameter into a
        # flat 1-D shard, so the weight-decay split below must use the shapes recorded here
        self._param_ndim = {name: p.ndim for name, p in self.model.named_parameters()}
        mode = self.hparams.get("compile")
        if mode is not None and not is_compiled(self.model):
            # nn.Module.compile compiles __call__ in place: state-dict keys, checkpoints and zoo weights keep their
            # names (torch.compile(module) would prefix them with "_orig_mod."). A model whose training step does not
            # run through forward (scfm) overrides compile() to compile the modules it does run
            self.model.compile(mode=mode, backend=self.hparams.get("compile_backend", "inductor"))

    def _mark_step(self) -> None:
        # CUDA graphs reuse their output buffers: a new step must be declared, or a validation pass (forward only)
        # right after training could overwrite outputs that are still being read
        if self.hparams.get("compile") in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._mark_step()

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()

    def on_fit_start(self) -> None:
        cfg = zoo_config(self.model)
        # training changes the weights: scores and provenance of the weights it started from no longer describe
        # them (fresh ones are written at the end); they are kept under "fine_tuned_from"
        stale = {k: cfg.pop(k) for k in STALE_AFTER_TRAINING if k in cfg}
        if stale:
            cfg["fine_tuned_from"] = stale
        # the data module knows the preprocessing (scalers, vocabularies, label names) that must travel with weights
        dm = getattr(self.trainer, "datamodule", None)
        meta = dm.zoo_metadata() if dm is not None and hasattr(dm, "zoo_metadata") else {}
        cfg.update(meta)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the model's zoo_config (class names, scaler, vocabulary, preprocessing) travels with a Lightning checkpoint,
        # so a model restored from it names its classes and preprocesses as the trained one did
        checkpoint["zoo_config"] = copy.deepcopy(zoo_config(self.model))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "zoo_config" in checkpoint:
            zoo_config(self.model).update(copy.deepcopy(checkpoint["zoo_config"]))

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        ndim = getattr(self, "_param_ndim", {})
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if ndim.get(name, p.ndim) <= 1 or name.endswith(".bias") else decay).append(p)
        # one fused kernel for the whole update on a GPU (the default for-each AdamW launches several per tensor
        # group: 4.2 ms of a 102 ms scfm_large step, benchmarks/scfm_profile.py); sharded parameters keep for-each
        trainer = self._trainer
        fused = all(p.is_cuda for p in decay + no_decay) and not (trainer is not None and is_sharded(trainer))
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr,
            fused=fused or None,
        )
        if hp.schedule == "constant" and hp.warmup_epochs == 0:
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warm = int(hp.warmup_epochs * per_epoch)

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(lr_factor, schedule=hp.schedule, per_epoch=per_epoch, warm=warm, total=total,
                         min_lr_ratio=hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` or one of its submodules has been compiled in place (``nn.Module.compile``)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def is_sharded(trainer: L.Trainer) -> bool:
    """Whether the trainer's strategy shards parameters across ranks (FSDP), so no rank holds the full model."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def gather_cat(module: L.LightningModule, t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor ``[n_r, ...]`` over all ranks (rank order), as a CPU tensor.

    Ranks may hold different ``n_r`` (padded for the collective, trimmed after). With one process, ``t`` comes back
    unchanged. Every rank must call it (a collective), e.g. in ``on_validation_epoch_end``.
    """
    if module.trainer.world_size == 1:
        return t.cpu()
    n = torch.tensor([len(t)], device=module.device)
    sizes = module.all_gather(n).flatten().tolist()
    pad = int(max(sizes)) - len(t)
    t = torch.cat([t.to(module.device), t.new_zeros((pad, *t.shape[1:])).to(module.device)])
    g = module.all_gather(t)  # [world, max n_r, ...]
    return torch.cat([g[r, : int(k)] for r, k in enumerate(sizes)]).cpu()


def full_model_state(trainer: L.Trainer, pl_module: ZooTask, best: bool = True) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of ``pl_module.model`` on rank 0; `None` on the other ranks.

    ``best``: read the best checkpoint of the first ``ModelCheckpoint`` when it is a file (DDP and FSDP with the
    default ``state_dict_type="full"`` write one consolidated file); otherwise gather the live weights through the
    strategy (a collective under FSDP: every rank must call this function).
    """
    ckpt = trainer.checkpoint_callback
    path = ckpt.best_model_path if best and ckpt is not None else ""
    if path and os.path.isfile(path):
        if not trainer.is_global_zero:
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    else:
        state = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return None
        if any(hasattr(v, "device_mesh") or hasattr(v, "local_shards") for v in state.values()):
            raise ValueError("the strategy returned a sharded state dict; zoo weights need the full one: use "
                             "FSDPStrategy(state_dict_type='full'), Lightning's default.")
    return {k[len("model."):]: v.detach().cpu() for k, v in state.items() if k.startswith("model.")}


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) copy of a zoo model, rebuilt from its ``zoo_config`` and loaded with ``state``."""
    cfg = zoo_config(model)
    copy = create_model(cfg["architecture"], **cfg.get("model_args", {}))
    copy.load_state_dict(state)
    copy.zoo_config = {**cfg}
    return copy


class EMAWeights(WeightAveraging):
    """Exponential moving average of the weights, updated after every optimiser step: ``w_ema <- decay * w_ema +
    (1 - decay) * w`` on floating-point parameters and buffers (the first step copies ``w``; integer buffers are
    copied, having no meaningful average).

    Lightning's ``WeightAveraging`` does the bookkeeping: validation runs on the average, so early stopping, the
    checkpoint monitor and the kept model judge and keep the average; a checkpoint's ``state_dict`` holds the
    average (the optimiser's own weights go to ``current_model_state``, and resuming restores both);
    :class:`SaveZooWeights` and the tasks' test after fitting therefore use the average. The update itself is done
    here, as one multi-tensor ``lerp`` with a host-side step count, because ``AveragedModel.update_parameters``
    (behind Lightning's ``EMAWeightAveraging``) reads its on-device counter twice per step, a GPU synchronisation
    each step; with it, the small Gateformer models (batch 8) trained about half as fast in the ETTh1 runs of
    docs/models/gateformer.md, and with this update the average costs about 6 % (17.5 against 16.6 ms per step).
    Not for sharded (FSDP) training.

    Args:
        decay (float): weight of the old average at each step, in ``(0, 1)``; the average spans about
            ``1 / (1 - decay)`` steps. Default: ``0.999``.

    Raises:
        ValueError: ``decay`` outside ``(0, 1)``.
    """

    def __init__(self, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMAWeights: decay must be in (0, 1), got {decay}; 0.999 averages about the last "
                             "1,000 optimiser steps.")
        super().__init__()
        self.decay = decay
        self._updates: int | None = None  # host copy of the average's n_averaged, read once per fit

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._updates = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step <= self._latest_update_step:  # gradient accumulation: no optimiser step yet
            return
        average = self._average_model
        if self._updates is None:  # 0 on a fresh fit, the restored count after resuming from a checkpoint
            self._updates = int(average.n_averaged)
        ema = [t.detach() for t in itertools.chain(average.module.parameters(), average.module.buffers())]
        cur = [t.detach() for t in itertools.chain(pl_module.parameters(), pl_module.buffers())]
        floats = [i for i, t in enumerate(ema) if t.is_floating_point()]
        if self._updates == 0:
            torch._foreach_copy_(ema, cur)
        elif floats:
            torch._foreach_lerp_([ema[i] for i in floats], [cur[i] for i in floats], 1.0 - self.decay)
        for e, c in zip(ema, cur):
            if not e.is_floating_point():
                e.copy_(c)
        average.n_averaged += 1
        self._updates += 1
        self._latest_update_step = trainer.global_step


class SaveZooWeights(L.Callback):
    """At the end of fitting, write the trained model as zoo weights (``model.safetensors`` + ``config.json``).

    Written once, by rank 0, as a full (unsharded) state dict, also under FSDP; the folder loads with
    ``create_model(folder)`` on one CPU. Without sharding, the best checkpoint is also loaded into the module on
    every rank (a later ``trainer.test`` then sees the kept weights).

    Args:
        dirpath (str): output folder. Default: ``<trainer.log_dir>/zoo``.
        best (bool): save the best checkpoint of the first ``ModelCheckpoint`` (else the final weights).
            Default: `True`.
        extra (dict, Optional): entries merged into the config (data, recipe, licence, ...). Default: `None`.
    """

    def __init__(self, dirpath: str | None = None, best: bool = True, extra: dict | None = None):
        self.dirpath, self.best, self.extra = dirpath, best, extra or {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: ZooTask) -> None:
        ckpt = trainer.checkpoint_callback
        if (not is_sharded(trainer) and self.best and ckpt is not None and ckpt.best_model_path
                and os.path.isfile(ckpt.best_model_path)):
            state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
            pl_module.load_state_dict(state)
        model_state = full_model_state(trainer, pl_module, best=self.best)
        if trainer.is_global_zero:
            out = Path(self.dirpath or Path(trainer.log_dir or ".") / "zoo")
            pl_module.model.save_pretrained(out, metrics=self.kept_metrics(trainer), state_dict=model_state,
                                            **self.extra)

    def kept_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """The logged scalars that describe the weights being saved.

        ``callback_metrics`` hold the *last* epoch's values. When the best checkpoint is saved and it is not the last
        epoch (its monitored score differs from the last one), those values describe other weights, so only the
        checkpoint's own monitored score is kept.
        """
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        ckpt = trainer.checkpoint_callback
        if self.best and ckpt is not None and ckpt.monitor and ckpt.best_model_score is not None:
            best = float(ckpt.best_model_score)
            if metrics.get(ckpt.monitor) != best:
                metrics = {ckpt.monitor: best}
        return metrics
