"""Triton kernels and their launchers: sigmoid / softmax attention, forward and backward.

Layout: every tensor is viewed as ``[rows, heads, D]`` with rows = ``B * T`` (padded layout) or the packed token
count (``cu_seqlens``); a sequence ``b`` owns rows ``row0(b) .. row0(b) + T_b``. Scores are computed in the log2
domain (``s2 = s * log2(e)``) so that both activations use ``exp2``. The maths, tiling and FLOP counts are in
``kernels/README.md`` ("Triton kernels").

Integer codes of the ``tl.constexpr`` switches:

- ``ACT``: 0 sigmoid, 1 softmax.
- ``VARLEN``: 0 dense, 1 ``seq_lens`` (trailing padding), 2 ``cu_seqlens`` (packed).
- ``BIAS_MODE`` (sigmoid only): 0 default ``-log(valid keys)``, 1 one float, 2 per-head tensor.
- ``DECAY_MODE``: 0 none, 1 additive, 2 multiplicative.
- ``GATE``: 0 none, 1 headwise, 2 elementwise.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
# ln(2) / 2: sigmoid(s ln 2) = 0.5 tanh(s ln(2) / 2) + 0.5 (a constexpr global, the only kind a kernel may read)
HALF_LN2 = tl.constexpr(0.34657359027997264)
# Tests set this to fill every output buffer with NaN before a launch, so an element the kernel forgot fails.
POISON_OUTPUTS = False
# "separate" (default): a second kernel computes dQ; "atomic": the dK/dV pass adds dQ with fp32 atomics (fewer
# products, but 9-18 % slower in paired calls on an H100, v8 in benchmarks/NOTES.md).
BWD_DQ_MODE = os.environ.get("GATEDZOO_BWD_DQ", "separate")
# The sigmoid of the scores for float16 / bfloat16 inputs (float32 keeps the exact formula): 1 approximate tanh,
# 2 exp2 and an approximate reciprocal, 0 exp2 and an IEEE division (see _sigmoid_scores).
FAST_SIGMOID = int(os.environ.get("GATEDZOO_FAST_SIGMOID", "1"))
# False: launch the first config of each list without autotuning (the GPU tests, where compile time dominates).
AUTOTUNE = True


@triton.jit
def _seq_info(b, T, S, SEQ_LENS, CU, VARLEN: tl.constexpr):
    """First row of q and k of sequence ``b``, valid lengths, and the row limits a tile may write."""
    if VARLEN == 2:
        q0 = tl.load(CU + b).to(tl.int64)
        len_q = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
        k0 = q0
        len_k = len_q
        q_lim = len_q
        k_lim = len_q
    elif VARLEN == 1:
        q0 = b.to(tl.int64) * T
        k0 = b.to(tl.int64) * S
        len_q = tl.load(SEQ_LENS + b).to(tl.int32)
        len_k = len_q
        q_lim = T
        k_lim = S
    else:
        q0 = b.to(tl.int64) * T
        k0 = b.to(tl.int64) * S
        len_q = T
        len_k = S
        q_lim = T
        k_lim = S
    return q0, k0, len_q, len_k, q_lim, k_lim


@triton.jit
def _head_terms(h, len_k, BIAS, SLOPES, DECAY, bias_value2, ACT: tl.constexpr, BIAS_MODE: tl.constexpr,
                HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr):
    """Per-head scalars in log2 units: sigmoid bias, coefficient of the additive distance term, log2(gamma)."""
    coef2 = 0.0
    mcoef2 = 0.0
    bias2 = 0.0
    if HAS_SLOPES:
        coef2 = coef2 - tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    if DECAY_MODE == 1:
        coef2 = coef2 + tl.load(DECAY + h).to(tl.float32) * 1.4426950408889634
    if DECAY_MODE == 2:
        mcoef2 = tl.load(DECAY + h).to(tl.float32) * 1.4426950408889634
    if ACT == 0:
        if BIAS_MODE == 0:
            bias2 = -tl.log2(tl.maximum(len_k, 1).to(tl.float32))
        elif BIAS_MODE == 1:
            bias2 = bias_value2
        else:
            bias2 = tl.load(BIAS + h).to(tl.float32) * 1.4426950408889634
    return bias2, coef2, mcoef2


@triton.jit
def _distance(ii, jj, POS, T, HAS_POS: tl.constexpr):
    """``|i - j|`` or the Manhattan distance of ``positions`` as float32; ``ii``, ``jj`` are index vectors shaped
    to broadcast against each other (``[M, 1]`` and ``[1, N]`` or transposed).

    The indices are converted to float32 *before* they broadcast: M + N conversions instead of M x N (on sm_80 and
    sm_90 an int-to-float conversion retires 16 per clock per SM, like the special functions and against 128 FMAs, so
    per score element it cost as much as the sigmoid itself). Exact while indices and coordinates stay below 2^24.
    """
    if HAS_POS:
        ri = tl.load(POS + 2 * ii, mask=ii < T, other=0).to(tl.float32)
        ci = tl.load(POS + 2 * ii + 1, mask=ii < T, other=0).to(tl.float32)
        rj = tl.load(POS + 2 * jj, mask=jj < T, other=0).to(tl.float32)
        cj = tl.load(POS + 2 * jj + 1, mask=jj < T, other=0).to(tl.float32)
        return tl.abs(ri - rj) + tl.abs(ci - cj)
    return tl.abs(ii.to(tl.float32) - jj.to(tl.float32))


@triton.jit
def _scores2(qk, scale2, coef2, dist, LIN: tl.constexpr):
    """The log2-scaled scores before the bias: ``qk * scale2``, plus ``coef2 * dist`` for a linear distance term
    (ALiBi slopes or additive decay)."""
    s2 = qk * scale2
    if LIN:
        s2 = s2 + coef2 * dist
    return s2


@triton.jit
def _sigmoid_tanh(qk, scale2, bias2, coef2, dist, LIN: tl.constexpr):
    """``t = tanh.approx(s * ln(2) / 2)`` of the log2-scaled scores (``s`` as in :func:`_sigmoid_scores`):
    sigmoid = 0.5 * t + 0.5 and 4 * sigmoid' = 1 - t^2, one multiply-add each."""
    x = qk * (scale2 * HALF_LN2) + bias2 * HALF_LN2
    if LIN:
        x = x + (coef2 * HALF_LN2) * dist
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _ds_scale(ACT: tl.constexpr, FAST: tl.constexpr):
    """The factor between the true dS and the one the backward accumulates: 1/4 where ``dsig`` is ``1 - t^2``
    (sigmoid, ``FAST`` 1), applied once to dQ, dK and the parameter sums instead of to every tile element."""
    f = 1.0
    if ACT == 0:  # noqa: SIM102  (two static tests: the form the GPU tests compiled and ran, v11)
        if FAST == 1:
            f = 0.25
    return f


@triton.jit
def _sigmoid_scores(qk, scale2, bias2, coef2, dist, LIN: tl.constexpr, FAST: tl.constexpr):
    """sigmoid(s * ln 2) of the log2-scaled scores ``s = qk * scale2 + coef2 * dist (LIN) + bias2``.

    ``FAST`` (16-bit inputs) 1: ``0.5 * tanh.approx(s * ln(2) / 2) + 0.5``, one special-function op (about 2^-11
    relative error) instead of exp2 plus an IEEE division; the factor ln(2) / 2 is folded into the scalar
    coefficients, so the argument costs one multiply-add per element (v6 in benchmarks/NOTES.md: +5 % forward).
    2: ``rcp.approx(1 + exp2(-s))``, two special-function ops without the division's refinement. 0: exact.
    """
    if FAST == 1:
        return 0.5 * _sigmoid_tanh(qk, scale2, bias2, coef2, dist, LIN) + 0.5
    e = tl.exp2(-(_scores2(qk, scale2, coef2, dist, LIN) + bias2))
    if FAST == 2:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e], dtype=tl.float32,
                                         is_pure=True, pack=1)
    return 1.0 / (1.0 + e)


