"""Up-front validation of `attention(...)` arguments.

Every backend receives an :class:`AttentionArgs`: the caller's tensors plus the derived facts (layout,
lengths, gate kind) that the backends would otherwise each recompute. Validation raises ``ValueError`` or
``TypeError`` with the problem *and* the fix, before any work starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

ACTIVATIONS = ("sigmoid", "softmax")
DECAY_MODES = ("additive", "multiplicative")
BACKENDS = ("auto", "triton", "reference", "sdpa")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class AttentionArgs:
    """Validated arguments of one attention call (see ``kernels/README.md`` for the maths).

    ``packed`` is True for the ``cu_seqlens`` layout, where q, k, v, gate are ``[total, H, D]``.
    ``gate_kind`` is ``None``, ``"headwise"`` or ``"elementwise"``. ``scale`` is always a float here. ``dropout_p``
    is the attention-probability dropout of this call (0 outside training). ``max_seqlen`` is the caller's bound on
    the longest packed sequence (``None``: the Triton launcher reads it from ``cu_seqlens``, a device sync).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    activation: str
    scale: float
    sigmoid_bias: float | torch.Tensor | None
    alibi_slopes: torch.Tensor | None
    decay: torch.Tensor | None
    decay_mode: str
    positions: torch.Tensor | None
    seq_lens: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    causal: bool
    gate: torch.Tensor | None
    gate_kind: str | None
    packed: bool
    dropout_p: float = 0.0
    max_seqlen: int | None = None

    @property
    def num_heads(self) -> int:
        return self.q.shape[-2]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[-2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @property
    def has_positional_bias(self) -> bool:
        return self.alibi_slopes is not None or self.decay is not None

    @property
    def is_plain_softmax(self) -> bool:
        """Softmax with nothing SDPA cannot express (used by ``backend="sdpa"`` and ``"auto"``)."""
        return (
            self.activation == "softmax"
            and not self.has_positional_bias
            and self.seq_lens is None
            and not self.packed
            and self.gate is None
        )


def check_values(t: torch.Tensor) -> bool:
    """Whether to run checks that read tensor values (ranges, monotonicity).

    On CPU they are free and always run. On CUDA each would synchronise the device on every call (18 times per
    forward pass of a Gated-SwinRMT block), so they run only with ``GATEDZOO_CHECK_VALUES=1``; shapes, dtypes and
    devices are always checked. Under ``torch.compile`` they never run (no data-dependent control flow).
    """
    if torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or os.environ.get("GATEDZOO_CHECK_VALUES", "") == "1"


def _check_tensor(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"attention: `{name}` must be a torch.Tensor, got {type(t).__name__}.")
    if t.device != ref.device:
        raise ValueError(
            f"attention: `{name}` is on {t.device} but q is on {ref.device}; move every tensor argument to one device "
            f"(e.g. `{name}.to(q.device)`)."
        )


def _check_per_head(name: str, t: torch.Tensor | None, heads: int, q: torch.Tensor) -> None:
    if t is None:
        return
    _check_tensor(name, t, q)
    if t.shape != (heads,):
        raise ValueError(f"attention: `{name}` must have shape [H] = [{heads}], got {list(t.shape)}.")
    if not t.is_floating_point():
        raise TypeError(f"attention: `{name}` must be a floating tensor, got {t.dtype}; use `{name}.float()`.")


def _check_lengths(name: str, t: torch.Tensor, q: torch.Tensor, size: int) -> None:
    _check_tensor(name, t, q)
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"attention: `{name}` must be int32 (or int64), got {t.dtype}; use `{name}.int()`.")
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"attention: `{name}` must have shape [{size}], got {list(t.shape)}.")


