"""Pure-PyTorch attention: the specification every kernel is tested against.

It materialises the ``[B, H, T, S]`` score matrix, so it is meant for tests, small inputs and devices without
Triton. It is differentiable in q, k, v, gate and in ``sigmoid_bias`` / ``alibi_slopes`` / ``decay`` when they
require grad. The maths is written out in ``kernels/README.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._args import AttentionArgs, validate


def distance_matrix(seqlen_q: int, seqlen_k: int, positions: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """Token distances ``[T, S]``: ``|i - j|``, or the Manhattan distance of ``positions`` (``[T, 2]``)."""
    if positions is None:
        i = torch.arange(seqlen_q, device=device)
        j = torch.arange(seqlen_k, device=device)
        return (i[:, None] - j[None, :]).abs().to(dtype)
    p = positions.to(device=device, dtype=torch.int64)
    return (p[:, None, :] - p[None, :, :]).abs().sum(-1).to(dtype)


def _pad(x: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """Packed ``[total, ...]`` -> padded ``[B, max(lens), ...]`` (differentiable)."""
    return torch.nn.utils.rnn.pad_sequence(list(torch.split(x, lens)), batch_first=True)


def _padded_reference(
    a: AttentionArgs, lengths: torch.Tensor | None, upcast: bool, return_probs: bool = False
) -> torch.Tensor:
    q, k, v = a.q, a.k, a.v
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    cd = torch.float32 if upcast and q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    group = H // Hkv
    qf = q.to(cd)
    kf = k.to(cd).repeat_interleave(group, dim=2)
    vf = v.to(cd).repeat_interleave(group, dim=2)

    s = torch.einsum("bthd,bshd->bhts", qf, kf) * a.scale
    if a.has_positional_bias:
        dist = distance_matrix(T, S, a.positions, q.device, cd)
        if a.alibi_slopes is not None:
            s = s - a.alibi_slopes.to(cd).view(1, H, 1, 1) * dist
        if a.decay is not None and a.decay_mode == "additive":
            s = s + a.decay.to(cd).view(1, H, 1, 1) * dist

    key_idx = torch.arange(S, device=q.device)
    query_idx = torch.arange(T, device=q.device)
    if lengths is None:
        key_valid = torch.ones(B, S, dtype=torch.bool, device=q.device)
        query_valid = torch.ones(B, T, dtype=torch.bool, device=q.device)
    else:
        key_valid = key_idx[None, :] < lengths[:, None]
        query_valid = query_idx[None, :] < lengths[:, None]
    mask = key_valid[:, None, None, :].expand(B, 1, T, S)
    if a.causal:
        mask = mask & (key_idx[None, :] <= query_idx[:, None])

    if a.activation == "sigmoid":
        if a.sigmoid_bias is None:
            n = torch.full((B,), S, device=q.device) if lengths is None else lengths
            bias = -torch.log(n.clamp_min(1).to(cd)).view(B, 1, 1, 1)
        elif isinstance(a.sigmoid_bias, torch.Tensor):
            bias = a.sigmoid_bias.to(cd).view(1, H, 1, 1)
        else:
            bias = a.sigmoid_bias
        p = torch.sigmoid(s + bias) * mask
    else:
        row_has_key = mask.any(-1, keepdim=True)
        # rows with no valid key would softmax over -inf only; give them zeros with a finite gradient
        s = torch.where(mask, s, float("-inf"))
        s = torch.where(row_has_key, s, 0.0)
        p = torch.softmax(s, dim=-1) * row_has_key

    if a.decay is not None and a.decay_mode == "multiplicative":
        p = p * torch.exp(a.decay.to(cd).view(1, H, 1, 1) * dist)

    if return_probs:
        return p * query_valid[:, None, :, None]
    if a.dropout_p > 0:
        p = F.dropout(p, a.dropout_p)  # on the probabilities, as nn.MultiheadAttention and SDPA do
    out = torch.einsum("bhts,bshd->bthd", p, vf)
    out = out * query_valid[:, :, None, None]
    if a.gate is not None:
        g = torch.sigmoid(a.gate.to(cd))
        out = out * (g[..., None] if a.gate_kind == "headwise" else g)
    return out.to(q.dtype)


def reference_attention(a: AttentionArgs, upcast: bool = True) -> torch.Tensor:
    """Run validated arguments through the reference. ``upcast`` computes fp16/bf16 inputs in float32."""
    if not a.packed:
        return _padded_reference(a, a.seq_lens.long() if a.seq_lens is not None else None, upcast)
    lens = (a.cu_seqlens[1:] - a.cu_seqlens[:-1]).tolist()
    padded = AttentionArgs(**{**a.__dict__, "packed": False, "cu_seqlens": None})
    padded.q, padded.k, padded.v = _pad(a.q, lens), _pad(a.k, lens), _pad(a.v, lens)
    if a.gate is not None:
        padded.gate = _pad(a.gate, lens)
    lengths = torch.tensor(lens, device=a.q.device, dtype=torch.long)
    out = _padded_reference(padded, lengths, upcast)
    return torch.cat([out[b, :n] for b, n in enumerate(lens)], dim=0)


def attention_probs(a: AttentionArgs) -> torch.Tensor:
    """The attention weights ``p`` as ``[B, H, T, S]`` float32/64 (padded layout only; gate not applied).

    For diagnostics (attention-sink share): ``p[..., 0]`` is the weight on the first key.
    """
    if a.packed:
        raise ValueError("attention_probs: use the padded layout (seq_lens) rather than cu_seqlens.")
    lengths = a.seq_lens.long() if a.seq_lens is not None else None
    return _padded_reference(a, lengths, upcast=True, return_probs=True)


def attention_reference(
    q, k, v, *, activation="sigmoid", scale=None, sigmoid_bias=None, alibi_slopes=None, decay=None,
    decay_mode="additive", positions=None, seq_lens=None, cu_seqlens=None, causal=False, gate=None, upcast=True,
):
    """The reference attention with the public signature of :func:`gatedzoo.kernels.attention`.

    Args:
        upcast (bool): compute float16 / bfloat16 inputs in float32 (``True``, the accurate reference), or in
            their own dtype (``False``: the same-dtype PyTorch baseline that sets kernel tolerances).
            Default: ``True``.

    Returns:
        Tensor shaped and typed like ``q``.
    """
    a = validate(
        q, k, v, activation=activation, scale=scale, sigmoid_bias=sigmoid_bias, alibi_slopes=alibi_slopes,
        decay=decay, decay_mode=decay_mode, positions=positions, seq_lens=seq_lens, cu_seqlens=cu_seqlens,
        causal=causal, gate=gate, backend="reference",
    )
    return reference_attention(a, upcast=upcast)


def sdpa_attention(a: AttentionArgs) -> torch.Tensor:
    """Plain softmax through ``torch.nn.functional.scaled_dot_product_attention`` (causal is top-left aligned)."""
    q, k, v = (t.transpose(1, 2) for t in (a.q, a.k, a.v))
    out = F.scaled_dot_product_attention(
        q, k, v, is_causal=a.causal, scale=a.scale, enable_gqa=a.num_heads != a.num_kv_heads, dropout_p=a.dropout_p
    )
    return out.transpose(1, 2)
