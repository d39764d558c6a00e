"""The functional entry point :func:`attention`, shared by every gatedzoo model."""

from __future__ import annotations

import os

import torch

from ._args import AttentionArgs, validate
from .reference import reference_attention, sdpa_attention

#: ``[(module, None)]`` once the Triton kernels imported, ``[(None, reason)]`` once they failed; empty before the first
#: call. A list rather than ``functools.lru_cache``: TorchDynamo warns on every traced call of a cached function.
_BACKEND: list = []


def _triton_backend():
    """Return ``(module, None)`` when the Triton kernels import, else ``(None, reason)``; imported on first use (the
    kernels read ``TRITON_INTERPRET`` when they are defined)."""
    if not _BACKEND:
        try:
            from . import autograd
        except ImportError as err:
            _BACKEND.append((None, f"the Triton kernels could not be imported ({err})"))
        else:
            _BACKEND.append((autograd, None))
    return _BACKEND[0]


def triton_unsupported_reason(a: AttentionArgs) -> str | None:
    """Why the Triton path cannot run this call (``None`` when it can)."""
    backend, reason = _triton_backend()
    if backend is None:
        return reason
    if not (a.q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return f"the tensors are on {a.q.device}; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    return backend.triton_unsupported_reason(a)


def select_backend(a: AttentionArgs, backend: str) -> str:
    """Resolve ``backend="auto"`` to a concrete backend; raise if an explicit backend cannot run the call."""
    if backend == "reference":
        return backend
    if backend == "sdpa":
        if not a.is_plain_softmax:
            raise ValueError(
                "attention: backend='sdpa' runs plain softmax attention only (no sigmoid, positional bias, seq_lens, "
                "cu_seqlens or gate); use backend='auto' to pick a backend that supports this call."
            )
        return backend
    if backend == "triton":
        reason = triton_unsupported_reason(a)
        if reason is not None:
            raise ValueError(f"attention: backend='triton' cannot run this call: {reason}. Use backend='auto'.")
        return backend
    if a.is_plain_softmax:
        # plain softmax is what PyTorch's fused SDPA kernels (cuDNN / FlashAttention) exist for, and they are
        # faster than ours on every shape we measured (long sequences and many tiny ones alike, see
        # benchmarks/NOTES.md); the Triton kernels are for the calls SDPA cannot express
        return "sdpa"
    if a.q.is_cuda and triton_unsupported_reason(a) is None:
        return "triton"
    return "reference"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    activation: str = "sigmoid",
    scale: float | None = None,
    sigmoid_bias: float | torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    decay: torch.Tensor | None = None,
    decay_mode: str = "additive",
    positions: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    causal: bool = False,
    gate: torch.Tensor | None = None,
    backend: str = "auto",
    dropout_p: float = 0.0,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Sigmoid or softmax attention with positional biases, padding, varlen, GQA and a fused output gate.

    Args:
        q (Tensor): queries ``[B, T, H, D]``, or ``[total, H, D]`` packed when ``cu_seqlens`` is given.
            float16, bfloat16, float32 or float64.
        k (Tensor): keys ``[B, S, Hkv, D]`` (packed: ``[total, Hkv, D]``), same dtype; ``H % Hkv == 0`` (GQA).
        v (Tensor): values, shaped like ``k``.
        activation (str): ``"sigmoid"`` (each score squashed on its own) or ``"softmax"``. Default: ``"sigmoid"``.
        scale (float, Optional): multiplies ``q @ k^T``. Default: ``D ** -0.5``.
        sigmoid_bias (float | Tensor, Optional): added to sigmoid scores; a float or a per-head ``[H]`` tensor
            (trainable). Default: ``-log(n)`` with ``n`` the number of valid keys of each sequence.
        alibi_slopes (Tensor, Optional): ``[H]``; adds ``-slope_h * dist(i, j)``. Mixed signs ("balanced" ALiBi)
            are allowed. Trainable.
        decay (Tensor, Optional): ``[H]`` log-gamma ``<= 0``; distance decay ``gamma_h ** dist(i, j)``. Trainable.
        decay_mode (str): ``"additive"`` adds ``dist * log_gamma`` to the scores before the activation;
            ``"multiplicative"`` multiplies the activated scores by ``gamma ** dist``. Default: ``"additive"``.
        positions (Tensor, Optional): ``[T, 2]`` integer (row, col) coordinates; ``dist`` is then their
            Manhattan distance instead of ``|i - j|``. Requires ``T == S``.
        seq_lens (Tensor, Optional): ``[B]`` int32 valid lengths with trailing padding; keys past the length are
            masked and padded query rows return 0.
        cu_seqlens (Tensor, Optional): ``[B + 1]`` int32 cumulative lengths of the packed layout.
        max_seqlen (int, Optional): with ``cu_seqlens``, an upper bound on the longest sequence, as a host int
            (FlashAttention's varlen convention). Given, the Triton path needs no device-to-host copy of
            ``cu_seqlens`` (no GPU sync per call); a larger bound only launches tiles that exit at once. Checked
            against ``cu_seqlens`` on CPU, on CUDA with ``GATEDZOO_CHECK_VALUES=1``. Default: read it from
            ``cu_seqlens``.
        causal (bool): mask keys ``j > i`` (top-left aligned when ``T != S``). Default: ``False``.
        gate (Tensor, Optional): output-gate logits ``[B, T, H]`` (headwise) or ``[B, T, H, D]`` (elementwise);
            the output is multiplied by ``sigmoid(gate)``.
        dropout_p (float): dropout on the attention probabilities (training only: pass 0 in eval), as
            ``nn.MultiheadAttention``. Runs on SDPA (plain softmax) or the reference; the Triton kernels do not fuse
            it. Default: ``0.0``.
        backend (str): ``"auto"`` (SDPA for plain softmax, Triton for the other CUDA calls it supports, else
            the reference), ``"triton"``, ``"reference"`` or ``"sdpa"``. Default: ``"auto"``.

    Returns:
        Tensor shaped and typed like ``q``.

    Examples::
        >>> q = k = v = torch.randn(2, 16, 4, 32)
        >>> attention(q, k, v).shape
        torch.Size([2, 16, 4, 32])
        >>> packed = torch.randn(10, 4, 32)
        >>> attention(packed, packed, packed, cu_seqlens=torch.tensor([0, 3, 10], dtype=torch.int32)).shape
        torch.Size([10, 4, 32])
    """
    a = validate(
        q, k, v, activation=activation, scale=scale, sigmoid_bias=sigmoid_bias, alibi_slopes=alibi_slopes,
        decay=decay, decay_mode=decay_mode, positions=positions, seq_lens=seq_lens, cu_seqlens=cu_seqlens,
        causal=causal, gate=gate, backend=backend, dropout_p=dropout_p, max_seqlen=max_seqlen,
    )
    chosen = select_backend(a, backend)
    if chosen == "triton":
        return _triton_backend()[0].triton_attention(a)
    if chosen == "sdpa":
        return sdpa_attention(a)
    return reference_attention(a)
