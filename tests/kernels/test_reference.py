"""The reference attention against an independent loop-by-loop float64 computation, plus gradcheck."""

import math

import pytest
import torch

from gatedzoo.kernels import attention, attention_reference


@pytest.fixture(autouse=True)
def _float64():
    """Every tensor in this file is float64 (the precision the reference is specified in)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def naive(q, k, v, *, activation="sigmoid", scale=None, sigmoid_bias=None, alibi=None, decay=None,
          decay_mode="additive", positions=None, lens=None, causal=False, gate=None):
    """Scalar loops, written from the formula in kernels/README.md and nothing else."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    out = torch.zeros(B, T, H, D)
    for b in range(B):
        n = S if lens is None else int(lens[b])
        for h in range(H):
            hk = h // (H // Hkv)
            for i in range(T):
                if i >= n:
                    continue
                w = []
                for j in range(S):
                    valid = j < n and (not causal or j <= i)
                    if positions is None:
                        dist = abs(i - j)
                    else:
                        dist = abs(int(positions[i, 0] - positions[j, 0])) + abs(int(positions[i, 1] - positions[j, 1]))
                    s = scale * float(q[b, i, h] @ k[b, j, hk])
                    if alibi is not None:
                        s -= float(alibi[h]) * dist
                    if decay is not None and decay_mode == "additive":
                        s += float(decay[h]) * dist
                    w.append((valid, s, dist))
                if activation == "sigmoid":
                    if sigmoid_bias is None:
                        beta = -math.log(max(n, 1))
                    elif isinstance(sigmoid_bias, float):
                        beta = sigmoid_bias
                    else:
                        beta = float(sigmoid_bias[h])
                    p = [1 / (1 + math.exp(-(s + beta))) if ok else 0.0 for ok, s, _ in w]
                else:
                    valid_s = [s for ok, s, _ in w if ok]
                    m = max(valid_s) if valid_s else 0.0
                    e = [math.exp(s - m) if ok else 0.0 for ok, s, _ in w]
                    z = sum(e)
                    p = [x / z if z > 0 else 0.0 for x in e]
                if decay is not None and decay_mode == "multiplicative":
                    p = [pj * math.exp(float(decay[h]) * d) for pj, (_, _, d) in zip(p, w)]
                o = sum(pj * v[b, j, hk] for j, pj in enumerate(p))
                if gate is not None:
                    g = gate[b, i, h]
                    o = o * torch.sigmoid(g)
                out[b, i, h] = o
    return out


def rand(*shape, requires_grad=False):
    return torch.randn(*shape).requires_grad_(requires_grad)


CASES = {
    "sigmoid": {},
    "softmax": {"activation": "softmax"},
    "scalar_bias": {"sigmoid_bias": -1.5},
    "per_head_bias": {"sigmoid_bias": "tensor"},
    "alibi_balanced": {"alibi": "balanced"},
    "decay_additive": {"decay": "tensor"},
    "decay_multiplicative": {"decay": "tensor", "decay_mode": "multiplicative"},
    "softmax_decay_2d": {"activation": "softmax", "decay": "tensor", "positions": True},
    "sigmoid_alibi_2d": {"alibi": "balanced", "positions": True},
    "padding": {"lens": True},
    "padding_softmax_causal": {"lens": True, "activation": "softmax", "causal": True},
    "causal": {"causal": True},
    "gqa": {"gqa": True},
    "gate_headwise": {"gate": "headwise"},
    "gate_elementwise": {"gate": "elementwise"},
    "everything": {"lens": True, "causal": True, "gqa": True, "alibi": "balanced", "decay": "tensor",
                   "gate": "headwise", "sigmoid_bias": "tensor"},
}


