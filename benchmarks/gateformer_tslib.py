"""Gateformer on the TSLib long-term benchmark (ETTh1 and Exchange, horizons 96-720) plus training throughput.

One command trains every cell from its recipe (``recipes/gateformer/<dataset>_<horizon>.yaml``: the same data
module, task, callbacks and hyper-parameters as ``gatedzoo fit``, built here without the CLI so it runs where
jsonargparse is missing), one process per cell in parallel on one GPU, tests the best checkpoint on the full test
split, then measures training throughput of the same model with the core kernels (``backend="auto"``) against the
reference attention (``backend="reference"``) while the GPU is otherwise idle.

    python benchmarks/gateformer_tslib.py --out runs/gateformer_tslib            # GPU: full run
    python benchmarks/gateformer_tslib.py --out runs/gtest --tiny                # CPU: a few batches, end to end
    python benchmarks/gateformer_tslib.py --cells "etth1_96+seed=2022,etth1_96+variate_gate=headwise" \
        --throughput-steps 0                                                     # seeds / variants of a recipe
    python benchmarks/gateformer_tslib.py --plot-from docs/models/gateformer_tslib.json --out docs/models

Writes into ``--out``: ``results.json`` (every cell and throughput row), ``results.md`` (tables), ``zoo.tar`` (the
zoo folders of every cell) and one log per cell. Data: ``$GATEDZOO_DATA`` (``ett/ETTh1.csv``,
``exchange_rate/exchange_rate.txt.gz``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "gateformer"
CELLS = [f"{d}_{h}" for d in ("etth1", "exchange") for h in (96, 192, 336, 720)]
# published baselines, look-back 96 (iTransformer, ICLR 2024, Table 10; specs/models.md section 3.3): MSE, MAE
BASELINES = {
    "etth1": {"iTransformer": [(0.386, 0.405), (0.441, 0.436), (0.487, 0.458), (0.503, 0.491)],
              "PatchTST": [(0.414, 0.419), (0.460, 0.445), (0.501, 0.466), (0.500, 0.488)],
              "TimesNet": [(0.384, 0.402), (0.436, 0.429), (0.491, 0.469), (0.521, 0.500)],
              "DLinear": [(0.386, 0.400), (0.437, 0.432), (0.481, 0.459), (0.519, 0.516)]},
    "exchange": {"iTransformer": [(0.086, 0.206), (0.177, 0.299), (0.331, 0.417), (0.847, 0.691)],
                 "PatchTST": [(0.088, 0.205), (0.176, 0.299), (0.301, 0.397), (0.901, 0.714)],
                 "TimesNet": [(0.107, 0.234), (0.226, 0.344), (0.367, 0.448), (0.964, 0.746)],
                 "DLinear": [(0.088, 0.218), (0.176, 0.315), (0.313, 0.427), (0.839, 0.695)]},
}
TARGET_AVG = {"etth1": 0.440, "exchange": 0.354}
# ``--run-cell`` spec keys that are arguments of the Forecasting task (not of the model), with their types
TASK_KEYS = {"lr": float, "loss": str, "huber_delta": float}


def _build(spec):
    """Instantiate a ``{class_path, init_args}`` node of a LightningCLI config."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def parse_cell(spec: str) -> tuple[str, dict, str]:
    """``"etth1_96"`` or ``"etth1_96+variate_activation=sigmoid+seed=2022"`` -> (recipe, overrides, folder name).

    Values are read as YAML scalars (``dropout=0.2`` is a float). ``seed`` and ``batch_size`` override the recipe's
    seed and training batch size, the keys of ``TASK_KEYS`` (``lr``, ``loss``, ``huber_delta``) the arguments of
    the :class:`~gatedzoo.tasks.forecasting.Forecasting` task, ``ema=DECAY`` adds the
    :class:`~gatedzoo.tasks.EMAWeights` callback (validation, the kept checkpoint and the test then use the
    exponential moving average of the weights); every other key is a model argument.
    """
    recipe, *pairs = spec.split("+")
    return recipe, parse_overrides(pairs), spec.replace("+", "-").replace("=", "-")


def parse_overrides(pairs: list[str]) -> dict:
    """``["dropout=0.2", "loss=mae"]`` -> ``{"dropout": 0.2, "loss": "mae"}`` (values read as YAML scalars).

    Raises:
        ValueError: a pair is not ``key=value``.
    """
    import yaml

    over = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not key=value (for example cycle_len=24).")
        over[key] = yaml.safe_load(value)
    return over


