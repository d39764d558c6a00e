"""Attention benchmark: gatedzoo's Triton kernels against TritonSigmoid, SDPA (flash, cuDNN) and naive PyTorch.

One process, one GPU, bf16. Shapes follow TritonSigmoid's benchmark: 16,384 tokens per batch and hidden 2048
(B = 16384 / N, H = 2048 / D). Times are the median of ``triton.testing.do_bench``. FLOPs: forward 4·B·H·N²·D
(Σ Lᵢ² with padding, halved for causal), backward 2.5 × forward. The small-window regime reports achieved
bandwidth (q, k, v read + out written) against the measured device copy bandwidth.

Usage::

    python benchmarks/attention.py                 # full run, writes docs/benchmarks/attention.{json,md,png}
    python benchmarks/attention.py --quick         # a few shapes, prints only
    python benchmarks/attention.py --launch-check  # short rows eager / graphed / host, N = 1024 padding (paired)
    python benchmarks/attention.py --padding-check # the 25 % padding ratios from paired calls, N = 16384 and 1024
    python benchmarks/attention.py --softmax-check # gatedzoo softmax vs its sigmoid vs SDPA softmax (prints)

Ratios that decide a target (gate overhead, padding) come from ``paired_ms``: single calls alternated in ABBA
order, so the drift of a long run (several % on an H100) cancels; see ``benchmarks/NOTES.md`` (v8).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
try:
    from gatedzoo.kernels import attention
    from gatedzoo.kernels import triton_kernels as tk
except ImportError:  # a bare checkout: resolve gatedzoo.kernels to ./kernels without installing
    import importlib.util
    import types

    pkg = types.ModuleType("gatedzoo")
    pkg.__path__ = [str(ROOT / "gatedzoo")]
    sys.modules["gatedzoo"] = pkg
    spec = importlib.util.spec_from_file_location("gatedzoo.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gatedzoo.kernels"] = mod
    spec.loader.exec_module(mod)
    from gatedzoo.kernels import attention
    from gatedzoo.kernels import triton_kernels as tk

try:
    import triton_sigmoid
except ImportError:
    triton_sigmoid = None

DT = torch.bfloat16
TOKENS, HIDDEN = 16384, 2048
OUT = ROOT / "docs" / "benchmarks"
# TritonSigmoid autotunes 48 configs per sequence-length bucket (~40 s of compilation each): run it at the target
# shapes only, so that one benchmark run fits the device budget.
TS_SHAPES = {(1024, 128), (4096, 128), (16384, 128), (1024, 64), (16384, 64)}


def bench(fn, grad_to_none=None) -> float:
    """Median milliseconds of ``fn``."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def ceilings() -> dict:
    x = torch.empty(2**29, dtype=torch.uint8, device="cuda")  # 512 MiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    a = torch.randn(8192, 8192, dtype=DT, device="cuda")
    b = torch.randn(8192, 8192, dtype=DT, device="cuda")
    mm = bench(lambda: a @ b)
    return {"copy_GBps": 2 * x.numel() / ms / 1e6, "matmul_TFLOPS": 2 * 8192**3 / mm / 1e9}


def rand(*shape, grad=True):
    return torch.randn(*shape, dtype=DT, device="cuda").requires_grad_(grad)


def fwd_bwd_ms(fn, inputs) -> tuple[float, float]:
    """(forward ms, backward ms) of ``fn(*inputs)``; the backward reuses one forward graph."""
    fwd = bench(lambda: fn(*inputs))
    out = fn(*inputs)
    dout = torch.randn_like(out)
    bwd = bench(lambda: out.backward(dout, retain_graph=True), grad_to_none=list(inputs))
    return fwd, bwd


