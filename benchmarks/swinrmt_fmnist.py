"""Controlled comparison on Fashion-MNIST: Gated-SwinRMT-SWAT vs -Retention vs the RMT-style baseline (``--size``).

Identical budget for every variant and seed: the same epochs, batch, optimiser, schedule, augmentation and data.
Protocol: train on the 60,000 official training images, report top-1 on the 10,000 test images after the last epoch
(no model selection on the test set). Throughput (training and inference images/s) is measured per variant with the
attention on our kernels (``backend="auto"``: Triton on CUDA) and on the reference attention, in the same process,
both eager and (with ``--compile``) with the training step's model under ``torch.compile``.

Phases (one GPU call, every phase inside the ``--total-budget-s`` deadline):
0. with ``--compile``: one process per (variant, backend) compiles the training graph concurrently, so that the
   compilations share the CPU cores and fill the on-disk Inductor cache the later phases load from;
1. throughput, each variant alone on the GPU: ``auto`` vs ``reference``, eager then compiled;
2. training runs (variants x seeds) as concurrent worker processes (the tiny model leaves the GPU mostly idle). Every
   worker compiles and warms up, then all time ``--calib-steps`` steps *together* (a barrier, so the calibration sees
   the real contention); the parent plans the largest epoch count whose complete warm-up + cosine schedule fits the
   time left (with a safety margin) for the slowest worker, and all workers train exactly that many epochs
   (``--epochs N`` fixes the count instead: one variant per GPU call, the same schedule in every call).
   With ``--epochs N`` and ``--work-dir`` the runs are resumable: each worker checkpoints (model, optimiser,
   schedule, random generator) every ``--ckpt-every`` epochs and when the deadline (or ``--pause-after``) stops it;
   the same command run again resumes every unfinished run where it stopped and does not retrain finished ones, so
   one schedule can span several GPU calls. A paused run is scored on the test set only once complete;
3. seed 0 of SWAT and Retention is written as zoo weights (``save_pretrained``, float16 tensors) for shipping;
4. ``results.json``, the plot ``swinrmt_fmnist.png`` and ``weights.tar`` (the two weight folders) in ``--out``;
   a tar over ``PART_BYTES`` is written as ``weights.tar.part00``, ``.part01``, ... instead (a GPU call returns files
   of at most 16 MiB): ``cat weights.tar.part* > weights.tar`` joins them.

Usage::

    python benchmarks/swinrmt_fmnist.py --data .gdata/fmnist --out $OUT --compile none \\
        --total-budget-s 540 --budget-s 470 --seeds 1     # the 45-epoch run of the model card (H100, 467 s)
    python benchmarks/swinrmt_fmnist.py --data .gdata/fmnist --out $OUT --size small --variants swat \\
        --skip-throughput --compile reduce-overhead --epochs 50 --seeds 3 \\
        --total-budget-s 580 --budget-s 565              # comparison E: one call per variant (H100, 455-505 s)
    # --compile reduce-overhead: CUDA graphs (about 8x the eager step, which is host-bound);
    # --compile default spends most of a 9-minute call compiling (model card, comparison C)
    python benchmarks/swinrmt_fmnist.py --data .gdata/fmnist --out $OUT --work-dir runs/sw100_swat --size small \\
        --variants swat --skip-throughput --compile reduce-overhead --epochs 100 --seeds 3 \\
        --total-budget-s 535 --budget-s 525              # comparison F: run twice (the second call resumes)
    python benchmarks/swinrmt_fmnist.py --merge call1/results.json call2/results.json merged.json
    python benchmarks/swinrmt_fmnist.py --data /usr/share/datasets/fashion-mnist --out runs/bench --smoke   # CPU check
    python benchmarks/swinrmt_fmnist.py --data /usr/share/datasets/fashion-mnist --out runs/bench --smoke \\
        --compile default --compile-backend aot_eager          # CPU compile check: minutes (6 compile processes)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gatedzoo.io import atomic_path, write_json

T_START = time.time()
VARIANTS = ("swat", "retention", "rmt")
SIZES = ("tiny", "small")
MODEL_ARGS = dict(img_size=28, in_chans=1, num_classes=10, stem_stride=2)
#: the comparison's recipe. batch 512 (117 steps an epoch) rather than 1,024: twice the optimiser steps for the same
#: images, which matters in a schedule of a few dozen epochs; lr scaled down with it. Random erasing (Zhong et al.,
#: the standard Fashion-MNIST regulariser) at p=0.25 rather than 0.5, because the schedule is short.
#: ``size`` is the model size of every variant (``--size``; workers get it on their command line).
HPARAMS = dict(size="tiny", batch_size=512, lr=2e-3, weight_decay=0.05, warmup_epochs=2, label_smoothing=0.1,
               min_lr_ratio=0.01, erase_p=0.25, crop_pad=3, flip=True)
#: seconds the training phase keeps under --total-budget-s: phases 0-1 skip what would eat into it
MIN_TRAIN_S = 240.0
#: largest file the benchmark leaves in --out: the device tool returns files of at most 16 MiB
PART_BYTES = 15 * 2**20
#: normalised value of a black pixel: the padding of the random crop (a constant avoids a device sync per step)
BACKGROUND = -0.2860 / 0.3530


def model_name(variant: str) -> str:
    """The zoo name of ``variant`` at the chosen ``--size``, e.g. ``gated_swinrmt_swat_tiny``."""
    return f"gated_swinrmt_{variant}_{HPARAMS['size']}"


def load(data: str, device):
    from gatedzoo.data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    out = {}
    for split in ("train", "test"):
        x, y = load_fashion_mnist(split, data)
        x = (torch.from_numpy(x.copy()).float().div_(255).sub_(FASHION_MNIST_MEAN[0]).div_(FASHION_MNIST_STD[0]))
        out[split] = (x[:, None].to(device), torch.from_numpy(y).to(device))
    return out


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 3, flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` pixels of background padding + horizontal flip, on the device (the recipes' "basic").

    Args:
        x: normalised images ``[B, 1, H, W]`` float. gen: generator on ``x.device``. pad: crop padding (3 = H/8 at
        28). flip: random horizontal flip with probability 0.5.

    Returns:
        ``[B, 1, H, W]``, same dtype and device.
    """
    B, _, H, W = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), value=BACKGROUND)
        oy = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=gen)
        rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]
        x = xp[torch.arange(B, device=x.device)[:, None, None], 0, rows, cols][:, None]
    if flip:
        f = torch.rand(B, device=x.device, generator=gen) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    return x