@triton.jit
def _gate_sigmoid(g, FAST: tl.constexpr):
    """sigmoid of float32 gate logits; ``FAST`` (16-bit outputs): one tanh.approx, as in :func:`_sigmoid_scores`.

    The forward epilogues round the output tile to its type *before* multiplying by this, as the same-dtype
    reference does: the accumulator then takes the store's layout once, in 16 bits, with the gate in its load
    layout, where the float32 product had the gate tile converted to the accumulator's layout first (v8 in
    ``benchmarks/NOTES.md``: gated forward +4.7-8.7 % over ungated before, within 0.5 % after).
    """
    if FAST:
        return 0.5 * tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [0.5 * g], dtype=tl.float32,
                                               is_pure=True, pack=1) + 0.5
    return tl.sigmoid(g)


@triton.jit
def _activate(qk, ii, jj, len_q, len_k, lse2, POS, T, scale2, bias2, coef2, mcoef2,
              ACT: tl.constexpr, HAS_DIST: tl.constexpr, HAS_SLOPES: tl.constexpr, HAS_POS: tl.constexpr,
              DECAY_MODE: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr):
    """Recompute the activated scores of one tile (backward): ``(p, dsig, w, dist)``.

    ``p`` is sigmoid(s) or exp(s - lse) with masked entries 0; ``dsig`` (sigmoid only) is sigmoid'(s) divided by
    :func:`_ds_scale`: ``1 - t^2`` in the tanh form (``FAST`` 1; two operations fewer per element than
    ``p * (1 - p)``, v11 in benchmarks/NOTES.md), else ``p * (1 - p)``, 0 where masked; ``w`` the multiplicative
    decay ``gamma ** dist`` (1 without it). ``ii`` / ``jj`` are the query / key indices broadcast to the tile's
    orientation.
    """
    dist = 0.0
    if HAS_DIST:
        dist = _distance(ii, jj, POS, T, HAS_POS)
    LIN: tl.constexpr = HAS_DIST and (HAS_SLOPES or DECAY_MODE == 1)
    if MASK:
        valid = (ii < len_q) & (jj < len_k)
        if CAUSAL:
            valid = valid & (jj <= ii)
    dsig = 0.0
    if ACT == 0:
        if FAST == 1:
            t = _sigmoid_tanh(qk, scale2, bias2, coef2, dist, LIN)
            if MASK:
                t = tl.where(valid, t, -1.0)  # sigmoid 0 and derivative 0 where masked
            p = 0.5 * t + 0.5
            dsig = 1.0 - t * t
        else:
            p = _sigmoid_scores(qk, scale2, bias2, coef2, dist, LIN, FAST)
            if MASK:
                p = tl.where(valid, p, 0.0)
            dsig = p * (1.0 - p)
    else:
        s2 = _scores2(qk, scale2, coef2, dist, LIN)
        p = tl.exp2(s2 - lse2)
        if MASK:
            p = tl.where(valid, p, 0.0)
    w = 1.0
    if DECAY_MODE == 2:
        w = tl.exp2(mcoef2 * dist)
    return p, dsig, w, dist


