"""Tile-config sweep for the Triton kernels (bf16, dense, non-causal): prints every config's time per shape.

Used to choose ``triton_kernels.CONFIGS`` and ``WINDOW_TILES``; see ``benchmarks/NOTES.md``.
``python benchmarks/sweep.py`` (long-sequence tiles, both dQ modes); ``--windows`` (small-window forward: packed
tiles against the one-window-per-program kernel), ``--gate`` (fused-gate overhead from paired calls; ``--regs``
adds each compiled kernel's registers, spills and shared memory, ``--ir`` its TTGIR layout conversions, ``--dump``
its TTGIR / PTX / cubin, ``--profile`` the device time per kernel and graphed replays), ``--d64`` (D = 64 tiles),
``--dq-pair`` (atomic against separate dQ, paired calls),
``--d128`` (D = 128 tiles the v3 sweep left out, at N = 16384, 4096, 1024 and causal 1024),
``--bwd-tiles`` (v9: dK/dV and dQ tiles of the separate-dQ backward, paired calls), ``--short-tiles`` (v9: forward
tiles for dense, padded, packed and causal calls against the dense production tile, paired graph replays; ``--shapes``
picks the D x N), ``--ab`` (v9: pairs of tiles timed back to back with ``do_bench`` in turns — the check a tile
choice needs, since paired single calls run at the higher clocks of a GPU that is not at its power limit).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import math
import re
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import (  # noqa: E402
    HIDDEN,
    TOKENS,
    attention,
    bench,
    ceilings,
    clear_grads,
    gate_rows,
    padded_lengths,
    paired_ms,
    quartiles,
    rand,
    tk,
)

cfg = tk._cfg
SWEEP = {
    ("fwd", "d128"): [cfg(128, 128, 8, 2), cfg(128, 128, 8, 3), cfg(128, 64, 8, 3), cfg(128, 64, 4, 3),
                      cfg(64, 128, 4, 3)],
    ("fwd", "d64"): [cfg(128, 128, 8, 3), cfg(128, 128, 4, 3), cfg(128, 64, 4, 3), cfg(128, 64, 8, 4),
                     cfg(64, 64, 4, 3), cfg(128, 64, 4, 4), cfg(128, 64, 8, 3), cfg(128, 32, 4, 3)],
    ("dkdv", "d128"): [cfg(64, 128, 8, 2), cfg(64, 128, 8, 1), cfg(64, 128, 8, 3), cfg(32, 128, 8, 2),
                       cfg(64, 64, 4, 2), cfg(128, 64, 8, 2), cfg(128, 128, 8, 1)],
    ("dkdv", "d64"): [cfg(64, 128, 8, 2), cfg(64, 128, 4, 3), cfg(128, 128, 8, 2)],
    ("dq", "d128"): [cfg(128, 64, 8, 2), cfg(128, 64, 8, 3), cfg(64, 64, 4, 2), cfg(128, 128, 8, 2)],
}
# v7 (NOTES.md): the production tile first, then what v3 did not try: deeper pipelines, 32-row query steps in
# dK/dV (half the [keys, queries] temporaries per step, so room for another stage), and 64-row forward tiles
# (finer causal granularity and twice the programs at short N)
SWEEP_D128 = {
    ("fwd", "d128"): [cfg(128, 64, 8, 3), cfg(128, 64, 8, 4), cfg(64, 64, 4, 3), cfg(64, 64, 4, 4),
                      cfg(128, 32, 4, 3), cfg(64, 128, 8, 3)],
    ("dkdv", "d128"): [cfg(64, 128, 8, 3), cfg(64, 128, 8, 4), cfg(32, 128, 8, 3), cfg(32, 128, 8, 4),
                       cfg(32, 128, 8, 5), cfg(32, 128, 4, 3), cfg(64, 64, 4, 3), cfg(32, 64, 4, 4)],
}

# v9: the backward tiles again, now that the separate dQ kernel is the default (v3 chose the dK/dV tile with atomic
# dQ, whose kernel held a float32 dQ tile as well and sat at 255 registers). First entry of each list: production.
BWD_TILES = {
    128: {"dkdv": [cfg(64, 128, 8, 3), cfg(128, 128, 8, 2), cfg(128, 128, 8, 1), cfg(64, 128, 8, 2),
                   cfg(64, 128, 4, 3), cfg(128, 64, 8, 3), cfg(64, 64, 4, 3), cfg(32, 128, 4, 3)],
          "dq": [cfg(128, 64, 8, 3), cfg(128, 128, 8, 2), cfg(128, 64, 8, 2), cfg(128, 64, 4, 3), cfg(64, 64, 4, 3),
                 cfg(128, 32, 4, 3), cfg(64, 128, 8, 3)]},
    # production first (the v9 choices): bwd_tiles times every other entry against the first
    64: {"dkdv": [cfg(128, 64, 4, 3), cfg(64, 64, 4, 3), cfg(32, 128, 4, 3), cfg(64, 128, 8, 2), cfg(128, 128, 8, 2),
                  cfg(64, 128, 4, 3), cfg(128, 128, 8, 3), cfg(128, 128, 4, 2), cfg(128, 64, 8, 3)],
         "dq": [cfg(128, 64, 4, 3), cfg(128, 64, 8, 2), cfg(128, 128, 8, 2), cfg(64, 64, 4, 3), cfg(128, 128, 8, 3),
                cfg(128, 32, 4, 3), cfg(128, 64, 8, 3)]},
}
# v9: short-sequence forward tiles for the calls whose last tile is ragged (padding, packed varlen) or triangular
# (causal); the v9 run also had 64x64 x 4 warps x 4 stages, 64x128 x 4 warps and 64x32 x 2 warps, all far slower
SHORT_TILES = [cfg(128, 32, 4, 3), cfg(64, 64, 4, 3), cfg(64, 32, 4, 3), cfg(128, 64, 8, 3), cfg(128, 64, 4, 3),
               cfg(64, 64, 4, 2), cfg(64, 32, 4, 4)]

def _label(c: triton.Config) -> str:
    return f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}w{c.num_warps}s{c.num_stages}"


@contextlib.contextmanager
def _tiles_restored():
    """Run a block that rewrites ``triton_kernels.CONFIGS``; the production tiles are back afterwards. Yields them."""
    saved = dict(tk.CONFIGS)
    try:
        yield saved
    finally:
        tk.CONFIGS.clear()
        tk.CONFIGS.update(saved)


def _retained_backward(inputs, out, dout) -> None:
    """One backward of a retained graph, the inputs' gradients cleared first (a timed call of ``do_bench``)."""
    clear_grads(inputs)
    out.backward(dout, retain_graph=True)


