"""Attention-sink share, gate sparsity and activation peaks for any model built on ``gatedzoo.layers``.

One forward pass with hooks; nothing in the model changes. The quantities follow the gated-attention paper
(Qiu et al., 2025): the share of attention mass on the first token ("attention sink"), the mean and sparsity of gate
scores, and the largest activation magnitude per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from gatedzoo.layers import GatedFusion, MultiheadAttention

#: a gate score below this counts as "closed" in the sparsity figure
GATE_CLOSED = 0.1


@dataclass
class LayerStats:
    """Statistics of one layer over one batch.

    ``sink_share``: mean over heads and valid query rows of ``p[i, 0] / sum_j p[i, j]`` (attention layers only).
    ``gate_mean`` / ``gate_sparsity``: mean gate score and the fraction below :data:`GATE_CLOSED`.
    ``peak_activation``: max ``|output|`` of the layer.
    """

    layer: str
    kind: str
    sink_share: float | None = None
    gate_mean: float | None = None
    gate_sparsity: float | None = None
    peak_activation: float | None = None


def _gate_stats(scores: torch.Tensor) -> tuple[float, float]:
    return float(scores.mean()), float((scores < GATE_CLOSED).float().mean())


@torch.no_grad()
def diagnose(model: nn.Module, *args, **kwargs) -> list[dict]:
    """Run ``model(*args, **kwargs)`` once and return one dict of :class:`LayerStats` per attention / fusion layer.

    Example::
        >>> rows = diagnose(model, x)
        >>> rows[0]["sink_share"], rows[0]["gate_mean"]
    """
    stats: dict[str, LayerStats] = {}
    handles = []

    def attn_pre(name):
        def hook(module: MultiheadAttention, args, kwargs):
            x = args[0]
            if kwargs.get("cu_seqlens") is not None:
                return
            p, gate = module.probabilities(x, **{k: v for k, v in kwargs.items() if k != "cu_seqlens"})
            mass = p.sum(-1)
            valid = mass > 0
            share = torch.where(valid, p[..., 0] / mass.clamp_min(1e-30), 0.0)
            s = stats.setdefault(name, LayerStats(name, "attention"))
            s.sink_share = float(share.sum() / valid.sum().clamp_min(1))
            if gate is not None:
                s.gate_mean, s.gate_sparsity = _gate_stats(gate)
        return hook

    def fusion_gate(name):
        def hook(module, args, out):
            s = stats.setdefault(name, LayerStats(name, "fusion"))
            s.gate_mean, s.gate_sparsity = _gate_stats(torch.sigmoid(out.float()))
        return hook

    def peak(name, kind):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                s = stats.setdefault(name, LayerStats(name, kind))
                s.peak_activation = max(s.peak_activation or 0.0, float(out.detach().abs().max()))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            handles.append(module.register_forward_pre_hook(attn_pre(name), with_kwargs=True))
            handles.append(module.register_forward_hook(peak(name, "attention")))
        elif isinstance(module, GatedFusion):
            handles.append(module.gate_proj.register_forward_hook(fusion_gate(name)))
            handles.append(module.register_forward_hook(peak(name, "fusion")))
    try:
        was_training = model.training
        model.eval()
        model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [asdict(s) for s in stats.values()]