def providers(N: int, D: int, causal: bool, peers: bool = True):
    """name -> (fn, inputs) for the dense long-sequence rows; BTHD inputs except SDPA (BHND).

    ``peers=False`` (the causal rows) keeps gatedzoo and cuDNN only: TritonSigmoid would autotune a separate causal
    kernel (minutes of compilation) and does not skip masked tiles (``specs/kernels.md`` section 1)."""
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
    bias = -math.log(N)
    out = {"gatedzoo": (lambda q, k, v: attention(q, k, v, sigmoid_bias=bias, causal=causal), (q, k, v))}
    if triton_sigmoid is not None and peers and (N, D) in TS_SHAPES:
        out["triton-sigmoid"] = (
            lambda q, k, v: triton_sigmoid.sigmoid_attention(q, k, v, is_causal=causal, sigmoid_bias=bias), (q, k, v))
    qt, kt, vt = (rand(B, H, N, D) for _ in range(3))
    backends = [("sdpa-flash", SDPBackend.FLASH_ATTENTION)] if peers else []
    for name, backend in backends + [("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]:
        def sdpa(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out[name] = (sdpa, (qt, kt, vt))
    if N <= 4096 and peers:
        def naive(q, k, v):
            s = torch.einsum("bhnd,bhmd->bhnm", q, k) * D**-0.5 + bias
            if causal:
                s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
            return torch.sigmoid(s) @ v
        out["naive-torch"] = (naive, (qt, kt, vt))
    return out


def long_rows(Ns, Ds, causal_list) -> list[dict]:
    rows = []
    for D in Ds:
        for N in Ns:
            for causal in causal_list:
                flops = 4 * (TOKENS // N) * (HIDDEN // D) * N * N * D / (2 if causal else 1)
                for name, (fn, inputs) in providers(N, D, causal, peers=not causal).items():
                    try:
                        f, b = fwd_bwd_ms(fn, inputs)
                    except Exception as err:  # a peer that cannot run a shape is reported, not fatal
                        print(f"  {name} D={D} N={N} causal={causal}: {type(err).__name__}: {str(err)[:120]}")
                        continue
                    rows.append(dict(group="long", provider=name, D=D, N=N, causal=causal, padding=0.0, fwd_ms=f,
                                     bwd_ms=b, fwd_tflops=flops / f / 1e9, bwd_tflops=2.5 * flops / b / 1e9))
                    print(f"{name:15s} D={D:3d} N={N:5d} causal={causal!s:5s} fwd {rows[-1]['fwd_tflops']:6.1f} "
                          f"bwd {rows[-1]['bwd_tflops']:6.1f} TFLOPS", flush=True)
                torch.cuda.empty_cache()
    return rows


def padded_lengths(N: int, D: int, pad: float, gen: torch.Generator):
    """Sequence lengths of the padding rows (uniform in [N (1 - pad), N], all N without padding) for the benchmark's
    B = 16384 / N sequences: ``(lens, effective FLOPs 4·H·D·Σ Lᵢ², seq_lens int32 CUDA, cu_seqlens int32 CUDA)``."""
    B, H = TOKENS // N, HIDDEN // D
    lens = torch.randint(int(N * (1 - pad)), N + 1, (B,), generator=gen) if pad > 0 else torch.full((B,), N)
    flops = 4 * H * D * float((lens.double() ** 2).sum())
    cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32).cuda()
    return lens, flops, lens.to(torch.int32).cuda(), cu


def padding_rows(Ns, Ds, pads) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for D in Ds:
        for N in Ns:
            B, H = TOKENS // N, HIDDEN // D
            for pad in pads:
                lens, flops, seq_lens, cu = padded_lengths(N, D, pad, gen)
                q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
                total = int(lens.sum())
                qp, kp, vp = rand(total, H, D), rand(total, H, D), rand(total, H, D)
                bias = -math.log(N)
                cases = {
                    "gatedzoo-seq_lens": (functools.partial(attention, sigmoid_bias=bias, seq_lens=seq_lens),
                                          (q, k, v)),
                    "gatedzoo-cu_seqlens": (functools.partial(attention, sigmoid_bias=bias, cu_seqlens=cu),
                                            (qp, kp, vp)),
                    # the longest length known on the host, as a data loader knows it: no cu_seqlens read-back
                    "gatedzoo-cu_seqlens+max": (functools.partial(attention, sigmoid_bias=bias, cu_seqlens=cu,
                                                                  max_seqlen=int(lens.max())), (qp, kp, vp)),
                }
                for name, (fn, inputs) in cases.items():
                    try:
                        f, b = fwd_bwd_ms(fn, inputs)
                    except Exception as err:
                        print(f"  {name} D={D} N={N} pad={pad}: {type(err).__name__}: {str(err)[:120]}")
                        continue
                    rows.append(dict(group="padding", provider=name, D=D, N=N, causal=False, padding=pad, fwd_ms=f,
                                     bwd_ms=b, fwd_tflops=flops / f / 1e9, bwd_tflops=2.5 * flops / b / 1e9))
                    print(f"{name:22s} D={D:3d} N={N:5d} pad={pad:.2f} fwd {rows[-1]['fwd_tflops']:6.1f} "
                          f"bwd {rows[-1]['bwd_tflops']:6.1f} effective TFLOPS", flush=True)
                del q, k, v, qp, kp, vp
                torch.cuda.empty_cache()
    return rows


def paired_ms(fns: dict, iters: int = 100, prepare: dict | None = None) -> torch.Tensor:
    """Milliseconds of single calls, ``[len(fns), iters]``: every iteration calls each function once, in dict order on
    even iterations and reversed on odd ones (ABBA), each call timed alone with CUDA events after an L2 flush (as
    ``do_bench`` flushes). Calls compared are then milliseconds apart, so the clock and temperature drift of a long
    run (several % on a busy H100) cancels in their ratio; ``prepare[name]()`` runs untimed before each call."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    names = list(fns)
    for name in names:  # warm-up: compiles, and autotunes where a pass has several configs
        for _ in range(3):
            (prepare or {}).get(name, lambda: None)()
            fns[name]()
    ev = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
          for _ in names]
    for it in range(iters):
        for i in (range(len(names)) if it % 2 == 0 else reversed(range(len(names)))):
            (prepare or {}).get(names[i], lambda: None)()
            flush.zero_()
            ev[i][it][0].record()
            fns[names[i]]()
            ev[i][it][1].record()
    torch.cuda.synchronize()
    return torch.tensor([[s.elapsed_time(e) for s, e in row] for row in ev], dtype=torch.float64)


def quartiles(x: torch.Tensor) -> tuple[float, float, float]:
    return tuple(torch.quantile(x, torch.tensor([0.5, 0.25, 0.75], dtype=x.dtype)).tolist())


def gate_rows(N=4096, D=128, iters=100) -> list[dict]:
    """The fused output gate against the ungated kernel and against gate-as-separate-ops, timed by
    :func:`paired_ms` (forwards, then backwards of one retained graph per variant). A variant's overhead is the
    median over iterations of its time over the ungated time of the same iteration, with the quartiles."""
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
    gh, ge = rand(B, N, H), rand(B, N, H, D)
    bias = -math.log(N)
    cases = {
        "ungated": (lambda q, k, v: attention(q, k, v, sigmoid_bias=bias), (q, k, v)),
        "fused-headwise": (lambda q, k, v, g: attention(q, k, v, sigmoid_bias=bias, gate=g), (q, k, v, gh)),
        "fused-elementwise": (lambda q, k, v, g: attention(q, k, v, sigmoid_bias=bias, gate=g), (q, k, v, ge)),
        "separate-headwise": (lambda q, k, v, g: attention(q, k, v, sigmoid_bias=bias) * torch.sigmoid(g)[..., None],
                              (q, k, v, gh)),
        "separate-elementwise": (lambda q, k, v, g: attention(q, k, v, sigmoid_bias=bias) * torch.sigmoid(g),
                                 (q, k, v, ge)),
    }
    names = list(cases)
    fwd = paired_ms({name: functools.partial(fn, *inputs) for name, (fn, inputs) in cases.items()}, iters)
    outs = {name: fn(*inputs) for name, (fn, inputs) in cases.items()}
    douts = {name: torch.randn_like(out) for name, out in outs.items()}

    bwd = paired_ms({name: functools.partial(outs[name].backward, douts[name], retain_graph=True) for name in names},
                    iters, prepare={name: functools.partial(clear_grads, cases[name][1]) for name in names})
    rows = []
    flops = 4 * B * H * N * N * D
    for i, name in enumerate(names):
        row = dict(group="gate", provider=name, D=D, N=N, causal=False, padding=0.0, iters=iters)
        for pas, t in (("fwd", fwd), ("bwd", bwd)):
            ms = t[i].median().item()
            med, lo, hi = quartiles(t[i] / t[0] - 1)
            row.update({f"{pas}_ms": ms, f"{pas}_tflops": (1 if pas == "fwd" else 2.5) * flops / ms / 1e9,
                        f"{pas}_overhead": med, f"{pas}_overhead_iqr": [lo, hi]})
        rows.append(row)
        print(f"gate {name:22s} " + "  ".join(
            f"{p} {row[p + '_ms']:.3f} ms {row[p + '_overhead']:+.1%} [{row[p + '_overhead_iqr'][0]:+.1%}, "
            f"{row[p + '_overhead_iqr'][1]:+.1%}]" for p in ("fwd", "bwd")) + f"  ({iters} paired calls)", flush=True)
    return rows


def _sdpa(backend, q, k, v, mask):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _naive_windows(q, k, v, bias):
    return torch.sigmoid(torch.einsum("bhnd,bhmd->bhnm", q, k) * q.shape[-1] ** -0.5 + bias) @ v


def window_rows(copy_gbps: float, windows=262144, H=4, D=32, Ns=(7, 14, 16, 49)) -> list[dict]:
    """Many tiny windows (Gated-SwinRMT), forward only, with a per-head additive decay over 2-D positions."""
    rows = []
    for N in Ns:
        side = int(math.ceil(math.sqrt(N)))
        idx = torch.arange(N)
        pos = torch.stack([idx // side, idx % side], 1).cuda()
        decay = -torch.rand(H, device="cuda") * 0.5
        dist = (pos[:, None] - pos[None]).abs().sum(-1).float()
        bias_mask = (decay[:, None, None] * dist).to(DT)  # [H, N, N], the same decay as an additive mask
        q, k, v = (rand(windows, N, H, D, grad=False) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        nbytes = 4 * q.numel() * q.element_size()

        cases = {
            "gatedzoo": functools.partial(attention, q, k, v, decay=decay, positions=pos),
            "sdpa-efficient+bias": functools.partial(_sdpa, SDPBackend.EFFICIENT_ATTENTION, qt, kt, vt, bias_mask),
            "sdpa-cudnn-nobias": functools.partial(_sdpa, SDPBackend.CUDNN_ATTENTION, qt, kt, vt, None),
            "naive-torch+bias": functools.partial(_naive_windows, qt, kt, vt, bias_mask - math.log(N)),
        }
        for name, fn in cases.items():
            try:
                ms = bench(fn)
            except Exception as err:
                print(f"  window {name} N={N}: {type(err).__name__}: {str(err)[:120]}")
                continue
            gbps = nbytes / ms / 1e6
            rows.append(dict(group="window", provider=name, D=D, N=N, windows=windows, heads=H, fwd_ms=ms,
                             GBps=gbps, copy_share=gbps / copy_gbps))
            print(f"window N={N:2d} {name:20s} {ms:.3f} ms {gbps:7.0f} GB/s = {100 * gbps / copy_gbps:5.1f} % of copy",
                  flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def _overhead(row: dict, p: str) -> str:
    lo, hi = row[f"{p}_overhead_iqr"]
    return f"{row[f'{p}_overhead']:+.1%} [{lo:+.1%}, {hi:+.1%}]"


def write_outputs(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "attention.json").write_text(json.dumps(result, indent=1))
    rows = result["rows"]
    meta = result["meta"]
    lines = [
        "# Attention benchmark", "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}, triton-sigmoid "
        f"{meta['triton_sigmoid']}; {meta['date']}. Command: `{meta['command']}`.",
        f"Measured ceilings: copy {meta['copy_GBps']:.0f} GB/s (read + write), bf16 matmul "
        f"{meta['matmul_TFLOPS']:.0f} TFLOPS. bf16, median of `triton.testing.do_bench`; forward FLOPs 4·B·H·N²·D "
        "(Σ Lᵢ² with padding, halved for causal), backward 2.5 × forward. Written by `benchmarks/attention.py`.",
        f"gatedzoo's backward computed dQ with the `{meta.get('dq_mode', 'atomic')}` strategy "
        "(`triton_kernels.BWD_DQ_MODE`; `benchmarks/NOTES.md` v8 compares the two).", "",
        "## Long sequences (16,384 tokens, hidden 2048), TFLOPS fwd / bwd", "",
    ]
    long = [r for r in rows if r["group"] == "long"]
    names = list(dict.fromkeys(r["provider"] for r in long))
    lines += ["| D | N | causal | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    keys = sorted({(r["D"], r["N"], r["causal"]) for r in long})
    for D, N, c in keys:
        cells = []
        for n in names:
            hit = [r for r in long if (r["D"], r["N"], r["causal"], r["provider"]) == (D, N, c, n)]
            cells.append(f"{hit[0]['fwd_tflops']:.0f} / {hit[0]['bwd_tflops']:.0f}" if hit else "—")
        lines.append(f"| {D} | {N} | {c} | " + " | ".join(cells) + " |")
    pad = [r for r in rows if r["group"] == "padding"]
    if pad:
        lines += ["", "## Padding (effective TFLOPS, padding not counted), fwd / bwd", "",
                  "| provider | D | N | padding | fwd | bwd |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['provider']} | {r['D']} | {r['N']} | {r['padding']:.0%} | {r['fwd_tflops']:.0f} | "
                  f"{r['bwd_tflops']:.0f} |" for r in pad]
    gate = [r for r in rows if r["group"] == "gate"]
    if gate:
        base = next(r for r in gate if r["provider"] == "ungated")
        lines += ["", f"## Output gate (D={base['D']}, N={base['N']}), ms and overhead over ungated", "",
                  f"{base['iters']} paired single calls per variant (`paired_ms`: ABBA order, each call timed alone "
                  "after an L2 flush); ms are medians, an overhead is the median over iterations of the variant's "
                  "time over the ungated time of the same iteration, [quartiles] beside it.", "",
                  "| variant | fwd ms | fwd overhead | bwd ms | bwd overhead |", "|---|---|---|---|---|"]
        lines += [f"| {r['provider']} | {r['fwd_ms']:.3f} | {_overhead(r, 'fwd')} | {r['bwd_ms']:.3f} | "
                  f"{_overhead(r, 'bwd')} |" for r in gate]
    win = [r for r in rows if r["group"] == "window"]
    if win:
        lines += ["", "## Small windows (forward, 262,144 windows x 4 heads, D = 32, 2-D decay bias)", "",
                  "| N | provider | ms | GB/s | share of copy bandwidth |", "|---|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['provider']} | {r['fwd_ms']:.3f} | {r['GBps']:.0f} | {r['copy_share']:.1%} |"
                  for r in win]
    (OUT / "attention.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for (i, D), (j, pass_name) in [((i, D), (j, p)) for i, D in enumerate((64, 128)) for j, p in
                                   enumerate(("fwd", "bwd"))]:
        ax = axes[i][j]
        for n in names:
            pts = sorted((r["N"], r[f"{pass_name}_tflops"]) for r in long
                         if r["provider"] == n and r["D"] == D and not r["causal"])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=n)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{pass_name}, D={D}, non-causal")
        ax.set_ylabel("TFLOPS")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"bf16 attention on {meta['device']} ({meta['date']})")
    fig.tight_layout()
    fig.savefig(OUT / "attention.png", dpi=110)


def _three_ways(fn) -> tuple[float, float, float, torch.cuda.CUDAGraph]:
    """(eager median ms, CUDA-graph replay median ms, host µs per eager call over 200 calls issued without a sync,
    the graph)."""
    eager = bench(fn)
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return eager, bench(graph.replay), host_us, graph


def launch_rows(iters: int = 200) -> None:
    """The short-N rows whose full-run figures move with the host, three ways (forward, prints only): the
    benchmark's eager median, the same forward replayed from a CUDA graph (device time without Python), and the
    host's time per eager call. Causal against non-causal (causal first, as in the full run, where the causal
    kernels are compiled fresh), then 25 % padding against dense at N = 1024 (``seq_lens`` and
    ``cu_seqlens`` + ``max_seqlen``, effective TFLOPS as in the padding rows), and their ratio from ``iters``
    paired graph replays (:func:`paired_ms`)."""
    for D in (128, 64):
        for N in (1024, 4096):
            B, H = TOKENS // N, HIDDEN // D
            q, k, v = (rand(B, N, H, D, grad=False) for _ in range(3))
            bias = -math.log(N)
            for causal in (True, False, True, False):
                eager, graphed, host_us, _ = _three_ways(
                    functools.partial(attention, q, k, v, sigmoid_bias=bias, causal=causal))
                print(f"launch D={D:3d} N={N:5d} causal={causal!s:5s} eager {eager:.3f} ms  graphed {graphed:.3f} ms  "
                      f"host {host_us:.0f} us/call", flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    N, D = 1024, 128
    B, H = TOKENS // N, HIDDEN // D
    gen = torch.Generator().manual_seed(0)
    graphs, flops, inputs = {}, {}, []  # a graph does not hold its inputs alive: ``inputs`` does
    for pad in (0.0, 0.25):
        lens, flops[pad], seq_lens, cu = padded_lengths(N, D, pad, gen)
        q, k, v = (rand(B, N, H, D, grad=False) for _ in range(3))
        qp, kp, vp = (rand(int(lens.sum()), H, D, grad=False) for _ in range(3))
        cases = {"seq_lens": functools.partial(attention, q, k, v, sigmoid_bias=-math.log(N), seq_lens=seq_lens),
                 "cu_seqlens+max": functools.partial(attention, qp, kp, vp, sigmoid_bias=-math.log(N), cu_seqlens=cu,
                                                     max_seqlen=int(lens.max()))}
        inputs.append(cases)
        for name, fn in cases.items():
            eager, graphed, host_us, graphs[name, pad] = _three_ways(fn)
            print(f"launch D={D} N={N} pad={pad:.2f} {name:14s} eager {flops[pad] / eager / 1e9:6.1f} graphed "
                  f"{flops[pad] / graphed / 1e9:6.1f} effective TFLOPS  host {host_us:.0f} us/call", flush=True)
    # the padded / dense ratio once more from graph replays timed in pairs (paired_ms), so that drift between two
    # separate measurements cannot decide a ratio this close to its 0.9 target
    keys = list(graphs)
    t = paired_ms({key: graphs[key].replay for key in keys}, iters)
    for name in ("seq_lens", "cu_seqlens+max"):
        dense, padded = t[keys.index((name, 0.0))], t[keys.index((name, 0.25))]
        med, lo, hi = quartiles(flops[0.25] / padded / (flops[0.0] / dense))
        print(f"launch D={D} N={N} {name:14s} graphed, {iters} paired calls: 25 % padding / dense effective TFLOPS "
              f"median {med:.3f} [quartiles {lo:.3f}, {hi:.3f}]; dense {flops[0.0] / dense.median().item() / 1e9:.1f}, "
              f"padded {flops[0.25] / padded.median().item() / 1e9:.1f}", flush=True)


def padding_check(iters: int = 50) -> None:
    """The 25 % padding target from paired calls (:func:`paired_ms`; prints only): for ``seq_lens`` and
    ``cu_seqlens`` + ``max_seqlen`` at N = 16384 and 1024 (D = 128), padded and dense calls alternate, forward and
    backward, and each ratio is the median over pairs of padded / dense effective TFLOPS. Eager calls, which at
    N = 1024 include the host (``--launch-check`` has the graphed N = 1024 forward)."""
    D = 128
    for N in (16384, 1024):
        B, H = TOKENS // N, HIDDEN // D
        gen = torch.Generator().manual_seed(0)
        fwd, bwd, flops, keep = {}, {}, {}, []
        for pad in (0.0, 0.25):
            lens, flops[pad], seq_lens, cu = padded_lengths(N, D, pad, gen)
            q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
            qp, kp, vp = (rand(int(lens.sum()), H, D) for _ in range(3))
            cases = {"seq_lens": (functools.partial(attention, q, k, v, sigmoid_bias=-math.log(N), seq_lens=seq_lens),
                                  (q, k, v)),
                     "cu_seqlens+max": (functools.partial(attention, qp, kp, vp, sigmoid_bias=-math.log(N),
                                                          cu_seqlens=cu, max_seqlen=int(lens.max())), (qp, kp, vp))}
            for name, (fn, inputs) in cases.items():
                out = fn()
                keep.append((inputs, out))
                fwd[name, pad] = fn
                bwd[name, pad] = functools.partial(out.backward, torch.randn_like(out), retain_graph=True)
        clear = {key: functools.partial(clear_grads, keep[i][0]) for i, key in enumerate(bwd)}
        for pas, fns, prep in (("fwd", fwd, None), ("bwd", bwd, clear)):
            keys = list(fns)
            t = paired_ms(fns, iters, prepare=prep)
            for name in ("seq_lens", "cu_seqlens+max"):
                dense, padded = t[keys.index((name, 0.0))], t[keys.index((name, 0.25))]
                med, lo, hi = quartiles(flops[0.25] / padded / (flops[0.0] / dense))
                mult = 1 if pas == "fwd" else 2.5
                print(f"padding D={D} N={N:5d} {name:14s} {pas}: 25 % / dense effective TFLOPS {med:.3f} [quartiles "
                      f"{lo:.3f}, {hi:.3f}]; dense {mult * flops[0.0] / dense.median().item() / 1e9:.1f}, padded "
                      f"{mult * flops[0.25] / padded.median().item() / 1e9:.1f} ({iters} pairs)", flush=True)
        del keep, fwd, bwd
        torch.cuda.empty_cache()


def _with_sigmoid_mode(mode, q, k, v, **kwargs):
    """``attention`` with ``triton_kernels.FAST_SIGMOID = mode`` (the backward reads it again: time them together)."""
    tk.FAST_SIGMOID = mode
    return attention(q, k, v, **kwargs)


def softmax_check(Ns=(1024, 8192, 16384), Ds=(64, 128)) -> None:
    """gatedzoo's softmax against its sigmoid (each formula of ``FAST_SIGMOID``) and against SDPA's softmax
    kernels, dense and with full ``seq_lens`` (the single-cell models pass ``seq_lens``), at the benchmark's 16,384
    tokens x hidden 2048; then the registers and spills of every kernel compiled. Prints only."""
    for D in Ds:
        for N in Ns:
            B, H = TOKENS // N, HIDDEN // D
            q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
            lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
            flops = 4 * B * H * N * N * D
            fns = {}
            for act, mode in (("sigmoid", 1), ("sigmoid", 2), ("sigmoid", 0), ("softmax", 1)):
                name = f"gatedzoo-{act}" + (f"-fast{mode}" if act == "sigmoid" else "")
                fns[name] = (functools.partial(_with_sigmoid_mode, mode, activation=act), (q, k, v))
                if mode == 1:
                    fns[f"{name}-seq_lens"] = (
                        functools.partial(_with_sigmoid_mode, mode, activation=act, seq_lens=lens), (q, k, v))
            qt, kt, vt = (rand(B, H, N, D) for _ in range(3))
            for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                fns[name] = (functools.partial(_sdpa, backend, mask=None), (qt, kt, vt))
            for name, (fn, inputs) in fns.items():
                f, b = fwd_bwd_ms(fn, inputs)
                print(f"{name:34s} D={D:3d} N={N:5d} fwd {flops / f / 1e9:6.1f} bwd {2.5 * flops / b / 1e9:6.1f} "
                      f"TFLOPS ({f:.3f} / {b:.3f} ms)", flush=True)
            torch.cuda.empty_cache()
    tk.FAST_SIGMOID = 1
    from sweep import registers  # sweep imports this module: import it late

    registers()


def clear_grads(inputs) -> None:
    """Drop the inputs' ``.grad`` before a timed backward (as ``do_bench``'s ``grad_to_none``), so that the call
    writes fresh gradients instead of adding into the last ones."""
    for x in inputs:
        x.grad = None


def host_profile(calls: int = 300) -> None:
    """Where the host time of one eager call goes (cProfile over ``calls`` forward + backward calls, D = 128,
    N = 1024, causal): the calls are issued without syncs, so the GPU never holds Python up."""
    import cProfile
    import pstats

    B, H, N, D = TOKENS // 1024, HIDDEN // 128, 1024, 128
    fn = functools.partial(attention, rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D),
                           sigmoid_bias=-math.log(N), causal=True)
    dout = torch.randn_like(fn())
    fn().backward(dout)
    torch.cuda.synchronize()
    for label, backward in (("forward", False), ("forward + backward", True)):
        t0 = time.perf_counter()
        for _ in range(calls):
            o = fn()
            if backward:
                o.backward(dout)
        host_us = (time.perf_counter() - t0) / calls * 1e6
        torch.cuda.synchronize()
        print(f"host {label}: {host_us:.0f} us per call ({calls} calls issued without a sync)", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn().backward(dout)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes, no files written")
    parser.add_argument("--recheck", action="store_true", help="short-sequence and window rows only, no files")
    parser.add_argument("--launch-check", action="store_true", help="causal vs non-causal: eager, graphed, host")
    parser.add_argument("--host-profile", action="store_true", help="cProfile of eager forward + backward calls")
    parser.add_argument("--padding-check", action="store_true", help="padding / dense, paired calls")
    parser.add_argument("--softmax-check", action="store_true", help="gatedzoo softmax vs sigmoid vs SDPA softmax")
    parser.add_argument("--dq-mode", default=tk.BWD_DQ_MODE, choices=["atomic", "separate"])
    args = parser.parse_args()
    tk.BWD_DQ_MODE = args.dq_mode
    ceil = ceilings()
    print(f"copy {ceil['copy_GBps']:.0f} GB/s, matmul {ceil['matmul_TFLOPS']:.0f} TFLOPS", flush=True)
    rows = []
    meta = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        triton_sigmoid=getattr(triton_sigmoid, "__version__", "0.1.2" if triton_sigmoid else "not installed"),
        date=datetime.date.today().isoformat(), command="python " + " ".join(sys.argv), dq_mode=args.dq_mode,
        sigmoid={1: "tanh.approx for bf16", 2: "exp2 + rcp.approx for bf16"}.get(tk.FAST_SIGMOID,
                                                                              "exp2 + IEEE division"),
        configs={f"{p}/{s}": [str(c) for c in cs] for (p, s), cs in tk.CONFIGS.items()}, **ceil,
    )
    if args.padding_check:
        padding_check()
        return
    if args.softmax_check:
        softmax_check()
        return
    if args.launch_check or args.host_profile:
        launch_rows() if args.launch_check else host_profile()
        return
    if args.recheck:
        TS_SHAPES.clear()
        long_rows([512, 1024], [128], [False])
        padding_rows([1024], [128], [0.0, 0.25])
        window_rows(ceil["copy_GBps"], Ns=(7, 49))
        return
    if args.quick:
        rows += long_rows([1024, 16384], [64, 128], [False])
        rows += long_rows([4096], [128], [False, True])
        rows += padding_rows([4096], [128], [0.25])
        rows += gate_rows()
        rows += window_rows(ceil["copy_GBps"], Ns=(7, 16))
        return
    # each group's rows are written as soon as it ends, so a run cut short still leaves its numbers
    groups = [
        lambda: long_rows([512, 1024, 2048, 4096, 8192, 16384], [64, 128], [False]),
        lambda: long_rows([1024, 4096, 16384], [64, 128], [True]),
        lambda: gate_rows(),
        lambda: window_rows(ceil["copy_GBps"]),
        lambda: padding_rows([1024, 16384], [128], [0.0, 0.25, 0.5]),
    ]
    for group in groups:
        rows += group()
        write_outputs({"meta": meta, "rows": rows})



if __name__ == "__main__":
    main()
