"""Gated-SwinRMT: windowing maths, the three variants, timm compatibility, bad input, shipped weights (golden)."""

import json

import numpy as np
import pytest
import timm
import torch

import gatedzoo
from gatedzoo.kernels import attention
from gatedzoo.models.gated_swinrmt import WindowRetention, axis_segments
from gatedzoo.zoo.registry import WEIGHTS_DIR

SMALL = dict(img_size=28, in_chans=1, num_classes=10, stem_stride=2)
SHIPPED = ("gated_swinrmt_swat_tiny.fmnist", "gated_swinrmt_retention_tiny.fmnist")
#: the golden test pins `gatedzoo eval --split "test[:2000]"` (the first 2,000 Fashion-MNIST test images: the whole
#: 10,000 take ~35-120 s per model on 2 shared CPU cores); the manifest also holds the whole-test figure
GOLDEN_SPLIT = "test[:2000]"


def fmnist_batch(n=8, offset=0):
    from gatedzoo.data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    x, y = load_fashion_mnist("test")
    x = torch.from_numpy(x[offset:offset + n].astype(np.float32) / 255)[:, None]
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], torch.from_numpy(y[offset:offset + n])


def test_axis_segments_cover_the_axis_once():
    assert axis_segments(14, 7, 0) == [(0, 7), (7, 7)]
    assert axis_segments(14, 7, 3) == [(0, 3), (3, 7), (10, 4)]
    assert axis_segments(10, 7, 0) == [(0, 7), (7, 3)]
    for length, window, shift in [(23, 7, 3), (5, 5, 0), (30, 8, 4)]:
        segs = axis_segments(length, window, shift)
        covered = [i for s, n in segs for i in range(s, s + n)]
        assert covered == list(range(length)) and all(n <= window for _, n in segs)


@pytest.mark.parametrize("variant", ["swat", "retention", "rmt"])
@pytest.mark.parametrize("shift", [False, True])
def test_axis_pass_equals_attention_per_window(variant, shift):
    """The gather/scatter windowing gives exactly the attention computed window by window."""
    torch.manual_seed(0)
    attn = WindowRetention(32, 4, window_size=4, shift=shift, variant=variant, backend="reference").double()
    q, k, v = (torch.randn(3, 11, 4, 8, dtype=torch.float64) for _ in range(3))
    got = attn._axis_pass(q, k, v)
    want = torch.zeros_like(q)
    for s, n in axis_segments(11, 4, 2 if shift else 0):
        sl = slice(s, s + n)
        kw = dict(activation="sigmoid", alibi_slopes=attn.slopes.double(), decay_mode="multiplicative") \
            if variant == "swat" else dict(activation="softmax", decay_mode="additive")
        want[:, sl] = attention(q[:, sl], k[:, sl], v[:, sl], decay=attn.log_gamma.double(), backend="reference", **kw)
    torch.testing.assert_close(got, want)


def test_tokens_do_not_see_other_windows():
    """Changing a token in one window leaves the attention output of every other window unchanged (LCE aside)."""
    torch.manual_seed(0)
    attn = WindowRetention(16, 2, window_size=4, shift=True, variant="rmt", backend="reference")
    attn.lce.weight.data.zero_()
    attn.lce.bias.data.zero_()
    x = torch.randn(1, 9, 9, 16)
    y0 = attn(x)
    x2 = x.clone()
    x2[0, 0, 0] += 5.0  # the shifted grid puts (0, 0) alone in its 2x2 corner window
    diff = (attn(x2) - y0).abs().sum(-1)[0]
    assert diff[:2, :2].sum() > 0
    diff[:2, :2] = 0
    assert diff.max() == 0


