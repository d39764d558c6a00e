"""Where the single-cell training step spends its time, per activation, and which attention tiles suit its shapes.

Two measurements in one GPU call, on the fixed batches of ``scfm_study.py --step-time-only`` (``large``: 2 cells of
8,192 tokens; ``base``: 16 real cells of 19 ... 2,007 genes padded to 2,008 tokens):

1. ``profile``: ``torch.profiler`` over 10 training steps (after 8 warm-up steps) of ``scfm_sigmoid_<size>`` and
   ``scfm_softmax_<size>``, eager (the study's loop) and compiled (``SCFM.compile()`` + fused AdamW, the tasks'
   ``compile`` option on a GPU); the device time of every kernel, summed into groups (attention forward, dK/dV, dQ,
   backward preprocessing, matrix multiplies, optimizer, the rest), per step, and the costliest kernels.
2. ``tiles``: the attention of one block alone (``[B, N, H, 64]`` bf16 with the batch's ``seq_lens``), forward and
   backward, ``triton.testing.do_bench`` in turns against production (A, B, A, B, ...): each alternative tile of one
   pass, and the two ``FAST_SIGMOID`` formulas; softmax's production figure beside it.

Usage (GPU machine; ``python benchmarks/scfm_study.py prepare`` has written ``.gdata/scfm/cells.pt``)::

    python benchmarks/scfm_profile.py --out $OUT            # both parts, about two minutes on an H100
    python benchmarks/scfm_profile.py --out $OUT --only tiles
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scfm_study  # noqa: E402  (the batches and the training loop of the study)

# kernel-name fragments -> group; first match wins
GROUPS = (
    ("_attn_fwd", "attn fwd"), ("_attn_bwd_dkdv", "attn dK/dV"), ("_attn_bwd_dq", "attn dQ"),
    ("_bwd_preprocess", "attn bwd prep"), ("gemm", "matmul"), ("nvjet", "matmul"), ("cutlass", "matmul"),
    ("xmma", "matmul"), ("multi_tensor", "optimizer"), ("adam", "optimizer"),
)
SIZES = {"large": (12, 64), "base": (8, 64)}  # heads, head dim of the registered sizes used here


def kernel_group(name: str) -> str:
    """The group of a CUDA kernel name (see ``GROUPS``), else ``"other"``."""
    low = name.lower()
    return next((g for frag, g in GROUPS if frag.lower() in low), "other")


def batches(cells, vocab_size: int) -> dict:
    return {"large": scfm_study.large_batch(cells, vocab_size, False),
            "base": scfm_study.base_batch(cells, False)}


def profile(cells, vocab_size: int, device, variants=("eager", "compiled"), steps: int = 10,
            warmup: int = 8) -> dict:
    """Per-step device milliseconds of each kernel group, and the 12 costliest kernels, for each size, activation
    and step variant (``scfm_study.STEP_VARIANTS``: ``eager`` is the study's loop, ``compiled`` adds the fused
    AdamW and ``SCFM.compile()``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile


    out = {}
    for size, batch in batches(cells, vocab_size).items():
        for variant in variants:
            for act in ("sigmoid", "softmax"):
                model, fused = scfm_study.step_model(act, size, vocab_size, "auto", variant, device)
                it = itertools.repeat(batch)
                train = dict(lr=1e-4, warmup=1, device=device, amp=True, deadline=time.time() + 300, fused=fused)
                scfm_study._train(model, it, steps=warmup, **train)
                with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    hist = scfm_study._train(model, it, steps=steps, **train)
                groups, kernels = defaultdict(float), {}
                for ev in prof.key_averages():
                    us = ev.self_device_time_total
                    if ev.device_type == torch.autograd.DeviceType.CUDA and us > 0:
                        groups[kernel_group(ev.key)] += us / 1e3 / steps
                        kernels[ev.key[:120]] = us / 1e3 / steps
                row = {"groups_ms": dict(sorted(groups.items())), "kernel_ms": sum(groups.values()),
                       "wall_ms": 1e3 * sorted(hist["step_time"])[len(hist["step_time"]) // 2],
                       "top_kernels_ms": dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:12])}
                out[f"{size}/{variant}/{act}"] = row
                parts = "  ".join(f"{g} {ms:.2f}" for g, ms in row["groups_ms"].items())
                print(f"profile {size:5s} {variant:8s} {act:7s} wall {row['wall_ms']:6.1f} ms  kernels "
                      f"{row['kernel_ms']:6.1f} ms  {parts}", flush=True)
                if act == "sigmoid":
                    for name, ms in row["top_kernels_ms"].items():
                        print(f"    {ms:6.2f} ms  {kernel_group(name):13s} {name[:100]}", flush=True)
                del model, prof
                torch.cuda.empty_cache()
    return out