def random_erase(x: torch.Tensor, gen: torch.Generator, p: float, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) on the device, vectorised over the batch, no host sync.

    Each image, with probability ``p``, gets one rectangle of area fraction ``U(area)`` and aspect ratio
    log-uniform in ``ratio`` (clipped to the image) set to 0, the dataset mean in normalised units.

    Args:
        x: ``[B, C, H, W]`` float. gen: generator on ``x.device``. p: erasing probability per image (0: identity).

    Returns:
        A new tensor shaped and typed like ``x``.
    """
    if p <= 0:
        return x
    B, _, H, W = x.shape
    dev = x.device
    u = torch.rand(B, 5, device=dev, generator=gen)
    frac = area[0] + (area[1] - area[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    h = (frac * H * W * aspect).sqrt().round().clamp(1, H)
    w = (frac * H * W / aspect).sqrt().round().clamp(1, W)
    top = ((H - h + 1) * u[:, 2]).floor()
    left = ((W - w + 1) * u[:, 3]).floor()
    r = torch.arange(H, device=dev)[None, :, None]
    c = torch.arange(W, device=dev)[None, None, :]
    inside = ((r >= top[:, None, None]) & (r < (top + h)[:, None, None]) & (c >= left[:, None, None])
              & (c < (left + w)[:, None, None]))
    mask = inside & (u[:, 4] < p)[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def build(variant: str, seed: int, device):
    import gatedzoo

    torch.manual_seed(seed)
    return gatedzoo.create_model(model_name(variant), **MODEL_ARGS).to(device)


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """AdamW, no weight decay on biases and norms; the fused CUDA kernel on the GPU (one launch, not per tensor)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                             fused=device.type == "cuda")


