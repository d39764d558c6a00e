"""Gateformer: shapes, instance normalisation, patching, gate and attention options, weights round trip, bad input."""

import logging

import numpy as np
import pytest
import torch

import gatedzoo
from gatedzoo.data.timeseries import load_frame
from gatedzoo.models.gateformer import Gateformer, PatchEmbedding


@pytest.fixture(scope="module")
def windows():
    """Four real look-back windows of vic_elec (Temperature, Demand), 96 half-hours each: ``[4, 96, 2]``."""
    df = load_frame("vic_elec")
    v = df[["Temperature", "Demand"]].to_numpy(dtype=np.float32)[:4 * 96]
    return torch.from_numpy(v).view(4, 96, 2)


def small(**kw):
    args = dict(n_vars=2, d_model=16, d_ff=32, n_heads=2, pred_len=24)
    return Gateformer(**{**args, **kw}).eval()


def test_forward_shape_and_registration(windows):
    assert "gateformer" in gatedzoo.list_models("gate*")
    model = gatedzoo.create_model("gateformer", n_vars=2, pred_len=24, d_model=16, d_ff=32, n_heads=2)
    out = model(windows)
    assert out.shape == (4, 24, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.zoo_config["task"] == "forecasting"


def test_instance_norm_makes_forecasts_scale_and_shift_equivariant(windows):
    # RevIN: normalising each variate's window and undoing it on the output means f(a x + b) = a f(x) + b
    model = small()
    with torch.no_grad():
        base = model(windows)
        moved = model(windows * 3.0 + 100.0)
    torch.testing.assert_close(moved, base * 3.0 + 100.0, rtol=1e-4, atol=1e-2)


def test_patches_replicate_the_last_value():
    pe = PatchEmbedding(seq_len=96, dim=8, patch_len=8, stride=8, dropout=0.0)
    assert pe.num_patches == 13
    x = torch.arange(96.0).view(1, 96)
    seen = {}
    pe.proj.register_forward_hook(lambda m, i, o: seen.setdefault("patches", i[0]))
    pe(x)
    patches = seen["patches"][0]
    assert patches.shape == (13, 8)
    torch.testing.assert_close(patches[0], torch.arange(8.0))
    torch.testing.assert_close(patches[-1], torch.full((8,), 95.0))  # the padding repeats the newest step


def test_variates_are_tokens_permutation_equivariant(windows):
    # no variate position: permuting the input columns permutes the forecast columns
    model = small()
    with torch.no_grad():
        torch.testing.assert_close(model(windows.flip(-1)), model(windows).flip(-1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("activation,gate", [("sigmoid", None), ("softmax", "headwise"), ("sigmoid", "elementwise")])
def test_attention_options_train(windows, activation, gate):
    torch.manual_seed(0)
    model = small(variate_activation=activation, variate_gate=gate).train()
    out = model(windows)
    out.square().mean().backward()
    attn = model.variate[0].attn
    assert attn.activation == activation and attn.gate_kind == gate
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if gate is not None:
        assert attn.gate_proj.weight.grad.abs().sum() > 0


def test_reference_backend_matches_default(windows):
    torch.manual_seed(0)
    a = small()
    b = small(backend="reference")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(windows), b(windows), rtol=1e-5, atol=1e-3)


def test_gates_lie_in_unit_interval(windows):
    g = small().gates(windows)
    assert g["temporal"].shape == g["variate"].shape == (4, 2, 16)
    for v in g.values():
        assert (v > 0).all() and (v < 1).all()


def test_weights_round_trip_and_horizon_override(windows, tmp_path, caplog):
    torch.manual_seed(1)
    model = gatedzoo.create_model("gateformer", n_vars=2, pred_len=24, d_model=16, d_ff=32, n_heads=2).eval()
    model.save_pretrained(tmp_path)
    again = gatedzoo.create_model(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(windows), model(windows))
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        longer = gatedzoo.create_model(str(tmp_path), pred_len=48)
    assert longer(windows).shape == (4, 48, 2)
    assert "pred_len 24 -> 48" in caplog.text and "head.weight" in caplog.text
    torch.testing.assert_close(longer.global_embed.weight, model.global_embed.weight)


def test_bad_input_is_named(windows):
    model = small()
    with pytest.raises(ValueError, match=r"seq_len=96, n_vars=2\], got \[4, 96, 3\]"):
        model(torch.cat([windows, windows[..., :1]], -1))
    with pytest.raises(ValueError, match="seq_len=96"):
        model(windows[:, :48])
    with pytest.raises(TypeError, match="floating-point"):
        model(windows.long())
    with pytest.raises(ValueError, match="patch_len=128 is longer"):
        Gateformer(seq_len=96, patch_len=128)
    with pytest.raises(ValueError, match="pred_len=0"):
        Gateformer(pred_len=0)


def test_cli_text_overrides_are_numbers(windows):
    # `--model.init_args.model_args.n_vars 2` reaches the builder as text
    model = gatedzoo.create_model("gateformer", n_vars="2", pred_len="24", d_model="16", d_ff="32", n_heads="2",
                                  dropout="0.0").eval()
    assert model.n_vars == 2 and model(windows).shape == (4, 24, 2)
    with pytest.raises(ValueError, match="n_vars='two' is not a number"):
        gatedzoo.create_model("gateformer", n_vars="two")


def test_residual_cycle_is_removed_and_added_back_at_each_windows_phase(windows):
    torch.manual_seed(0)
    plain = small()
    torch.manual_seed(0)
    cyc = small(cycle_len=48)
    assert cyc.reads_time and not plain.reads_time
    cyc.load_state_dict(plain.state_dict(), strict=False)  # same weights; the profile starts at zero
    step = torch.tensor([0, 5, 47, 1000])
    # an untrained (zero) profile changes nothing
    torch.testing.assert_close(cyc(windows, step), plain(windows), rtol=0, atol=0)
    with torch.no_grad():
        cyc.cycle.profile.copy_(torch.randn(48, 2))
    q = cyc.cycle.profile
    out = cyc(windows, step)
    # by hand: normalise, subtract the profile at the look-back's phases, encode, add it at the horizon's phases
    z, mean, std = cyc.norm(windows)
    t_in = (step[:, None] + torch.arange(96)) % 48
    t_out = (step[:, None] + 96 + torch.arange(24)) % 48
    want = (cyc.head(cyc.encode(z - q[t_in])).transpose(1, 2) + q[t_out]) * std + mean
    torch.testing.assert_close(out, want)
    # only the phase matters: a whole number of cycles later gives the same forecast
    torch.testing.assert_close(cyc(windows, step + 48 * 7), out)
    assert not torch.allclose(cyc(windows, step + 1), out)
    # the profile learns
    cyc.train()
    cyc(windows, step).square().mean().backward()
    assert cyc.cycle.profile.grad is not None and cyc.cycle.profile.grad.abs().sum() > 0


def test_residual_cycle_needs_the_time_step(windows):
    cyc = small(cycle_len=24)
    with pytest.raises(ValueError, match=r"needs each window's time step: call model\(x, step\)"):
        cyc(windows)
    with pytest.raises(ValueError, match=r"integer tensor of shape \[batch=4\]"):
        cyc(windows, torch.zeros(4))
    with pytest.raises(ValueError, match="cycle_len=-1 must be 0"):
        small(cycle_len=-1)


def test_a_horizon_override_updates_the_configs_window_and_drops_the_scores():
    m = gatedzoo.create_model("gateformer.etth1_96", pretrained=True, pred_len=48)
    assert (m.zoo_config["lookback"], m.zoo_config["horizon"]) == (96, 48)
    assert "metrics" not in m.zoo_config and m.zoo_config["adapted_from"]["source_metrics"]["test/mse"] > 0


def test_last_value_centre_forecasts_changes_from_the_last_observation(windows):
    model = small(center="last")
    z, shift, std = model.norm(windows)
    torch.testing.assert_close(shift, windows[:, -1:])
    torch.testing.assert_close(z * std + shift, windows)
    # the scale is the paper's (standard deviation about the mean); only the shift differs
    mean = windows.mean(1, keepdim=True)
    torch.testing.assert_close(std, ((windows - mean).square().mean(1, keepdim=True) + 1e-5).sqrt())
    want = model.head(model.encode((windows - windows[:, -1:]) / std)).transpose(1, 2) * std + windows[:, -1:]
    torch.testing.assert_close(model(windows), want)
    # a head that outputs zeros repeats the last value: the random-walk baseline
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    torch.testing.assert_close(model(windows), windows[:, -1:].expand(-1, 24, -1))
    # a CLI override arrives as text and stays text; an unknown centre is refused
    assert gatedzoo.create_model("gateformer", n_vars=2, center="last").norm.center == "last"
    with pytest.raises(ValueError, match=r"center='median' must be one of \('mean', 'last'\)"):
        small(center="median")
