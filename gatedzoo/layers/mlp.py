"""Feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``W_o (silu(x W_u) * (x W_v))`` (Shazeer, 2020).

    Args:
        in_features (int): input width.
        hidden_features (int): width of the gated hidden layer.
        out_features (int, Optional): output width. Default: ``in_features``.
        bias (bool): biases in the three projections. Default: `True`.
        dropout (float): dropout on the hidden layer. Default: ``0.0``.

    Shapes: ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        # u and v share one matmul; chunk splits them
        self.in_proj = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.out_proj = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.in_proj(x).chunk(2, dim=-1)
        return self.out_proj(self.drop(F.silu(u) * v))
