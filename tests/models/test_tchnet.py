"""TCH-Net and CB-GAF: architecture, the fusion maths, gradients, save/load, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatedzoo import create_model
from gatedzoo.models.tchnet import CBGAF, GatedFusionClassifier, TCHNet

TINY = dict(conv_channels=[8, 16, 16], gru=8, gru2=8, conv2=8, tf_dim=16, tf_heads=2, tf_ffn=32, merge_heads=2,
            fusion_dim=16, head_hidden=32, stat_hidden=16, stat_dim=8, ctx_dim=4, raw_dim=8, dropout=0.0)


def test_paper_widths_match_the_reference_parameter_count():
    # TCHNetV3 reports 2,691,696 parameters; ours differs only in the squeeze-excite and Transformer details
    n = sum(p.numel() for p in create_model("tchnet").parameters())
    assert 2_650_000 < n < 2_750_000


@pytest.mark.parametrize("window", [1, 5, 32])
def test_forward_shapes_any_window(window):
    torch.manual_seed(0)
    m = TCHNet(in_features=12, num_classes=5, cat_cardinalities=[4, 7], **TINY)
    x, c = torch.randn(6, window, 12), torch.randint(0, 4, (6, window, 2))
    logits, recon = m(x, c, torch.tensor([[1, 2]] * 6), return_aux=True)
    assert logits.shape == (6, 5) and recon.shape == (6, 12)
    fused, z = m.forward_features(x, c)
    assert fused.shape == (6, 3 * 16) and z.shape == (6, m.num_features)


def test_cbgaf_matches_its_definition():
    torch.manual_seed(0)
    f = CBGAF([5, 3, 4], dim=6)
    hs = [torch.randn(2, 5), torch.randn(2, 3), torch.randn(2, 4)]
    xs = [p(h) for p, h in zip(f.proj, hs)]
    qkv = [lin(x).chunk(3, -1) for lin, x in zip(f.qkv, xs)]
    fused = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        scores = torch.stack([(qkv[i][0] * qkv[j][1]).sum(-1) / 6 ** 0.5 for j in others], -1)
        c = (torch.softmax(scores, -1)[..., None] * torch.stack([qkv[j][2] for j in others], 1)).sum(1)
        g = torch.sigmoid(f.gates[i].gate_proj(torch.cat([xs[i], c], -1)))
        fused.append(g * xs[i] + (1 - g) * c)
    expected = F.layer_norm(torch.cat(fused, -1), (18,), f.norm.weight, f.norm.bias)
    torch.testing.assert_close(f(hs), expected, atol=1e-5, rtol=1e-5)


def test_no_fusion_ablation_has_no_cross_attention_or_gates():
    f = CBGAF([5, 3], dim=4, fusion="concat")
    assert not hasattr(f, "gates") and f([torch.randn(2, 5), torch.randn(2, 3)]).shape == (2, 8)
    with pytest.raises(ValueError, match="fusion="):
        CBGAF([5, 3], fusion="sum")
    with pytest.raises(ValueError, match="two branches"):
        CBGAF([5])


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = TCHNet(in_features=10, cat_cardinalities=[3], **TINY)
    logits, recon = m(torch.randn(4, 6, 10), torch.randint(0, 3, (4, 6, 1)), torch.tensor([[0, 1]] * 4),
                      return_aux=True)
    (logits.sum() + recon.sum()).backward()
    # the context embeddings see only the rows for ids 0 (dataset) and 1 (device)
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], dead


def test_bad_input_shapes_are_refused():
    m = TCHNet(in_features=10, cat_cardinalities=[3], max_len=8, **TINY)
    with pytest.raises(ValueError, match=r"x_num \[B, T, 10\]"):
        m(torch.randn(2, 1, 9), torch.zeros(2, 1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="pass x_cat"):
        m(torch.randn(2, 1, 10))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.randn(2, 9, 10), torch.zeros(2, 9, 1, dtype=torch.long))


def test_save_and_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    m = create_model("tchnet", in_features=10, num_classes=3, **TINY).eval()
    m.save_pretrained(tmp_path / "w")
    m2 = create_model(str(tmp_path / "w")).eval()
    x = torch.randn(3, 2, 10)
    torch.testing.assert_close(m(x), m2(x))
    m3 = create_model(str(tmp_path / "w"), num_classes=5)
    assert m3(x).shape == (3, 5) and m3.zoo_config["adapted_from"]["changed"]["num_classes"] == [3, 5]


class LastStepGRU(nn.Module):
    """A user's sequence encoder: ``[B, T, 4] -> [B, 6]``."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0][:, -1]


def test_gated_fusion_classifier_with_user_encoders():
    torch.manual_seed(0)
    clf = GatedFusionClassifier({"seq": LastStepGRU(), "tab": nn.Linear(7, 5)}, {"seq": 6, "tab": 5}, num_classes=3,
                                fusion_dim=8, head_hidden=16)
    out = clf({"seq": torch.randn(4, 9, 4), "tab": torch.randn(4, 7)})
    assert out.shape == (4, 3)
    out.sum().backward()
    assert clf.fusion.gates[0].gate_proj.weight.grad is not None
    with pytest.raises(ValueError, match="no input for branches"):
        clf({"seq": torch.randn(4, 9, 4)})
    with pytest.raises(ValueError, match="must match"):
        GatedFusionClassifier({"a": nn.Linear(2, 2)}, {"b": 2})