@pytest.mark.parametrize("arch", ["gated_swinrmt_swat_tiny", "gated_swinrmt_retention_tiny", "gated_swinrmt_rmt_tiny"])
def test_variants_train_on_real_images(arch):
    torch.manual_seed(0)
    model = gatedzoo.create_model(arch, **SMALL)
    x, y = fmnist_batch(16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_variant_structure():
    swat = timm.create_model("gated_swinrmt_swat_tiny", **SMALL).stages[0].blocks[0].attn
    ret = timm.create_model("gated_swinrmt_retention_tiny", **SMALL).stages[0].blocks[0].attn
    rmt = timm.create_model("gated_swinrmt_rmt_tiny", **SMALL).stages[0].blocks[0].attn
    assert swat.u_proj is not None and swat.out_norm is not None and swat.gate_proj is None
    assert (swat.slopes > 0).any() and (swat.slopes < 0).any()  # balanced ALiBi
    assert ret.gate_proj is not None and ret.u_proj is None and ret.out_norm is None
    assert rmt.gate_proj is None and rmt.u_proj is None and rmt.out_norm is None
    assert (rmt.log_gamma < 0).all() and len(set(rmt.log_gamma.tolist())) == rmt.num_heads


@pytest.mark.parametrize("arch", ["gated_swinrmt_swat_base", "gated_swinrmt_retention_base"])
def test_base_size_matches_the_paper(arch):
    n = sum(p.numel() for p in timm.create_model(arch).parameters())
    assert 77e6 <= n <= 79e6


def test_timm_model_api():
    model = timm.create_model("gated_swinrmt_swat_tiny", num_classes=7, **{k: v for k, v in SMALL.items()
                                                                           if k != "num_classes"})
    x, _ = fmnist_batch(2)
    feats = model.forward_features(x)
    assert feats.shape == (2, 160, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 160)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 160) and model.num_features == 160
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    backbone = timm.create_model("gated_swinrmt_rmt_tiny", features_only=True, out_indices=(1, 2, 3, 4), **SMALL)
    maps = backbone(x)
    assert [m.shape[1] for m in maps] == backbone.feature_info.channels() == [32, 64, 128, 160]
    assert backbone.feature_info.reduction() == [2, 4, 8, 16]
    assert [m.shape[-1] for m in maps] == [14, 7, 4, 2]


def test_untrained_model_defaults_are_imagenet_like():
    model = timm.create_model("gated_swinrmt_swat_tiny")
    assert model.num_classes == 1000 and model.stem.in_chans == 3
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)


def test_bad_input_is_refused_with_the_fix():
    model = gatedzoo.create_model("gated_swinrmt_swat_tiny", **SMALL).eval()
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="smaller than the network's total stride 16"):
        model(torch.randn(1, 1, 12, 28))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="variant"):
        WindowRetention(32, 4, variant="linear")
    # sizes that the window does not divide are handled (partial windows), no padding needed
    assert model(torch.randn(2, 1, 30, 23)).shape == (2, 10)


def _shipped(name):
    if not (WEIGHTS_DIR / name / "model.safetensors").exists():
        pytest.fail(f"shipped weights {name} are missing from {WEIGHTS_DIR}")
    return json.loads((WEIGHTS_DIR / "manifest.json").read_text())[name]


@pytest.mark.parametrize("name", SHIPPED)
def test_golden_eval_of_shipped_weights(name):
    """`gatedzoo eval NAME --split "test[:2000]"` reproduces the pinned CPU top-1 (within 1 of 2,000 images)."""
    from gatedzoo.tasks.images import evaluate_image_classification

    entry = _shipped(name)
    model = gatedzoo.create_model(name, pretrained=True)
    metrics = evaluate_image_classification(model, None, GOLDEN_SPLIT)
    assert metrics["n"] == 2000
    assert metrics["top1"] == pytest.approx(entry["metrics"]["eval/top1_test[:2000]"], abs=5e-4)


def test_timm_pretrained_loads_shipped_weights_and_adapts():
    _shipped(SHIPPED[0])
    model = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"][9] == "Ankle boot" and model.stem.in_chans == 1
    ours = gatedzoo.create_model(SHIPPED[0], pretrained=True).eval()
    x, _ = fmnist_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))
        head = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True, num_classes=3)
        assert head.head.out_features == 3
        torch.testing.assert_close(head.eval().forward_features(x), ours.forward_features(x))
        rgb = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True, in_chans=3).eval()
        torch.testing.assert_close(rgb(x.repeat(1, 3, 1, 1)), ours(x), atol=2e-3, rtol=1e-3)  # w/3 rounding


