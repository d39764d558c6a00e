"""Autograd glue: the Triton kernels as ``torch.library`` custom ops with a registered backward.

``torch.ops.gatedzoo.attention_fwd`` / ``attention_bwd`` are opaque to ``torch.compile`` (it traces them through
their fake implementations, no graph break) and differentiable through ``register_autograd``. The functional entry
point (:func:`gatedzoo.kernels.attention`) reaches them through :func:`triton_attention`.
"""

from __future__ import annotations

import os

import torch

from . import triton_kernels as tk
from ._args import AttentionArgs, longest_packed

MAX_HEAD_DIM = 256
# tests set this to run eager calls through the custom op too (the path torch.compile takes)
EAGER_CUSTOM_OP = os.environ.get("GATEDZOO_EAGER_CUSTOM_OP", "0") == "1"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_unsupported_reason(a: AttentionArgs) -> str | None:
    """Why the Triton kernels cannot run ``a`` (``None`` when they can)."""
    if a.q.dtype not in DTYPES:
        return f"the Triton kernels run float16, bfloat16 and float32, not {a.q.dtype}"
    if a.head_dim > MAX_HEAD_DIM:
        return f"head dim {a.head_dim} is above the Triton kernels' limit of {MAX_HEAD_DIM}"
    if a.dropout_p > 0:
        return "attention dropout is not fused into the Triton kernels (SDPA runs it for plain softmax, else the " \
            "reference)"
    return None


@torch.library.custom_op("gatedzoo::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None, bias: torch.Tensor | None,
    slopes: torch.Tensor | None, decay: torch.Tensor | None, positions: torch.Tensor | None,
    seq_lens: torch.Tensor | None, cu_seqlens: torch.Tensor | None, activation: str, scale: float,
    bias_value: float | None, decay_mode: str, causal: bool, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``(out, lse)``; see :func:`triton_kernels.attention_forward` for the layout."""
    return tk.attention_forward(q, k, v, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
                                bias_value, decay_mode, causal, max_seqlen)


@attention_fwd.register_fake
def _(q, k, v, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale, bias_value, decay_mode,
      causal, max_seqlen):
    rows = q.shape[0] if cu_seqlens is not None else q.shape[0] * q.shape[1]
    lse_shape = (q.shape[-2], rows) if activation == "softmax" else (1,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("gatedzoo::attention_bwd", mutates_args=())
def attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    gate: torch.Tensor | None, bias: torch.Tensor | None, slopes: torch.Tensor | None, decay: torch.Tensor | None,
    positions: torch.Tensor | None, seq_lens: torch.Tensor | None, cu_seqlens: torch.Tensor | None, activation: str,
    scale: float, bias_value: float | None, decay_mode: str, causal: bool, max_seqlen: int, need_dbias: bool,
    need_dslopes: bool, need_ddecay: bool,
) -> list[torch.Tensor]:
    """Backward: ``[dq, dk, dv, dgate, dbias, dslopes, ddecay]`` with empty tensors where nothing is computed."""
    grads = tk.attention_backward(do.contiguous(), q, k, v, out, lse, gate, bias, slopes, decay, positions, seq_lens,
                                  cu_seqlens, activation, scale, bias_value, decay_mode, causal, max_seqlen,
                                  need_dbias, need_dslopes, need_ddecay)
    return [g if g is not None else q.new_empty(0) for g in grads]


@attention_bwd.register_fake
def _(do, q, k, v, out, lse, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, activation, scale,
      bias_value, decay_mode, causal, max_seqlen, need_dbias, need_dslopes, need_ddecay):
    def maybe(t, need):
        return torch.empty_like(t) if t is not None and need else q.new_empty(0)

    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), maybe(gate, True), maybe(bias, need_dbias),
            maybe(slopes, need_dslopes), maybe(decay, need_ddecay)]


_TENSOR_INPUTS = 10  # q, k, v, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_TENSOR_INPUTS], output[0], output[1])
    ctx.options = inputs[_TENSOR_INPUTS:]


def _input_grads(ctx, grads: list) -> tuple:
    """Map ``[dq, dk, dv, dgate, dbias, dslopes, ddecay]`` onto the forward's inputs (``None`` where not needed)."""
    dq, dk, dv, dgate, dbias, dslopes, ddecay = grads
    need = ctx.needs_input_grad
    gate = ctx.saved_tensors[3]
    return (dq, dk, dv, dgate if gate is not None else None, dbias if need[4] else None,
            dslopes if need[5] else None, ddecay if need[6] else None) + (None,) * 9


def _backward(ctx, dout, _dlse):
    q, k, v, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, out, lse = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = attention_bwd(
        dout, q, k, v, out, lse, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, *ctx.options,
        bool(need[4]), bool(need[5]), bool(need[6]),
    )
    return _input_grads(ctx, grads)


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same launchers without the custom-op dispatcher, for eager mode.

    A Python custom op costs a dispatcher round trip per call (about 0.2 ms forward + backward measured on a CPU
    host), as long as the kernel itself at N = 1024; eager calls skip it and ``torch.compile`` keeps the op.
    """

    @staticmethod
    def forward(ctx, *inputs):
        out, lse = tk.attention_forward(*inputs)
        ctx.save_for_backward(*inputs[:_TENSOR_INPUTS], out, lse)
        ctx.options = inputs[_TENSOR_INPUTS:]
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens, out, lse = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = tk.attention_backward(
            dout.contiguous(), q, k, v, out, lse, gate, bias, slopes, decay, positions, seq_lens, cu_seqlens,
            *ctx.options, bool(need[4]), bool(need[5]), bool(need[6]),
        )
        return _input_grads(ctx, list(grads))


def triton_attention(a: AttentionArgs) -> torch.Tensor:
    """Run validated arguments through the Triton kernels (forward now, backward through autograd).

    Under ``torch.compile`` the call goes through the ``gatedzoo::attention_fwd`` custom op (traced without a graph
    break); in eager mode through an ``autograd.Function`` over the same launchers (no dispatcher overhead).
    """
    bias = a.sigmoid_bias if isinstance(a.sigmoid_bias, torch.Tensor) else None
    bias_value = a.sigmoid_bias if isinstance(a.sigmoid_bias, float) else None
    compiling = torch.compiler.is_compiling()
    max_seqlen = 0
    if a.packed:
        if a.max_seqlen is not None:
            max_seqlen = a.max_seqlen  # the caller's host-side bound: no device-to-host copy
        elif compiling:
            max_seqlen = a.q.shape[0]  # an upper bound that needs no device-to-host copy
        else:
            max_seqlen = longest_packed(a.cu_seqlens)
    inputs = (
        a.q.contiguous(), a.k.contiguous(), a.v.contiguous(), _contig(a.gate), _contig(bias),
        _contig(a.alibi_slopes), _contig(a.decay), _contig(a.positions), _contig(a.seq_lens), _contig(a.cu_seqlens),
        a.activation, a.scale, bias_value, a.decay_mode, a.causal, max_seqlen,
    )
    out, _ = attention_fwd(*inputs) if compiling or EAGER_CUSTOM_OP else _EagerAttention.apply(*inputs)
    return out


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.contiguous() if t is not None else None