def configure_dynamo() -> None:
    """Raise dynamo's recompile limit: one process compiles several model instances (variants and backends)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def compiled(model, mode: str, backend: str):
    """``torch.compile`` of the model's forward (its backward comes from AOTAutograd); ``mode="none"``: the model.

    Dynamo's state is reset first so that every compilation starts as a fresh process's would (static shapes): the
    graph, hence its Inductor-cache key, is then the one the precompile processes wrote.
    """
    if mode == "none":
        return model
    configure_dynamo()
    torch._dynamo.reset()
    return torch.compile(model, mode=None if mode == "default" else mode, backend=backend)


def mark_step(mode: str) -> None:
    """Tell the CUDA-graph trees a new training iteration begins (outputs of the previous one may be overwritten)."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def throughput(variant: str, backend: str, data, device, steps: int, batch: int, mode: str = "none",
               compile_backend: str = "inductor", infer: bool = True, warm: int = 3) -> dict:
    """Training (forward + backward + fused AdamW) and, eager only, inference images/s of one variant alone.

    ``mode`` is the ``--compile`` mode of the training step's model; ``compile_s`` is the wall time of the first
    ``warm`` (warm-up) steps, which include the compilation (or the Inductor-cache load).
    """
    model = build(variant, 0, device)
    model.set_backend(backend)
    fwd = compiled(model, mode, compile_backend)
    opt = make_optimizer(model, 1e-3, 0.05, device)
    x, y = data["train"][0][:batch], data["train"][1][:batch]
    model.train()

    def step():
        mark_step(mode)
        with autocast(device):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    for _ in range(warm):
        step()
    sync(device)
    res = {"compile_s": time.perf_counter() - t, "batch": batch}
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    res["train_img_s"] = steps * batch / (time.perf_counter() - t)
    if infer:
        model.eval()
        xi = data["test"][0][: batch * 4]
        with torch.no_grad(), autocast(device):
            for _ in range(min(warm, 2)):
                model(xi)
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                model(xi)
            sync(device)
        res["infer_img_s"] = steps * len(xi) / (time.perf_counter() - t)
    if mode != "none":
        torch._dynamo.reset()
    return res