def test_zoo_create_model_adapts_the_stem_to_rgb():
    """`create_model(weights, in_chans=3)` adapts the grey stem: an RGB copy of a grey image scores the same."""
    _shipped(SHIPPED[0])
    grey = gatedzoo.create_model(SHIPPED[0], pretrained=True).eval()
    rgb = gatedzoo.create_model(SHIPPED[0], pretrained=True, in_chans=3).eval()
    assert rgb.stem.in_chans == 3 and rgb.zoo_config["adapted_from"]["changed"]["in_chans"] == [1, 3]
    x, _ = fmnist_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x.repeat(1, 3, 1, 1)), grey(x), atol=2e-3, rtol=1e-3)
    back = gatedzoo.create_model(SHIPPED[0], pretrained=True, in_chans=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x.repeat(1, 2, 1, 1)), grey(x), atol=2e-3, rtol=1e-3)


def test_compiled_model_matches_eager_and_keeps_no_graph_tensors_in_the_index_cache():
    """Under torch.compile the window indices are graph constants, never cached: a cached tensor made inside a
    compiled region is one of its outputs, which CUDA-graph replays (mode="reduce-overhead") would overwrite."""
    from gatedzoo.models import gated_swinrmt

    torch.manual_seed(0)
    m = gatedzoo.create_model("gated_swinrmt_swat_tiny", img_size=28, in_chans=1, num_classes=10,
                              stem_stride=2).eval()
    x = torch.randn(2, 1, 28, 28)
    gated_swinrmt._segment_cache.clear()
    torch._dynamo.reset()
    y = torch.compile(m, backend="aot_eager", fullgraph=True)(x)  # fullgraph: no graph break either
    assert not gated_swinrmt._segment_cache
    assert torch.allclose(y, m(x), atol=1e-5)
    assert gated_swinrmt._segment_cache  # eager calls still cache their indices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: CUDA-graph replays exist only on the GPU")
@pytest.mark.parametrize("arch", ["gated_swinrmt_swat_tiny", "gated_swinrmt_retention_tiny"])
def test_cuda_graph_training_steps_match_eager(arch, monkeypatch):
    """``torch.compile(mode="reduce-overhead")`` (the benchmark's fastest training path) replays CUDA graphs over
    the Triton kernels: three steps on different real images give the eager loss and every parameter gradient."""
    # exact float32 convolutions: with TF32 (cuDNN's default) eager and Inductor pick different conv algorithms and
    # the stem's gradients differ by ~5e-3 relative, which is rounding, not a stale CUDA-graph buffer (that is O(1))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    # no stochastic depth: the two copies would drop different blocks
    eager = gatedzoo.create_model(arch, **SMALL, drop_path_rate=0.0).cuda()
    graphed = gatedzoo.create_model(arch, **SMALL, drop_path_rate=0.0).cuda()
    graphed.load_state_dict(eager.state_dict())
    step = torch.compile(graphed, mode="reduce-overhead")
    for i in range(3):
        x, y = (t.cuda() for t in fmnist_batch(32, offset=32 * i))
        torch.compiler.cudagraph_mark_step_begin()
        loss_g = torch.nn.functional.cross_entropy(step(x), y)
        loss_e = torch.nn.functional.cross_entropy(eager(x), y)
        loss_g.backward()
        loss_e.backward()
        torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"step {i}: {m}")
        # relative to the larger of the parameter's gradient and 1e-3 of the largest one: a gradient that is zero in
        # exact arithmetic (a softmax key bias: it shifts every score of a row alike) is rounding noise in both runs
        largest = max(p.grad.norm() for p in eager.parameters() if p.grad is not None)
        for (name, pg), pe in zip(graphed.named_parameters(), eager.parameters()):
            if pe.grad is None:
                assert pg.grad is None, name
                continue
            err = float((pg.grad - pe.grad).norm() / torch.maximum(pe.grad.norm(), 1e-3 * largest))
            assert err < 1e-3, f"step {i} {name}: relative gradient error {err:.1e}"
        graphed.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)


