import os
import sys

import torch

if not torch.cuda.is_available():
    # tests/kernels runs the Triton kernels under the CPU interpreter; it must be on before anything imports triton
    # (gatedzoo.models does, through torch._dynamo), because triton.language's own jit helpers are decided then
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/toy.py is imported by recipes and tests as `toy`
sys.path.insert(0, os.path.dirname(__file__))