def _backward_with(tiles: dict, out: torch.Tensor, dout: torch.Tensor) -> None:
    tk.CONFIGS.update(tiles)
    out.backward(dout, retain_graph=True)


def bwd_tiles(shapes=((128, 16384), (128, 4096), (128, 1024), (64, 16384), (64, 1024)), iters: int = 20) -> None:
    """Separate-dQ backward with each ``BWD_TILES`` alternative for one pass (the other pass on its production tile),
    in paired calls against production; every variant's gradients are checked against production's first."""
    mode = tk.BWD_DQ_MODE
    tk.BWD_DQ_MODE = "separate"
    with _tiles_restored():
        for D, N in shapes:
            B, H = TOKENS // N, HIDDEN // D
            q, k, v = (rand(B, N, H, D) for _ in range(3))
            out = attention(q, k, v, sigmoid_bias=-math.log(N))
            dout = torch.randn_like(out)
            size = tk._size_class("dkdv", D, N, False, False)
            base = {(p, size): [BWD_TILES[D][p][0]] for p in ("dkdv", "dq")}
            clear = functools.partial(clear_grads, (q, k, v))
            variants, ref = {}, None
            for pass_name in ("dkdv", "dq"):
                for i, c in enumerate(BWD_TILES[D][pass_name]):
                    if pass_name == "dq" and i == 0:
                        continue  # production with production: the dkdv list's first entry
                    fn = functools.partial(_backward_with, {**base, (pass_name, size): [c]}, out, dout)
                    try:
                        clear()
                        fn()
                        torch.cuda.synchronize()
                    except Exception as e:  # a tile over the shared-memory or register limit: report and go on
                        print(f"bwd D={D} N={N} {pass_name} {_label(c)}: {type(e).__name__} {str(e)[:80]}",
                              flush=True)
                        continue
                    grads = [x.grad.float() for x in (q, k, v)]
                    ref = grads if ref is None else ref
                    err = max((a - b).abs().max().item() for a, b in zip(grads, ref))
                    variants[f"{pass_name} {_label(c)}"] = (fn, err)
            t = paired_ms({name: fn for name, (fn, _) in variants.items()}, iters,
                          prepare=dict.fromkeys(variants, clear))
            flops = 2.5 * 4 * B * H * N * N * D
            for i, (name, (_, err)) in enumerate(variants.items()):
                med, lo, hi = quartiles(t[i] / t[0])
                print(f"bwd D={D:3d} N={N:5d} {name:20s} {flops / t[i].median().item() / 1e9:6.1f} TFLOPS (2.5x "
                      f"credit)  time / production {med:.3f} [{lo:.3f}, {hi:.3f}]  max|grad - production| {err:.2e}",
                      flush=True)
            del q, k, v, out, dout, variants
            torch.cuda.empty_cache()
    tk.BWD_DQ_MODE = mode


