"""Tile-config sweep for the Triton kernels (bf16, dense, non-causal): prints every config's time per shape.

Used to choose ``triton_kernels.CONFIGS``; see ``benchmarks/NOTES.md``. ``python benchmarks/sweep.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import HIDDEN, TOKENS, attention, rand, tk  # noqa: E402

cfg = tk._cfg
SWEEP = {
    ("fwd", "d128"): [cfg(128, 128, 8, 2), cfg(128, 128, 8, 3), cfg(128, 64, 8, 3), cfg(128, 64, 4, 3),
                      cfg(64, 128, 4, 3)],
    ("fwd", "d64"): [cfg(128, 128, 8, 3), cfg(128, 128, 4, 3), cfg(128, 64, 4, 3), cfg(128, 64, 8, 4),
                     cfg(64, 64, 4, 3)],
    ("dkdv", "d128"): [cfg(64, 128, 8, 2), cfg(64, 128, 8, 1), cfg(64, 128, 8, 3), cfg(32, 128, 8, 2),
                       cfg(64, 64, 4, 2), cfg(128, 64, 8, 2), cfg(128, 128, 8, 1)],
    ("dkdv", "d64"): [cfg(64, 128, 8, 2), cfg(64, 128, 4, 3), cfg(128, 128, 8, 2)],
    ("dq", "d128"): [cfg(128, 64, 8, 2), cfg(128, 64, 8, 3), cfg(64, 64, 4, 2), cfg(128, 128, 8, 2)],
}


def timings(pass_name: str, size: str) -> str:
    tuner = tk._tuned(pass_name, size)
    got = getattr(tuner, "configs_timings", None) or {}
    parts = []
    for c, t in got.items():
        ms = t[0] if isinstance(t, (list, tuple)) else t
        parts.append(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}w{c.num_warps}s{c.num_stages}:{ms:.3f}")
    return f"{pass_name}/{size} best {tuner.best_config} | " + " ".join(parts)


def run(N: int, D: int, mode: str) -> None:
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
    bias = -math.log(N)
    flops = 4 * B * H * N * N * D
    tk.BWD_DQ_MODE = mode
    out = attention(q, k, v, sigmoid_bias=bias)
    dout = torch.randn_like(out)
    out.backward(dout, retain_graph=True)  # the timed calls below reuse the graph
    f = triton.testing.do_bench(lambda: attention(q, k, v, sigmoid_bias=bias), warmup=25, rep=100)
    b = triton.testing.do_bench(lambda: out.backward(dout, retain_graph=True), warmup=25, rep=100,
                                grad_to_none=[q, k, v])
    size = "d64" if D <= 64 else "d128"
    print(f"D={D} N={N} dq={mode}: fwd {flops / f / 1e9:.0f} bwd {2.5 * flops / b / 1e9:.0f} TFLOPS", flush=True)
    print("  " + timings("fwd", size))
    print("  " + timings("dkdv", size))
    if mode == "separate":
        print("  " + timings("dq", size))


def main() -> None:
    tk.CONFIGS.update(SWEEP)
    for N, D in ((16384, 128), (1024, 128), (16384, 64), (1024, 64)):
        run(N, D, "atomic")
    tk.CONFIGS[("dkdv", "d128")] = SWEEP[("dkdv", "d128")]
    tk._tuned.cache_clear()
    for N in (16384, 4096):
        run(N, 128, "separate")
    tk.FAST_SIGMOID = False
    run(16384, 128, "atomic")


if __name__ == "__main__":
    main()
