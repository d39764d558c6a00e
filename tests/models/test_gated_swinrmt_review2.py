"""Gated-SwinRMT, second user review: timm semantics of the head and the feature extractor, timm reading gatedzoo
folders (``local-dir:``; ``hf-hub:`` in tests/zoo/test_zoo.py), and what a saved config says about the file it sits
next to."""

import json

import pytest
import timm
import torch

import gatedzoo
from gatedzoo.models.gated_swinrmt import SIZES, GatedSwinRMT
from gatedzoo.zoo.registry import WEIGHTS_DIR

WEIGHTS = "gated_swinrmt_swat_tiny.fmnist"


def fmnist_batch(n=8):
    from gatedzoo.data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    x, y = load_fashion_mnist("test")
    x = torch.from_numpy(x[:n].astype("float32") / 255)[:, None]
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], torch.from_numpy(y[:n])


def test_global_pool_off_scores_every_position():
    """`global_pool=''` keeps the feature map: the classifier scores every position ([B, classes, h, w]), as timm's
    ConvNeXt head without pooling; the average of those logits is the pooled model's (the head is linear). It used to
    crash (`mm: mat1 and mat2 shapes cannot be multiplied`)."""
    pooled = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True).eval()
    dense = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True, global_pool="").eval()
    x, y = fmnist_batch()
    with torch.no_grad():
        maps = dense(x)
        assert maps.shape == (8, 10, 2, 2)
        torch.testing.assert_close(maps.mean((2, 3)), pooled(x), atol=1e-5, rtol=1e-5)
        assert (maps.mean((2, 3)).argmax(-1) == y).float().mean() >= 0.75
        assert dense.forward_head(dense.forward_features(x), pre_logits=True).shape == (8, 160, 2, 2)
        pooled.reset_classifier(4, global_pool="")
        assert pooled(x).shape == (8, 4, 2, 2) and pooled.global_pool == ""
        pooled.reset_classifier(4, global_pool="avg")
        assert pooled(x).shape == (8, 4)
    with pytest.raises(ValueError, match="global_pool='max'; use 'avg' or ''"):
        pooled.reset_classifier(4, global_pool="max")
    assert pooled.global_pool == "avg"  # a refused pool changes nothing


def test_features_only_default_has_strictly_increasing_strides():
    """The stem and stage 0 share a stride; the default feature maps are the four stages (FPN-style necks expect
    strictly increasing strides). Explicit out_indices keep their meaning: 0 is still the stem."""
    x, _ = fmnist_batch(2)
    default = timm.create_model("gated_swinrmt_retention_tiny", pretrained=True, features_only=True).eval()
    reductions = default.feature_info.reduction()
    assert reductions == [2, 4, 8, 16] and all(a < b for a, b in zip(reductions, reductions[1:]))
    assert default.feature_info.channels() == [32, 64, 128, 160]
    full = timm.create_model("gated_swinrmt_retention_tiny", pretrained=True).eval()
    with torch.no_grad():
        maps = default(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(32, 14, 14), (64, 7, 7), (128, 4, 4), (160, 2, 2)]
        torch.testing.assert_close(maps[-1], full.stages(full.stem(x)))
    with_stem = timm.create_model("gated_swinrmt_retention_tiny", features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert with_stem.feature_info.reduction() == [4, 4, 8, 16, 32]
    assert timm.create_model("gated_swinrmt_swat_tiny", features_only=True,
                             out_indices=(-1,)).feature_info.channels() == [160]


def test_too_small_images_advise_what_the_model_lacks():
    """The error names stem_stride=2 only to a model that does not have it (the Fashion-MNIST model does)."""
    small = gatedzoo.create_model(WEIGHTS).eval()
    with pytest.raises(ValueError, match="at least 16 pixels") as err:
        small(torch.randn(1, 1, 15, 15))
    assert "use stem_stride=2" not in str(err.value) and "already has the small-image stem" in str(err.value)
    large = GatedSwinRMT(in_chans=1, num_classes=2, **SIZES["tiny"]).eval()  # stem_stride 4: at least 32 pixels
    with pytest.raises(ValueError, match="at least 32 pixels .*stem_stride=2"):
        large(torch.randn(1, 1, 28, 28))


def test_timm_new_head_drops_the_class_names():
    """`timm.create_model(..., pretrained=True, num_classes=5)`: the 10 Fashion-MNIST names would name the 5 new
    outputs wrongly, so they leave the model's pretrained_cfg (timm's own exports drop them the same way)."""
    five = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True, num_classes=5)
    assert five.num_classes == 5 and "label_names" not in five.pretrained_cfg
    assert five.default_cfg is five.pretrained_cfg
    ten = timm.create_model("gated_swinrmt_swat_tiny", pretrained=True)
    assert ten.pretrained_cfg["label_names"][9] == "Ankle boot"  # the registry's cfg was not changed


