"""Scale-out benchmark: samples/s and peak GPU memory on 1 vs N GPUs, DDP and FSDP, through Lightning.

Two recipes, built from their YAML (class_path / init_args, so no jsonargparse is needed) with the recipe's own
hyper-parameters; only the run length, logging and callbacks are set here:

* ``scfm``: masked-expression pretraining (``recipes/scfm/pretrain_shards.yaml``) over a sharded ``.h5ad`` collection
  that this script generates first (``benchmarks/make_sharded_collection.py``), one pass over ``--scfm-train-cells``;
* ``swin``: Gated-SwinRMT-SWAT tiny on Fashion-MNIST (``recipes/gated_swinrmt/swat_fmnist.yaml``), ``--swin-epochs``.

Every configuration (1 device; N devices with ``ddp``; N devices with ``fsdp``) runs as its own process group
(a subprocess; Lightning launches the other ranks). Scaling is *weak* by default: the per-device batch is the
recipe's, so N devices see N times the samples per step, and the learning rate is scaled by sqrt(N) (the
square-root rule for Adam). ``--scaling strong`` adds multi-device runs that keep the one-device optimisation: the
recipe's batch split over the N devices (the same global batch, steps and learning rate), the comparison for
"same validation metric". Every configuration trains on the same number of samples, after which the validation
metric is computed over the whole validation split (reduced across ranks); ``--seeds`` repeats every configuration
with other seeds, which measures the seed-to-seed noise of that metric. ``--compile MODE`` compiles the
Gated-SwinRMT model (``Classification(compile=MODE)``, e.g. ``reduce-overhead``: CUDA graphs).
Throughput is steady state: the median wall time between consecutive optimizer steps after ``--warmup`` steps,
excluding validation and epoch starts (the median, because a compiled model recompiles once for an epoch's shorter
last batch; the mean is recorded too). Peak GPU memory is
``torch.cuda.max_memory_allocated`` (the largest over ranks); host memory is the resident memory of a rank and its
DataLoader workers, sampled every 50 steps. For FSDP the run also resumes from its last checkpoint (the step must
continue); for every multi-device run the zoo weights (written by rank 0, unsharded) are loaded on the CPU and
compared with the consolidated checkpoint. The attention backend every call resolved to is counted per rank.

    python benchmarks/scaling.py --out runs/scaling --tiny            # CPU, 1 vs 2 processes (gloo), minutes
    python benchmarks/scaling.py --out $OUT --work /tmp/scaling --fmnist-root .gdata/fmnist \
        --source .gdata/scfm/pbmc_stim.h5ad

Writes ``scaling.json`` and ``scaling.md`` into ``--out`` (updated after every configuration); the collection, the
checkpoints, zoo weights and one log per configuration go to ``--work``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

RECIPES = {"scfm": "recipes/scfm/pretrain_shards.yaml", "swin": "recipes/gated_swinrmt/swat_fmnist.yaml"}
METRIC = {"scfm": "val/loss", "swin": "val/acc"}
# NVLink multicast stays off (shared hosts); exported before any child process starts
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def instantiate(spec: dict, **overrides):
    """Build ``{class_path, init_args}`` with ``overrides`` merged into the init args."""
    mod, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(mod), name)(**{**spec.get("init_args", {}), **overrides})


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def tree_rss_gib(root: int, exclude: set[int]) -> float:
    """Resident memory of ``root`` and its descendants (DataLoader workers), skipping the ``exclude`` subtrees.

    Summed RSS counts pages shared between the forked workers once per process: an upper bound.
    """
    if not Path("/proc").exists():
        return float("nan")
    kids, total, todo = _proc_children(), 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_gib(pid)
        todo += [k for k in kids.get(pid, []) if k not in exclude]
    return total


class StepClock(L.Callback):
    """Steady-state step timing and peak memory, recorded on every rank.

    Intervals between consecutive ``on_train_batch_end`` calls after ``warmup`` steps; an interval that spans a
    validation run or an epoch start is dropped.
    """

    def __init__(self, warmup: int, rss_every: int = 50):
        self.warmup, self.last, self.total, self.steps, self.intervals = warmup, None, 0.0, 0, []
        self.rss_every, self.rss_peak, self.exclude = rss_every, 0.0, set()

    @staticmethod
    def _now() -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        # children alive now are other ranks (Lightning's launcher), not this rank's DataLoader workers
        self.exclude = set(_proc_children().get(os.getpid(), [])) if Path("/proc").exists() else set()

    def on_train_epoch_start(self, trainer, pl_module):
        self.last = None

    def on_validation_start(self, trainer, pl_module):
        self.last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.rss_every == 1:
            self.rss_peak = max(self.rss_peak, tree_rss_gib(os.getpid(), self.exclude))
        now = self._now()
        if self.last is not None and trainer.global_step > self.warmup:
            self.total += now - self.last
            self.steps += 1
            self.intervals.append(now - self.last)
        self.last = now


class StartStep(L.Callback):
    """Records the global step a (resumed) fit starts from."""

    def __init__(self):
        self.step = None

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


def spy_attention_backends() -> Counter:
    """Count the attention backend each call resolves to in this process (shows the Triton kernels ran per rank)."""
    import torch

    import gatedzoo.kernels.api as api

    used: Counter = Counter()
    select = api.select_backend

    def counted(args, backend):
        chosen = select(args, backend)
        # counted in eager calls only: traced by torch.compile, the increment would be a guard on the count, and
        # every call would recompile the model (until Dynamo's recompile limit sends it back to eager)
        if not torch.compiler.is_compiling():
            used[chosen] += 1
        return chosen

    api.select_backend = counted
    return used


def worker(cfg: dict) -> None:
    """One configuration: fit, validate, (FSDP) resume; each rank writes ``rank<r>.json``."""
    import torch
    import yaml

    from gatedzoo.tasks import SaveZooWeights

    out = Path(cfg["out"])
    backends = spy_attention_backends()
    recipe = yaml.safe_load((ROOT / RECIPES[cfg["recipe"]]).read_text())
    L.seed_everything(cfg["seed"], workers=True)
    n = cfg["devices"]
    model_init = dict(recipe["model"]["init_args"])
    if not cfg.get("strong"):
        model_init["lr"] = model_init["lr"] * math.sqrt(n)
    model_init.update(cfg.get("model_overrides", {}))
    build = lambda: instantiate({"class_path": recipe["model"]["class_path"], "init_args": model_init})  # noqa: E731
    model = build()
    data = instantiate(recipe["data"], **cfg["data_overrides"])
    per_device_batch = cfg["data_overrides"]["batch_size"]

    def strategy():
        if cfg["strategy"] != "fsdp":
            return cfg["strategy"]
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(state_dict_type="full")

    clock = StepClock(cfg["warmup"])
    common = dict(accelerator=cfg["accelerator"], devices=n, precision=cfg["precision"], logger=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
                  num_sanity_val_steps=0, limit_val_batches=cfg.get("limit_val_batches") or 1.0)
    # validation runs once, at the end of the last epoch, inside fit (its time is not counted): a separate
    # trainer.validate() after fit fails under FSDP, which would wrap the already-sharded module a second time
    trainer = L.Trainer(strategy=strategy(), max_epochs=cfg["epochs"], check_val_every_n_epoch=cfg["epochs"],
                        limit_train_batches=cfg.get("limit_train_batches"),
                        callbacks=[clock, L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True),
                                   SaveZooWeights(str(out / "zoo"), best=False)], **common)
    t0 = time.perf_counter()
    trainer.fit(model, data)
    fit_s = time.perf_counter() - t0
    rank, world = trainer.global_rank, trainer.world_size
    rec = {"rank": rank, "world": world, "steps": trainer.global_step, "timed_steps": clock.steps,
           "timed_s": clock.total, "median_step_s": statistics.median(clock.intervals) if clock.intervals else None,
           "fit_s": fit_s, "per_device_batch": per_device_batch,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
           "rss_gib": clock.rss_peak}
    rec["attention_backends"] = dict(backends)
    rec["val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if cfg["strategy"] == "fsdp":
        start = StartStep()
        again = L.Trainer(strategy=strategy(), max_epochs=cfg["epochs"] + 1, limit_train_batches=4,
                          check_val_every_n_epoch=cfg["epochs"] + 2, enable_checkpointing=False, callbacks=[start],
                          **common)
        again.fit(build(), data, ckpt_path=str(out / "ckpt" / "last.ckpt"))
        rec.update(saved_step=trainer.global_step, resume_start_step=start.step, resume_end_step=again.global_step)
    (out / f"rank{rank}.json").write_text(json.dumps(rec))


def run_config(cfg: dict, timeout: float) -> dict:
    """Run one configuration in a fresh process group; merge the ranks' records."""
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if proc.returncode != 0 or len(recs) != cfg["devices"]:
        tail = (out / "log.txt").read_text()[-2500:]
        return {"ok": False, "error": f"rc={proc.returncode}", "log_tail": tail, "wall_s": wall}
    r0 = recs[0]
    mean_s = r0["timed_s"] / max(r0["timed_steps"], 1)
    step_s = r0.get("median_step_s") or mean_s
    res = {"ok": True, "wall_s": round(wall, 1), "steps": r0["steps"], "timed_steps": r0["timed_steps"],
           "per_device_batch": r0["per_device_batch"], "global_batch": r0["per_device_batch"] * r0["world"],
           "samples_seen": r0["steps"] * r0["per_device_batch"] * r0["world"],
           "samples_per_s": r0["per_device_batch"] * r0["world"] / step_s if r0["timed_steps"] else None,
           "step_ms": 1e3 * step_s if r0["timed_steps"] else None,
           "samples_per_s_mean": r0["per_device_batch"] * r0["world"] / mean_s if r0["timed_steps"] else None,
           "peak_mem_gib": max((r["peak_mem_gib"] or 0) for r in recs) or None,
           "host_rss_gib_per_rank": max(r["rss_gib"] for r in recs),
           "metric": r0["val"].get(METRIC[cfg["recipe"]]), "val": r0["val"],
           "attention_backends_per_rank": [r["attention_backends"] for r in recs]}
    if "resume_start_step" in r0:
        res.update(saved_step=r0["saved_step"], resume_start_step=r0["resume_start_step"],
                   resume_end_step=r0["resume_end_step"])
    return res