def longest_packed(cu_seqlens: torch.Tensor) -> int:
    """Length of the longest sequence of a ``[B + 1]`` ``cu_seqlens`` (a device-to-host copy on CUDA)."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def validate(
    q, k, v, *, activation, scale, sigmoid_bias, alibi_slopes, decay, decay_mode, positions, seq_lens, cu_seqlens,
    causal, gate, backend, dropout_p=0.0, max_seqlen=None,
) -> AttentionArgs:
    """Check every argument of :func:`kernels.attention` and return the normalised :class:`AttentionArgs`."""
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(
            f"attention: dropout_p={dropout_p!r} must be a float in [0, 1); pass 0.0 outside training "
            "(e.g. `dropout_p=self.p if self.training else 0.0`)."
        )
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"attention: `q` must be a torch.Tensor, got {type(q).__name__}.")
    for name, t in (("k", k), ("v", v)):
        _check_tensor(name, t, q)
    if activation not in ACTIVATIONS:
        raise ValueError(f"attention: activation={activation!r} is not one of {ACTIVATIONS}.")
    if decay_mode not in DECAY_MODES:
        raise ValueError(f"attention: decay_mode={decay_mode!r} is not one of {DECAY_MODES}.")
    if backend not in BACKENDS:
        raise ValueError(f"attention: backend={backend!r} is not one of {BACKENDS}.")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"attention: q has dtype {q.dtype}; use float16, bfloat16, float32 or float64.")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them, "
            "e.g. `k = k.to(q.dtype)`."
        )

    packed = cu_seqlens is not None
    want = 3 if packed else 4
    layout = "[total, H, D]" if packed else "[B, T, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != want:
            hint = " (packed varlen layout because cu_seqlens was given)" if packed else ""
            raise ValueError(f"attention: `{name}` must be {layout}{hint}, got shape {list(t.shape)}.")
    if packed and seq_lens is not None:
        raise ValueError("attention: pass either `seq_lens` (padded layout) or `cu_seqlens` (packed layout), not both.")
    H, D = q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    if k.shape[:-2] != v.shape[:-2] or v.shape[-2] != Hkv:
        raise ValueError(f"attention: k {list(k.shape)} and v {list(v.shape)} must agree on all but the last dim.")
    if k.shape[-1] != D:
        raise ValueError(f"attention: q and k head dims differ ({D} vs {k.shape[-1]}); they must be equal.")
    if H % Hkv != 0:
        raise ValueError(
            f"attention: q has {H} heads and k/v have {Hkv}; for grouped-query attention H must be a multiple of "
            "Hkv."
        )
    if packed:
        if k.shape[0] != q.shape[0]:
            raise ValueError(
                "attention: with cu_seqlens, q and k/v must hold the same packed tokens "
                f"(got {q.shape[0]} and {k.shape[0]})."
            )
    elif k.shape[0] != q.shape[0]:
        raise ValueError(f"attention: batch sizes differ: q {q.shape[0]}, k/v {k.shape[0]}.")

    if scale is None:
        scale = D ** -0.5
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}.")

    if sigmoid_bias is not None:
        if activation != "sigmoid":
            raise ValueError("attention: `sigmoid_bias` only applies to activation='sigmoid'; drop it for softmax.")
        if isinstance(sigmoid_bias, torch.Tensor):
            _check_per_head("sigmoid_bias", sigmoid_bias, H, q)
        else:
            sigmoid_bias = float(sigmoid_bias)
    _check_per_head("alibi_slopes", alibi_slopes, H, q)
    _check_per_head("decay", decay, H, q)
    if decay is not None and check_values(decay) and bool((decay.detach() > 0).any()):
        raise ValueError(
            "attention: `decay` holds log(gamma) and must be <= 0 (gamma in (0, 1]); got a positive entry. "
            "Parametrise it as e.g. `-softplus(raw)` or `torch.log(gamma)`."
        )

    seqlen_q = q.shape[0] if packed else q.shape[1]
    seqlen_k = k.shape[0] if packed else k.shape[1]
    if positions is not None:
        _check_tensor("positions", positions, q)
        if packed:
            raise ValueError("attention: `positions` is not supported with cu_seqlens; use the padded layout.")
        if positions.shape != (seqlen_q, 2) or seqlen_q != seqlen_k:
            raise ValueError(
                f"attention: `positions` must be [T, 2] integer (row, col) coordinates with T == S, got "
                f"{list(positions.shape)} for T={seqlen_q}, S={seqlen_k}."
            )
        if positions.is_floating_point():
            raise TypeError("attention: `positions` must be an integer tensor of (row, col) coordinates.")
        if not (alibi_slopes is not None or decay is not None):
            raise ValueError("attention: `positions` only matters with `alibi_slopes` or `decay`; pass one or drop it.")

    if seq_lens is not None:
        B = q.shape[0]
        _check_lengths("seq_lens", seq_lens, q, B)
        if check_values(seq_lens):
            lo, hi = int(seq_lens.min()), int(seq_lens.max())
            if lo < 0 or hi > min(seqlen_q, seqlen_k):
                raise ValueError(
                    f"attention: seq_lens must lie in [0, min(T, S)] = [0, {min(seqlen_q, seqlen_k)}], got "
                    f"[{lo}, {hi}]."
                )
    if packed:
        _check_lengths("cu_seqlens", cu_seqlens, q, cu_seqlens.shape[0])
        if cu_seqlens.shape[0] < 2:
            raise ValueError("attention: cu_seqlens must have B + 1 >= 2 entries, starting at 0.")
        if check_values(cu_seqlens):
            c = cu_seqlens.tolist()
            if c[0] != 0 or c[-1] != seqlen_q or any(b < a for a, b in zip(c, c[1:])):
                raise ValueError(
                    f"attention: cu_seqlens must start at 0, be non-decreasing and end at the number of packed "
                    f"tokens ({seqlen_q}); got {c[:4]}{'...' if len(c) > 4 else ''}{c[-1:]}."
                )
    if max_seqlen is not None:
        if not packed:
            raise ValueError("attention: `max_seqlen` bounds the packed sequences of `cu_seqlens`; drop it for the "
                             "padded layout (its length is the tensor's T).")
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise ValueError(f"attention: max_seqlen={max_seqlen!r} must be a positive Python int (the longest "
                             "sequence of cu_seqlens, known on the host), not a tensor.")
        if check_values(cu_seqlens):
            longest = longest_packed(cu_seqlens)
            if longest > max_seqlen:
                raise ValueError(f"attention: max_seqlen={max_seqlen} but cu_seqlens holds a sequence of {longest} "
                                 f"tokens; pass max_seqlen >= {longest} (an upper bound is fine).")

    gate_kind = None
    if gate is not None:
        _check_tensor("gate", gate, q)
        if gate.shape == q.shape[:-1]:
            gate_kind = "headwise"
        elif gate.shape == q.shape:
            gate_kind = "elementwise"
        else:
            raise ValueError(
                f"attention: `gate` must be {list(q.shape[:-1])} (headwise) or {list(q.shape)} (elementwise), "
                f"got {list(gate.shape)}."
            )
        if not gate.is_floating_point():
            raise TypeError(f"attention: `gate` holds logits and must be floating, got {gate.dtype}.")

    return AttentionArgs(
        q=q, k=k, v=v, activation=activation, scale=scale, sigmoid_bias=sigmoid_bias, alibi_slopes=alibi_slopes,
        decay=decay, decay_mode=decay_mode, positions=positions, seq_lens=seq_lens, cu_seqlens=cu_seqlens,
        causal=bool(causal), gate=gate, gate_kind=gate_kind, packed=packed, dropout_p=float(dropout_p),
        max_seqlen=max_seqlen,
    )