def lr_factor(step: int, total: int, warm: int, min_ratio: float) -> float:
    """Linear warm-up over ``warm`` steps to 1, then cosine to ``min_ratio`` at step ``total`` (the last step)."""
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(total - 1 - warm, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def plan_epochs(left_s: float, step_s: float, steps_per_epoch: int, margin: float, lo: int, hi: int) -> int:
    """The most epochs whose complete schedule fits ``margin * left_s`` at ``step_s`` per step, clipped to [lo, hi].

    The margin absorbs calibration error: a schedule cut by the deadline would leave the learning rate un-annealed.
    """
    fit = int(margin * max(left_s, 0.0) / (step_s * steps_per_epoch))
    return max(lo, min(hi, fit))


@torch.no_grad()
def evaluate(model, x, y, device, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        with autocast(device):
            correct += (model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def wait_for(path: Path, deadline: float | None = None) -> bool:
    while not path.exists():
        if deadline is not None and time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def precompile(args) -> None:
    """Compile one (variant, backend) training graph and run it twice, to fill the on-disk Inductor cache."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load(args.data, device)
    t = time.perf_counter()
    try:
        res = throughput(args.variant, args.backend, data, device, 1, HPARAMS["batch_size"], args.compile,
                         args.compile_backend, infer=False, warm=args.warm_steps)
    except Exception as err:  # recorded: the parent's own measurement then fails or compiles cold, and says so
        res = {"error": repr(err)[:500]}
    res["wall_s"] = time.perf_counter() - t
    Path(args.work, f"pre_{args.variant}_{args.backend}.json").write_text(json.dumps(res))


def worker(args) -> None:
    """One training run; talks to the parent through files in ``args.work``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    tag = f"{args.variant}_{args.seed}"
    data = load(args.data, device)
    xtr, ytr = data["train"]
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    hp = HPARAMS
    bs = hp["batch_size"]
    per_epoch = len(xtr) // bs  # the last partial batch is dropped: static shapes for the compiled graph
    model = build(args.variant, args.seed, device)
    model.set_backend(args.backend)
    fwd = compiled(model, args.compile, args.compile_backend)
    opt = make_optimizer(model, hp["lr"], hp["weight_decay"], device)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def step(idx):
        mark_step(args.compile)
        xb = random_erase(augment(xtr[idx], gen, hp["crop_pad"], hp["flip"]), gen, hp["erase_p"])
        with autocast(device):
            loss = F.cross_entropy(fwd(xb), ytr[idx], label_smoothing=hp["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # compile + warm-up, then a barrier: every worker times its calibration steps while all the others run too;
    # the calibration works on a throw-away copy of the model and optimiser state, restored afterwards
    state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    model.train()
    t = time.perf_counter()
    for _ in range(args.warm_steps):
        step(torch.randint(0, len(xtr), (bs,), device=device, generator=gen))
    sync(device)
    compile_s = time.perf_counter() - t
    (work / f"{tag}.ready").write_text(str(compile_s))
    wait_for(work / "go")
    t = time.perf_counter()
    for _ in range(args.calib_steps):
        step(torch.randint(0, len(xtr), (bs,), device=device, generator=gen))
    sync(device)
    (work / f"{tag}.calib").write_text(str((time.perf_counter() - t) / args.calib_steps))
    model.load_state_dict(state[0])
    opt.load_state_dict(state[1])
    gen.manual_seed(args.seed)
    wait_for(work / "epochs.txt")
    epochs, deadline = (work / "epochs.txt").read_text().split()
    epochs, deadline = int(epochs), float(deadline)
    total, warm = epochs * per_epoch, int(hp["warmup_epochs"] * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warm, hp["min_lr_ratio"]))
    ident = run_identity(args.variant, args.seed, epochs, args.limit)
    ckpt = Path(work, f"ckpt_{tag}.pt")
    done, losses, epoch_s, train_s, segments = 0, [], [], 0.0, []
    if args.resumable and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved["ident"] != ident:  # the parent checked the sidecar; this guards a file swapped in between
            raise SystemExit(f"{ckpt} belongs to another run ({saved['ident']}); delete it or use another --work-dir")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"])
        done, losses, epoch_s, train_s, segments = (saved[k] for k in ("done", "losses", "epoch_s", "train_s",
                                                                        "segments"))
    start, t0 = done, time.perf_counter()

    def save() -> None:
        """Checkpoint everything the rest of the schedule depends on, atomically (a kill never leaves half a file)."""
        state = {"ident": ident, "done": done, "losses": losses, "epoch_s": epoch_s, "segments": [*segments,
                 [start, done]], "train_s": train_s + time.perf_counter() - t0, "model": model.state_dict(),
                 "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                 "rng": torch.get_rng_state(),  # the global generators drive drop-path
                 "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)}
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)
        write_json(Path(work, f"ckpt_{tag}.json"), {"ident": ident, "done": done})

    paused = False
    while done < epochs:
        # the deadline: a resumable run checkpoints and stops (the next call resumes it); otherwise an emergency
        # brake only, since the plan leaves a margin, and a cut run says so in results
        if time.time() > deadline or (args.pause_after and done - start >= args.pause_after):
            paused = args.resumable
            break
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(len(xtr), device=device, generator=gen)
        for i in range(per_epoch):
            loss = step(perm[i * bs:(i + 1) * bs])
            sched.step()
        losses.append(float(loss.detach()))
        epoch_s.append(time.perf_counter() - te)
        done += 1
        if args.resumable and (done % args.ckpt_every == 0 or done == epochs):
            save()
    if paused and done > start and done % args.ckpt_every:
        save()
    train_s += time.perf_counter() - t0
    res = {"variant": args.variant, "seed": args.seed, "backend": args.backend, "compile": args.compile,
           "epochs": epochs, "epochs_done": done, "schedule_complete": done == epochs, "paused": paused,
           "segments": [*segments, [start, done]], "test_top1": None, "train_s": train_s,
           "compile_warmup_s": compile_s, "epoch_s": epoch_s, "losses": losses,
           "params": sum(p.numel() for p in model.parameters())}
    if not paused:  # a paused run is scored once, when its schedule is complete
        xte, yte = data["test"]
        res["test_top1"] = acc = evaluate(model, xte[:args.limit or None], yte[:args.limit or None], device)
    if args.save and not paused:
        from gatedzoo.data.images import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN, FASHION_MNIST_STD

        shipped = copy.deepcopy(model).cpu().half()
        shipped.zoo_config = dict(model.zoo_config)
        shipped.zoo_config.update(
            preprocessing={"input_size": [1, 28, 28], "mean": list(FASHION_MNIST_MEAN), "std": list(FASHION_MNIST_STD),
                           "interpolation": "bilinear", "crop_pct": 1.0},
            label_names=FASHION_MNIST_LABELS, training_data="fashion_mnist/train (all 60,000)",
            weights_dtype="float16", hparams={**hp, "epochs": epochs, "seed": args.seed},
        )
        shipped.save_pretrained(Path(args.save), metrics={"test/acc": acc})
    write_json(Path(work, f"run_{tag}.json"), res)


def run_identity(variant: str, seed: int, epochs: int, limit: int) -> dict:
    """What a checkpoint must match to be resumed: the run (variant, seed, size) and its whole schedule."""
    return {"variant": variant, "seed": seed, "epochs": epochs, "limit": limit, "hparams": dict(HPARAMS)}


def finished(work: Path, tag: str, ident: dict) -> bool:
    """Whether an earlier call completed ``tag`` with this identity (its ``run_<tag>.json`` is then the result).

    Raises ``SystemExit`` (before any work starts) when ``work`` holds a checkpoint of ``tag`` made for another
    schedule or recipe: resuming it would mix two runs.
    """
    side = work / f"ckpt_{tag}.json"
    if not side.exists():
        return False
    saved = json.loads(side.read_text())
    if saved["ident"] != ident:
        diff = sorted(k for k in ident if saved["ident"].get(k) != ident[k])
        raise SystemExit(f"{work} holds a checkpoint of {tag} for another run (differs in: {', '.join(diff)}). "
                         f"Repeat that run's exact command to resume it, or pass another --work-dir.")
    res = work / f"run_{tag}.json"
    return saved["done"] == ident["epochs"] and res.exists() and bool(json.loads(res.read_text())["schedule_complete"])


def plot(results: list[str], path: str) -> None:
    """Bar charts of test top-1 (mean and seeds) and training images/s (auto vs reference) from ``results.json``.

    Throughput bars: eager, and compiled where the file has ``<variant>/<backend>/compiled`` entries.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(results), figsize=(4.5 * (1 + len(results)), 3.6))
    for ax, res in zip(axes, results):
        d = json.loads(Path(res).read_text())
        d["runs"] = [r for r in d["runs"] if r["test_top1"] is not None]  # paused runs are scored when complete
        for i, v in enumerate(VARIANTS):
            accs = [100 * r["test_top1"] for r in d["runs"] if r["variant"] == v]
            if accs:
                ax.bar(i, sum(accs) / len(accs), color=f"C{i}", alpha=0.6)
                ax.plot([i] * len(accs), accs, "k.")
        ax.set_xticks(range(len(VARIANTS)), list(VARIANTS))
        ax.set_ylim(min([100 * r["test_top1"] for r in d["runs"]] + [94.0]) - 1, 100)
        done = min(r.get("epochs_done", d["epochs"]) for r in d["runs"])
        ran = f"{done} of {d['epochs']} planned epochs" if done < d["epochs"] else f"{done} epochs"
        ax.set_title(f"test top-1, {ran}, batch {d['env']['hparams']['batch_size']}", fontsize=10)
        ax.axhline(94.5, color="r", lw=0.8, ls="--")
    d = json.loads(Path(results[-1]).read_text())
    ax = axes[-1]
    bars = [(b, suffix) for suffix in ("", "/compiled") for b in ("auto", "reference")
            if any(f"{v}/{b}{suffix}" in d["throughput"] for v in VARIANTS)]
    width = 0.8 / max(len(bars), 1)  # no bars: a --skip-throughput run
    for j, (backend, suffix) in enumerate(bars):
        vals = [d["throughput"].get(f"{v}/{backend}{suffix}", {}).get("train_img_s", 0) for v in VARIANTS]
        label = f"{'ours' if backend == 'auto' else 'reference'}{', compiled' if suffix else ', eager'}"
        ax.bar([i + width * j for i in range(len(VARIANTS))], vals, width=width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(VARIANTS))], list(VARIANTS))
    ax.set_title(f"training images/s, batch {d['env']['hparams']['batch_size']}", fontsize=10)
    if bars:  # a --skip-throughput run has none
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths: list[str], dest: str) -> dict:
    """One comparison from the ``results.json`` of several calls (``--merge A.json B.json ... OUT.json``).

    Every call must share the schedule (``epochs``), the hyper-parameters, the size and the compile mode; a
    (variant, seed) may appear in several calls, paused in the earlier ones, and its complete run is kept. Refuses
    duplicate complete runs and calls that still hold paused runs nothing completes. ``per_call`` keeps each call's
    command and timings.
    """
    shared = ("hparams", "size", "compile", "torch", "device")
    first = json.loads(Path(paths[0]).read_text())
    runs, per_call = {}, []
    for path in paths:
        d = json.loads(Path(path).read_text())
        diff = [k for k in shared if d["env"].get(k) != first["env"].get(k)] + (
            ["epochs"] if d["epochs"] != first["epochs"] else [])
        if diff:
            raise SystemExit(f"{path} differs from {paths[0]} in {', '.join(diff)}: not one comparison")
        for r in d["runs"]:
            key = (r["variant"], r["seed"])
            if r["test_top1"] is None:
                runs.setdefault(key, None)
                continue
            if runs.get(key) is not None:
                raise SystemExit(f"{path} repeats the complete run {key[0]} seed {key[1]}")
            runs[key] = r
        per_call.append({"file": str(path), "argv": d["env"].get("argv"), "runs": [f"{r['variant']}_{r['seed']}" + (
            "" if r["test_top1"] is not None else f" (paused at {r['epochs_done']})") for r in d["runs"]],
            **{k: d.get(k) for k in ("concurrent_step_s", "workers_ready_s", "phases", "total_s")}})
    open_runs = sorted(f"{v}_{s}" for (v, s), r in runs.items() if r is None)
    if open_runs:
        raise SystemExit(f"paused and never completed in these calls: {', '.join(open_runs)}")
    order = sorted(runs, key=lambda k: (VARIANTS.index(k[0]), k[1]))
    doc = {"env": {**first["env"], "argv": None}, "epochs": first["epochs"],
           "steps_per_epoch": first["steps_per_epoch"], "runs": [runs[k] for k in order], "per_call": per_call,
           "throughput": {}}
    write_json(dest, doc)
    return doc


def split_file(path: Path, limit: int) -> list[Path]:
    """Replace ``path`` by ``path.part00``, ``path.part01``, ... of at most ``limit`` bytes each when it is larger
    (``cat path.part* > path`` restores it); a file within the limit stays as it is. Returns the files left."""
    size = path.stat().st_size
    if size <= limit:
        return [path]
    parts = []
    with open(path, "rb") as f:
        for i in range(math.ceil(size / limit)):
            part = path.with_name(f"{path.name}.part{i:02d}")
            with atomic_path(part) as tmp:
                tmp.write_bytes(f.read(limit))
            parts.append(part)
    path.unlink()
    return parts


def child_env(threads: int) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, threads))}


def common_args(args) -> list[str]:
    cmd = ["--size", args.size, "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--warmup-epochs", str(args.warmup_epochs),
           "--erase-p", str(args.erase_p), "--compile-backend", args.compile_backend,
           "--warm-steps", str(args.warm_steps)]
    return cmd + (["--data", args.data] if args.data else [])


def run_precompile(args, work: Path, limit: int, deadline: float) -> dict:
    """Phase 0: compile the training graphs of the chosen variants on both backends in parallel processes (CPU-bound;
    the GPU is nearly idle)."""
    combos = [(v, b) for v in args.variants for b in ("auto", "reference")]
    threads = (os.cpu_count() or 2) // len(combos)
    procs = [subprocess.Popen([sys.executable, __file__, "--precompile", "--variant", v, "--backend", b, "--work",
                               str(work), "--compile", args.compile, "--limit", str(limit)] + common_args(args),
                              env=child_env(threads)) for v, b in combos]
    for pr in procs:
        try:
            pr.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            pr.kill()
    out = {}
    for v, b in combos:
        f = work / f"pre_{v}_{b}.json"
        out[f"{v}/{b}"] = json.loads(f.read_text()) if f.exists() else {"error": "no result (timeout or crash)"}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with the four Fashion-MNIST .gz files")
    p.add_argument("--out", default="runs/swinrmt_fmnist")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1: split one variant's seeds over several GPU calls")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the training phase (phase 2)")
    p.add_argument("--total-budget-s", type=float, default=0.0,
                   help="wall-clock budget of the whole script from its start (0: none); phase 2 gets what is left "
                        "after phases 0-1, at most --budget-s")
    p.add_argument("--margin", type=float, default=0.9,
                   help="fraction of the time left that the planned schedule may use (calibration error)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--epochs", type=int, default=0,
                   help="train exactly this many epochs instead of planning them from the budget (0: plan); the way "
                        "to give variants trained in separate GPU calls the same schedule. The runs are then "
                        "resumable: a call that reaches its deadline checkpoints them in --work-dir, and the same "
                        "command run again continues them (runs completed earlier are not retrained)")
    p.add_argument("--pause-after", type=int, default=0,
                   help="with --epochs: train at most this many epochs in this call, then checkpoint and stop "
                        "(0: until the schedule or the deadline ends); the same command resumes")
    p.add_argument("--ckpt-every", type=int, default=5,
                   help="with --epochs: checkpoint every N epochs (and at the deadline) in --work-dir")
    p.add_argument("--size", default="tiny", choices=SIZES, help="model size of every variant")
    p.add_argument("--min-epochs", type=int, default=1)
    p.add_argument("--tp-steps", type=int, default=20)
    p.add_argument("--throughput-only", action="store_true",
                   help="measure images/s (our kernels vs the reference attention) and stop: no training run")
    p.add_argument("--skip-throughput", action="store_true",
                   help="train only (our kernels): no phase 0 or 1, for a call whose throughput was measured before")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="the variants to measure and train (default: all three)")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead",
                                                         "max-autotune-no-cudagraphs"],
                   help="torch.compile mode of the training step's model (both backends, throughput and training); "
                        "throughput is then measured eager AND compiled")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: CPU smoke)")
    p.add_argument("--work-dir", default=None, help="scratch folder for the workers (default: a new temp folder)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU check: 256 images, batch 32, 1 epoch, 1 seed")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precompile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--resumable", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--calib-steps", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--warm-steps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=HPARAMS["batch_size"])
    p.add_argument("--lr", type=float, default=HPARAMS["lr"])
    p.add_argument("--warmup-epochs", type=float, default=HPARAMS["warmup_epochs"])
    p.add_argument("--erase-p", type=float, default=HPARAMS["erase_p"], help="random-erasing probability")
    p.add_argument("--plot", nargs="+", metavar="FILE", help="results.json files then the PNG to write; no training")
    p.add_argument("--merge", nargs="+", metavar="FILE",
                   help="results.json files of several calls of one comparison, then the JSON to write; no training")
    args = p.parse_args()
    if args.plot:
        return plot(args.plot[:-1], args.plot[-1])
    if args.merge:
        return merge(args.merge[:-1], args.merge[-1])
    if args.smoke:
        # 256 images in 8 batches of 32, one warm-up and one timed step: seconds on a busy 2-core CPU
        args.batch_size, args.warm_steps, args.calib_steps, args.tp_steps = 32, 1, 1, 1
    HPARAMS.update(size=args.size, batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                   erase_p=args.erase_p)
    if args.worker:
        return worker(args)
    if args.precompile:
        return precompile(args)

    deadline = T_START + args.total_budget_s if args.total_budget_s > 0 else float("inf")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="swinrmt_"))
    work.mkdir(parents=True, exist_ok=True)
    # a fixed --epochs with a --work-dir makes the runs resumable: checkpoints (ckpt_<variant>_<seed>.pt) and results
    # of earlier calls are kept; a planned schedule depends on this call's calibration, so it always starts afresh
    resumable = bool(args.epochs and args.work_dir)  # a temporary work dir would not outlive this call
    stale = ("*.calib", "*.ready", "pre_*.json", "epochs.txt", "go") + (() if resumable else ("run_*", "ckpt_*"))
    for pattern in stale:
        for f in work.glob(pattern):
            f.unlink()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = 1 if args.smoke else args.seeds
    limit = 256 if args.smoke else 0
    bs = HPARAMS["batch_size"]
    tags = [(v, s) for v in args.variants for s in range(args.first_seed, args.first_seed + seeds)]
    done = [(v, s) for v, s in tags if finished(work, f"{v}_{s}", run_identity(v, s, args.epochs, limit))]
    if done:
        print(f"already complete in {work} (not retrained): {', '.join(f'{v}_{s}' for v, s in done)}", flush=True)
    import gatedzoo.kernels.api as api

    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "triton_import": api._triton_backend()[1] or "ok", "hparams": HPARAMS, "model_args": MODEL_ARGS,
           "compile": args.compile, "compile_backend": args.compile_backend, "argv": sys.argv[1:], "size": args.size}
    print(json.dumps(env), flush=True)
    phases = {}

    pre = {}
    if args.compile != "none" and not args.throughput_only and not args.skip_throughput and len(done) < len(tags):
        t = time.time()
        pre = run_precompile(args, work, limit, min(deadline - MIN_TRAIN_S - 60, time.time() + 240))
        phases["precompile_s"] = time.time() - t
        print("precompile", json.dumps(pre), flush=True)

    t = time.time()
    data = load(args.data, device)
    tp = {}
    steps = args.tp_steps
    for v in [] if args.skip_throughput else args.variants:
        for backend in ("auto", "reference"):
            for mode in ("none",) + ((args.compile,) if args.compile != "none" else ()):
                key = f"{v}/{backend}" + ("/compiled" if mode != "none" else "")
                if deadline - time.time() < MIN_TRAIN_S:
                    tp[key] = {"error": "skipped: the total budget keeps MIN_TRAIN_S for the training phase"}
                    continue
                try:
                    tp[key] = throughput(v, backend, data, device, steps, bs, mode, args.compile_backend,
                                         infer=mode == "none", warm=args.warm_steps)
                except Exception as err:  # a kernel or compile failure must not cost the whole GPU call: record it
                    tp[key] = {"error": repr(err)[:500]}
                print(key, tp[key], flush=True)
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    phases["throughput_s"] = time.time() - t
    if args.throughput_only:
        (out / "throughput.json").write_text(json.dumps({"env": env, "throughput": tp, "phases": phases}, indent=1))
        return None

    t_start = time.perf_counter()
    procs = []
    todo = [t for t in tags if t not in done]
    for v, s in todo:
        backend = "auto" if "error" not in tp.get(f"{v}/auto", {}) else "reference"
        # a variant whose compiled step failed trains eager: slower, which the calibration then accounts for
        mode = args.compile if "error" not in tp.get(f"{v}/{backend}/compiled", {}) else "none"
        cmd = [sys.executable, __file__, "--worker", "--variant", v, "--seed", str(s), "--work", str(work),
               "--backend", backend, "--compile", mode, "--limit", str(limit), "--calib-steps", str(args.calib_steps),
               "--ckpt-every", str(args.ckpt_every), "--pause-after", str(args.pause_after)] + common_args(args)
        if resumable:
            cmd.append("--resumable")
        if s == 0 and v in ("swat", "retention"):
            cmd += ["--save", str(work / "weights" / f"{model_name(v)}.fmnist")]
        procs.append(subprocess.Popen(cmd, env=child_env((os.cpu_count() or 2) // len(todo))))
    n = len(procs)

    def wait_all(suffix: str) -> None:
        while len(list(work.glob(f"*{suffix}"))) < n:
            if any(pr.poll() not in (None, 0) for pr in procs):
                for pr in procs:
                    pr.kill()
                raise SystemExit(f"a worker failed before writing its {suffix} file; see its output above")
            time.sleep(0.2)

    per_epoch = (limit or 60000) // bs
    epochs, step_s, compile_wait, codes = args.epochs or (1 if args.smoke else 0), 0.0, 0.0, []
    if procs:
        wait_all(".ready")
        compile_wait = time.perf_counter() - t_start
        (work / "go").write_text("")
        wait_all(".calib")
        step_s = max(float(f.read_text()) for f in work.glob("*.calib"))
        reserve = 25.0  # evaluation, checkpoints, saving, results, plot and tar after the last epoch
        left = min(args.budget_s - (time.perf_counter() - t_start), deadline - time.time()) - reserve
        fit = plan_epochs(left, step_s, per_epoch, args.margin, args.min_epochs, args.max_epochs)
        epochs = epochs or fit
        if args.epochs and args.epochs > fit:
            print(f"note: --epochs {args.epochs} exceeds the {fit} epochs the calibration fits in this call; the runs "
                  "checkpoint at the deadline and the same command, run again, resumes them", flush=True)
        stop = time.time() + left
        print(f"workers ready after {compile_wait:.1f} s; calibration: slowest concurrent step {step_s * 1e3:.1f} ms, "
              f"{left:.0f} s left -> {epochs} epochs of {per_epoch} steps (planned {epochs * per_epoch * step_s:.0f} "
              f"s for a whole schedule)", flush=True)
        (work / "epochs.txt").write_text(f"{epochs} {stop}")
        codes = [pr.wait() for pr in procs]
    phases["train_phase_s"] = time.perf_counter() - t_start
    runs = [json.loads((work / f"run_{v}_{s}.json").read_text()) for v, s in tags
            if (work / f"run_{v}_{s}.json").exists()]
    summary = {"env": env, "throughput": tp, "precompile": pre, "runs": runs, "epochs": epochs,
               "steps_per_epoch": per_epoch, "worker_exit_codes": codes, "concurrent_step_s": step_s,
               "workers_ready_s": compile_wait, "phases": phases, "total_s": time.time() - T_START}
    write_json(out / "results.json", summary)
    for v in VARIANTS:
        paused = [r["epochs_done"] for r in runs if r["variant"] == v and r.get("paused")]
        if paused:
            print(f"{v:10s} PAUSED after {min(paused)}-{max(paused)} of {epochs} epochs ({len(paused)} runs, "
                  f"checkpoints in {work}): run the same command again to resume", flush=True)
        accs = [r["test_top1"] for r in runs if r["variant"] == v and r["test_top1"] is not None]
        if not accs:
            continue
        m = sum(accs) / len(accs)
        sd = (sum((a - m) ** 2 for a in accs) / max(len(accs) - 1, 1)) ** 0.5
        line = f"{v:10s} top1 {100 * m:.2f} +- {100 * sd:.2f} (n={len(accs)})"
        cut = [r["epochs_done"] for r in runs if r["variant"] == v and not r["schedule_complete"]
               and not r.get("paused")]
        if cut:  # the deadline brake fired: the learning rate had not reached the end of its schedule
            line += f"  SCHEDULE CUT after {min(cut)}-{max(cut)} of {epochs} epochs"
        for suffix, name in (("", "eager"), ("/compiled", "compiled")):
            a, r = tp.get(f"{v}/auto{suffix}", {}), tp.get(f"{v}/reference{suffix}", {})
            if "train_img_s" in a and "train_img_s" in r:
                line += f"  train {name} ours/ref {a['train_img_s']:.0f}/{r['train_img_s']:.0f} " \
                        f"= {a['train_img_s'] / r['train_img_s']:.2f}x"
        print(line, flush=True)
    try:
        if any(r["test_top1"] is not None for r in runs):
            plot([str(out / "results.json")], str(out / "swinrmt_fmnist.png"))
    except Exception as err:  # the numbers matter more than the picture
        print("plot failed:", repr(err), flush=True)
    if (work / "weights").exists():
        with tarfile.open(out / "weights.tar", "w") as tar:
            tar.add(work / "weights", arcname="weights")
        split_file(out / "weights.tar", PART_BYTES)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.time() - T_START:.0f} s", flush=True)


if __name__ == "__main__":
    main()