# v9: steady-state A/B of tile choices (``--ab``): (D, N, call, {(pass, class): tiles} for A, the same for B); the
# class must be the one the launcher picks for the call (``triton_kernels._size_class``), or A and B run one tile
AB = [
    (128, 16384, "dense", {("fwd", "d128"): [cfg(128, 64, 8, 3)]}, {("fwd", "d128"): [cfg(64, 64, 4, 3)]}),
    (64, 16384, "dense", {("fwd", "d64"): [cfg(128, 64, 4, 3)]}, {("fwd", "d64"): [cfg(64, 64, 4, 3)]}),
    (128, 1024, "dense", {("fwd", "d128-short"): [cfg(128, 32, 4, 3)]}, {("fwd", "d128-short"): [cfg(64, 32, 4, 3)]}),
    (128, 1024, "seq_lens", {("fwd", "d128-ragged"): [cfg(128, 32, 4, 3)]},
     {("fwd", "d128-ragged"): [cfg(64, 32, 4, 3)]}),
    (128, 1024, "cu_seqlens+max", {("fwd", "d128-ragged"): [cfg(128, 32, 4, 3)]},
     {("fwd", "d128-ragged"): [cfg(64, 32, 4, 3)]}),
    (128, 1024, "causal", {("fwd", "d128-causal"): [cfg(64, 64, 4, 3)]}, {("fwd", "d128-causal"): [cfg(64, 32, 4, 3)]}),
    (128, 4096, "causal", {("fwd", "d128-causal"): [cfg(64, 64, 4, 3)]}, {("fwd", "d128-causal"): [cfg(64, 32, 4, 3)]}),
    (64, 1024, "dense", {("fwd", "d64"): [cfg(128, 64, 4, 3)]}, {("fwd", "d64"): [cfg(64, 64, 4, 3)]}),
    (64, 1024, "causal", {("fwd", "d64-causal"): [cfg(128, 64, 4, 3)]}, {("fwd", "d64-causal"): [cfg(64, 64, 4, 3)]}),
    (64, 1024, "bwd", {("dkdv", "d64"): [cfg(64, 64, 4, 3)], ("dq", "d64"): [cfg(128, 64, 8, 2)]},
     {("dkdv", "d64"): [cfg(128, 64, 4, 3)], ("dq", "d64"): [cfg(128, 64, 4, 3)]}),
    (64, 16384, "bwd", {("dkdv", "d64"): [cfg(64, 64, 4, 3)], ("dq", "d64"): [cfg(128, 64, 8, 2)]},
     {("dkdv", "d64"): [cfg(128, 64, 4, 3)], ("dq", "d64"): [cfg(128, 64, 4, 3)]}),
    (128, 4096, "bwd", {("dq", "d128"): [cfg(128, 64, 8, 3)]}, {("dq", "d128"): [cfg(128, 32, 4, 3)]}),
]
# v10: the 32-query dK/dV step that made the softmax backward 1.8-2 x faster at D = 64 (``--softmax-tiles``), for the
# sigmoid backward, whose v9 choice came from paired single calls (``--bwd-tiles``)
AB_V10 = [
    (64, 16384, "bwd", {("dkdv", "d64"): [cfg(128, 64, 4, 3)]}, {("dkdv", "d64"): [cfg(32, 128, 4, 3)]}),
    (64, 1024, "bwd", {("dkdv", "d64"): [cfg(128, 64, 4, 3)]}, {("dkdv", "d64"): [cfg(32, 128, 4, 3)]}),
    (128, 16384, "bwd", {("dkdv", "d128"): [cfg(64, 128, 8, 3)]}, {("dkdv", "d128"): [cfg(32, 128, 8, 3)]}),
    (128, 1024, "bwd", {("dkdv", "d128"): [cfg(64, 128, 8, 3)]}, {("dkdv", "d128"): [cfg(32, 128, 8, 3)]}),
]
# the forward calls: (causal, varlen) of each, which with D and N give the launcher's tile class
FWD_CALLS = {"dense": (False, False), "seq_lens": (False, True), "cu_seqlens+max": (False, True),
             "causal": (True, False)}


