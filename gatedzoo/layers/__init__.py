"""``nn.Module`` building blocks over the attention core."""

from .attention import MultiheadAttention, alibi_slopes, retention_log_decay
from .fusion import GatedFusion
from .mlp import SwiGLU

__all__ = ["GatedFusion", "MultiheadAttention", "SwiGLU", "alibi_slopes", "retention_log_decay"]