def run_cell(spec: str, out: Path, tiny: bool, backend: str, max_minutes: float) -> dict:
    """Train, select on validation, test one recipe (with model-argument / seed overrides); return its metrics."""
    import lightning as L
    import torch
    import yaml

    from gatedzoo.tasks import EMAWeights
    from gatedzoo.tasks.forecasting import TEST_MAE, TEST_MSE, VAL_MSE

    name, over, folder = parse_cell(spec)
    cfg = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    seed = over.pop("seed", cfg.get("seed_everything", 2021))
    L.seed_everything(seed, verbose=False)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cell_dir = out / folder
    tr = dict(cfg["trainer"])
    callbacks = []
    for cb in tr.pop("callbacks", []):
        args = dict(cb.get("init_args", {}))
        if "dirpath" in args:
            args["dirpath"] = str(cell_dir / Path(args["dirpath"]).name)
        callbacks.append(_build({"class_path": cb["class_path"], "init_args": args}))
    if "ema" in over:  # as a recipe's gatedzoo.tasks.EMAWeights callback
        callbacks.append(EMAWeights(decay=float(over.pop("ema"))))
    tr.update(default_root_dir=str(cell_dir), enable_progress_bar=False, logger=False,
              max_time={"minutes": max_minutes})
    if tiny:
        tr.update(max_epochs=2, limit_train_batches=5, limit_val_batches=2)
    model_cfg = cfg["model"]
    for key, cast in TASK_KEYS.items():
        if key in over:
            model_cfg["init_args"][key] = cast(over.pop(key))
    if "batch_size" in over:
        cfg["data"]["init_args"]["batch_size"] = int(over.pop("batch_size"))
    model_cfg["init_args"]["model_args"] = {**model_cfg["init_args"].get("model_args", {}), "backend": backend, **over}
    task, dm = _build(model_cfg), _build(cfg["data"])
    trainer = L.Trainer(callbacks=callbacks, **tr)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - t0
    stopper = next((c for c in callbacks if type(c).__name__ == "EarlyStopping"), None)
    ckpt = trainer.checkpoint_callback
    return {
        "cell": spec, "recipe": name, "seed": seed, "overrides": over,
        "dataset": name.split("_")[0], "horizon": int(name.split("_")[1]),
        "mse": task.test_metrics[TEST_MSE], "mae": task.test_metrics[TEST_MAE],
        "best_val_mse": None if ckpt is None or ckpt.best_model_score is None else float(ckpt.best_model_score),
        "kept_val_mse": task.test_metrics[VAL_MSE],  # re-evaluated on the weights tested (EMA ones with ema=)
        "epochs": trainer.current_epoch, "stopped_early": bool(stopper and stopper.stopped_epoch > 0),
        "steps": trainer.global_step, "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in task.model.parameters()), "model_args": task.hparams.model_args,
        "lr": task.hparams.lr, "loss": task.hparams.loss, "batch_size": dm.batch_size, "backend": backend,
        "ema": next((cb.decay for cb in callbacks if isinstance(cb, EMAWeights)), None),
    }


def preflight(device: str) -> dict:
    """Which backend ``auto`` picks for the model's attention shapes, and whether it agrees with the reference."""
    import torch

    from gatedzoo.kernels._args import validate
    from gatedzoo.kernels.api import select_backend
    from gatedzoo.layers import MultiheadAttention

    torch.manual_seed(0)
    report = {}
    for label, (tokens, batch) in {"temporal": (13, 56), "variate": (7, 8)}.items():
        x = torch.randn(batch, tokens, 64, device=device, requires_grad=True)
        mha = MultiheadAttention(64, 4).to(device)
        q = torch.randn(batch, tokens, 4, 16, device=device)
        a = validate(q, q, q, activation="softmax", scale=None, sigmoid_bias=None, alibi_slopes=None, decay=None,
                     decay_mode="additive", positions=None, seq_lens=None, cu_seqlens=None, causal=False, gate=None,
                     backend="auto")
        entry = {"auto_resolves_to": select_backend(a, "auto")}
        try:
            outs = {}
            for b in ("auto", "reference"):
                mha.backend = b
                y = mha(x)
                (gx,) = torch.autograd.grad(y.square().sum(), x)
                outs[b] = (y.detach(), gx)
            entry["max_abs_diff_out"] = float((outs["auto"][0] - outs["reference"][0]).abs().max())
            entry["max_abs_diff_grad"] = float((outs["auto"][1] - outs["reference"][1]).abs().max())
            entry["ok"] = entry["max_abs_diff_out"] < 1e-3 and entry["max_abs_diff_grad"] < 1e-2
        except Exception as err:  # a broken kernel must not cost the benchmark: fall back and record why
            entry.update(ok=False, error=repr(err)[:300])
        report[label] = entry
    return report