def _call(D: int, N: int, call: str):
    """The benchmark-shaped call ``call`` (a ``FWD_CALLS`` name, 25 % padding for the varlen ones, or ``"bwd"``: the
    dense backward of one retained graph) as ``(fn, effective FLOPs)``."""
    B, H = TOKENS // N, HIDDEN // D
    bias = -math.log(N)
    q, k, v = (rand(B, N, H, D, grad=call == "bwd") for _ in range(3))
    flops = 4 * B * H * N * N * D
    if call == "dense":
        return functools.partial(attention, q, k, v, sigmoid_bias=bias), flops
    if call == "causal":
        return functools.partial(attention, q, k, v, sigmoid_bias=bias, causal=True), flops / 2
    if call == "bwd":
        out = attention(q, k, v, sigmoid_bias=bias)
        return functools.partial(_retained_backward, (q, k, v), out, torch.randn_like(out)), 2.5 * flops
    lens, flops, seq_lens, cu = padded_lengths(N, D, 0.25, torch.Generator().manual_seed(0))
    if call == "seq_lens":
        return functools.partial(attention, q, k, v, sigmoid_bias=bias, seq_lens=seq_lens), flops
    qp, kp, vp = (rand(int(lens.sum()), H, D, grad=False) for _ in range(3))
    return functools.partial(attention, qp, kp, vp, sigmoid_bias=bias, cu_seqlens=cu,
                             max_seqlen=int(lens.max())), flops


def _graph_with(size: str, c: triton.Config, fn) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    tk.CONFIGS[("fwd", size)] = [c]
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def short_tiles(shapes=((128, 1024), (64, 1024), (128, 4096)), iters: int = 100) -> None:
    """Forwards replayed from CUDA graphs in paired calls, per shape: dense on its production tile against each
    ``FWD_CALLS`` call (dense, 25 % padding as ``seq_lens`` and as ``cu_seqlens`` + ``max_seqlen``, causal) under each
    ``SHORT_TILES`` alternative. Prints padded / dense effective TFLOPS (target ≥ 0.9), causal / dense time (target
    ≤ 0.6) and each output's max |difference| from the same call on its production tile."""
    for D, N in shapes:
        with torch.no_grad(), _tiles_restored() as prod_tiles:
            cases = {name: (tk._size_class("fwd", D, N, False, causal, varlen), *_call(D, N, name))
                     for name, (causal, varlen) in FWD_CALLS.items()}  # name: (tile class, call, effective FLOPs)
            flops0 = cases["dense"][2]
            ref = {name: fn() for name, (_, fn, _) in cases.items()}  # production tiles
            prod = {name: prod_tiles[("fwd", size)][0] for name, (size, _, _) in cases.items()}
            graphs = {("dense", "production"): _graph_with(cases["dense"][0], prod["dense"], cases["dense"][1])}
            for c in SHORT_TILES:
                for name, (size, fn, _) in cases.items():
                    try:
                        graphs[name, _label(c)] = _graph_with(size, c, fn)
                    except Exception as e:  # over a resource limit: report and go on
                        print(f"short D={D} N={N} {name} {_label(c)}: {type(e).__name__} {str(e)[:80]}", flush=True)
            t = paired_ms({key: g.replay for key, (g, _) in graphs.items()}, iters)
        for i, ((name, tile), (_, out)) in enumerate(graphs.items()):
            f = cases[name][2]
            if name == "causal":
                med, lo, hi = quartiles(t[i] / t[0])
                what = f"causal / dense time {med:.3f} [{lo:.3f}, {hi:.3f}]"
            else:
                med, lo, hi = quartiles(f / t[i] / (flops0 / t[0]))
                what = f"effective TFLOPS / dense {med:.3f} [{lo:.3f}, {hi:.3f}]"
            err = (out.float() - ref[name].float()).abs().max().item()
            mark = " (production)" if tile == "production" or tile == _label(prod[name]) else ""
            print(f"short D={D:3d} N={N:5d} {name:14s} {tile:11s} {t[i].median().item():.4f} ms "
                  f"{f / t[i].median().item() / 1e9:6.1f} TFLOPS  {what}  max|out - production| {err:.1e}{mark} "
                  f"({iters} paired replays)", flush=True)
        del cases, graphs, ref
        torch.cuda.empty_cache()