# alternatives per pass of the sigmoid D = 64 kernels (production is whatever CONFIGS holds)
ALTERNATIVES = {
    "fwd": [(128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3), (128, 32, 4, 3)],
    "dkdv": [(64, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 2), (32, 64, 4, 3)],
    "dq": [(64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3)],
}


def tiles(cells, vocab_size: int, rounds: int = 3) -> dict:
    """Attention of one block at each size's shape: production sigmoid and softmax, and each sigmoid alternative,
    forward and backward, ``do_bench`` medians in A/B turns; returns TFLOPS (padding not counted) and ratios."""
    res = {}
    for size, batch in batches(cells, vocab_size).items():
        res[size] = _tiles_at(size, batch, rounds)
        torch.cuda.empty_cache()
    return res


def _calls(qkv, lens, act):
    """``(forward, backward)`` closures of one attention call: a fresh forward; a backward of one retained graph."""
    from gatedzoo.kernels import attention

    out = attention(*qkv, activation=act, seq_lens=lens, backend="triton")
    dout = torch.randn_like(out)

    def fwd():
        attention(*qkv, activation=act, seq_lens=lens, backend="triton")

    def bwd():
        for x in qkv:
            x.grad = None
        out.backward(dout, retain_graph=True)
    return fwd, bwd


class _Variant:
    """Switches the kernels between production and one alternative: a tile of one pass, or a ``FAST_SIGMOID``."""

    def __init__(self, pass_name: str, value, size_class: dict):
        from gatedzoo.kernels import triton_kernels as tk

        self.tk, self.pass_name, self.value, self.cls = tk, pass_name, value, size_class
        self.saved_cfg, self.saved_fast = dict(tk.CONFIGS), tk.FAST_SIGMOID
        c = value
        self.label = f"FAST_SIGMOID={c}" if pass_name == "fast" else f"{pass_name} {c[0]}x{c[1]}w{c[2]}s{c[3]}"

    def on(self):
        if self.pass_name == "fast":
            self.tk.FAST_SIGMOID = self.value
        else:
            self.tk.CONFIGS[(self.pass_name, self.cls[self.pass_name])] = [self.tk._cfg(*self.value)]

    def off(self):
        self.tk.CONFIGS.clear()
        self.tk.CONFIGS.update(self.saved_cfg)
        self.tk.FAST_SIGMOID = self.saved_fast


def _ab(var: _Variant, prod_fn, var_fn, rounds: int) -> tuple[float, float]:
    """Median milliseconds of production and of the variant, timed in turns."""
    import triton

    got = {"A": [], "B": []}
    for _ in range(rounds):
        var.off()
        got["A"].append(triton.testing.do_bench(prod_fn, warmup=25, rep=150))
        var.on()
        got["B"].append(triton.testing.do_bench(var_fn, warmup=25, rep=150))
    var.off()
    return _median(got["A"]), _median(got["B"])


