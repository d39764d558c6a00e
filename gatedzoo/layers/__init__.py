"""``nn.Module`` building blocks over the attention core."""

from .attention import MultiheadAttention, alibi_slopes, retention_log_decay
from .fusion import GatedFusion
from .mlp import SwiGLU
from .novelty import KNNNoveltyGuard, combine_novelty, novelty_rule

__all__ = ["GatedFusion", "KNNNoveltyGuard", "MultiheadAttention", "SwiGLU", "alibi_slopes", "combine_novelty",
           "novelty_rule", "retention_log_decay"]
