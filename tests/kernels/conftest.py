"""Kernel-test setup: run the Triton kernels under the CPU interpreter when no CUDA device is present.

``TRITON_INTERPRET`` must be set before ``gatedzoo.kernels.triton_kernels`` is imported (``triton.jit`` decides at
decoration time whether a kernel is compiled or interpreted); this conftest is loaded before the test modules of
this folder are collected, and ``test_triton.py`` checks that the setting took effect.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def poison_kernel_outputs():
    """Fill every buffer the Triton launchers allocate with NaN, so that an element no kernel wrote fails;
    launch without autotuning."""
    from gatedzoo.kernels import triton_kernels

    triton_kernels.POISON_OUTPUTS = True
    # one fixed tile config per kernel: autotuning would compile every config for every feature combination
    triton_kernels.AUTOTUNE = False
    yield
    triton_kernels.POISON_OUTPUTS = False
    triton_kernels.AUTOTUNE = True
