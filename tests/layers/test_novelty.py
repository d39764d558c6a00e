"""The k-nearest-normal novelty guard: its score against a brute-force loop, its threshold, the rule and its
probabilities, and TCH-Net with a guard attached (inference only, saved and reloaded with the weights)."""

import math

import pytest
import torch

from gatedzoo import create_model
from gatedzoo.layers import KNNNoveltyGuard, combine_novelty, novelty_rule

TINY = dict(conv_channels=[8, 16, 16], gru=8, gru2=8, conv2=8, tf_dim=16, tf_heads=2, tf_ffn=32, merge_heads=2,
            fusion_dim=16, head_hidden=32, stat_hidden=16, stat_dim=8, ctx_dim=4, raw_dim=8)
CARDS = [3, 4]


def _rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], 1)


def test_score_is_the_mean_distance_to_the_k_nearest_reference_points():
    (rn, rc), (qn, qc) = _rows(40, 0), _rows(7, 1)
    guard = KNNNoveltyGuard.fit(rn, rc, qn, qc, CARDS, k=3, false_alarm_rate=0.25)
    ref_num = rn.half().double()  # the stored reference is float16
    for i in range(len(qn)):
        d = []
        for j in range(len(rn)):
            cat = sum(2.0 for a, b in zip(qc[i].tolist(), rc[j].tolist()) if a != b)  # one-hot: 2 per mismatch
            d.append(math.sqrt(float(((qn[i].double() - ref_num[j]) ** 2).sum()) + cat))
        want = sum(sorted(d)[:3]) / 3
        assert guard.score(qn[i:i + 1], qc[i:i + 1]).item() == pytest.approx(want, rel=1e-9)
    s = guard.score(qn, qc)
    assert guard.threshold.item() == pytest.approx(float(torch.quantile(s, 0.75)), rel=1e-12)
    # 7 rows: the interpolated 0.75 quantile lies between the 5th and 6th smallest, so two rows are above it
    assert int((s > guard.threshold).sum()) == 2


def test_rule_flags_only_rows_called_normal_and_picks_their_most_probable_attack():
    prob = torch.tensor([[0.7, 0.1, 0.2], [0.8, 0.15, 0.05], [0.2, 0.5, 0.3], [0.9, 0.05, 0.05]], dtype=torch.float64)
    score = torch.tensor([3.0, 0.5, 3.0, 2.0])
    assert novelty_rule(prob, score, 1.0).tolist() == [2, 0, 1, 1]
    assert novelty_rule(prob, None, 1.0).tolist() == [0, 0, 1, 0]
    out = combine_novelty(prob, score, 1.0)
    assert out.argmax(1).tolist() == [2, 0, 1, 1]
    torch.testing.assert_close(out.sum(1), torch.ones(4, dtype=torch.float64))
    assert out[0, 2].item() == pytest.approx(0.75) and out[0, 1].item() == 0.0  # g = 3 / (3 + 1), all on class 2
    # row 1 stays normal, but its attack mass rises to max(0.2, g = 0.5 / 1.5) with the attack proportions kept
    torch.testing.assert_close(out[1], torch.tensor([2 / 3, 0.25, 1 / 12], dtype=torch.float64))
    torch.testing.assert_close(combine_novelty(prob, None, 1.0), prob)


def test_reference_points_follow_the_buffers_they_are_built_from():
    (rn, rc), (qn, qc) = _rows(40, 0), _rows(7, 1)
    guard = KNNNoveltyGuard.fit(rn, rc, qn, qc, CARDS, k=3)
    first = guard.score(qn, qc)
    assert guard._ref_points() is guard._ref_points()  # built once, not per call
    other = KNNNoveltyGuard.fit(rn + 3.0, rc, qn, qc, CARDS, k=3)
    guard.load_state_dict(other.state_dict())  # written in place: the points are rebuilt
    torch.testing.assert_close(guard.score(qn, qc), other.score(qn, qc))
    assert not torch.allclose(guard.score(qn, qc), first)


def test_category_codes_beyond_int16_keep_their_value():
    # a user vocabulary (ports, say) can exceed 32,767 categories: the stored codes must not wrap around
    cards = [40000]
    num, cat = torch.zeros(6, 1), torch.tensor([[0], [39999], [32768], [5], [7], [39999]])
    guard = KNNNoveltyGuard.fit(num[:4], cat[:4], num[4:], cat[4:], cards, k=1, false_alarm_rate=0.5)
    assert guard.ref_cat[:, 0].tolist() == [0, 39999, 32768, 5]
    assert guard.score(num[5:], cat[5:]).item() == 0.0  # code 39999 is in the reference: distance 0


def test_fit_refuses_bad_arguments():
    (rn, rc) = _rows(4, 0)
    with pytest.raises(ValueError, match="k <= ref_rows"):
        KNNNoveltyGuard.fit(rn, rc, rn, rc, CARDS, k=5)
    with pytest.raises(ValueError, match="no normal calibration rows"):
        KNNNoveltyGuard.fit(rn, rc, rn[:0], rc[:0], CARDS, k=2)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        KNNNoveltyGuard(5, CARDS, 4, 2, false_alarm_rate=0.0)
    guard = KNNNoveltyGuard.fit(rn, rc, rn, rc, CARDS, k=2)
    with pytest.raises(ValueError, match=r"x_cat \[N, 2\]"):
        guard.score(rn, None)


def test_tchnet_applies_the_guard_at_inference_only_and_saves_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("tchnet", in_features=5, cat_cardinalities=CARDS, **TINY)
    (rn, rc), (qn, qc) = _rows(50, 0), _rows(20, 1)
    qn[:10] += 6.0  # far from every reference row
    model.eval()
    x, c = qn[:, None], qc[:, None]
    plain = model(x, c)
    guard = KNNNoveltyGuard.fit(rn, rc, qn[10:], qc[10:], CARDS, k=3, false_alarm_rate=0.1)
    model.attach_novelty(guard)
    guarded = model(x, c)
    assert model.zoo_config["model_args"]["novelty"] == {"k": 3, "ref_rows": 50, "false_alarm_rate": 0.1}
    want = combine_novelty(torch.softmax(plain.double(), -1), guard.score(qn, qc), float(guard.threshold))
    torch.testing.assert_close(torch.softmax(guarded.double(), -1), want, atol=1e-6, rtol=1e-6)
    assert (guarded.argmax(1)[:10] == 1).all()  # the far rows are attacks whatever the classifier says
    logits, _ = model(x, c, return_aux=True)
    torch.testing.assert_close(logits, plain)  # training / aux calls see the plain classifier
    model.save_pretrained(tmp_path / "w")
    again = create_model(str(tmp_path / "w")).eval()
    assert again.novelty is not None and float(again.novelty.threshold) == float(guard.threshold)
    torch.testing.assert_close(again(x, c), guarded)
    again.novelty.enabled = False
    torch.testing.assert_close(again(x, c), plain)
    with pytest.raises(ValueError, match="fit it on this model's preprocessed flows"):
        model.attach_novelty(KNNNoveltyGuard.fit(rn[:, :4], rc, qn[:, :4], qc, CARDS, k=3))
    model.attach_novelty(None)
    assert "novelty" not in model.zoo_config["model_args"]
    torch.testing.assert_close(model(x, c), plain)
    # in training mode the guard is skipped (the rule is not differentiable): the plain logits, same dropout draws
    again.novelty.enabled = True
    again.train()
    torch.manual_seed(1)
    train_logits = again(x, c)
    torch.manual_seed(1)
    torch.testing.assert_close(train_logits, again(x, c, return_aux=True)[0])
