"""Tile-config sweep for the Triton kernels (bf16, dense, non-causal): prints every config's time per shape.

Used to choose ``triton_kernels.CONFIGS`` and ``WINDOW_TILES``; see ``benchmarks/NOTES.md``.
``python benchmarks/sweep.py`` (long-sequence tiles, both dQ modes); ``--windows`` (small-window forward: packed
tiles against the one-window-per-program kernel), ``--gate`` (fused-gate overhead from paired calls; ``--regs``
adds each compiled kernel's registers, spills and shared memory, ``--ir`` its TTGIR layout conversions, ``--dump``
its TTGIR / PTX / cubin, ``--profile`` the device time per kernel and graphed replays), ``--d64`` (D = 64 tiles),
``--dq-pair`` (atomic against separate dQ, paired calls),
``--d128`` (D = 128 tiles the v3 sweep left out, at N = 16384, 4096, 1024 and causal 1024).
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import re
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import HIDDEN, TOKENS, attention, bench, ceilings, clear_grads, gate_rows, paired_ms, rand, tk  # noqa: E402

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
        for refined in ("d128-short", "d128-causal"):
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
    for fn in (tk._attn_fwd, tk._attn_bwd_dkdv):
        for caches in fn.device_caches.values():
            for ck in caches[0].values():
                ck._init_handles()
                consts = {fn.arg_names[k[0] if isinstance(k, tuple) else k]: v
                          for k, v in getattr(ck.src, "constants", {}).items()
                          if (k[0] if isinstance(k, tuple) else k) < len(fn.arg_names)}
                shown = {n: consts.get(n) for n in ("GATE", "CAUSAL", "ACT", "BLOCK_M", "BLOCK_N", "EVEN")}
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
    args = parser.parse_args()
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
    tk.FAST_SIGMOID = False
    run(16384, 128, "atomic")


if __name__ == "__main__":
    main()