def _tiles_at(size: str, batch: dict, rounds: int) -> dict:
    import triton

    from gatedzoo.kernels import triton_kernels as tk

    heads, dim = SIZES[size]
    lens = (batch["seq_lens"].to(torch.int32) + 1).cuda()  # + CLS, as the model passes them
    b, n = lens.numel(), int(batch["genes"].shape[1]) + 1
    qkv = [torch.randn(b, n, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    flops_fwd = 4 * heads * dim * float((lens.double() ** 2).sum())
    cls = {p: tk._size_class(p, dim, n, False, False, True, False) for p in ("fwd", "dkdv", "dq")}
    entry = {"cells": b, "padded_len": n, "heads": heads, "head_dim": dim,
             "padding_fraction": 1 - float(lens.float().mean()) / n, "size_class": cls}
    prod = {}
    for act in ("sigmoid", "softmax"):
        prod[f"{act} fwd"], prod[f"{act} bwd"] = _calls(qkv, lens, act)
    ms = {name: _median([triton.testing.do_bench(fn, warmup=25, rep=150) for _ in range(rounds)])
          for name, fn in prod.items()}
    entry["production_ms"] = ms
    entry["production_tflops"] = {name: _tflops(flops_fwd, name, t) for name, t in ms.items()}
    print(f"tiles {size}: B={b} N={n} H={heads} D={dim} padding {entry['padding_fraction']:.0%}  "
          + "  ".join(f"{k} {x:.0f}" for k, x in entry["production_tflops"].items()) + " TFLOPS", flush=True)
    rows = []
    for pass_name, value in [(p, c) for p, cs in ALTERNATIVES.items() for c in cs] + [("fast", 2), ("fast", 0)]:
        var = _Variant(pass_name, value, cls)
        try:
            var.on()
            # a new graph, so that the backward runs the variant's formula from its forward
            f_var, b_var = _calls(qkv, lens, "sigmoid")
            f_var()
            b_var()
            torch.cuda.synchronize()
        except Exception as e:  # over a resource limit: report and go on
            print(f"tiles {size}: {var.label}: {type(e).__name__} {str(e)[:100]}", flush=True)
            continue
        finally:
            var.off()
        passes = ("fwd", "bwd") if pass_name == "fast" else ("fwd",) if pass_name == "fwd" else ("bwd",)
        for which in passes:
            t_prod, t_var = _ab(var, prod[f"sigmoid {which}"], f_var if which == "fwd" else b_var, rounds)
            rows.append({"variant": var.label, "pass": which, "time_ratio": t_var / t_prod,
                         "tflops": _tflops(flops_fwd, which, t_var)})
            print(f"tiles {size}: {var.label:28s} {which} time / production {t_var / t_prod:.3f}  "
                  f"({t_var:.3f} vs {t_prod:.3f} ms)", flush=True)
    entry["sigmoid_variants"] = rows
    return entry


def _median(xs):
    return sorted(xs)[len(xs) // 2]


def _tflops(flops_fwd: float, name: str, ms: float) -> float:
    return (2.5 if "bwd" in name else 1.0) * flops_fwd / ms / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", default=str(scfm_study.CELLS))
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=("profile", "tiles"))
    p.add_argument("--variants", default="eager,compiled", help="profile: comma-separated scfm_study.STEP_VARIANTS")
    args = p.parse_args(argv)
    from gatedzoo.data.singlecell import TokenizedCells

    if not torch.cuda.is_available():
        raise SystemExit("scfm_profile: needs a CUDA GPU (the Triton kernels and torch.profiler's device times).")
    cells = TokenizedCells.load(args.cells)
    vocab_size = len(cells.meta["zoo_metadata"]["gene_vocab"]["genes"]) + 2
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    import triton
    info["triton"] = triton.__version__
    print(json.dumps(info), flush=True)
    if args.only != "tiles":
        info["profile"] = profile(cells, vocab_size, torch.device("cuda"), tuple(args.variants.split(",")))
    if args.only != "profile":
        info["tiles"] = tiles(cells, vocab_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scfm_profile.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
