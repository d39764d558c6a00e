"""The Triton kernels against the float64 reference: output and every gradient, each feature alone and combined.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` (set by ``conftest.py``) on small shapes in
float32 and float16; the interpreter computes bfloat16 wrongly on the CPU (``specs/kernels.md`` §6), so bfloat16 and
the large shapes (T = 1025, D up to 256) are the ``gpu`` cases.

Tolerance rule, used for every tensor (output, dq, dk, dv, dgate, dbias, dslopes, ddecay): with
``err(x) = ||x - x64|| / ||x64||`` against the reference computed in float64,

    err(triton) <= 2 * err(PyTorch reference in the same dtype, upcast=False) + ATOL[dtype].

The per-head parameter gradients (sigmoid_bias, alibi_slopes, decay) are sums over B·T·S terms of both signs, which
the kernels reduce tile by tile in float32 (PyTorch sums pairwise): their ATOL is ATOL_PARAM. A tensor whose float64
reference is exactly zero (dq of softmax over a single key) is held to max |x| <= ZERO_TOL.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from gatedzoo.kernels import attention, attention_reference
from gatedzoo.kernels import triton_kernels as tk

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
ATOL_PARAM = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
PARAMS = ("sigmoid_bias", "alibi_slopes", "decay")
ZERO_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Each case: shape (B, T, S, H, Hkv, D) plus attention() options. String values are built by make_inputs:
# "param" = a trainable per-head tensor, "mixed" = slopes of both signs, "neg" = log-gamma <= 0, "grid" = 2-D
# coordinates, "lens" = seq_lens with a short and an empty sequence, "packed" = cu_seqlens over ragged lengths.
CASES = {
    "sigmoid": dict(shape=(2, 63, 63, 2, 2, 32)),
    "softmax": dict(shape=(2, 63, 63, 2, 2, 32), activation="softmax"),
    "t1": dict(shape=(3, 1, 1, 2, 2, 16)),
    "t1_softmax": dict(shape=(3, 1, 1, 2, 2, 16), activation="softmax"),
    "s_ne_t": dict(shape=(2, 20, 45, 2, 2, 32)),
    "s_ne_t_softmax_causal": dict(shape=(2, 45, 20, 2, 2, 32), activation="softmax", causal=True),
    "d48": dict(shape=(2, 33, 33, 2, 2, 48)),
    "d80_softmax": dict(shape=(1, 40, 40, 2, 2, 80), activation="softmax"),
    "scale": dict(shape=(2, 30, 30, 2, 2, 16), scale=0.3),
    "bias_float": dict(shape=(2, 30, 30, 2, 2, 16), sigmoid_bias=-1.5),
    "bias_param": dict(shape=(2, 30, 30, 3, 3, 16), sigmoid_bias="param"),
    "alibi": dict(shape=(2, 40, 40, 2, 2, 16), alibi_slopes="mixed"),
    "decay_add": dict(shape=(2, 40, 40, 2, 2, 16), decay="neg"),
    "decay_mul": dict(shape=(2, 40, 40, 2, 2, 16), decay="neg", decay_mode="multiplicative"),
    "decay_mul_softmax": dict(shape=(2, 40, 40, 2, 2, 16), decay="neg", decay_mode="multiplicative",
                              activation="softmax"),
    "positions": dict(shape=(2, 36, 36, 2, 2, 16), positions="grid", alibi_slopes="mixed", decay="neg"),
    "positions_mul": dict(shape=(2, 36, 36, 2, 2, 16), positions="grid", decay="neg", decay_mode="multiplicative"),
    "seq_lens": dict(shape=(3, 50, 50, 2, 2, 32), seq_lens="lens"),
    "seq_lens_softmax": dict(shape=(3, 50, 50, 2, 2, 32), seq_lens="lens", activation="softmax"),
    "packed": dict(shape=(4, 0, 0, 2, 2, 32), cu_seqlens="packed"),
    "packed_softmax_causal": dict(shape=(4, 0, 0, 2, 2, 32), cu_seqlens="packed", activation="softmax", causal=True),
    "causal": dict(shape=(2, 63, 63, 2, 2, 32), causal=True),
    "causal_softmax": dict(shape=(2, 63, 63, 2, 2, 32), causal=True, activation="softmax"),
    "gqa": dict(shape=(2, 40, 40, 4, 2, 32)),
    "mqa_softmax": dict(shape=(2, 40, 40, 4, 1, 32), activation="softmax"),
    "gate_head": dict(shape=(2, 40, 40, 2, 2, 32), gate="headwise"),
    "gate_elem": dict(shape=(2, 40, 40, 2, 2, 32), gate="elementwise"),
    "gate_elem_softmax": dict(shape=(2, 40, 40, 2, 2, 32), gate="elementwise", activation="softmax"),
    "combo_sigmoid": dict(shape=(4, 0, 0, 4, 2, 48), cu_seqlens="packed", causal=True, sigmoid_bias="param",
                          alibi_slopes="mixed", decay="neg", gate="headwise"),
    "combo_softmax": dict(shape=(3, 50, 50, 4, 1, 32), seq_lens="lens", activation="softmax", causal=True,
                          alibi_slopes="mixed", decay="neg", decay_mode="multiplicative", gate="elementwise"),
    "combo_positions": dict(shape=(2, 49, 49, 4, 2, 16), seq_lens="lens", positions="grid", sigmoid_bias="param",
                            alibi_slopes="mixed", decay="neg", decay_mode="multiplicative", gate="elementwise"),
    # dense windows of <= 32 tokens take the packed-window forward (several windows per program); 9 windows of 7
    # leave the last program part-filled
    "windows": dict(shape=(9, 7, 7, 4, 2, 16), positions="grid", alibi_slopes="mixed", decay="neg", gate="headwise"),
    "windows_softmax_causal": dict(shape=(5, 7, 7, 2, 2, 16), activation="softmax", causal=True, decay="neg",
                                   decay_mode="multiplicative", gate="elementwise"),
    "windows16": dict(shape=(3, 16, 16, 2, 2, 32), sigmoid_bias="param"),
    "window49": dict(shape=(3, 49, 49, 2, 2, 16), positions="grid", decay="neg", activation="softmax"),
    "windows_d48": dict(shape=(5, 12, 12, 2, 2, 48), alibi_slopes="mixed", gate="elementwise"),
}
GPU_CASES = {
    "t1025": dict(shape=(2, 1025, 1025, 4, 4, 64)),
    "t1025_softmax_causal": dict(shape=(1, 1025, 1025, 4, 2, 128), activation="softmax", causal=True),
    "t1025_d80_lens": dict(shape=(2, 1025, 1025, 2, 2, 80), seq_lens="lens", gate="headwise"),
    "d96_packed": dict(shape=(3, 0, 0, 4, 2, 96), cu_seqlens="packed", decay="neg", causal=True),
    "d160_alibi": dict(shape=(1, 300, 300, 2, 2, 160), alibi_slopes="mixed", activation="softmax"),
    "d256_combo": dict(shape=(2, 200, 200, 4, 2, 256), seq_lens="lens", sigmoid_bias="param", decay="neg",
                       decay_mode="multiplicative", gate="elementwise", causal=True),
    "s_ne_t_large": dict(shape=(2, 700, 1100, 4, 4, 128), causal=True, gate="elementwise"),
    "window7": dict(shape=(512, 7, 7, 4, 4, 32), decay="neg", positions="grid"),
    # the packed-window kernels at larger head dims: D = 64 (both passes), D = 128 (forward; general backward)
    "window16_d64": dict(shape=(300, 16, 16, 4, 2, 64), decay="neg", gate="headwise"),
    "window49_d128_softmax": dict(shape=(200, 49, 49, 2, 2, 128), activation="softmax", positions="grid",
                                  decay="neg"),
}


def make_inputs(case: dict, dtype: torch.dtype, seed: int = 0) -> tuple[dict, dict]:
    """Random inputs for ``case``: ``(tensors requiring grad, other keyword arguments)``."""
    gen = torch.Generator().manual_seed(seed)
    B, T, S, H, Hkv, D = case["shape"]
    opts = {k: v for k, v in case.items() if k != "shape"}

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)

    lead_q, lead_k = (B, T), (B, S)
    if opts.get("cu_seqlens") == "packed":
        lens = [5, 0, 40, 17, 33, 1][:B] if T == 0 and B <= 6 else [T] * B
        if max(case["shape"][1:3]) == 0 and DEVICE == "cuda":
            lens = [300, 0, 517][:B] if B == 3 else lens
        opts["cu_seqlens"] = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                                          device=DEVICE)
        lead_q = lead_k = (sum(lens),)
    if opts.get("seq_lens") == "lens":
        lens = [T, max(T // 3, 1), 0][:B] if B <= 3 else [T] * B
        lens += [T] * (B - len(lens))
        opts["seq_lens"] = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    if opts.get("positions") == "grid":
        side = int(T ** 0.5 + 0.999)
        idx = torch.arange(T)
        opts["positions"] = torch.stack([idx // side, idx % side], dim=1).to(DEVICE)
    grads = {
        "q": randn(*lead_q, H, D).to(dtype),
        "k": randn(*lead_k, Hkv, D).to(dtype),
        "v": randn(*lead_k, Hkv, D).to(dtype),
    }
    if opts.get("sigmoid_bias") == "param":
        grads["sigmoid_bias"] = randn(H) - 2.0
        del opts["sigmoid_bias"]
    if opts.get("alibi_slopes") == "mixed":
        grads["alibi_slopes"] = randn(H, scale=0.1)
        grads["alibi_slopes"][0] = -abs(grads["alibi_slopes"][0]) - 0.01
        grads["alibi_slopes"][-1] = abs(grads["alibi_slopes"][-1]) + 0.01
        del opts["alibi_slopes"]
    if opts.get("decay") == "neg":
        grads["decay"] = -F.softplus(randn(H)) * 0.3
        del opts["decay"]
    if opts.get("gate") == "headwise":
        grads["gate"] = randn(*lead_q, H).to(dtype)
        del opts["gate"]
    elif opts.get("gate") == "elementwise":
        grads["gate"] = randn(*lead_q, H, D).to(dtype)
        del opts["gate"]
    for t in grads.values():
        t.requires_grad_(True)
    return grads, opts


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).norm() / ref.norm())


def run_and_grad(fn, grads: dict, dout: torch.Tensor) -> list[torch.Tensor]:
    out = fn(**grads)
    return [out, *torch.autograd.grad(out, list(grads.values()), dout.to(out.dtype))]


def check(case: dict, dtype: torch.dtype) -> None:
    grads, opts = make_inputs(case, dtype)
    dout = torch.randn(grads["q"].shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    got = run_and_grad(lambda **g: attention(**g, **opts, backend="triton"), grads, dout)
    grads64 = {k: v.detach().double().requires_grad_(True) for k, v in grads.items()}
    ref = run_and_grad(lambda **g: attention_reference(**g, **opts), grads64, dout.double())
    same = run_and_grad(lambda **g: attention_reference(**g, **opts, upcast=False), grads, dout)

    names = ["out", *grads]
    for name, x, r, s in zip(names, got, ref, same):
        assert x.shape == r.shape and x.dtype == grads.get(name, grads["q"]).dtype, name
        assert torch.isfinite(x).all(), f"{name}: non-finite values (an unwritten or NaN element)"
        if not r.any():
            assert x.abs().max() <= ZERO_TOL[dtype], f"{name}: reference is 0, got max |x| = {x.abs().max():.2e}"
            continue
        err, floor = rel_err(x, r), rel_err(s, r)
        atol = ATOL_PARAM[dtype] if name in PARAMS else ATOL[dtype]
        assert err <= 2 * floor + atol, f"{name}: error {err:.2e} > 2 x {floor:.2e} + {atol:.0e}"


def test_interpreter_active_without_cuda():
    """Guards the conftest: without CUDA the kernels must be the interpreted ones, or every test would error."""
    assert (not CUDA) == tk.INTERPRET or os.environ.get("TRITON_INTERPRET") == "1"
    if not CUDA:
        import triton.language as tl

        assert type(tk._attn_fwd).__name__ == "InterpretedFunction"
        # triton.language's own jit helpers are fixed when triton is first imported: the variable must precede that
        assert type(tl.standard.cdiv).__name__ == "InterpretedFunction", (
            "triton was imported before TRITON_INTERPRET=1 was set; set it in tests/conftest.py before any import"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("needs CUDA: the CPU interpreter computes bfloat16 wrongly (specs/kernels.md section 6)")
    if dtype == torch.float32 and CUDA:
        pytest.skip("small float32 cases run under the CPU interpreter; on the GPU float32 is covered by the large "
                    "cases (each small case costs a compile)")
    check(CASES[name], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(GPU_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA: large shapes and bfloat16 run on the GPU")
def test_large_matches_reference(name, dtype):
    check(GPU_CASES[name], dtype)


@pytest.mark.parametrize("mode", ["atomic", "separate"])
def test_backward_dq_modes_agree(mode, monkeypatch):
    """Both backward strategies (atomic dQ in one pass, or a second dQ kernel) compute the same gradients."""
    monkeypatch.setattr(tk, "BWD_DQ_MODE", mode)
    check(CASES["combo_softmax"], torch.float32)


def test_every_launch_class_has_a_tile():
    """Every tile class the GPU launcher can pick (``_size_class``) names an entry of ``CONFIGS``: the interpreter
    runs ``INTERPRET_BLOCKS`` and never reaches this lookup, so a class without a tile would fail only on a GPU."""
    for pass_name in ("fwd", "dkdv", "dq"):
        for block_d in (16, 32, 64, 128, 256):
            for max_len in (1, 16, 17, 64, 65, 1024, 1025, 4096, 4097, 16384):
                for fp32 in (False, True):
                    for causal in (False, True):
                        for varlen in (False, True):
                            for softmax in (False, True):
                                size = tk._size_class(pass_name, block_d, max_len, fp32, causal, varlen, softmax)
                                tiles = tk.CONFIGS[(pass_name, size)]
                                assert tiles, (pass_name, size)
                                for c in tiles:
                                    assert {c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]} <= {16, 32, 64, 128}, (size, c)


@pytest.mark.parametrize(("args", "size"), [
    (("fwd", 128, 1024, False, False, False), "d128-short"),
    (("fwd", 128, 1024, False, False, True), "d128-ragged"),
    (("fwd", 128, 1025, False, False, True), "d128"),
    (("fwd", 128, 4096, False, True, False), "d128-causal"),
    (("fwd", 128, 4097, False, True, False), "d128"),
    (("fwd", 64, 1024, False, True, False), "d64-causal"),
    (("fwd", 64, 1024, False, False, True), "d64"),
    (("fwd", 128, 1024, True, True, True), "d128-f32"),
    (("dkdv", 64, 16384, True, False, False), "d64-f32"),
    (("dq", 64, 16384, False, False, False), "d64"),
    (("dkdv", 32, 16, False, False, False), "s16"),
    (("dkdv", 64, 8192, False, False, True, True), "d64-softmax"),
    (("dkdv", 64, 8192, True, False, True, True), "d64-f32"),
    (("dq", 64, 8192, False, False, True, True), "d64"),
    (("dkdv", 128, 8192, False, False, True, True), "d128"),
])
def test_launch_class_routing(args, size):
    """The routing that ``benchmarks/NOTES.md`` (v7, v9, v10) chose: short, ragged and causal refinements of D = 128
    and D = 64, float32 classes for the tiles that would overflow shared memory, the small-window classes, the
    softmax dK/dV tile of D = 64."""
    assert tk._size_class(*args) == size


def test_unsupported_falls_back():
    q = torch.randn(1, 4, 2, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float64"):
        attention(q, q, q, backend="triton")
    if CUDA:
        torch.testing.assert_close(attention(q, q, q), attention_reference(q, q, q))


def test_compiles_without_graph_breaks():
    """The custom ops trace under torch.compile (fullgraph) in forward and backward."""
    grads, opts = make_inputs(CASES["gate_head"], torch.float32)

    def fn(q, k, v, gate):
        return attention(q, k, v, gate=gate, backend="triton", **opts).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    loss = compiled(**grads)
    got = torch.autograd.grad(loss, list(grads.values()))
    want = torch.autograd.grad(fn(**grads), list(grads.values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_compiling_a_call_warns_nothing_about_the_backend_lookup():
    """The backend lookup was an ``lru_cache``'d function, and TorchDynamo warned twice on every compiled call site
    (every block of a compiled model)."""
    grads, opts = make_inputs(CASES["gate_head"], torch.float32)

    def fn(q, k, v, gate):
        return attention(q, k, v, gate=gate, backend="triton", **opts).sum()

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.compile(fn, backend="aot_eager")(**grads).backward()
    torch._dynamo.reset()
    assert not [str(w.message) for w in seen if "lru_cache" in str(w.message)]


@pytest.mark.parametrize("name", ["combo_softmax", "gate_head"])
def test_custom_op_path_matches_reference(name, monkeypatch):
    """Eager calls skip the dispatcher (autograd.Function); the custom op that torch.compile takes must agree too."""
    from gatedzoo.kernels import autograd

    monkeypatch.setattr(autograd, "EAGER_CUSTOM_OP", True)
    check(CASES[name], torch.float32)


def test_max_seqlen_bound_skips_the_length_readback_and_changes_nothing(monkeypatch):
    """A host-side ``max_seqlen`` (exact or a loose bound) reaches the launcher instead of a read of ``cu_seqlens``
    (which would synchronise the GPU), and output and gradients stay identical."""
    case = dict(CASES["packed"])
    grads, opts = make_inputs(case, torch.float32)
    dout = torch.randn(grads["q"].shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    longest = int((opts["cu_seqlens"][1:] - opts["cu_seqlens"][:-1]).max())
    seen = []
    real = tk.attention_forward

    def spy(*args):
        seen.append(args[-1])  # max_seqlen is the launcher's last argument
        return real(*args)

    monkeypatch.setattr(tk, "attention_forward", spy)
    base = run_and_grad(lambda **g: attention(**g, **opts, backend="triton"), grads, dout)
    for bound in (longest, 4 * longest):
        got = run_and_grad(lambda b=bound, **g: attention(**g, **opts, backend="triton", max_seqlen=b), grads, dout)
        assert seen[-1] == bound
        for x, r in zip(got, base):
            assert torch.equal(x, r)
    assert seen[0] == longest  # without the bound the launcher read it from cu_seqlens


def test_max_seqlen_is_checked_up_front(monkeypatch):
    grads, opts = make_inputs(dict(CASES["packed"]), torch.float32)
    q, k, v = grads["q"], grads["k"], grads["v"]
    # reading cu_seqlens on CUDA would synchronise every call: value checks run there only when asked for
    monkeypatch.setenv("GATEDZOO_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match=r"max_seqlen=3 but cu_seqlens holds a sequence of 40 tokens"):
        attention(q, k, v, **opts, max_seqlen=3)
    with pytest.raises(ValueError, match="positive Python int"):
        attention(q, k, v, **opts, max_seqlen=torch.tensor(40))
    with pytest.raises(ValueError, match="drop it for the padded layout"):
        attention(q[None], k[None], v[None], max_seqlen=8)


@pytest.mark.parametrize("name", ["windows", "windows_softmax_causal", "window49"])
def test_packed_windows_match_the_general_kernel(name, monkeypatch):
    """Short dense windows are dispatched to the packed-window forward, which agrees with the one-window-per-program
    kernel (same float32 arithmetic, so to rounding); the backward, shared by both, then matches too."""
    grads, opts = make_inputs(CASES[name], torch.float32)
    q = grads["q"]
    problem = tk.Problem(q, grads["k"], grads["v"], None, None, None, None, None, None, None, "sigmoid", 1.0, None,
                         "additive", False, None)
    assert tk._window_tile(problem) is not None
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    packed = run_and_grad(lambda **g: attention(**g, **opts, backend="triton"), grads, dout)
    monkeypatch.setattr(tk, "WINDOW_TILES", [])
    general = run_and_grad(lambda **g: attention(**g, **opts, backend="triton"), grads, dout)
    for x, r in zip(packed, general):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-5)
