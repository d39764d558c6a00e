import torch
from toy import ToyAttentionClassifier

from gatedzoo.diagnostics import diagnose
from gatedzoo.layers import MultiheadAttention


def test_diagnose_reports_sink_gate_and_peaks():
    torch.manual_seed(0)
    model = ToyAttentionClassifier()
    rows = {r["layer"]: r for r in diagnose(model, torch.rand(4, 64))}
    attn, fuse = rows["attn"], rows["fuse"]
    assert 0 < attn["sink_share"] < 1 and 0 < attn["gate_mean"] < 1 and 0 <= attn["gate_sparsity"] <= 1
    assert attn["peak_activation"] > 0 and fuse["gate_mean"] is not None
    assert model.training  # restored


def test_sink_share_detects_a_sink():
    torch.manual_seed(1)
    m = MultiheadAttention(8, 2, activation="softmax")
    x = torch.randn(1, 6, 8)
    # make every query attend to token 0: its key dominates
    with torch.no_grad():
        m.k_proj.bias.zero_()
        x[0, 0] = 0
        m.q_proj.weight.zero_()
        m.q_proj.bias.fill_(3.0)
        m.k_proj.weight.zero_()
        x2 = x.clone()
    sink = diagnose(m, x2)[0]["sink_share"]
    assert abs(sink - 1 / 6) < 1e-5  # uniform attention: the first key gets exactly 1/T
    with torch.no_grad():
        m.k_proj.weight.copy_(torch.eye(8))
        x2[0, 0] = 10.0
    assert diagnose(m, x2)[0]["sink_share"] > 0.9
