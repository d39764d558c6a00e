"""Gated fusion of two representations, shared by Gateformer (gates 1 and 2) and TCH-Net's CB-GAF."""

from __future__ import annotations

import torch
from torch import nn


class GatedFusion(nn.Module):
    """``z = sigmoid(W1 a + W2 b + c)``, ``out = z * a + (1 - z) * b`` (feature-wise convex mix).

    Args:
        dim (int): feature width of ``a``, ``b`` and the output.
        bias (bool): learn the gate offset ``c``. Default: `True`.
        gate_bias_init (float): initial ``c``; positive values start the mix leaning on ``a``. Default: ``0.0``.

    Shapes: ``a``, ``b``: ``[..., dim]`` (same shape) -> ``[..., dim]``. The gate ``z`` is what
    :mod:`gatedzoo.diagnostics` reports as gate scores (it hooks ``gate_proj``).
    """

    def __init__(self, dim: int, bias: bool = True, gate_bias_init: float = 0.0):
        super().__init__()
        # one Linear over [a; b] equals W1 a + W2 b + c and runs as a single matmul
        self.gate_proj = nn.Linear(2 * dim, dim, bias=bias)
        if bias:
            nn.init.constant_(self.gate_proj.bias, gate_bias_init)

    def gate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The gate ``z`` in ``(0, 1)``, shaped like ``a``."""
        if a.shape != b.shape:
            raise ValueError(f"GatedFusion: a {list(a.shape)} and b {list(b.shape)} must have the same shape.")
        return torch.sigmoid(self.gate_proj(torch.cat([a, b], dim=-1)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = self.gate(a, b)
        return b + z * (a - b)
