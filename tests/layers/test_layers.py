"""Layer flag matrix: every combination builds, runs forward/backward, and matches the core it wraps."""

import itertools

import pytest
import torch

from gatedzoo.kernels import attention
from gatedzoo.layers import GatedFusion, MultiheadAttention, SwiGLU, alibi_slopes, retention_log_decay

FLAGS = list(itertools.product(
    ["softmax", "sigmoid"], [None, "headwise", "elementwise"], [False, True], [None, "balanced"],
    [None, "additive", "multiplicative"], [4, 2],
))


@pytest.mark.parametrize("activation,gate,qk_norm,alibi,decay,kv_heads", FLAGS)
def test_flag_matrix_forward_backward(activation, gate, qk_norm, alibi, decay, kv_heads):
    torch.manual_seed(0)
    m = MultiheadAttention(16, 4, kv_heads=kv_heads, activation=activation, gate=gate, qk_norm=qk_norm, alibi=alibi,
                           decay=decay)
    x = torch.randn(2, 5, 16, requires_grad=True)
    lens = torch.tensor([5, 3], dtype=torch.int32)
    y = m(x, seq_lens=lens)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    # padded positions never influence valid outputs
    x2 = x.detach().clone()
    x2[1, 3:] = 100.0
    torch.testing.assert_close(m(x2, seq_lens=lens)[1, :3], y[1, :3].detach())


def test_layer_equals_core_on_its_projections():
    torch.manual_seed(1)
    m = MultiheadAttention(12, 3, activation="sigmoid", gate="headwise", decay="multiplicative", alibi="balanced")
    x = torch.randn(2, 7, 12)
    q, k, v, g = m._project(x, None)
    want = attention(q, k, v, activation="sigmoid", gate=g, decay=m.decay, decay_mode="multiplicative",
                     alibi_slopes=m.alibi_slopes)
    torch.testing.assert_close(m(x), m.out_proj(want.reshape(2, 7, 12)))


def test_cross_attention_and_packed_layout():
    torch.manual_seed(2)
    m = MultiheadAttention(8, 2, context_dim=6)
    assert m(torch.randn(2, 3, 8), context=torch.randn(2, 5, 6)).shape == (2, 3, 8)
    s = MultiheadAttention(8, 2, activation="sigmoid")
    x = torch.randn(7, 8)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    packed = s(x, cu_seqlens=cu)
    torch.testing.assert_close(packed[3:], s(x[None, 3:])[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "relu"}, "activation"),
        ({"gate": "channel"}, "gate"),
        ({"kv_heads": 3}, "kv_heads=3 must divide"),
        ({"sigmoid_bias": -2.0}, "needs activation='sigmoid'"),
        ({"activation": "sigmoid", "sigmoid_bias": "auto"}, "learned"),
        ({"decay": "exp"}, "decay"),
    ],
)
def test_incompatible_flags_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiheadAttention(16, 4, **kwargs)
    with pytest.raises(ValueError, match="not divisible"):
        MultiheadAttention(10, 4)


def test_learned_bias_and_positional_parameters_train():
    m = MultiheadAttention(8, 2, activation="sigmoid", sigmoid_bias="learned", alibi="standard", decay="additive")
    m(torch.randn(1, 4, 8)).pow(2).sum().backward()
    assert m.sigmoid_bias.grad is not None and m.alibi_slopes.grad is not None and m._decay_raw.grad is not None
    assert (m.decay <= 0).all()
    frozen = MultiheadAttention(8, 2, alibi="standard", trainable_pos=False)
    assert not frozen.alibi_slopes.requires_grad


def test_slopes_and_decay_schedules():
    s = alibi_slopes(8, balanced=True)
    assert (s[:4] > 0).all() and (s[4:] < 0).all()
    assert (alibi_slopes(8, balanced=False) > 0).all()
    d = retention_log_decay(4)
    assert (d < 0).all() and torch.all(d[1:] > d[:-1])


def test_gated_fusion_is_a_convex_mix():
    torch.manual_seed(3)
    f = GatedFusion(6)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    z = f.gate(a, b)
    torch.testing.assert_close(f(a, b), z * a + (1 - z) * b)
    assert ((z > 0) & (z < 1)).all()
    with pytest.raises(ValueError, match="same shape"):
        f(a, b[:2])
    leaning = GatedFusion(6, gate_bias_init=20.0)
    torch.nn.init.zeros_(leaning.gate_proj.weight)
    torch.testing.assert_close(leaning(a, b), a)


def test_swiglu_shapes_and_gating():
    m = SwiGLU(6, 10, 4)
    x = torch.randn(3, 6)
    assert m(x).shape == (3, 4)
    u, v = m.in_proj(x).chunk(2, -1)
    torch.testing.assert_close(m(x), m.out_proj(torch.nn.functional.silu(u) * v))
