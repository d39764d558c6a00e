"""Multi-head attention over the shared core, with flat flags for every variant the zoo uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gatedzoo.kernels import attention
from gatedzoo.kernels._args import AttentionArgs, validate
from gatedzoo.kernels.reference import attention_probs

GATES = (None, "headwise", "elementwise")
ALIBI = (None, "standard", "balanced")
DECAY = (None, "additive", "multiplicative")
VALUE_GATES = (None, "swiglu")


def alibi_slopes(num_heads: int, balanced: bool) -> torch.Tensor:
    """ALiBi slopes ``2^(-8k/H)``; ``balanced`` gives the two halves of the heads opposite signs.

    Balanced slopes (positive on one half, negative on the other) let half of the heads favour near tokens and half
    favour far ones, which a sigmoid (unnormalised) attention needs to see context at all distances.
    """
    if not balanced:
        return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])
    half = max(num_heads // 2, 1)
    mags = [2.0 ** (-(h % half) - 1) for h in range(num_heads)]
    return torch.tensor([m if h < half else -m for h, m in enumerate(mags)])


def retention_log_decay(num_heads: int, initial: float = 2.0, heads_range: float = 4.0) -> torch.Tensor:
    """Per-head ``log(gamma_h)`` with ``gamma_h = 1 - 2^-(initial + heads_range * h / H)`` (RetNet / RMT schedule)."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-(2.0 ** (-(initial + heads_range * h / num_heads)))).float()