@pytest.fixture
def finetuned(tmp_path):
    """A 3-class head on the shipped backbone, saved as a gatedzoo folder (a stand-in for a fine-tune)."""
    torch.manual_seed(0)
    model = gatedzoo.create_model(WEIGHTS, num_classes=3).eval()
    with torch.no_grad():
        model.get_classifier().weight.normal_()
    folder = model.save_pretrained(tmp_path / "ft3", label_names=["Ankle boot", "T-shirt-top", "Trouser"])
    return model, folder


def test_timm_local_dir_reads_a_gatedzoo_folder(finetuned):
    """`timm.create_model("local-dir:<folder>", pretrained=True)` on a folder written by save_pretrained: the
    architecture, head, class names and preprocessing come through (it used to fail with `PretrainedCfg.__init__()
    got an unexpected keyword argument 'model_args'`), and gatedzoo still loads the folder."""
    model, folder = finetuned
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["pretrained_cfg"]["num_classes"] == 3 and cfg["pretrained_cfg"]["mean"] == [0.286]
    t = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert t.num_classes == 3 and t.pretrained_cfg["label_names"] == ["Ankle boot", "T-shirt-top", "Trouser"]
    data = timm.data.resolve_data_config({}, model=t)
    assert data["input_size"] == (1, 28, 28) and data["interpolation"] == "bilinear" and data["crop_pct"] == 1.0
    x, _ = fmnist_batch(4)
    again = gatedzoo.create_model(str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x))
        torch.testing.assert_close(again(x), model(x))
    # the timm entry describes the file; a loaded model recomputes it when saved, never carries a stale one
    assert "pretrained_cfg" not in again.zoo_config
    rgb = timm.create_model(f"local-dir:{folder}", pretrained=True, in_chans=3, num_classes=2)
    assert rgb.stem.in_chans == 3 and rgb.num_classes == 2


def test_saved_config_describes_the_saved_file(tmp_path):
    """A model adapted from the shipped weights does not save their run's recipe and hyper-parameters as its own
    (they move under adapted_from, next to the source's scores), and `weights_dtype` is that of the written file
    (float32 here), not the shipped float16."""
    shipped = json.loads((WEIGHTS_DIR / WEIGHTS / "config.json").read_text())
    assert shipped["weights_dtype"] == "float16" and "hparams" in shipped and "recipe" in shipped
    model = gatedzoo.create_model(WEIGHTS, num_classes=3)
    cfg = json.loads((model.save_pretrained(tmp_path / "ft", label_names=list("abc")) / "config.json").read_text())
    assert cfg["weights_dtype"] == "float32"
    assert "hparams" not in cfg and "recipe" not in cfg and "metrics" not in cfg
    assert cfg["adapted_from"]["source_hparams"] == shipped["hparams"]
    assert cfg["adapted_from"]["source_recipe"] == shipped["recipe"]
    half = gatedzoo.create_model(WEIGHTS)
    cfg = json.loads((half.half().save_pretrained(tmp_path / "half") / "config.json").read_text())
    assert cfg["weights_dtype"] == "float16" and cfg["recipe"] == shipped["recipe"]  # unchanged weights keep theirs