def check_zoo(folder: Path, ckpt: Path) -> dict:
    """Load zoo weights on the CPU; compare outputs with the consolidated checkpoint's weights."""
    import torch

    from gatedzoo.zoo import create_model

    model = create_model(str(folder)).eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    ref = create_model(str(folder)).eval()
    ref.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    g = torch.Generator().manual_seed(0)
    if model.zoo_config["task"] == "masked_expression":
        genes = torch.randint(2, model.vocab_size, (4, 32), generator=g)
        bins = torch.randint(1, model.n_bins, (4, 32), generator=g)
        lens = torch.tensor([32, 20, 9, 1], dtype=torch.int32)
        run = lambda m: m.forward_features(genes, bins, lens)  # noqa: E731
    else:
        x = torch.randn(4, *model.zoo_config["preprocessing"]["input_size"], generator=g)
        run = lambda m: m(x)  # noqa: E731
    with torch.no_grad():
        diff = (run(model) - run(ref)).abs().max().item()
    n_params = sum(p.numel() for p in model.parameters())
    return {"loads_on_cpu": True, "max_abs_diff_vs_checkpoint": diff, "params": n_params}


def write_report(out: Path, results: dict, meta: dict) -> None:
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, lightning {meta['lightning']}; {meta['date']}.",
             f"Command: `{meta['command']}`", "",
             "| recipe | devices | strategy | global batch | samples/s | speed-up vs 1 | step ms | peak GPU mem GiB | "
             "host RSS GiB per rank | samples seen | val metric |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        if not isinstance(r, dict) or "recipe" not in r:
            continue
        if not r.get("ok"):
            lines.append(f"| {r['recipe']} | {r['devices']} | {r['strategy']} | failed: {r.get('error')} |"
                         + " |" * 7)
            continue
        base = results.get(f"{r['recipe']}_1_single" + (f"_seed{r['seed']}" if r.get("seed") else ""), {})
        sp = (f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base.get("ok") and base.get("samples_per_s")
              and r.get("samples_per_s") else "-")
        mem = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") else "-"
        met = f"{METRIC[r['recipe']]} = {r['metric']:.4f}" if r.get("metric") is not None else "-"
        sps = f"{r['samples_per_s']:.0f}" if r.get("samples_per_s") else "-"
        stp = f"{r['step_ms']:.1f}" if r.get("step_ms") else "-"
        strat = (r["strategy"] + (" strong" if r.get("scaling") == "strong" else "")
                 + (f" (seed {r['seed']})" if r.get("seed") else ""))
        lines.append(f"| {r['recipe']} | {r['devices']} | {strat} | {r['global_batch']} | {sps} | {sp} | "
                     f"{stp} | {mem} | {r['host_rss_gib_per_rank']:.2f} | {r['samples_seen']} | "
                     f"{met} |")
    extra = {k: v for k, v in results.items() if not (isinstance(v, dict) and "recipe" in v)}
    if extra:
        lines += ["", "```json", json.dumps(extra, indent=1), "```"]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for scaling.json / scaling.md (required except for --worker)")
    ap.add_argument("--work", default=None, help="folder for the collection, checkpoints and logs (default OUT/work)")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny data and models: checks the script end to end")
    ap.add_argument("--devices", type=int, default=2, help="the multi-device count compared with 1 (default 2)")
    ap.add_argument("--recipes", default="scfm,swin")
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--scfm-cells", type=int, default=200_000, help="cells in the generated collection")
    ap.add_argument("--scfm-train-cells", type=int, default=100_000, help="cells trained on per configuration")
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--swin-epochs", type=int, default=2)
    ap.add_argument("--source", default=None, help="raw-count .h5ad the collection is fitted to (default pbmc_stim)")
    ap.add_argument("--fmnist-root", default=None)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers per rank (default: cores / 2N)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--no-single", action="store_true", help="skip the 1-device runs (e.g. a run of FSDP alone)")
    ap.add_argument("--noise-seed", type=int, default=None, help="also run the 1-device configuration with this seed")
    ap.add_argument("--seeds", default="0", help="seeds of every configuration, e.g. 0,1 (default 0)")
    ap.add_argument("--scaling", default="weak", help="weak (per-device batch fixed), strong (global batch fixed) "
                    "or both: weak,strong")
    ap.add_argument("--compile", default=None, help="torch.compile mode for the swin recipe (e.g. reduce-overhead)")
    ap.add_argument("--budget-s", type=float, default=400, help="skip configurations once this much time is spent")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(json.loads(a.worker))
        return {}
    if not a.out:
        ap.error("--out is required")
    os.environ.update(SAFE_ENV)
    import torch
    from make_sharded_collection import make_collection

    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available() and not a.tiny
    if not gpu and not a.tiny:
        raise SystemExit("no GPU: run with --tiny for the CPU check.")
    n = a.devices
    if gpu and torch.cuda.device_count() < n:
        raise SystemExit(f"{torch.cuda.device_count()} GPUs visible; --devices {n} needs {n}.")
    cores = os.cpu_count() or 2
    workers = a.workers if a.workers is not None else (0 if a.tiny else max(2, min(8, cores // (2 * n))))
    meta = {"device": (f"{n} x {torch.cuda.get_device_name(0)}" if gpu else f"CPU ({cores} cores), gloo"),
            "torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "cpu_cores": cores, "dataloader_workers_per_rank": workers,
            "lr_rule": "weak scaling: lr x sqrt(devices), per-device batch fixed; strong scaling: the recipe's global "
                       "batch split over the devices, lr unchanged", "swin_compile": a.compile}
    results: dict = {}
    recipes = [r for r in a.recipes.split(",") if r]
    # single and DDP for every recipe first, FSDP last: what a short time budget leaves out is the FSDP runs
    modes = [m for m in a.scaling.split(",") if m]
    if not set(modes) <= {"weak", "strong"}:
        ap.error(f"--scaling {a.scaling}: use weak, strong or weak,strong")
    seeds = [int(x) for x in a.seeds.split(",") if x]
    plan = []
    for seed in seeds:
        plan += [] if a.no_single else [(r, "single", 1, seed, "weak") for r in recipes]
        for strategy in [s for s in a.strategies.split(",") if s]:
            plan += [(r, strategy, n, seed, mode) for mode in modes for r in recipes]
    # the first seed before the others, FSDP last: what a short time budget leaves out is the repeats and FSDP
    plan.sort(key=lambda x: (x[3] != seeds[0], x[1] == "fsdp"))
    # a second seed of the single-device run measures the seed-to-seed noise of the validation metric
    plan += [(r, "single", 1, a.noise_seed, "weak") for r in recipes if a.noise_seed is not None]
    shards = work / "shards"
    for recipe, strategy, devs, seed, mode in plan:
        if recipe == "scfm" and "collection" not in results:
            cells = 3000 if a.tiny else a.scfm_cells
            t0 = time.perf_counter()
            summary = make_collection(shards, cells, 1000 if a.tiny else a.shard_size, source=a.source,
                                      workers=min(cores, 16))
            try:
                mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            except (ValueError, OSError):
                mem_total = None
            results["collection"] = {**summary, "gib_on_disk": summary["bytes"] / 2**30,
                                     "host_ram_gib_visible": mem_total,
                                     "generate_s": round(time.perf_counter() - t0, 1)}
            write_report(out, results, meta)
        key = f"{recipe}_{devs}_{strategy}" + ("_strong" if mode == "strong" else "") + (f"_seed{seed}" if seed else "")
        if time.perf_counter() - t_start > a.budget_s:
            results[key] = {"recipe": recipe, "devices": devs, "strategy": strategy, "ok": False,
                            "error": "skipped: time budget spent"}
            continue
        if strategy == "fsdp" and not gpu:
            results[key] = {"recipe": recipe, "devices": devs, "strategy": strategy, "ok": False,
                            "error": "skipped: Lightning refuses FSDP without a GPU"}
            continue
        cfg = {"recipe": recipe, "devices": devs, "strategy": "auto" if strategy == "single" else strategy,
               "accelerator": "gpu" if gpu else "cpu", "precision": "bf16-mixed" if gpu else "32-true",
               "seed": seed, "warmup": 3 if a.tiny else a.warmup, "out": str(work / key), "strong": mode == "strong"}
        split = devs if mode == "strong" else 1  # strong scaling: the one-device batch split over the devices
        if recipe == "scfm":
            train_cells = 600 if a.tiny else a.scfm_train_cells
            bs = (8 if a.tiny else 64) // split
            cfg.update(epochs=1, data_overrides={"shards": str(shards), "num_workers": workers, "batch_size": bs,
                                                 **({"max_genes": 64} if a.tiny else {})})
            # the same number of cells for every device count: limit the (per-rank) batches of the one epoch
            cfg["limit_train_batches"] = max(train_cells // (bs * devs), 1)
            if a.tiny:
                cfg["model_overrides"] = {"model_args": {"dim": 32, "depth": 1, "num_heads": 2}}
                cfg["limit_val_batches"] = 4
        else:
            bs = (16 if a.tiny else 256) // split
            cfg.update(epochs=1 if a.tiny else a.swin_epochs,
                       data_overrides={"batch_size": bs, "num_workers": workers, "root": a.fmnist_root,
                                       **({"limit": 800} if a.tiny else {})})
            if a.tiny:
                cfg["model_overrides"] = {"model_args": {"img_size": 28, "in_chans": 1, "num_classes": 10,
                                                         "stem_stride": 2, "depths": [1, 1, 1, 1]}}
                cfg["limit_val_batches"] = 4
            if a.compile:
                cfg.setdefault("model_overrides", {})["compile"] = a.compile
        timeout = max(60.0, a.budget_s + 60 - (time.perf_counter() - t_start))
        try:
            res = run_config(cfg, timeout)
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        results[key] = {"recipe": recipe, "devices": devs, "strategy": strategy, "seed": seed, "scaling": mode,
                        **res}
        if res.get("ok") and devs > 1:
            try:
                results[key]["zoo_check"] = check_zoo(work / key / "zoo", work / key / "ckpt" / "last.ckpt")
            except Exception as e:  # noqa: BLE001  (recorded in the report, the other runs go on)
                results[key]["zoo_check"] = {"error": repr(e)}
        print(key, json.dumps({k: v for k, v in results[key].items() if k != "log_tail"}), flush=True)
        write_report(out, results, meta)
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    write_report(out, results, meta)
    return results


if __name__ == "__main__":
    main()