def test_a_tag_implies_pretrained_as_the_card_says():
    """`create_model("arch.tag")` loads the tag's weights (no silent random ImageNet model), as does the card's
    `create_model("arch.tag", in_chans=3)`: an RGB copy of a Fashion-MNIST image scores as the grey one."""
    _shipped(SHIPPED[0])
    implied = gatedzoo.create_model(SHIPPED[0]).eval()
    explicit = gatedzoo.create_model(SHIPPED[0], pretrained=True).eval()
    assert implied.num_classes == 10 and implied.zoo_config["label_names"][9] == "Ankle boot"
    x, y = fmnist_batch(64)
    with torch.no_grad():
        torch.testing.assert_close(implied(x), explicit(x))
        assert (implied(x).argmax(-1) == y).float().mean() > 0.85
        rgb = gatedzoo.create_model(SHIPPED[0], in_chans=3).eval()
        # the stem weights divided by 3 round differently, so logits agree to ~1e-2 and predictions exactly
        assert torch.equal(rgb(x.repeat(1, 3, 1, 1)).argmax(-1), explicit(x).argmax(-1))
    assert gatedzoo.create_model("gated_swinrmt_swat_tiny").num_classes == 1000  # a bare arch stays untrained


def test_a_new_head_drops_the_source_label_names_and_metrics(tmp_path):
    """`num_classes=3` (or `reset_classifier`) re-initialises the head: the 10 Fashion-MNIST names and the shipped
    scores must not be saved with it; the folder's own class names are."""
    _shipped(SHIPPED[0])
    model = gatedzoo.create_model(SHIPPED[0], pretrained=True, num_classes=3)
    cfg = model.zoo_config
    assert "label_names" not in cfg and "metrics" not in cfg
    assert cfg["adapted_from"]["source_metrics"]["eval/top1_test"] == pytest.approx(0.9352)
    assert cfg["adapted_from"]["reinitialised"] == ["head.bias", "head.weight"]
    saved = json.loads((model.save_pretrained(tmp_path / "plain") / "config.json").read_text())
    assert "label_names" not in saved and "metrics" not in saved
    names = ["Ankle boot", "T-shirt-top", "Trouser"]
    named = json.loads((model.save_pretrained(tmp_path / "named", label_names=names) / "config.json").read_text())
    assert named["label_names"] == names
    with pytest.raises(ValueError, match="3 outputs but zoo_config\\['label_names'\\] lists 10"):
        model.save_pretrained(tmp_path / "wrong", label_names=list(gatedzoo.create_model(SHIPPED[0]).zoo_config[
            "label_names"]))
    # the head of a loaded model replaced afterwards: same rule
    reset = gatedzoo.create_model(SHIPPED[0], pretrained=True)
    reset.reset_classifier(4)
    assert "label_names" not in reset.zoo_config and "metrics" not in reset.zoo_config
    # an in_chans change keeps the head (and its names) but the scores were measured on the grey model
    rgb = gatedzoo.create_model(SHIPPED[0], pretrained=True, in_chans=3)
    assert rgb.zoo_config["label_names"][1] == "Trouser" and "metrics" not in rgb.zoo_config
    x, y = fmnist_batch(32)
    with torch.no_grad():
        assert (rgb.eval()(x.repeat(1, 3, 1, 1)).argmax(-1) == y).float().mean() > 0.85


def test_timm_overlay_file_of_a_finetuned_folder_keeps_its_head(tmp_path):
    model = gatedzoo.create_model("gated_swinrmt_swat_tiny.fmnist", num_classes=3)
    with torch.no_grad():
        model.get_classifier().weight.normal_()  # stands in for fine-tuning: a head that is not the init
    model.zoo_config["label_names"] = ["Trouser", "Bag", "Sneaker"]
    model.save_pretrained(tmp_path / "ft3")
    t = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "ft3" / "model.safetensors")))
    torch.testing.assert_close(t.get_classifier().weight, model.get_classifier().weight)
    assert t.pretrained_cfg["label_names"] == ["Trouser", "Bag", "Sneaker"]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(t.eval()(x), model.eval()(x))
