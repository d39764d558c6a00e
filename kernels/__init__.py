"""gatedzoo's attention core: one functional entry point over a pure-PyTorch reference and Triton kernels.

Levels (as in flash-linear-attention): Triton kernels and launchers (``triton_kernels.py``), autograd glue
(``autograd.py``), the functional API (``api.py``). ``reference.py`` is the specification.
"""

from ._args import AttentionArgs, validate
from .api import attention, select_backend, triton_unsupported_reason
from .reference import attention_probs, attention_reference, distance_matrix

__all__ = [
    "AttentionArgs",
    "attention",
    "attention_probs",
    "attention_reference",
    "distance_matrix",
    "select_backend",
    "triton_unsupported_reason",
    "validate",
]
