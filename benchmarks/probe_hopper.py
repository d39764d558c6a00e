"""Probe: which Hopper features would lift the dense sigmoid forward (bf16, non-causal) towards cuDNN?

A stripped-down forward (dense ``[B, T, H, D]``, T a multiple of the tiles, scalar bias, no mask) in variants
that differ in one thing each, timed in one process beside the production kernel and cuDNN softmax:

- ``ptr``: pointer loads, as the production kernel (the control: it must time like production);
- ``tma``: K and V (and Q) through host-side TMA descriptors;
- ``ws``: ``tl.range(..., warp_specialize=True)`` (Triton's automatic warp specialisation) over ``ptr`` / ``tma``;
- ``pipe``: the key loop software-pipelined by hand: the QK^T product of tile j+1 is issued before the sigmoid of
  tile j, so the tensor cores can work while the special-function units do.

Every variant's output is compared with the production kernel's before it is timed. Used for benchmarks/NOTES.md
("v6"); the production kernel is not changed by this script. ``python benchmarks/probe_hopper.py``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import HIDDEN, TOKENS, attention, bench, rand  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

LOG2E = 1.4426950408889634
HALF_LN2 = 0.34657359027997264


@triton.jit
def _sig2(qk, a, c, FOLD: tl.constexpr):
    """sigmoid((qk * a + c) * ln 2); ``FOLD``: ``a`` and ``c`` already carry the factor ln(2) / 2 of the tanh form,
    so the argument is one multiply-add instead of a multiply-add and a multiply."""
    if FOLD:
        x = qk * a + c
    else:
        x = (qk * a + c) * 0.34657359027997264
    t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return 0.5 * t + 0.5


@triton.jit
def _load_kv(ptr, desc, row, col, offs_n, offs_d, ld, TMA: tl.constexpr):
    if TMA:
        return desc.load([row, col])
    return tl.load(ptr + (row + offs_n)[:, None] * ld + col + offs_d[None, :])


@triton.jit
def _probe_fwd(Q, K, V, Out, dq, dk, dv, do, T, H, scale2, bias2, D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr, PIPE: tl.constexpr,
               FOLD: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    ld = H * D
    row_q = b * T + pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if TMA:
        q = dq.load([row_q, h * D])
    else:
        q = tl.load(Q + (row_q + offs_m)[:, None] * ld + h * D + offs_d[None, :])
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    row_k = b * T
    if PIPE:
        k = _load_kv(K, dk, row_k, h * D, offs_n, offs_d, ld, TMA)
        qk = tl.dot(q, tl.trans(k))
        for n in range(BLOCK_N, T, BLOCK_N):
            k = _load_kv(K, dk, row_k + n, h * D, offs_n, offs_d, ld, TMA)
            qk_next = tl.dot(q, tl.trans(k))
            p = _sig2(qk, scale2, bias2, FOLD)
            v = _load_kv(V, dv, row_k + n - BLOCK_N, h * D, offs_n, offs_d, ld, TMA)
            acc = tl.dot(p.to(v.dtype), v, acc)
            qk = qk_next
        p = _sig2(qk, scale2, bias2, FOLD)
        v = _load_kv(V, dv, row_k + T - BLOCK_N, h * D, offs_n, offs_d, ld, TMA)
        acc = tl.dot(p.to(v.dtype), v, acc)
    else:
        for n in tl.range(0, T, BLOCK_N, warp_specialize=WS):
            k = _load_kv(K, dk, row_k + n, h * D, offs_n, offs_d, ld, TMA)
            qk = tl.dot(q, tl.trans(k))
            p = _sig2(qk, scale2, bias2, FOLD)
            v = _load_kv(V, dv, row_k + n, h * D, offs_n, offs_d, ld, TMA)
            acc = tl.dot(p.to(v.dtype), v, acc)
    if TMA:
        do.store([row_q, h * D], acc.to(do.dtype))
    else:
        tl.store(Out + (row_q + offs_m)[:, None] * ld + h * D + offs_d[None, :], acc.to(Out.dtype.element_ty))


def probe(q, k, v, bias, variant: str, block_m: int, block_n: int, warps: int, stages: int) -> torch.Tensor:
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, T, H, D = q.shape
    o = torch.empty_like(q)
    tma, ws, pipe, fold = "tma" in variant, "ws" in variant, "pipe" in variant, "fold" in variant
    descs = [None] * 4
    if tma:
        flat = [t.view(B * T, H * D) for t in (q, k, v, o)]
        blocks = [[block_m, D], [block_n, D], [block_n, D], [block_m, D]]
        descs = [TensorDescriptor.from_tensor(t, blk) for t, blk in zip(flat, blocks)]
    grid = (T // block_m, B * H)
    a, c = LOG2E / math.sqrt(D), bias * LOG2E
    if fold:
        a, c = a * HALF_LN2, c * HALF_LN2
    _probe_fwd[grid](q, k, v, o, *descs, T, H, a, c, D=D, BLOCK_M=block_m, BLOCK_N=block_n, TMA=tma, WS=ws,
                     PIPE=pipe, FOLD=fold, num_warps=warps, num_stages=stages)
    return o


VARIANTS = ["ptr", "ptr-ws", "ptr-pipe", "tma", "tma-ws", "tma-pipe", "ptr-fold", "tma-fold", "tma-pipe-fold"]
TILES = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 4, 2)]


def _alloc(size: int, align: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def run_shape(D: int, N: int, variants: list[str], tiles: list[tuple]) -> None:
    B, H = TOKENS // N, HIDDEN // D
    q, k, v = (rand(B, N, H, D, grad=False) for _ in range(3))
    bias = -math.log(N)
    flops = 4 * B * H * N * N * D
    ours = functools.partial(attention, q, k, v, sigmoid_bias=bias)
    ref = ours()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cud = flops / bench(functools.partial(F.scaled_dot_product_attention, qt, kt, vt)) / 1e9
    print(f"D={D} N={N}: production {flops / bench(ours) / 1e9:.0f} TFLOPS, cuDNN softmax {cud:.0f}", flush=True)
    for variant in variants:
        for bm, bn, w, s in tiles:
            tag = f"  {variant:9s} {bm}x{bn} w{w} s{s}"
            call = functools.partial(probe, q, k, v, bias, variant, bm, bn, w, s)
            try:
                err = (call().float() - ref.float()).abs().max().item()
                ms = bench(call)
                print(f"{tag}: {flops / ms / 1e9:.0f} TFLOPS (max |diff| vs production {err:.1e})", flush=True)
            except Exception as e:  # a variant the compiler rejects is a result too
                print(f"{tag}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128:16384,128:4096,64:16384", help="D:N pairs")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tiles", default=None, help="BLOCK_M:BLOCK_N:warps:stages,... (default: a fixed list of five)")
    args = ap.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not torch.cuda.is_available():
        sys.exit("probe_hopper.py measures Hopper kernels: it needs a CUDA GPU (run it through the device tool).")
    triton.set_allocator(_alloc)
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    for pair in args.shapes.split(","):
        D, N = (int(x) for x in pair.split(":"))
        tiles = [tuple(int(x) for x in t.split(":")) for t in args.tiles.split(",")] if args.tiles else TILES
        run_shape(D, N, args.variants.split(","), tiles)


if __name__ == "__main__":
    main()