def build(case, B=2, T=6, H=4, D=5, S=None, requires_grad=False):
    S = T if S is None else S
    Hkv = 2 if case.get("gqa") else H
    g = requires_grad
    kw, nkw = {}, {}
    q = rand(B, T, H, D, requires_grad=g)
    k, v = rand(B, S, Hkv, D, requires_grad=g), rand(B, S, Hkv, D, requires_grad=g)
    if case.get("activation"):
        kw["activation"] = nkw["activation"] = case["activation"]
    if case.get("sigmoid_bias") == "tensor":
        kw["sigmoid_bias"] = nkw["sigmoid_bias"] = rand(H, requires_grad=g)
    elif case.get("sigmoid_bias") is not None:
        kw["sigmoid_bias"] = nkw["sigmoid_bias"] = case["sigmoid_bias"]
    if case.get("alibi"):
        slopes = torch.tensor([0.5, -0.25, 0.125, -0.0625][:H]).requires_grad_(g)
        kw["alibi_slopes"] = nkw["alibi"] = slopes
    if case.get("decay"):
        kw["decay"] = nkw["decay"] = (-torch.rand(H) - 0.05).requires_grad_(g)
    if case.get("decay_mode"):
        kw["decay_mode"] = nkw["decay_mode"] = case["decay_mode"]
    if case.get("positions"):
        pos = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(T // 2), indexing="ij"), -1).reshape(-1, 2)
        kw["positions"] = nkw["positions"] = pos[:T]
    if case.get("lens"):
        lens = torch.tensor([T - 2, T][:B], dtype=torch.int32)
        kw["seq_lens"] = lens
        nkw["lens"] = lens
    if case.get("causal"):
        kw["causal"] = nkw["causal"] = True
    if case.get("gate") == "headwise":
        kw["gate"] = nkw["gate"] = rand(B, T, H, requires_grad=g)
    elif case.get("gate") == "elementwise":
        kw["gate"] = nkw["gate"] = rand(B, T, H, D, requires_grad=g)
    return (q, k, v), kw, nkw


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_naive_loops(name):
    torch.manual_seed(0)
    (q, k, v), kw, nkw = build(CASES[name])
    out = attention_reference(q, k, v, **kw)
    want = naive(q, k, v, **nkw)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    # the public entry point on CPU picks the reference (or SDPA for plain softmax): same numbers
    torch.testing.assert_close(attention(q, k, v, **kw), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_reference_gradcheck(name):
    torch.manual_seed(1)
    (q, k, v), kw, _ = build(CASES[name], B=2, T=4, H=4, D=3, requires_grad=True)
    tensors = {n: t for n, t in kw.items() if isinstance(t, torch.Tensor) and t.requires_grad}
    names = list(tensors)

    def fn(q, k, v, *extra):
        return attention_reference(q, k, v, **{**kw, **dict(zip(names, extra))})

    assert torch.autograd.gradcheck(fn, (q, k, v, *tensors.values()), eps=1e-6, atol=1e-6)


def test_cross_attention_s_ne_t_and_causal_top_left():
    torch.manual_seed(2)
    (q, k, v), kw, nkw = build({"causal": True}, T=5, S=7)
    torch.testing.assert_close(attention_reference(q, k, v, **kw), naive(q, k, v, **nkw))


def test_packed_varlen_equals_padded_per_sequence():
    torch.manual_seed(3)
    lens = [3, 1, 5]
    H, D = 2, 4
    q, k, v, gate = (torch.randn(sum(lens), H, D) for _ in range(4))
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    slopes = torch.tensor([0.3, -0.2])
    out = attention(q, k, v, cu_seqlens=cu, alibi_slopes=slopes, gate=gate, causal=True)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        one = attention(q[None, s:e], k[None, s:e], v[None, s:e], alibi_slopes=slopes, gate=gate[None, s:e],
                        causal=True)
        torch.testing.assert_close(out[s:e], one[0])


def test_padding_does_not_leak_and_zero_length_rows_are_zero():
    torch.manual_seed(4)
    (q, k, v), kw, _ = build({"lens": True, "activation": "softmax"}, B=2, T=6)
    kw["seq_lens"] = torch.tensor([0, 4], dtype=torch.int32)
    out = attention_reference(q, k, v, **kw)
    assert torch.all(out[0] == 0) and torch.all(out[1, 4:] == 0)
    k2 = k.clone()
    k2[1, 4:] = 1e6
    torch.testing.assert_close(attention_reference(q, k2, v, **kw), out)


def test_softmax_uses_sdpa_on_cpu_with_same_result():
    torch.manual_seed(5)
    (q, k, v), _, _ = build({"gqa": True})
    a = attention(q, k, v, activation="softmax", backend="sdpa", causal=True)
    b = attention(q, k, v, activation="softmax", backend="reference", causal=True)
    torch.testing.assert_close(a, b)


def test_half_precision_reference_keeps_dtype_and_upcast_is_closer():
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 33, 2, 16) for _ in range(3))
    exact = attention_reference(q, k, v)
    lo = [t.half() for t in (q, k, v)]
    up, same = attention_reference(*lo), attention_reference(*lo, upcast=False)
    assert up.dtype == same.dtype == torch.float16
    assert (up.double() - exact).abs().max() <= (same.double() - exact).abs().max()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "relu"}, "activation"),
        ({"decay": torch.tensor([0.1, -0.1])}, "must be <= 0"),
        ({"decay": torch.zeros(3)}, "shape [H]"),
        ({"sigmoid_bias": 1.0, "activation": "softmax"}, "only applies"),
        ({"seq_lens": torch.tensor([9, 1], dtype=torch.int32)}, "seq_lens must lie"),
        ({"seq_lens": torch.tensor([1.0, 1.0])}, "int32"),
        ({"gate": torch.zeros(2, 4, 3)}, "headwise"),
        ({"positions": torch.zeros(4, 2, dtype=torch.long)}, "only matters"),
        ({"backend": "sdpa"}, "plain softmax"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_validation_errors_name_the_fix(kwargs, message):
    q = k = v = torch.randn(2, 4, 2, 8)
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
        attention(q, k, v, **kwargs)


def test_shape_errors():
    q = torch.randn(2, 4, 3, 8)
    with pytest.raises(ValueError, match="multiple of"):
        attention(q, torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 8))
    with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
        attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="share one dtype"):
        attention(q, q.float(), q)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        attention(q[0], q[0], q[0], cu_seqlens=torch.tensor([0, 2, 3], dtype=torch.int32))


def test_explicit_triton_on_cpu_raises_with_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="backend='triton' cannot run this call"):
        attention(q, q, q, backend="triton")
