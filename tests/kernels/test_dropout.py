"""Attention-probability dropout: validated, unbiased, off in eval, never silently fused into the Triton kernels."""

from __future__ import annotations

import pytest
import torch

from gatedzoo.kernels import attention, attention_reference
from gatedzoo.layers import MultiheadAttention


def _qkv(seed=0, shape=(2, 12, 2, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.1", True])
def test_bad_dropout_is_refused_with_the_fix(bad):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"dropout_p=.*\[0, 1\).*outside training"):
        attention(q, k, v, dropout_p=bad)


@pytest.mark.parametrize("activation,backend", [("sigmoid", "reference"), ("softmax", "sdpa"),
                                                ("softmax", "reference")])
def test_dropout_is_unbiased_and_drops(activation, backend):
    """Inverted dropout: the mean over many draws converges to the undropped output; single draws differ from it."""
    q, k, v = _qkv()
    want = attention_reference(q, k, v, activation=activation)
    torch.manual_seed(0)
    n = 3000  # draws, as one batch: each copy of the inputs gets its own dropout mask
    rep = [t.repeat(n, 1, 1, 1) for t in (q, k, v)]
    draws = attention(*rep, activation=activation, dropout_p=0.3, backend=backend).view(n, *q.shape)
    assert not torch.allclose(draws[0], want, atol=1e-3), "dropout_p=0.3 changed nothing"
    # the standard error of the mean of 3000 draws is ~0.01 of the output scale here
    torch.testing.assert_close(draws.mean(0), want, atol=0.05, rtol=0.0)
    zero = attention(q, k, v, activation=activation, dropout_p=0.0, backend=backend)
    torch.testing.assert_close(zero, want)


def test_dropout_stays_off_the_triton_kernels():
    q, k, v = (t.float() for t in _qkv())
    with pytest.raises(ValueError, match="attention dropout is not fused"):
        attention(q, k, v, dropout_p=0.1, backend="triton")


def test_layer_drops_only_while_training():
    torch.manual_seed(0)
    layer = MultiheadAttention(16, 2, attn_drop=0.5).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    with pytest.raises(ValueError, match="attn_drop"):
        MultiheadAttention(16, 2, attn_drop=1.0)