def ab(pairs=AB, reps: int = 4) -> None:
    """Steady state: ``do_bench`` (back-to-back calls, as a training loop issues them, so the GPU sits at its power
    limit) of each ``AB`` pair in turns, ``reps`` rounds. ``paired_ms`` times single calls after a flush, at the
    clocks of a GPU that is not yet power-limited; v9 found that this can reverse a ranking of tiles."""
    for D, N, call, a, b in pairs:
        fn, flops = _call(D, N, call)
        got = {"A": [], "B": []}
        with _tiles_restored():
            for _ in range(reps):
                for name, tiles in (("A", a), ("B", b)):
                    tk.CONFIGS.update(tiles)
                    got[name].append(flops / triton.testing.do_bench(fn, warmup=50, rep=300) / 1e9)
        med = {name: sorted(xs)[len(xs) // 2] for name, xs in got.items()}
        desc = {name: ",".join(f"{p} {s}:{'/'.join(_label(c) for c in cs)}" for (p, s), cs in tiles.items())
                for name, tiles in (("A", a), ("B", b))}
        print(f"ab D={D:3d} N={N:5d} {call:14s} A {desc['A']} {' '.join(f'{x:.0f}' for x in got['A'])} | "
              f"B {desc['B']} {' '.join(f'{x:.0f}' for x in got['B'])} | B/A {med['B'] / med['A']:.3f} "
              "(TFLOPS, medians)", flush=True)
        del fn
        torch.cuda.empty_cache()

# softmax backward tiles (``--softmax-tiles``): the production tile first. On the sigmoid-tuned v9 tile the D = 64
# softmax dK/dV spilled (82 registers with ``seq_lens``) and the backward ran at 146-195 TFLOPS, dense or not
SOFTMAX_BWD = {
    64: {"dkdv": [cfg(128, 64, 4, 3), cfg(64, 64, 4, 3), cfg(64, 128, 8, 2), cfg(128, 64, 8, 3), cfg(64, 64, 4, 2),
                  cfg(32, 128, 4, 3)],
         "dq": [cfg(128, 64, 4, 3), cfg(128, 64, 8, 3), cfg(64, 64, 4, 3)]},
    128: {"dkdv": [cfg(64, 128, 8, 3), cfg(64, 128, 8, 2), cfg(32, 128, 8, 3), cfg(64, 64, 4, 3),
                   cfg(128, 64, 8, 3)],
          "dq": [cfg(128, 64, 8, 3), cfg(128, 64, 8, 2), cfg(64, 64, 4, 3)]},
}


def softmax_tiles(shapes=((64, 8192), (128, 8192), (64, 1024)), reps: int = 2) -> None:
    """Steady-state (``do_bench``) softmax backward through the Triton kernels, dense and with full ``seq_lens``,
    under each ``SOFTMAX_BWD`` tile of one pass (the other pass on production); time / production's, production
    timed before and after each block, and each variant's max |gradient - production's|."""
    for D, N in shapes:
        B, H = TOKENS // N, HIDDEN // D
        q, k, v = (rand(B, N, H, D) for _ in range(3))
        lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
        flops = 2.5 * 4 * B * H * N * N * D
        size = tk._size_class("dkdv", D, N, False, False)
        for call, extra in (("dense", {}), ("seq_lens", {"seq_lens": lens})):
            with _tiles_restored() as prod:
                out = attention(q, k, v, activation="softmax", backend="triton", **extra)
                backward = functools.partial(_retained_backward, (q, k, v), out, torch.randn_like(out))
                backward()
                ref = [x.grad.float().clone() for x in (q, k, v)]
                t0 = [triton.testing.do_bench(backward, warmup=25, rep=200)]
                rows = []
                for pass_name in ("dkdv", "dq"):
                    for c in SOFTMAX_BWD[D][pass_name][1:]:
                        tk.CONFIGS.update(prod)
                        tk.CONFIGS[(pass_name, size)] = [c]
                        try:
                            backward()
                            torch.cuda.synchronize()
                        except Exception as e:  # over a resource limit: report and go on
                            print(f"softmax D={D} N={N} {call} {pass_name} {_label(c)}: {type(e).__name__} "
                                  f"{str(e)[:80]}", flush=True)
                            continue
                        err = max((x.grad.float() - r).abs().max().item() for x, r in zip((q, k, v), ref))
                        ms = min(triton.testing.do_bench(backward, warmup=25, rep=200) for _ in range(reps))
                        rows.append((f"{pass_name} {_label(c)}", ms, err))
                tk.CONFIGS.update(prod)
                t0.append(triton.testing.do_bench(backward, warmup=25, rep=200))
            base = sum(t0) / 2
            print(f"softmax D={D:3d} N={N:5d} {call:8s} production {flops / base / 1e9:6.1f} TFLOPS "
                  f"({t0[0]:.3f} / {t0[1]:.3f} ms before / after)", flush=True)
            for name, ms, err in rows:
                print(f"softmax D={D:3d} N={N:5d} {call:8s} {name:18s} {flops / ms / 1e9:6.1f} TFLOPS  time / "
                      f"production {ms / base:.3f}  max|grad - production| {err:.1e}", flush=True)
            del out, backward
        del q, k, v
        torch.cuda.empty_cache()


def _profile(label: str, fn, calls: int) -> None:
    """Print the mean device time of every kernel that ``calls`` calls of ``fn`` launch (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", 0)
        if total > 0:
            print(f"profile {label:16s} {e.key[:60]:60s} calls {e.count:4d}  mean {total / e.count:9.1f} us",
                  flush=True)


def profile_gate(N: int = 4096, D: int = 128, calls: int = 30) -> None:
    """Device time per kernel, forward and backward, with and without the gate (``torch.profiler``, ``calls`` calls
    each): tells the fused kernels' own time from the gate's backward pass and anything else a gated call launches;
    then the forwards replayed from CUDA graphs in pairs (no host in the figure)."""
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = (rand(B, N, H, D) for _ in range(3))
    gates = {"ungated": None, "headwise": rand(B, N, H), "elementwise": rand(B, N, H, D)}
    for name, g in gates.items():
        fn = functools.partial(attention, q, k, v, sigmoid_bias=-math.log(N), gate=g)
        _profile(name + " fwd", fn, calls)
        out = fn()
        _profile(name + " bwd", functools.partial(out.backward, torch.randn_like(out), retain_graph=True), calls)
    graphs = {}
    with torch.no_grad():
        for name, g in gates.items():
            graphs[name] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[name]):
                attention(q, k, v, sigmoid_bias=-math.log(N), gate=g)
    t = paired_ms({name: graph.replay for name, graph in graphs.items()}, 100)
    for i, name in enumerate(graphs):
        print(f"graphed {name:12s} {t[i].median().item():.4f} ms, {(t[i] / t[0]).median().item() - 1:+.2%} over "
              "ungated (100 paired replays)", flush=True)


def dq_pair(shapes=((128, 16384), (128, 4096), (128, 1024), (64, 16384), (64, 1024)), iters: int = 30) -> None:
    """Atomic dQ (one pass, 5 products, plus a float32 dQ buffer to zero and convert) against the separate dQ kernel
    (7 products, dQ written once in the input type), backward of the same graph in paired calls (``paired_ms``)."""
    for D, N in shapes:
        B, H = TOKENS // N, HIDDEN // D
        q, k, v = (rand(B, N, H, D) for _ in range(3))
        out = attention(q, k, v, sigmoid_bias=-math.log(N))
        dout = torch.randn_like(out)

        clear = functools.partial(clear_grads, (q, k, v))
        before = tk.BWD_DQ_MODE
        t = paired_ms({m: functools.partial(_backward_in_mode, m, out, dout) for m in ("atomic", "separate")}, iters,
                      prepare={"atomic": clear, "separate": clear})
        tk.BWD_DQ_MODE = before
        flops = 2.5 * 4 * B * H * N * N * D
        ratio = (t[1] / t[0]).median().item()
        print(f"dq D={D:3d} N={N:5d}  atomic {flops / t[0].median().item() / 1e9:6.1f}  separate "
              f"{flops / t[1].median().item() / 1e9:6.1f} TFLOPS (2.5x credit)  separate / atomic time {ratio:.3f} "
              f"({iters} pairs)", flush=True)
        del q, k, v, out, dout
        torch.cuda.empty_cache()


def _backward_in_mode(mode: str, out: torch.Tensor, dout: torch.Tensor) -> None:
    tk.BWD_DQ_MODE = mode
    out.backward(dout, retain_graph=True)


def use(sweep: dict) -> None:
    """Put a sweep's lists into ``CONFIGS``; a D = 128 forward list also replaces the short and causal classes."""
    tk.CONFIGS.update(sweep)
    if ("fwd", "d128") in sweep:
        for refined in ("d128-short", "d128-causal", "d128-ragged"):
            tk.CONFIGS[("fwd", refined)] = sweep[("fwd", "d128")]
    tk._tuned.cache_clear()


def timings(pass_name: str, size: str) -> str:
    tuner = tk._tuned(pass_name, size)
    got = getattr(tuner, "configs_timings", None) or {}
    parts = []
    for c, t in got.items():
        ms = t[0] if isinstance(t, (list, tuple)) else t
        parts.append(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}w{c.num_warps}s{c.num_stages}:{ms:.3f}")
    return f"{pass_name}/{size} best {tuner.best_config} | " + " ".join(parts)


def run(N: int, D: int, mode: str, causal: bool = False) -> None:
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
    bias = -math.log(N)
    flops = 4 * B * H * N * N * D / (2 if causal else 1)
    tk.BWD_DQ_MODE = mode
    out = attention(q, k, v, sigmoid_bias=bias, causal=causal)
    dout = torch.randn_like(out)
    out.backward(dout, retain_graph=True)  # the timed calls below reuse the graph
    f = triton.testing.do_bench(lambda: attention(q, k, v, sigmoid_bias=bias, causal=causal), warmup=25, rep=100)
    b = triton.testing.do_bench(lambda: out.backward(dout, retain_graph=True), warmup=25, rep=100,
                                grad_to_none=[q, k, v])
    print(f"D={D} N={N} causal={causal} dq={mode}: fwd {flops / f / 1e9:.0f} bwd {2.5 * flops / b / 1e9:.0f} TFLOPS "
          f"({f:.3f} / {b:.3f} ms)", flush=True)
    # the classes the launcher itself picks for this shape
    for pass_name in ("fwd", "dkdv", "dq") if mode == "separate" else ("fwd", "dkdv"):
        print("  " + timings(pass_name, tk._size_class(pass_name, D, N, False, causal)))


# Small-window alternatives, forward: ``None`` = the general kernel (one window per program), ``(BLOCK, warps)`` =
# the packed-window kernel (at N = 49 one window per tile), a ``triton.Config`` = the general kernel's "s64" tile.
WINDOW_SWEEP = {
    7: [None, (16, 2), (32, 2), (32, 4), (64, 4)],
    14: [None, (32, 2), (32, 4), (64, 4)],
    16: [None, (32, 2), (32, 4), (64, 4)],
    49: [cfg(64, 64, 4, 1), (64, 2), (64, 4), (64, 8)],
}


def windows(copy_gbps: float, n_windows: int = 262144, H: int = 4, D: int = 32) -> None:
    """The small-window benchmark's shapes (``attention.window_rows``) under every ``WINDOW_SWEEP`` alternative."""
    saved_tiles, saved_s64 = list(tk.WINDOW_TILES), tk.CONFIGS[("fwd", "s64")]
    for N, alternatives in WINDOW_SWEEP.items():
        side = math.ceil(math.sqrt(N))
        idx = torch.arange(N)
        pos = torch.stack([idx // side, idx % side], 1).cuda()
        decay = -torch.rand(H, device="cuda") * 0.5
        q, k, v = (rand(n_windows, N, H, D, grad=False) for _ in range(3))
        nbytes = 4 * q.numel() * q.element_size()
        for alt in alternatives:
            if isinstance(alt, triton.Config):
                tk.CONFIGS[("fwd", "s64")] = [alt]
                tk.WINDOW_TILES[:] = []
                label = f"general {alt.kwargs['BLOCK_M']}x{alt.kwargs['BLOCK_N']}w{alt.num_warps}s{alt.num_stages}"
            else:
                tk.WINDOW_TILES[:] = [] if alt is None else [(64, alt[0], alt[1])]
                label = "general (one window per program)" if alt is None else f"packed {alt[0]} rows w{alt[1]}"
            ms = bench(functools.partial(attention, q, k, v, decay=decay, positions=pos))
            gbps = nbytes / ms / 1e6
            share = 100 * gbps / copy_gbps
            print(f"window N={N:2d} {label:34s} {ms:.3f} ms {gbps:6.0f} GB/s = {share:5.1f} % of copy", flush=True)
            tk.WINDOW_TILES[:] = saved_tiles
            tk.CONFIGS[("fwd", "s64")] = saved_s64
        del q, k, v
        torch.cuda.empty_cache()


def registers(ir: bool = False, dump: Path | None = None) -> None:
    """Registers, spills and shared memory of every attention kernel compiled in this process (after ``--gate``:
    the gate variants side by side), with the constexprs that tell the variants apart. ``ir``: also each kernel's
    layout conversions in its TTGIR (how many, and the tensor types they produce), which is where an epilogue
    that broadcasts a gate across the accumulator would pay for a round trip through shared memory."""
    for fn in (tk._attn_fwd, tk._attn_bwd_dkdv, tk._attn_bwd_dq):
        for caches in fn.device_caches.values():
            for ck in caches[0].values():
                ck._init_handles()
                consts = {fn.arg_names[k[0] if isinstance(k, tuple) else k]: v
                          for k, v in getattr(ck.src, "constants", {}).items()
                          if (k[0] if isinstance(k, tuple) else k) < len(fn.arg_names)}
                shown = {n: consts.get(n) for n in ("GATE", "CAUSAL", "ACT", "VARLEN", "FAST", "BLOCK_M", "BLOCK_N",
                                                    "EVEN")}
                print(f"{fn.__name__}: regs {getattr(ck, 'n_regs', '?')} spills {getattr(ck, 'n_spills', '?')} "
                      f"shared {ck.metadata.shared} warps {ck.metadata.num_warps} stages {ck.metadata.num_stages} "
                      f"{shown}", flush=True)
                if dump is not None and fn is tk._attn_fwd:
                    dump.mkdir(parents=True, exist_ok=True)
                    stem = dump / f"fwd_gate{shown['GATE']}_m{shown['BLOCK_M']}n{shown['BLOCK_N']}"
                    for kind in ("ttgir", "ptx"):
                        stem.with_suffix("." + kind).write_text(ck.asm[kind])
                    stem.with_suffix(".cubin").write_bytes(ck.asm["cubin"])
                if ir:
                    converts = re.findall(r"ttg\.convert_layout %\S+ : (tensor<[^>]*>) -> (tensor<[^>]*>)",
                                          ck.asm.get("ttgir", ""))
                    print(f"  {len(converts)} convert_layout: " + "; ".join(
                        f"{n}x {a} -> {b}" for (a, b), n in collections.Counter(converts).items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", action="store_true", help="small-window forward alternatives")
    parser.add_argument("--gate", action="store_true", help="fused-gate overhead (the benchmark's gate rows)")
    parser.add_argument("--d64", action="store_true", help="D = 64 tiles at N = 16384 and 1024 only")
    parser.add_argument("--regs", action="store_true", help="with --gate: registers / spills of each compiled kernel")
    parser.add_argument("--ir", action="store_true", help="with --regs: each kernel's TTGIR layout conversions")
    parser.add_argument("--dump", type=Path, help="with --regs: write each forward kernel's TTGIR, PTX and cubin here")
    parser.add_argument("--profile", action="store_true", help="with --gate: device time per kernel (torch.profiler)")
    parser.add_argument("--dq-pair", action="store_true", help="atomic vs separate dQ backward, paired calls")
    parser.add_argument("--iters", type=int, default=100, help="with --gate: paired calls per variant")
    parser.add_argument("--d128", action="store_true", help="v7: more D = 128 tiles, N = 16384 / 4096 / 1024, causal")
    parser.add_argument("--ab", action="store_true", help="v9: tile pairs in steady state (do_bench in turns)")
    parser.add_argument("--bwd-tiles", action="store_true", help="v9: separate-dQ backward tiles, paired calls")
    parser.add_argument("--shapes", default="128x1024,64x1024,128x4096",
                        help="with --short-tiles: DxN shapes, comma-separated")
    parser.add_argument("--bwd-shapes", default="128x16384,128x4096,128x1024,64x16384,64x1024",
                        help="with --bwd-tiles: DxN shapes (16,384 tokens, hidden 2048)")
    parser.add_argument("--ab-set", choices=("v9", "v10"), default="v9", help="with --ab: which pairs")
    parser.add_argument("--softmax-tiles", action="store_true", help="softmax backward tiles, dense and seq_lens")
    parser.add_argument("--short-tiles", action="store_true", help="v9: N = 1024 padded / packed / causal fwd tiles")
    args = parser.parse_args()
    if args.ab:
        ab(AB_V10 if args.ab_set == "v10" else AB)
        return
    if args.softmax_tiles:
        softmax_tiles()
        return
    if args.bwd_tiles or args.short_tiles:
        if args.short_tiles:
            short_tiles(tuple(tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")))
        if args.bwd_tiles:
            bwd_tiles(tuple(tuple(int(x) for x in shape.split("x")) for shape in args.bwd_shapes.split(",")))
        return
    if args.dq_pair:
        dq_pair()
        return
    if args.d128:
        use(SWEEP_D128)
        for N, causal in ((16384, False), (4096, False), (1024, False), (1024, True), (4096, True)):
            run(N, 128, "atomic", causal)
        return
    if args.windows:
        windows(ceilings()["copy_GBps"])
    if args.gate:
        gate_rows(iters=args.iters)
        if args.regs:
            registers(args.ir, args.dump)
        if args.profile:
            profile_gate()
    if args.d64:
        use(SWEEP)
        for N in (16384, 1024):
            run(N, 64, "atomic")
    if args.windows or args.gate or args.d64:
        return
    use(SWEEP)
    for N, D in ((16384, 128), (1024, 128), (16384, 64), (1024, 64)):
        run(N, D, "atomic")
    tk.CONFIGS[("dkdv", "d128")] = SWEEP[("dkdv", "d128")]
    tk._tuned.cache_clear()
    for N in (16384, 4096):
        run(N, 128, "separate")
    tk.FAST_SIGMOID = 0
    run(16384, 128, "atomic")


if __name__ == "__main__":
    main()