def throughput(device: str, steps: int, warmup: int) -> list[dict]:
    """Training steps per second of Gateformer with ``backend="auto"`` vs ``"reference"`` (plain PyTorch loop)."""
    import torch
    import torch.nn.functional as F

    from gatedzoo.models.gateformer import Gateformer

    shapes = {  # name: (batch, n_vars, model args)
        "etth1_96 (B=8, N=7, d=64, 1 layer)": (8, 7, dict(pred_len=96, n_vars=7, d_model=64, d_ff=64, e_layers=1)),
        "etth1_336 (B=8, N=7, d=128, 2 layers)": (8, 7, dict(pred_len=336, n_vars=7, d_model=128, d_ff=128,
                                                             e_layers=2)),
        "ECL-shaped (B=32, N=321, d=512, 2 layers, 8 heads)": (32, 321, dict(pred_len=96, n_vars=321, d_model=512,
                                                                            d_ff=512, e_layers=2, n_heads=8)),
    }
    rows = []
    for label, (batch, n_vars, args) in shapes.items():
        for backend in ("auto", "reference"):
            torch.manual_seed(0)
            model = Gateformer(**args, backend=backend).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            x = torch.randn(batch, 96, n_vars, device=device)
            y = torch.randn(batch, args["pred_len"], n_vars, device=device)

            def step(model=model, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                F.mse_loss(model(x), y).backward()
                opt.step()

            for _ in range(warmup):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            rows.append({"shape": label, "backend": backend, "ms_per_step": round(dt * 1e3, 3),
                         "samples_per_s": round(batch / dt, 1)})
            del model, opt
    return rows


def _table(results: list[dict]) -> str:
    lines = []
    for ds in ("etth1", "exchange"):
        cells = sorted((r for r in results if r["dataset"] == ds and "mse" in r and r["cell"] == r["recipe"]),
                       key=lambda r: r["horizon"])
        if not cells:
            continue
        lines += [f"### {ds}", "", "| H | Gateformer (ours) MSE / MAE | iTransformer | PatchTST | TimesNet | DLinear |",
                  "|---|---|---|---|---|---|"]
        for r in cells:
            i = (96, 192, 336, 720).index(r["horizon"])
            base = " | ".join(f"{BASELINES[ds][m][i][0]:.3f} / {BASELINES[ds][m][i][1]:.3f}" for m in BASELINES[ds])
            lines.append(f"| {r['horizon']} | **{r['mse']:.3f} / {r['mae']:.3f}** | {base} |")
        if len(cells) == 4:
            mse = sum(r["mse"] for r in cells) / 4
            mae = sum(r["mae"] for r in cells) / 4
            base = " | ".join(
                f"{sum(v[0] for v in BASELINES[ds][m]) / 4:.3f} / {sum(v[1] for v in BASELINES[ds][m]) / 4:.3f}"
                for m in BASELINES[ds])
            lines.append(f"| avg | **{mse:.3f} / {mae:.3f}** | {base} |")
        lines.append("")
    extra = [r for r in results if "mse" in r and r["cell"] != r["recipe"]]
    if extra:
        lines += ["### variants and seeds", "", "| cell | test MSE / MAE | best val MSE | epochs |",
                  "|---|---|---|---|"]
        lines += [f"| {r['cell']} | {r['mse']:.3f} / {r['mae']:.3f} | {r['best_val_mse']:.4f} | {r['epochs']} |"
                  for r in extra]
        lines.append("")
    return "\n".join(lines)


def plot_results(summary: dict, path: Path) -> Path:
    """Bar chart of test MSE per horizon: Gateformer (ours) against the published baselines, ETTh1 and Exchange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, ds in zip(axes, ("etth1", "exchange")):
        ours = {r["horizon"]: r["mse"] for r in summary["cells"] if r.get("dataset") == ds and "mse" in r
                and r["cell"] == r.get("recipe", r["cell"])}
        series = {"Gateformer (ours)": [ours.get(h, float("nan")) for h in (96, 192, 336, 720)]}
        series.update({m: [v[0] for v in vals] for m, vals in BASELINES[ds].items()})
        width = 0.8 / len(series)
        for i, (name, vals) in enumerate(series.items()):
            ax.bar([j + i * width for j in range(4)], vals, width, label=name,
                   color="tab:red" if i == 0 else f"C{i + 1}", alpha=1.0 if i == 0 else 0.6)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(4)], ["96", "192", "336", "720"])
        ax.set_xlabel("horizon")
        ax.set_ylabel("test MSE (normalised)")
        ax.set_title({"etth1": "ETTh1", "exchange": "Exchange"}[ds] + ", look-back 96")
        if ds == "etth1":
            ax.set_ylim(0.3, 0.56)
        else:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gateformer_tslib")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--tiny", action="store_true", help="a few batches per cell (a CPU check of the whole pipeline)")
    p.add_argument("--jobs", type=int, default=8, help="cells trained at the same time")
    p.add_argument("--max-minutes", type=float, default=4.5, help="training time cap per cell (Lightning max_time)")
    p.add_argument("--throughput-steps", type=int, default=100)
    p.add_argument("--plot-from", default=None, help="only draw the MSE chart of a results.json into --out")
    p.add_argument("--run-cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.plot_from:
        print(plot_results(json.loads(Path(a.plot_from).read_text()), out / "gateformer_tslib_mse.png"))
        return 0
    if a.run_cell:
        res = run_cell(a.run_cell, out, a.tiny, a.backend, a.max_minutes)
        (out / f"{parse_cell(a.run_cell)[2]}.json").write_text(json.dumps(res, indent=2))
        return 0

    import torch

    import gatedzoo

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.time()
    checks = preflight(device)
    backend = "auto" if all(c.get("ok") for c in checks.values()) else "reference"
    print(f"preflight: {json.dumps(checks)} -> training backend {backend}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONUNBUFFERED": "1"}
    cells = [c for c in a.cells.split(",") if c]  # --cells "" measures the throughput only
    pending = list(cells)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < a.jobs:
            cell = pending.pop(0)
            cmd = [sys.executable, __file__, "--run-cell", cell, "--out", str(out), "--backend", backend,
                   "--max-minutes", str(a.max_minutes)] + (["--tiny"] if a.tiny else [])
            with open(out / f"{parse_cell(cell)[2]}.log", "w") as log:  # the child keeps its own copy of the descriptor
                running.append((cell, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)))
        time.sleep(1.0)
        for cell, proc in list(running):
            if proc.poll() is not None:
                running.remove((cell, proc))
                print(f"{cell}: exit {proc.returncode} after {time.time() - t_start:.0f}s", flush=True)
    results = []
    for cell in cells:
        f = out / f"{parse_cell(cell)[2]}.json"
        results.append(json.loads(f.read_text()) if f.exists() else {"cell": cell, "dataset": cell.split("_")[0],
                                                                     "error": "see the cell's log"})
    t_train = time.time() - t_start
    tp = throughput(device, 3 if a.tiny else a.throughput_steps, 1 if a.tiny else 10) if a.throughput_steps else []
    summary = {
        "command": "python benchmarks/gateformer_tslib.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": (
            torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"),
        "torch": torch.__version__, "gatedzoo": gatedzoo.__version__, "python": platform.python_version(),
        "training_backend": backend, "preflight": checks, "train_wall_seconds": round(t_train, 1),
        "cells": results, "throughput": tp,
    }
    for ds, target in TARGET_AVG.items():
        base = [r for r in results if r.get("dataset") == ds and "mse" in r and r["cell"] == r["recipe"]]
        if len(base) == 4:
            summary[f"{ds}_avg_mse"] = sum(r["mse"] for r in base) / 4
            summary[f"{ds}_avg_mae"] = sum(r["mae"] for r in base) / 4
            summary[f"{ds}_target_avg_mse"] = target
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    tp_lines = ["| shape | backend | ms / step | samples / s |", "|---|---|---|---|"]
    tp_lines += [f"| {r['shape']} | {r['backend']} | {r['ms_per_step']} | {r['samples_per_s']} |" for r in tp]
    (out / "results.md").write_text(_table(results) + "\n" + "\n".join(tp_lines) + "\n")
    with tarfile.open(out / "zoo.tar", "w") as tar:
        for cell in cells:
            folder = parse_cell(cell)[2]
            if (out / folder / "zoo").exists():
                tar.add(out / folder / "zoo", arcname=folder)
    print((out / "results.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