class MultiheadAttention(nn.Module):
    """Attention block body: projections, optional gates and positional biases, the core kernel, output projection.

    Args:
        dim (int): model width ``C``; input ``x`` is ``[B, T, C]`` (or ``[total, C]`` with ``cu_seqlens``).
        num_heads (int): query heads ``H``; ``dim`` must be divisible by it unless ``head_dim`` is given.
        kv_heads (int, Optional): key/value heads for GQA; must divide ``num_heads``. Default: ``num_heads``.
        head_dim (int, Optional): per-head width. Default: ``dim // num_heads``.
        activation (str): ``"softmax"`` or ``"sigmoid"``. Default: ``"softmax"``.
        gate (str, Optional): G1 output gate ``None`` / ``"headwise"`` / ``"elementwise"``, projected from the
            layer input (the block's normalised input) and applied before the output projection. Default: `None`.
        qk_norm (bool): RMS-normalise q and k per head. Default: `False`.
        alibi (str, Optional): ``None`` / ``"standard"`` / ``"balanced"`` (mixed-sign) ALiBi slopes. Default: `None`.
        decay (str, Optional): ``None`` / ``"additive"`` / ``"multiplicative"`` per-head distance decay, initialised
            with the RetNet schedule. Default: `None`.
        trainable_pos (bool): learn the ALiBi slopes and decay rates. Default: `True`.
        sigmoid_bias (float | str, Optional): sigmoid only. ``None`` uses the core's ``-log(n)``; a float fixes it;
            ``"learned"`` learns one bias per head starting at ``sigmoid_bias_init``. Default: `None`.
        sigmoid_bias_init (float): start of the learned bias. Default: ``-4.0``.
        value_gate (str, Optional): ``"swiglu"`` gates the values, ``v = (x W_v) * silu(x W_u)``. Default: `None`.
        context_dim (int, Optional): width of ``context`` for cross-attention. Default: ``dim``.
        bias (bool): biases in the q/k/v/output projections. Default: `True`.
        backend (str): passed to :func:`gatedzoo.kernels.attention`. Default: ``"auto"``.
        attn_drop (float): dropout on the attention probabilities while training (``nn.MultiheadAttention``'s
            ``dropout``). Non-zero keeps calls off the Triton kernels (SDPA runs plain softmax, the reference the
            rest). Default: ``0.0``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        activation: str = "softmax",
        gate: str | None = None,
        qk_norm: bool = False,
        alibi: str | None = None,
        decay: str | None = None,
        trainable_pos: bool = True,
        sigmoid_bias: float | str | None = None,
        sigmoid_bias_init: float = -4.0,
        value_gate: str | None = None,
        context_dim: int | None = None,
        bias: bool = True,
        backend: str = "auto",
        attn_drop: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"MultiheadAttention: attn_drop={attn_drop} must be in [0, 1).")
        self.attn_drop = attn_drop
        kv_heads = num_heads if kv_heads is None else kv_heads
        self._check_flags(dim, num_heads, kv_heads, head_dim, activation, gate, alibi, decay, sigmoid_bias, value_gate)
        self.num_heads, self.kv_heads = num_heads, kv_heads
        self.head_dim = head_dim or dim // num_heads
        self.activation, self.gate_kind, self.decay_mode, self.backend = activation, gate, decay, backend
        inner, kv_inner = num_heads * self.head_dim, kv_heads * self.head_dim
        context_dim = context_dim or dim
        self.q_proj = nn.Linear(dim, inner, bias=bias)
        self.k_proj = nn.Linear(context_dim, kv_inner, bias=bias)
        self.v_proj = nn.Linear(context_dim, kv_inner, bias=bias)
        self.u_proj = nn.Linear(context_dim, kv_inner, bias=bias) if value_gate else None
        self.gate_proj = None
        if gate is not None:
            self.gate_proj = nn.Linear(dim, num_heads if gate == "headwise" else inner, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.out_proj = nn.Linear(inner, dim, bias=bias)

        self.alibi_slopes = None
        if alibi is not None:
            self.alibi_slopes = nn.Parameter(alibi_slopes(num_heads, alibi == "balanced"), requires_grad=trainable_pos)
        self._decay_raw = None
        if decay is not None:
            # log(gamma) = -softplus(raw) keeps the decay valid (<= 0) whatever the optimiser does
            log_gamma = retention_log_decay(num_heads)
            self._decay_raw = nn.Parameter(torch.log(torch.expm1(-log_gamma)), requires_grad=trainable_pos)
        self.sigmoid_bias = sigmoid_bias
        if sigmoid_bias == "learned":
            self.sigmoid_bias = nn.Parameter(torch.full((num_heads,), float(sigmoid_bias_init)))

    @staticmethod
    def _check_flags(dim, num_heads, kv_heads, head_dim, activation, gate, alibi, decay, sigmoid_bias, value_gate):
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"MultiheadAttention: activation={activation!r}; use 'softmax' or 'sigmoid'.")
        for name, value, allowed in (("gate", gate, GATES), ("alibi", alibi, ALIBI), ("decay", decay, DECAY),
                                     ("value_gate", value_gate, VALUE_GATES)):
            if value not in allowed:
                raise ValueError(f"MultiheadAttention: {name}={value!r} is not one of {allowed}.")
        if head_dim is None and dim % num_heads:
            raise ValueError(
                f"MultiheadAttention: dim={dim} is not divisible by num_heads={num_heads}; change one or pass head_dim."
            )
        if num_heads % kv_heads:
            raise ValueError(f"MultiheadAttention: kv_heads={kv_heads} must divide num_heads={num_heads}.")
        if sigmoid_bias is not None and activation != "sigmoid":
            raise ValueError("MultiheadAttention: sigmoid_bias needs activation='sigmoid'; drop it for softmax.")
        if isinstance(sigmoid_bias, str) and sigmoid_bias != "learned":
            raise ValueError(f"MultiheadAttention: sigmoid_bias={sigmoid_bias!r}; use None, a float or 'learned'.")

    @property
    def decay(self) -> torch.Tensor | None:
        """Per-head ``log(gamma)`` (``<= 0``), or ``None``."""
        return None if self._decay_raw is None else -F.softplus(self._decay_raw)

    def _project(self, x, context):
        """Return ``(q, k, v, gate_logits)`` in the core's ``[..., heads, head_dim]`` layout."""
        ctx = x if context is None else context
        lead_q, lead_k = x.shape[:-1], ctx.shape[:-1]
        q = self.q_proj(x).view(*lead_q, self.num_heads, self.head_dim)
        k = self.k_proj(ctx).view(*lead_k, self.kv_heads, self.head_dim)
        v = self.v_proj(ctx)
        if self.u_proj is not None:
            v = v * F.silu(self.u_proj(ctx))
        v = v.view(*lead_k, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        gate = None
        if self.gate_proj is not None:
            gate = self.gate_proj(x)
            if self.gate_kind == "elementwise":
                gate = gate.view(*lead_q, self.num_heads, self.head_dim)
        return q, k, v, gate

    def _core_kwargs(self, seq_lens, cu_seqlens, positions, causal) -> dict:
        bias = self.sigmoid_bias if self.activation == "sigmoid" else None
        return dict(
            activation=self.activation, sigmoid_bias=bias, alibi_slopes=self.alibi_slopes, decay=self.decay,
            decay_mode=self.decay_mode or "additive", positions=positions, seq_lens=seq_lens, cu_seqlens=cu_seqlens,
            causal=causal,
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        seq_lens: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        causal: bool = False,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """``x``: ``[B, T, C]`` (packed ``[total, C]`` with ``cu_seqlens``); returns the same shape.

        ``context`` (``[B, S, C_ctx]``) switches to cross-attention; ``seq_lens`` / ``cu_seqlens`` / ``positions`` /
        ``causal`` / ``max_seqlen`` (host-side bound on the packed sequences: no GPU sync) are passed to the core
        (see :func:`gatedzoo.kernels.attention`).
        """
        q, k, v, gate = self._project(x, context)
        out = attention(q, k, v, gate=gate, backend=self.backend, dropout_p=self.attn_drop if self.training else 0.0,
                        max_seqlen=max_seqlen, **self._core_kwargs(seq_lens, cu_seqlens, positions, causal))
        return self.out_proj(out.reshape(*out.shape[:-2], -1))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention weights ``[B, H, T, S]`` and gate scores ``sigmoid(gate)`` (or ``None``) for diagnostics.

        Takes the arguments of :meth:`forward` (padded layout only).
        """
        context = kwargs.pop("context", None)
        q, k, v, gate = self._project(x, context)
        core = self._core_kwargs(kwargs.get("seq_lens"), None, kwargs.get("positions"), kwargs.get("causal", False))
        a: AttentionArgs = validate(q, k, v, gate=None, backend="reference", scale=None, **core)
        return attention_probs(a), (None if gate is None else torch.sigmoid(gate.float()))

    def extra_repr(self) -> str:
        flags = [f"heads={self.num_heads}", f"kv_heads={self.kv_heads}", f"head_dim={self.head_dim}",
                 f"activation={self.activation}"]
        if self.gate_kind:
            flags.append(f"gate={self.gate_kind}")
        if self.decay_mode:
            flags.append(f"decay={self.decay_mode}")
        return ", ".join(flags)