@triton.jit
def _fwd_step(acc, m_i, l_i, q, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_k, POS, T, stride_kr,
              stride_vr, scale2, bias2, coef2, mcoef2, D: tl.constexpr, ACT: tl.constexpr, HAS_DIST: tl.constexpr,
              HAS_SLOPES: tl.constexpr, HAS_POS: tl.constexpr, DECAY_MODE: tl.constexpr, CAUSAL: tl.constexpr,
              MASK: tl.constexpr, FAST: tl.constexpr,
              DOT_PREC: tl.constexpr):
    cols = n_start + offs_n
    if MASK:
        kv_mask = (cols < len_k)[:, None] & (offs_d < D)[None, :]
    else:
        kv_mask = (offs_d < D)[None, :]
    k = tl.load(k_base + cols[:, None] * stride_kr + offs_d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    dist = 0.0
    if HAS_DIST:
        dist = _distance(offs_m[:, None], cols[None, :], POS, T, HAS_POS)
    LIN: tl.constexpr = HAS_DIST and (HAS_SLOPES or DECAY_MODE == 1)
    if MASK:
        valid = (cols < len_k)[None, :]
        if CAUSAL:
            valid = valid & (cols[None, :] <= offs_m[:, None])
    if ACT == 0:
        p = _sigmoid_scores(qk, scale2, bias2, coef2, dist, LIN, FAST)
        if MASK:
            p = tl.where(valid, p, 0.0)
    else:
        s2 = _scores2(qk, scale2, coef2, dist, LIN)
        if MASK:
            s2 = tl.where(valid, s2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        # a row with no valid key yet keeps m = -inf; shift by 0 there so that exp2 never sees inf - inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s2 - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
    if DECAY_MODE == 2:
        p = p * tl.exp2(mcoef2 * dist)
    v = tl.load(v_base + cols[:, None] * stride_vr + offs_d[None, :], mask=kv_mask, other=0.0)
    acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["T", "S", "LQ"])
def _attn_fwd(
    Q, K, V, G, Out, LSE, SEQ_LENS, CU, POS, BIAS, SLOPES, DECAY,
    stride_qr, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_or, stride_oh, stride_gr, stride_gh,
    T, S, LQ, H, GROUP, LSE_ROWS, scale2, bias_value2,
    D: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, VARLEN: tl.constexpr, BIAS_MODE: tl.constexpr,
    HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
    GATE: tl.constexpr, EVEN: tl.constexpr, DOT_PREC: tl.constexpr, FAST: tl.constexpr, TUNE_KEY,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program = one query tile of one (sequence, head); loops over the key tiles it can see."""
    n_m = tl.cdiv(LQ, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % n_m
    if CAUSAL:
        pid_m = n_m - 1 - pid_m  # longest rows first: they finish last otherwise
    pid_bh = pid // n_m
    b = pid_bh // H
    h = pid_bh % H
    q0, k0, len_q, len_k, q_lim, k_lim = _seq_info(b, T, S, SEQ_LENS, CU, VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= q_lim:
        return
    HAS_DIST: tl.constexpr = HAS_SLOPES or DECAY_MODE != 0
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    q = tl.load(Q + q0 * stride_qr + h * stride_qh + offs_m[:, None] * stride_qr + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    kv_head = h // GROUP
    k_base = K + k0 * stride_kr + kv_head * stride_kh
    v_base = V + k0 * stride_vr + kv_head * stride_vh
    bias2, coef2, mcoef2 = _head_terms(h, len_k, BIAS, SLOPES, DECAY, bias_value2, ACT, BIAS_MODE, HAS_SLOPES,
                                       DECAY_MODE)
    # key tiles [0, full_hi) need no mask; [full_hi, hi) hold the causal diagonal or the ragged end
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(hi, m_start + BLOCK_M)
    if VARLEN == 1:
        hi = tl.where(m_start < len_q, hi, 0)
    if EVEN:
        full_hi = hi
    else:
        full_hi = (len_k // BLOCK_N) * BLOCK_N
        if CAUSAL:
            full_hi = tl.minimum(full_hi, (m_start // BLOCK_N) * BLOCK_N)
        full_hi = tl.minimum(full_hi, hi)

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for n_start in range(0, full_hi, BLOCK_N):
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_k, POS,
                                  T, stride_kr, stride_vr, scale2, bias2, coef2, mcoef2, D, ACT, HAS_DIST,
                                  HAS_SLOPES, HAS_POS,
                                  DECAY_MODE, CAUSAL, False, FAST, DOT_PREC)
    if not EVEN:
        for n_start in range(full_hi, hi, BLOCK_N):
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_k,
                                      POS, T, stride_kr, stride_vr, scale2, bias2, coef2, mcoef2, D, ACT, HAS_DIST,
                                      HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, True, FAST, DOT_PREC)

    if ACT == 1:
        has_key = l_i > 0.0
        l_safe = tl.where(has_key, l_i, 1.0)
        acc = acc / l_safe[:, None]
        lse = tl.where(has_key, m_i + tl.log2(l_safe), float("inf"))
        tl.store(LSE + h * LSE_ROWS + q0 + offs_m, lse, mask=offs_m < q_lim)
    if not EVEN:
        acc = tl.where(row_ok[:, None], acc, 0.0)
    # the gate is read after the key loop (v8 in benchmarks/NOTES.md: +0.4 % over ungated, +1.4 % loaded before it)
    if GATE == 1:
        g = tl.load(G + q0 * stride_gr + h * stride_gh + offs_m * stride_gr, mask=row_ok, other=0.0)
        acc = acc.to(Out.dtype.element_ty).to(tl.float32) * _gate_sigmoid(g.to(tl.float32), FAST)[:, None]
    elif GATE == 2:
        g = tl.load(G + q0 * stride_gr + h * stride_gh + offs_m[:, None] * stride_gr + offs_d[None, :],
                    mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
        acc = acc.to(Out.dtype.element_ty).to(tl.float32) * _gate_sigmoid(g.to(tl.float32), FAST)
    tl.store(Out + q0 * stride_or + h * stride_oh + offs_m[:, None] * stride_or + offs_d[None, :],
             acc.to(Out.dtype.element_ty), mask=(offs_m < q_lim)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _window_rows(tile, NW, T: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
    """Rows of window tile ``tile`` (windows ``tile * BLOCK // T`` onwards, ``NW`` in all): the window of each row
    within the tile, its in-window index, its global row (int64), whether it is a real row, the head-dim offsets and
    the ``[BLOCK, BLOCK_D]`` load mask. Rows past the last whole window of the tile, or past window ``NW``, are not."""
    WPT: tl.constexpr = BLOCK // T
    w0 = tile * WPT
    r = tl.arange(0, BLOCK)
    win = r // T
    t = r - win * T
    row_ok = (win < WPT) & (w0 + win < NW)
    rows = w0.to(tl.int64) * T + r
    offs_d = tl.arange(0, BLOCK_D)
    return win, t, rows, row_ok, offs_d, row_ok[:, None] & (offs_d < D)[None, :]


@triton.jit
def _attn_fwd_windows(
    Q, K, V, G, Out, LSE, POS, BIAS, SLOPES, DECAY,
    stride_qr, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_or, stride_oh, stride_gr, stride_gh,
    NW, H, GROUP, LSE_ROWS, scale2, bias_value2,
    T: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, BIAS_MODE: tl.constexpr,
    HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
    GATE: tl.constexpr, DOT_PREC: tl.constexpr, FAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """Forward of many short dense windows (``NW`` sequences of ``T <= BLOCK`` tokens): one program = the
    ``BLOCK // T`` consecutive windows of one head whose rows are contiguous, one block-diagonal score tile.

    :func:`_attn_fwd` spends one program per (window, head); at a few tokens per window its time is per-program
    latency, not bytes (N = 7 moved 44 % of copy bandwidth against 84 % at N = 16 in the same time per program).
    Same outputs as :func:`_attn_fwd` (``Out``, and ``LSE`` for softmax), so the backward is shared.
    """
    pid = tl.program_id(0)
    h = pid % H
    win, t, rows, row_ok, offs_d, mask = _window_rows(pid // H, NW, T, D, BLOCK_D, BLOCK)
    kv_head = h // GROUP
    q = tl.load(Q + h * stride_qh + rows[:, None] * stride_qr + offs_d[None, :], mask=mask, other=0.0)
    k = tl.load(K + kv_head * stride_kh + rows[:, None] * stride_kr + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V + kv_head * stride_vh + rows[:, None] * stride_vr + offs_d[None, :], mask=mask, other=0.0)
    if GATE == 1:
        g = tl.load(G + h * stride_gh + rows * stride_gr, mask=row_ok, other=0.0)
    bias2, coef2, mcoef2 = _head_terms(h, tl.full([], T, tl.int32), BIAS, SLOPES, DECAY, bias_value2, ACT,
                                       BIAS_MODE, HAS_SLOPES, DECAY_MODE)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    HAS_DIST: tl.constexpr = HAS_SLOPES or DECAY_MODE != 0
    LIN: tl.constexpr = HAS_DIST and (HAS_SLOPES or DECAY_MODE == 1)
    dist = 0.0
    if HAS_DIST:
        dist = _distance(t[:, None], t[None, :], POS, T, HAS_POS)
    # a query sees the keys of its own window only; every query row has at least itself
    valid = win[:, None] == win[None, :]
    if CAUSAL:
        valid = valid & (t[None, :] <= t[:, None])
    if ACT == 0:
        p = tl.where(valid, _sigmoid_scores(qk, scale2, bias2, coef2, dist, LIN, FAST), 0.0)
    else:
        s2 = _scores2(qk, scale2, coef2, dist, LIN)
        s2 = tl.where(valid, s2, float("-inf"))
        m = tl.max(s2, 1)
        p = tl.exp2(s2 - m[:, None])
        l_sum = tl.sum(p, 1)
    if DECAY_MODE == 2:
        p = p * tl.exp2(mcoef2 * dist)
    acc = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    if ACT == 1:
        acc = acc / l_sum[:, None]
        tl.store(LSE + h * LSE_ROWS + rows, m + tl.log2(l_sum), mask=row_ok)
    if GATE == 1:
        acc = acc.to(Out.dtype.element_ty).to(tl.float32) * _gate_sigmoid(g.to(tl.float32), FAST)[:, None]
    elif GATE == 2:
        g = tl.load(G + h * stride_gh + rows[:, None] * stride_gr + offs_d[None, :], mask=mask, other=0.0)
        acc = acc.to(Out.dtype.element_ty).to(tl.float32) * _gate_sigmoid(g.to(tl.float32), FAST)
    tl.store(Out + h * stride_oh + rows[:, None] * stride_or + offs_d[None, :], acc.to(Out.dtype.element_ty),
             mask=mask)


@triton.jit
def _bwd_preprocess(
    Out, DO, G, DO_OUT, DG, DELTA, ROWS, H,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
):
    """Gate gradient, the gate-scaled output gradient, and the softmax row term, in one pass over O and dO.

    With O = O' * sigmoid(g): dO' = dO * sigmoid(g), dg = dO * O * (1 - sigmoid(g)) (summed over D for a headwise
    gate), and delta = rowsum(dO' * O') = rowsum(dO * O). All buffers are ``[rows, H, D]`` contiguous.
    """
    pid_r = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < ROWS
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    off = rows.to(tl.int64)[:, None] * (H * D) + h * D + offs_d[None, :]
    o = tl.load(Out + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    if ACT == 1:
        tl.store(DELTA + h * ROWS + rows, tl.sum(do * o, 1), mask=row_ok)
    if GATE == 1:
        goff = rows.to(tl.int64) * H + h
        sg = tl.sigmoid(tl.load(G + goff, mask=row_ok, other=0.0).to(tl.float32))
        tl.store(DG + goff, (tl.sum(do * o, 1) * (1.0 - sg)).to(DG.dtype.element_ty), mask=row_ok)
        tl.store(DO_OUT + off, (do * sg[:, None]).to(DO_OUT.dtype.element_ty), mask=mask)
    elif GATE == 2:
        sg = tl.sigmoid(tl.load(G + off, mask=mask, other=0.0).to(tl.float32))
        tl.store(DG + off, (do * o * (1.0 - sg)).to(DG.dtype.element_ty), mask=mask)
        tl.store(DO_OUT + off, (do * sg).to(DO_OUT.dtype.element_ty), mask=mask)


@triton.jit
def _dscore(p, dsig, w, dist, dp, delta, ACT: tl.constexpr, DECAY_MODE: tl.constexpr):
    """Gradient of the pre-activation score from dP = dO V^T (sigmoid: over :func:`_ds_scale`); also the
    multiplicative-decay term dP * P * dist."""
    if DECAY_MODE == 2:
        dmult = dp * p * w * dist
        dp = dp * w
    else:
        dmult = 0.0
    if ACT == 0:
        ds = dp * dsig
    else:
        ds = p * (dp - delta)
    return ds, dmult


@triton.jit
def _dkdv_step(dk, dv, acc_b, acc_d, acc_w, k, v, q_base, do_base, dq_base, LSE_H, DELTA_H, m_start, offs_m,
               offs_n, offs_d, len_q, len_k, POS, T, stride_qr, stride_dor, stride_dqr, scale, scale2, bias2, coef2,
               mcoef2, D: tl.constexpr, ACT: tl.constexpr, HAS_DIST: tl.constexpr, HAS_SLOPES: tl.constexpr,
               HAS_POS: tl.constexpr, DECAY_MODE: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
               FAST: tl.constexpr, ATOMIC_DQ: tl.constexpr,
               NEED_DBIAS: tl.constexpr, NEED_DDIST: tl.constexpr, NEED_DMULT: tl.constexpr,
               DOT_PREC: tl.constexpr):
    rows = m_start + offs_m
    if MASK:
        row_mask = (rows < len_q)[:, None] & (offs_d < D)[None, :]
    else:
        row_mask = (offs_d < D)[None, :]
    q = tl.load(q_base + rows[:, None] * stride_qr + offs_d[None, :], mask=row_mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_dor + offs_d[None, :], mask=row_mask, other=0.0)
    lse2 = 0.0
    delta = 0.0
    if ACT == 1:
        lse2 = tl.load(LSE_H + rows, mask=rows < len_q, other=float("inf"))[None, :]
        delta = tl.load(DELTA_H + rows, mask=rows < len_q, other=0.0)[None, :]
    # transposed tile [keys, queries]: dK and dV come out of the products without a transpose
    qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
    p, dsig, w, dist = _activate(qkT, rows[None, :], offs_n[:, None], len_q, len_k, lse2, POS, T, scale2, bias2,
                                 coef2, mcoef2, ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, MASK, FAST)
    if DECAY_MODE == 2:
        dv += tl.dot((p * w).to(do.dtype), do, input_precision=DOT_PREC)
    else:
        dv += tl.dot(p.to(do.dtype), do, input_precision=DOT_PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    ds, dmult = _dscore(p, dsig, w, dist, dpT, delta, ACT, DECAY_MODE)
    if NEED_DBIAS:
        acc_b += tl.sum(ds, 1)
    if NEED_DDIST:
        acc_d += tl.sum(ds * dist, 1)
    if NEED_DMULT:
        acc_w += tl.sum(dmult, 1)
    ds_c = ds.to(q.dtype)
    dk += tl.dot(ds_c, q, input_precision=DOT_PREC)
    if ATOMIC_DQ:
        dq = tl.dot(tl.trans(ds_c), k, input_precision=DOT_PREC) * (scale * _ds_scale(ACT, FAST))
        tl.atomic_add(dq_base + rows[:, None] * stride_dqr + offs_d[None, :], dq,
                      mask=(rows < len_q)[:, None] & (offs_d < D)[None, :], sem="relaxed")
    return dk, dv, acc_b, acc_d, acc_w


@triton.jit(do_not_specialize=["T", "S", "LK"])
def _attn_bwd_dkdv(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, SEQ_LENS, CU, POS, BIAS, SLOPES, DECAY, DPARAM,
    stride_qr, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_dor, stride_doh, stride_dqr, stride_dqh,
    stride_dkr, stride_dkh, stride_dvr, stride_dvh,
    T, S, LK, H, HKV, GROUP, LSE_ROWS, scale, scale2, bias_value2,
    D: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, VARLEN: tl.constexpr, BIAS_MODE: tl.constexpr,
    HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
    EVEN: tl.constexpr, ATOMIC_DQ: tl.constexpr, NEED_DBIAS: tl.constexpr, NEED_DDIST: tl.constexpr,
    NEED_DMULT: tl.constexpr, DOT_PREC: tl.constexpr, FAST: tl.constexpr, TUNE_KEY,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program = one key tile of one (sequence, kv head); loops over the query heads of its group and over
    query tiles, holding dK and dV in registers. dQ is added atomically (``ATOMIC_DQ``) or left to
    :func:`_attn_bwd_dq`. Per-head parameter gradients are reduced here and added to ``DPARAM`` ``[3, H]``."""
    n_n = tl.cdiv(LK, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % n_n
    pid_bh = pid // n_n
    b = pid_bh // HKV
    kv_head = pid_bh % HKV
    q0, k0, len_q, len_k, q_lim, k_lim = _seq_info(b, T, S, SEQ_LENS, CU, VARLEN)
    n_start = pid_n * BLOCK_N
    if n_start >= k_lim:
        return
    HAS_DIST: tl.constexpr = HAS_SLOPES or DECAY_MODE != 0
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n < len_k)[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + k0 * stride_kr + kv_head * stride_kh + offs_n[:, None] * stride_kr + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + k0 * stride_vr + kv_head * stride_vh + offs_n[:, None] * stride_vr + offs_d[None, :],
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    m_hi = tl.where(n_start < len_k, len_q, 0)
    lo = 0
    if CAUSAL:
        lo = (n_start // BLOCK_M) * BLOCK_M
    # query tiles [mid_lo, mid_hi) need no mask: every row valid, below the diagonal, and every key valid
    if EVEN:
        mid_lo = lo
        mid_hi = m_hi
    else:
        mid_lo = lo
        if CAUSAL:
            mid_lo = tl.cdiv(n_start + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        mid_hi = (m_hi // BLOCK_M) * BLOCK_M
        mid_hi = tl.where(n_start + BLOCK_N <= len_k, mid_hi, 0)
        mid_hi = tl.maximum(mid_hi, mid_lo)
        a_hi = tl.minimum(mid_lo, m_hi)
        c_lo = tl.maximum(a_hi, mid_hi)
    for g in range(GROUP):
        h = kv_head * GROUP + g
        bias2, coef2, mcoef2 = _head_terms(h, len_k, BIAS, SLOPES, DECAY, bias_value2, ACT, BIAS_MODE, HAS_SLOPES,
                                           DECAY_MODE)
        q_base = Q + q0 * stride_qr + h * stride_qh
        do_base = DO + q0 * stride_dor + h * stride_doh
        dq_base = DQ + q0 * stride_dqr + h * stride_dqh
        lse_h = LSE + h * LSE_ROWS + q0
        delta_h = DELTA + h * LSE_ROWS + q0
        acc_b = tl.zeros([BLOCK_N], tl.float32)
        acc_d = tl.zeros([BLOCK_N], tl.float32)
        acc_w = tl.zeros([BLOCK_N], tl.float32)
        if not EVEN:
            for m_start in range(lo, a_hi, BLOCK_M):
                dk, dv, acc_b, acc_d, acc_w = _dkdv_step(
                    dk, dv, acc_b, acc_d, acc_w, k, v, q_base, do_base, dq_base, lse_h, delta_h, m_start, offs_m,
                    offs_n, offs_d, len_q, len_k, POS, T, stride_qr, stride_dor, stride_dqr, scale, scale2, bias2,
                    coef2, mcoef2, D, ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, True, FAST, ATOMIC_DQ,
                    NEED_DBIAS,
                    NEED_DDIST, NEED_DMULT, DOT_PREC)
        for m_start in range(mid_lo, mid_hi, BLOCK_M):
            dk, dv, acc_b, acc_d, acc_w = _dkdv_step(
                dk, dv, acc_b, acc_d, acc_w, k, v, q_base, do_base, dq_base, lse_h, delta_h, m_start, offs_m,
                offs_n, offs_d, len_q, len_k, POS, T, stride_qr, stride_dor, stride_dqr, scale, scale2, bias2,
                coef2, mcoef2, D, ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, False, FAST, ATOMIC_DQ,
                NEED_DBIAS,
                NEED_DDIST, NEED_DMULT, DOT_PREC)
        if not EVEN:
            for m_start in range(c_lo, m_hi, BLOCK_M):
                dk, dv, acc_b, acc_d, acc_w = _dkdv_step(
                    dk, dv, acc_b, acc_d, acc_w, k, v, q_base, do_base, dq_base, lse_h, delta_h, m_start, offs_m,
                    offs_n, offs_d, len_q, len_k, POS, T, stride_qr, stride_dor, stride_dqr, scale, scale2, bias2,
                    coef2, mcoef2, D, ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, True, FAST, ATOMIC_DQ,
                    NEED_DBIAS,
                    NEED_DDIST, NEED_DMULT, DOT_PREC)
        if NEED_DBIAS:
            tl.atomic_add(DPARAM + h, tl.sum(acc_b, 0) * _ds_scale(ACT, FAST), sem="relaxed")
        if NEED_DDIST:
            tl.atomic_add(DPARAM + H + h, tl.sum(acc_d, 0) * _ds_scale(ACT, FAST), sem="relaxed")
        if NEED_DMULT:
            tl.atomic_add(DPARAM + 2 * H + h, tl.sum(acc_w, 0), sem="relaxed")

    store_mask = (offs_n < k_lim)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + k0 * stride_dkr + kv_head * stride_dkh + offs_n[:, None] * stride_dkr + offs_d[None, :],
             (dk * (scale * _ds_scale(ACT, FAST))).to(DK.dtype.element_ty), mask=store_mask)
    tl.store(DV + k0 * stride_dvr + kv_head * stride_dvh + offs_n[:, None] * stride_dvr + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=store_mask)


@triton.jit
def _attn_bwd_windows(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, POS, BIAS, SLOPES, DECAY, DPARAM,
    stride_qr, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_dor, stride_doh, stride_dqr, stride_dqh,
    stride_dkr, stride_dkh, stride_dvr, stride_dvh,
    NW, H, HKV, GROUP, LSE_ROWS, scale, scale2, bias_value2,
    T: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, BIAS_MODE: tl.constexpr,
    HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
    NEED_DBIAS: tl.constexpr, NEED_DDIST: tl.constexpr, NEED_DMULT: tl.constexpr, DOT_PREC: tl.constexpr,
    FAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """Backward of :func:`_attn_fwd_windows`: one program = ``BLOCK // T`` whole windows of one kv head.

    Every window fits its tile, so the program owns all of its gradients: dQ of each query head of the group is
    written once (no atomics, no float32 buffer), dK and dV are summed over the group in registers. ``DO`` is the
    gate-scaled output gradient and ``DELTA`` the softmax row term, both from :func:`_bwd_preprocess`.
    """
    pid = tl.program_id(0)
    kv_head = pid % HKV
    win, t, rows, row_ok, offs_d, mask = _window_rows(pid // HKV, NW, T, D, BLOCK_D, BLOCK)
    k = tl.load(K + kv_head * stride_kh + rows[:, None] * stride_kr + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V + kv_head * stride_vh + rows[:, None] * stride_vr + offs_d[None, :], mask=mask, other=0.0)
    valid = win[:, None] == win[None, :]
    if CAUSAL:
        valid = valid & (t[None, :] <= t[:, None])
    HAS_DIST: tl.constexpr = HAS_SLOPES or DECAY_MODE != 0
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for g in range(GROUP):
        h = kv_head * GROUP + g
        q = tl.load(Q + h * stride_qh + rows[:, None] * stride_qr + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(DO + h * stride_doh + rows[:, None] * stride_dor + offs_d[None, :], mask=mask, other=0.0)
        lse2 = 0.0
        delta = 0.0
        if ACT == 1:
            lse2 = tl.load(LSE + h * LSE_ROWS + rows, mask=row_ok, other=float("inf"))[:, None]
            delta = tl.load(DELTA + h * LSE_ROWS + rows, mask=row_ok, other=0.0)[:, None]
        bias2, coef2, mcoef2 = _head_terms(h, tl.full([], T, tl.int32), BIAS, SLOPES, DECAY, bias_value2, ACT,
                                           BIAS_MODE, HAS_SLOPES, DECAY_MODE)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        # unmasked activation on in-window indices (t), then the block-diagonal mask: p = 0 off the windows, so
        # dS, the parameter terms and every product below get nothing from there
        p, dsig, w, dist = _activate(qk, t[:, None], t[None, :], T, T, lse2, POS, T, scale2, bias2, coef2, mcoef2,
                                     ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, False, False, FAST)
        p = tl.where(valid, p, 0.0)
        dsig = tl.where(valid, dsig, 0.0)
        if DECAY_MODE == 2:
            dv += tl.dot(tl.trans((p * w).to(do.dtype)), do, input_precision=DOT_PREC)
        else:
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds, dmult = _dscore(p, dsig, w, dist, dp, delta, ACT, DECAY_MODE)
        ds_c = ds.to(q.dtype)
        dk += tl.dot(tl.trans(ds_c), q, input_precision=DOT_PREC)
        dq = tl.dot(ds_c, k, input_precision=DOT_PREC) * (scale * _ds_scale(ACT, FAST))
        tl.store(DQ + h * stride_dqh + rows[:, None] * stride_dqr + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=mask)
        if NEED_DBIAS:
            tl.atomic_add(DPARAM + h, tl.sum(tl.sum(ds, 1), 0) * _ds_scale(ACT, FAST), sem="relaxed")
        if NEED_DDIST:
            tl.atomic_add(DPARAM + H + h, tl.sum(tl.sum(ds * dist, 1), 0) * _ds_scale(ACT, FAST), sem="relaxed")
        if NEED_DMULT:
            tl.atomic_add(DPARAM + 2 * H + h, tl.sum(tl.sum(dmult, 1), 0), sem="relaxed")
    tl.store(DK + kv_head * stride_dkh + rows[:, None] * stride_dkr + offs_d[None, :],
             (dk * (scale * _ds_scale(ACT, FAST))).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + kv_head * stride_dvh + rows[:, None] * stride_dvr + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=mask)


@triton.jit
def _dq_step(dq, q, do, lse2, delta, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_q, len_k, POS, T,
             stride_kr, stride_vr, scale2, bias2, coef2, mcoef2, D: tl.constexpr, ACT: tl.constexpr,
             HAS_DIST: tl.constexpr, HAS_SLOPES: tl.constexpr, HAS_POS: tl.constexpr, DECAY_MODE: tl.constexpr,
             CAUSAL: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr):
    cols = n_start + offs_n
    if MASK:
        kv_mask = (cols < len_k)[:, None] & (offs_d < D)[None, :]
    else:
        kv_mask = (offs_d < D)[None, :]
    k = tl.load(k_base + cols[:, None] * stride_kr + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + cols[:, None] * stride_vr + offs_d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    p, dsig, w, dist = _activate(qk, offs_m[:, None], cols[None, :], len_q, len_k, lse2, POS, T, scale2, bias2,
                                 coef2, mcoef2, ACT, HAS_DIST, HAS_SLOPES, HAS_POS, DECAY_MODE, CAUSAL, MASK, FAST)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds, _ = _dscore(p, dsig, w, dist, dp, delta, ACT, DECAY_MODE)
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["T", "S", "LQ"])
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA, SEQ_LENS, CU, POS, BIAS, SLOPES, DECAY,
    stride_qr, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_dor, stride_doh, stride_dqr, stride_dqh,
    T, S, LQ, H, GROUP, LSE_ROWS, scale, scale2, bias_value2,
    D: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, VARLEN: tl.constexpr, BIAS_MODE: tl.constexpr,
    HAS_SLOPES: tl.constexpr, DECAY_MODE: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
    EVEN: tl.constexpr, DOT_PREC: tl.constexpr, FAST: tl.constexpr, TUNE_KEY,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one query tile (the non-atomic backward): recomputes P and dP over the key tiles it can see."""
    n_m = tl.cdiv(LQ, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % n_m
    pid_bh = pid // n_m
    b = pid_bh // H
    h = pid_bh % H
    q0, k0, len_q, len_k, q_lim, k_lim = _seq_info(b, T, S, SEQ_LENS, CU, VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= q_lim:
        return
    HAS_DIST: tl.constexpr = HAS_SLOPES or DECAY_MODE != 0
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + q0 * stride_qr + h * stride_qh + offs_m[:, None] * stride_qr + offs_d[None, :], mask=mask,
                other=0.0)
    do = tl.load(DO + q0 * stride_dor + h * stride_doh + offs_m[:, None] * stride_dor + offs_d[None, :], mask=mask,
                 other=0.0)
    lse2 = 0.0
    delta = 0.0
    if ACT == 1:
        lse2 = tl.load(LSE + h * LSE_ROWS + q0 + offs_m, mask=row_ok, other=float("inf"))[:, None]
        delta = tl.load(DELTA + h * LSE_ROWS + q0 + offs_m, mask=row_ok, other=0.0)[:, None]
    kv_head = h // GROUP
    k_base = K + k0 * stride_kr + kv_head * stride_kh
    v_base = V + k0 * stride_vr + kv_head * stride_vh
    bias2, coef2, mcoef2 = _head_terms(h, len_k, BIAS, SLOPES, DECAY, bias_value2, ACT, BIAS_MODE, HAS_SLOPES,
                                       DECAY_MODE)
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(hi, m_start + BLOCK_M)
    hi = tl.where(m_start < len_q, hi, 0)
    if EVEN:
        full_hi = hi
    else:
        full_hi = (len_k // BLOCK_N) * BLOCK_N
        if CAUSAL:
            full_hi = tl.minimum(full_hi, (m_start // BLOCK_N) * BLOCK_N)
        full_hi = tl.where(m_start + BLOCK_M <= len_q, tl.minimum(full_hi, hi), 0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n_start in range(0, full_hi, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_q, len_k, POS, T,
                      stride_kr, stride_vr, scale2, bias2, coef2, mcoef2, D, ACT, HAS_DIST, HAS_SLOPES, HAS_POS,
                      DECAY_MODE,
                      CAUSAL, False, FAST, DOT_PREC)
    if not EVEN:
        for n_start in range(full_hi, hi, BLOCK_N):
            dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, offs_m, n_start, offs_n, offs_d, len_q, len_k,
                          POS, T, stride_kr, stride_vr, scale2, bias2, coef2, mcoef2, D, ACT, HAS_DIST, HAS_SLOPES,
                          HAS_POS,
                          DECAY_MODE, CAUSAL, True, FAST, DOT_PREC)
    tl.store(DQ + q0 * stride_dqr + h * stride_dqh + offs_m[:, None] * stride_dqr + offs_d[None, :],
             (dq * (scale * _ds_scale(ACT, FAST))).to(DQ.dtype.element_ty),
             mask=(offs_m < q_lim)[:, None] & (offs_d < D)[None, :])


def _cfg(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# One config per (pass, size class) by default: every entry is compiled for each feature combination that runs, and
# the benchmark budget on the device is minutes. Size class: "s16" / "s64" (sequences of at most 16 / 64 tokens and
# D <= 64: many tiny windows, one small tile each), else "d64", "d128", "d256" (head dim after padding).
# ``benchmarks/sweep.py`` times alternatives; the choice is recorded in benchmarks/NOTES.md.
CONFIGS = {
    ("fwd", "s16"): [_cfg(16, 16, 2, 1)],
    ("fwd", "s64"): [_cfg(64, 64, 4, 1)],
    ("fwd", "d64"): [_cfg(128, 64, 4, 3)],
    # sweep of 2026-11-22 (benchmarks/NOTES.md, v3): 128x64 beat 128x128 by 8% at N = 1024 and 16384; v9: 64-row tiles
    # of 4 warps win single calls after an idle gap but lose 4-6 % in back-to-back calls (the GPU at its power
    # limit, as in training): D = 128 N = 16384 0.955 x, D = 64 0.940 x, D = 128 N = 1024 (128x32) 0.953 x
    ("fwd", "d128"): [_cfg(128, 64, 8, 3)],
    # v7 sweep: sequences of at most 1024 tokens, 128x32 x 4 warps 0.289 vs 0.305 ms at N = 1024
    ("fwd", "d128-short"): [_cfg(128, 32, 4, 3)],
    # v9, back-to-back calls (``sweep.py --ab``): a ragged last tile (padded or packed sequences of at most 1024
    # tokens) or a triangular one (causal, up to 4096) wastes less as 64x32: N = 1024 seq_lens 1.02 x and
    # cu_seqlens + max_seqlen 1.10 x the speed of 128x32, causal 1.05 x (N = 4096: 1.02 x) that of 64x64
    ("fwd", "d128-ragged"): [_cfg(64, 32, 4, 3)],
    ("fwd", "d128-causal"): [_cfg(64, 32, 4, 3)],
    ("fwd", "d64-causal"): [_cfg(64, 64, 4, 3)],  # v9, back-to-back: 1.07 x the speed of 128x64 (causal, N = 1024)
    ("fwd", "d256"): [_cfg(64, 64, 4, 2)],
    ("dkdv", "s16"): [_cfg(16, 16, 2, 1)],
    ("dkdv", "s64"): [_cfg(64, 64, 4, 1)],
    # v9 sweep of the separate-dQ backward (paired, NOTES.md): 128x64 x 4 warps beat v0's autotuned list, whose best
    # member (64x64) took 1.05 x / 1.03 x its time at N = 16384 / 1024
    ("dkdv", "d64"): [_cfg(128, 64, 4, 3)],
    # the softmax backward keeps two more row vectors (LSE, delta) per query step: on the sigmoid's 128x64 tile its
    # dK/dV spilled 82 registers (with seq_lens) and ran at 146-195 TFLOPS; 32-query steps run 1.8-2.0 x faster,
    # dense and with seq_lens, N = 1024 and 8192 (sweep.py --softmax-tiles, back to back; NOTES.md v10)
    ("dkdv", "d64-softmax"): [_cfg(32, 128, 4, 3)],
    ("dkdv", "d128"): [_cfg(64, 128, 8, 3)],  # three stages: 13.3 vs 16.8 ms at N = 16384 (v3 sweep)
    ("dkdv", "d256"): [_cfg(32, 64, 4, 1)],
    ("dq", "s16"): [_cfg(16, 16, 2, 1)],
    ("dq", "s64"): [_cfg(64, 64, 4, 1)],
    ("dq", "d64"): [_cfg(128, 64, 4, 3)],  # v9: 0.99 x / 0.94 x the time of 128x64 x 8 warps (N = 16384 / 1024)
    ("dq", "d128"): [_cfg(128, 64, 8, 3)],
    ("dq", "d256"): [_cfg(64, 32, 4, 1)],
    # float32 tiles take twice the shared memory: the 16-bit d128 choices need 256-448 KB, over the 227 KB limit
    ("fwd", "d128-f32"): [_cfg(64, 64, 4, 2)],
    ("dkdv", "d128-f32"): [_cfg(32, 64, 4, 1)],
    ("dq", "d128-f32"): [_cfg(64, 32, 4, 1)],
    # 128-query steps of float32 q and dO in three stages would need ~230 KB at D = 64: the v0 tiles for float32
    ("dkdv", "d64-f32"): [_cfg(64, 64, 4, 3)],
    ("dq", "d64-f32"): [_cfg(128, 64, 8, 2)],
}
# The interpreter runs one small, non-square tile everywhere: several tiles per test sequence, cheap to emulate.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}
_KERNELS = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq}
_TUNE_KEYS = ["TUNE_KEY", "D", "ACT", "VARLEN", "CAUSAL", "DECAY_MODE", "HAS_SLOPES", "GATE", "ATOMIC_DQ"]


@functools.cache
def _tuned(pass_name: str, size: str):
    kernel = _KERNELS[pass_name]
    keys = [k for k in _TUNE_KEYS if k in kernel.arg_names]
    reset = ["DQ", "DPARAM"] if pass_name == "dkdv" else None
    return triton.autotune(CONFIGS[(pass_name, size)], key=keys, reset_to_zero=reset)(kernel)


def _size_class(pass_name: str, block_d: int, max_len: int, fp32: bool, causal: bool, varlen: bool = False,
                softmax: bool = False) -> str:
    """The ``CONFIGS`` class of a launch: head dim after padding, then length, causality, padding and activation
    refinements."""
    size = "d64" if block_d <= 64 else "d128" if block_d <= 128 else "d256"
    if max_len <= 64 and block_d <= 64:
        size = "s16" if max_len <= 16 else "s64"
    if fp32 and (pass_name, size + "-f32") in CONFIGS:
        return size + "-f32"
    if pass_name == "fwd" and size == "d128":
        if causal and max_len <= 4096:
            return "d128-causal"
        if max_len <= 1024:
            return "d128-ragged" if varlen else "d128-short"
    if pass_name == "fwd" and size == "d64" and causal and max_len <= 1024:
        return "d64-causal"
    if pass_name == "dkdv" and size == "d64" and softmax:
        return "d64-softmax"
    return size


def _launch(pass_name: str, grid_rows: int, groups: int, block_d: int, max_len: int, fp32: bool, **kwargs) -> None:
    """Launch one kernel over ``groups`` (sequence, head) pairs of ``grid_rows`` rows each."""
    if INTERPRET:
        bm, bn = INTERPRET_BLOCKS[pass_name]
        tile = bn if pass_name == "dkdv" else bm
        _KERNELS[pass_name][(triton.cdiv(grid_rows, tile) * groups,)](BLOCK_M=bm, BLOCK_N=bn, **kwargs)
        return
    size = _size_class(pass_name, block_d, max_len, fp32, bool(kwargs.get("CAUSAL")), bool(kwargs.get("VARLEN")),
                       kwargs.get("ACT") == 1)
    axis = "BLOCK_N" if pass_name == "dkdv" else "BLOCK_M"
    configs = CONFIGS[(pass_name, size)]
    if not AUTOTUNE or len(configs) == 1:
        # one config: launch the kernel directly, sparing the autotuner's per-call key building
        cfg = configs[0]
        kernel = _KERNELS[pass_name]
        grid = (triton.cdiv(grid_rows, cfg.kwargs[axis]) * groups,)
        kernel[grid](**kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    _tuned(pass_name, size)[lambda meta: (triton.cdiv(grid_rows, meta[axis]) * groups,)](**kwargs)


# Dense self-attention over windows of at most ``max T`` tokens (head dim <= 128) runs in
# :func:`_attn_fwd_windows`, ``BLOCK // T`` windows per program (one when T > BLOCK / 2: a single tile whose q, k and v
# loads are all in flight at once, where the general kernel waits for q, then k, then v):
# ``[(max T, BLOCK, warps), ...]``, first match wins. Chosen with ``benchmarks/sweep.py --windows`` (NOTES.md, v5).
WINDOW_TILES = [(8, 16, 2), (16, 32, 2), (32, 64, 4), (64, 64, 4)]


def _window_tile(pb: Problem) -> tuple[int, int] | None:
    """``(BLOCK, warps)`` of the packed-window forward for this problem, or ``None`` for the general kernel."""
    if pb.varlen != 0 or pb.T != pb.S or pb.block_d > 128:
        return None
    for max_t, block, warps in WINDOW_TILES:
        if max_t >= pb.T and block >= pb.T:
            return block, warps
    return None


def _empty(shape, dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


_DUMMIES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor standing in for an absent optional input (the kernels never read or write it: its
    switch is off). Cached per device and dtype: a fresh allocation per argument cost several µs of host time on
    every call (benchmarks/NOTES.md, v7)."""
    t = _DUMMIES.get((device, dtype))
    if t is None:
        t = _DUMMIES[(device, dtype)] = torch.zeros(1, dtype=dtype, device=device)
    return t


class Problem:
    """Shapes, constexpr switches and pointers shared by the forward and backward launchers."""

    def __init__(self, q, k, v, gate, bias_t, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
                 bias_value, decay_mode, causal, max_seqlen):
        self.packed = cu_seqlens is not None
        if self.packed:
            self.B = cu_seqlens.shape[0] - 1
            self.T = self.S = 0
            self.LQ = self.LK = max(int(max_seqlen), 1)
            self.rows_q = q.shape[0]
        else:
            self.B, self.T = q.shape[0], q.shape[1]
            self.S = k.shape[1]
            self.LQ, self.LK = self.T, self.S
            self.rows_q = self.B * self.T
        self.H, self.D = q.shape[-2], q.shape[-1]
        self.HKV = k.shape[-2]
        self.group = self.H // self.HKV
        self.block_d = max(16, triton.next_power_of_2(self.D))
        self.max_len = max(self.LQ, self.LK)
        self.act = 0 if activation == "sigmoid" else 1
        self.varlen = 2 if self.packed else 1 if seq_lens is not None else 0
        self.bias_mode = 2 if bias_t is not None else 1 if bias_value is not None else 0
        self.decay_mode = 0 if decay is None else 1 if decay_mode == "additive" else 2
        self.gate = 0 if gate is None else 1 if gate.dim() == q.dim() - 1 else 2
        self.causal = bool(causal)
        self.has_slopes = slopes is not None
        self.has_pos = positions is not None
        self.scale = float(scale)
        self.bias_value2 = float(bias_value) * LOG2E if bias_value is not None else 0.0
        self.even = self.varlen == 0 and not self.causal and self.T % 128 == 0 and self.S % 128 == 0
        self.dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
        self.fast = int(FAST_SIGMOID) if not INTERPRET and q.dtype != torch.float32 else 0
        self.tune_key = min(triton.next_power_of_2(self.max_len), 16384)
        dummy = _dummy(q.device, torch.int32)
        self.seq_lens = seq_lens.to(torch.int32).contiguous() if seq_lens is not None else dummy
        self.cu = cu_seqlens.to(torch.int32).contiguous() if cu_seqlens is not None else dummy
        self.pos = positions.to(torch.int32).contiguous() if positions is not None else dummy
        self.bias_t = bias_t.contiguous() if bias_t is not None else _dummy(q.device, q.dtype)
        self.slopes = slopes.contiguous() if slopes is not None else _dummy(q.device, q.dtype)
        self.decay = decay.contiguous() if decay is not None else _dummy(q.device, q.dtype)

    def common(self) -> dict:
        return dict(
            SEQ_LENS=self.seq_lens, CU=self.cu, POS=self.pos, BIAS=self.bias_t, SLOPES=self.slopes, DECAY=self.decay,
            T=self.T, S=self.S, H=self.H, GROUP=self.group, LSE_ROWS=self.rows_q, bias_value2=self.bias_value2,
            D=self.D, BLOCK_D=self.block_d, ACT=self.act, VARLEN=self.varlen, BIAS_MODE=self.bias_mode,
            HAS_SLOPES=self.has_slopes, DECAY_MODE=self.decay_mode, HAS_POS=self.has_pos, CAUSAL=self.causal,
            EVEN=self.even,
            DOT_PREC=self.dot_prec, FAST=self.fast, TUNE_KEY=self.tune_key,
        )


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(row stride, head stride) of a contiguous ``[..., H, D]`` tensor."""
    return t.stride(-3), t.stride(-2)


def attention_forward(q, k, v, gate, bias_t, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
                      bias_value, decay_mode, causal, max_seqlen):
    """Forward launcher. Inputs contiguous, ``[B, T, H, D]`` or packed ``[total, H, D]``.

    Returns ``(out, lse)``: ``out`` like ``q`` (gated, padded rows 0); ``lse`` float32 ``[H, rows]`` holding the
    softmax log2-sum-exp2 of each row (``+inf`` for rows with no valid key), empty for sigmoid.
    """
    pb = Problem(q, k, v, gate, bias_t, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
                 bias_value, decay_mode, causal, max_seqlen)
    out = _empty(q.shape, q.dtype, q.device)
    lse = _empty((pb.H, pb.rows_q) if pb.act == 1 else (1,), torch.float32, q.device)
    g = gate if gate is not None else q
    gs = (g.stride(-2), 1) if pb.gate == 1 else _rows(g)
    tile = _window_tile(pb)
    if tile is not None:
        block, warps = tile
        c = pb.common()
        grid = (triton.cdiv(pb.B, block // pb.T) * pb.H,)
        _attn_fwd_windows[grid](
            q, k, v, g, out, lse, c["POS"], c["BIAS"], c["SLOPES"], c["DECAY"], **_strides(q, k, v, out),
            stride_gr=gs[0], stride_gh=gs[1], NW=pb.B, H=pb.H, GROUP=pb.group, LSE_ROWS=pb.rows_q,
            scale2=pb.scale * LOG2E, bias_value2=pb.bias_value2, T=pb.T, D=pb.D, BLOCK_D=pb.block_d, ACT=pb.act,
            BIAS_MODE=pb.bias_mode, HAS_SLOPES=pb.has_slopes, DECAY_MODE=pb.decay_mode, HAS_POS=pb.has_pos,
            CAUSAL=pb.causal, GATE=pb.gate, DOT_PREC=pb.dot_prec, FAST=pb.fast, BLOCK=block, num_warps=warps,
            num_stages=1,
        )
        return out, lse
    _launch(
        "fwd", pb.LQ, pb.B * pb.H, pb.block_d, pb.max_len, q.dtype == torch.float32,
        Q=q, K=k, V=v, G=g, Out=out, LSE=lse, **_strides(q, k, v, out), stride_gr=gs[0], stride_gh=gs[1],
        LQ=pb.LQ, scale2=pb.scale * LOG2E, GATE=pb.gate, **pb.common(),
    )
    return out, lse


def _strides(q, k, v, o) -> dict:
    (qr, qh), (kr, kh), (vr, vh), (orr, oh) = _rows(q), _rows(k), _rows(v), _rows(o)
    return dict(stride_qr=qr, stride_qh=qh, stride_kr=kr, stride_kh=kh, stride_vr=vr, stride_vh=vh, stride_or=orr,
                stride_oh=oh)


def attention_backward(do, q, k, v, out, lse, gate, bias_t, slopes, decay, positions, seq_lens, cu_seqlens,
                       activation, scale, bias_value, decay_mode, causal, max_seqlen, need_dbias, need_dslopes,
                       need_ddecay):
    """Backward launcher: returns ``(dq, dk, dv, dgate, dbias, dslopes, ddecay)``, ``None`` where not computed.

    ``dgate`` is returned whenever ``gate`` is given; the per-head gradients when their ``need_*`` flag is set.
    """
    pb = Problem(q, k, v, gate, bias_t, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
                 bias_value, decay_mode, causal, max_seqlen)
    dev = q.device
    dgate = None
    delta = lse
    if pb.gate or pb.act == 1:
        delta = _empty((pb.H, pb.rows_q) if pb.act == 1 else (1,), torch.float32, dev)
        do_pre = _empty(do.shape, do.dtype, dev) if pb.gate else do
        dgate = _empty(gate.shape, gate.dtype, dev) if pb.gate else None
        block_r = 16 if INTERPRET else 64
        _bwd_preprocess[(triton.cdiv(pb.rows_q, block_r), pb.H)](
            out, do, gate if gate is not None else do, do_pre, dgate if dgate is not None else do, delta, pb.rows_q,
            pb.H, D=pb.D, BLOCK_D=pb.block_d, BLOCK_R=block_r, ACT=pb.act, GATE=pb.gate,
        )
        do = do_pre

    need_dist = need_dslopes or (need_ddecay and pb.decay_mode == 1)
    need_mult = need_ddecay and pb.decay_mode == 2
    # the [3, H] sums of the per-head parameter gradients; untouched (a dummy) when none is asked for
    dparam = (torch.zeros((3, pb.H), dtype=torch.float32, device=dev) if need_dbias or need_dist or need_mult
              else _dummy(dev, torch.float32))
    tile = _window_tile(pb)
    # the backward keeps dK, dV and three score-sized tiles in registers: past D = 64 they would spill
    if tile is not None and pb.block_d <= 64:
        block, warps = tile
        dq, dk, dv = _empty(q.shape, q.dtype, dev), _empty(k.shape, k.dtype, dev), _empty(v.shape, v.dtype, dev)
        c = pb.common()
        _attn_bwd_windows[(triton.cdiv(pb.B, block // pb.T) * pb.HKV,)](
            q, k, v, do, dq, dk, dv, lse, delta, c["POS"], c["BIAS"], c["SLOPES"], c["DECAY"], dparam,
            *_rows(q), *_rows(k), *_rows(v), *_rows(do), *_rows(dq), *_rows(dk), *_rows(dv),
            NW=pb.B, H=pb.H, HKV=pb.HKV, GROUP=pb.group, LSE_ROWS=pb.rows_q, scale=pb.scale,
            scale2=pb.scale * LOG2E, bias_value2=pb.bias_value2, T=pb.T, D=pb.D, BLOCK_D=pb.block_d, ACT=pb.act,
            BIAS_MODE=pb.bias_mode, HAS_SLOPES=pb.has_slopes, DECAY_MODE=pb.decay_mode, HAS_POS=pb.has_pos,
            CAUSAL=pb.causal, NEED_DBIAS=bool(need_dbias), NEED_DDIST=bool(need_dist), NEED_DMULT=bool(need_mult),
            DOT_PREC=pb.dot_prec, FAST=pb.fast, BLOCK=block, num_warps=warps, num_stages=1,
        )
        return (dq, dk, dv, dgate, *_param_grads(dparam, pb, bias_t, slopes, decay, need_dbias, need_dslopes,
                                                 need_ddecay))

    atomic = BWD_DQ_MODE == "atomic"
    dq32 = torch.zeros(q.shape, dtype=torch.float32, device=dev) if atomic else _empty(q.shape, q.dtype, dev)
    dk = _empty(k.shape, k.dtype, dev)
    dv = _empty(v.shape, v.dtype, dev)
    (qr, qh), (kr, kh), (vr, vh), (dor, doh) = _rows(q), _rows(k), _rows(v), _rows(do)
    (dqr, dqh), (dkr, dkh), (dvr, dvh) = _rows(dq32), _rows(dk), _rows(dv)
    common = pb.common()
    strides = dict(stride_qr=qr, stride_qh=qh, stride_kr=kr, stride_kh=kh, stride_vr=vr, stride_vh=vh,
                   stride_dor=dor, stride_doh=doh, stride_dqr=dqr, stride_dqh=dqh)
    _launch(
        "dkdv", pb.LK, pb.B * pb.HKV, pb.block_d, pb.max_len, q.dtype == torch.float32,
        Q=q, K=k, V=v, DO=do, DQ=dq32, DK=dk, DV=dv, LSE=lse, DELTA=delta, DPARAM=dparam, **strides,
        stride_dkr=dkr, stride_dkh=dkh, stride_dvr=dvr, stride_dvh=dvh, LK=pb.LK, HKV=pb.HKV, scale=pb.scale,
        scale2=pb.scale * LOG2E, ATOMIC_DQ=atomic, NEED_DBIAS=bool(need_dbias), NEED_DDIST=bool(need_dist),
        NEED_DMULT=bool(need_mult), **common,
    )
    if atomic:
        dq = dq32.to(q.dtype)
    else:
        dq = dq32
        _launch(
            "dq", pb.LQ, pb.B * pb.H, pb.block_d, pb.max_len, q.dtype == torch.float32,
            Q=q, K=k, V=v, DO=do, DQ=dq, LSE=lse, DELTA=delta, **strides, LQ=pb.LQ, scale=pb.scale,
            scale2=pb.scale * LOG2E, **common,
        )
    return (dq, dk, dv, dgate, *_param_grads(dparam, pb, bias_t, slopes, decay, need_dbias, need_dslopes,
                                             need_ddecay))


def _param_grads(dparam, pb, bias_t, slopes, decay, need_dbias, need_dslopes, need_ddecay) -> tuple:
    """``(dbias, dslopes, ddecay)`` from the kernels' ``[3, H]`` float32 sums, ``None`` where not asked for."""
    # copies, not views: a custom op's outputs may not alias one another
    dbias = dparam[0].to(bias_t.dtype, copy=True) if need_dbias else None
    dslopes = (-dparam[1]).to(slopes.dtype) if need_dslopes else None
    ddecay = None
    if need_ddecay:
        ddecay = dparam[1 if pb.decay_mode == 1 else 2].to(decay.dtype, copy=True)
    return dbias, dslopes, ddecay
