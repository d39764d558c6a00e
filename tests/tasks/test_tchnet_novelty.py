"""The NSL-KDD benchmark's novelty rule (leave-attack-types-out choice) and its ``--merge`` of disjoint-seed runs."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import need

from gatedzoo.data.flows import NSLKDD_FILES, FlowDataModule, attack_names, labels_of, read_nslkdd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tchnet_nslkdd as bench  # noqa: E402


def test_holdout_types_keeps_attack_types_below_the_share():
    names = np.array(["normal"] * 60 + ["neptune"] * 30 + ["back"] * 4 + ["phf"] * 1 + ["satan"] * 5)
    y = (names != "normal").astype(int)
    # 5 % of 100 rows: types with fewer than 5 rows are held out, satan (exactly 5) stays, normal never counts
    assert bench.holdout_types(names, y, share=0.05) == ["back", "phf"]
    assert bench.holdout_types(names, y, share=0.05, keep_per_class=True) == ["back", "phf"]  # neptune is common


def test_holdout_types_can_leave_every_class_one_type():
    # 5-class labels: R2L (3) has only rare types, so its most frequent one (warezclient) stays in training
    names = np.array(["normal"] * 60 + ["neptune"] * 30 + ["back"] * 2 + ["warezclient"] * 4 + ["guess_passwd"] * 3
                     + ["phf"] * 1)
    y = np.array([0] * 60 + [1] * 32 + [3] * 8)
    assert bench.holdout_types(names, y, share=0.05) == ["back", "guess_passwd", "phf", "warezclient"]
    assert bench.holdout_types(names, y, share=0.05, keep_per_class=True) == ["back", "guess_passwd", "phf"]


def test_knn_score_is_the_mean_distance_to_the_k_nearest_reference_rows():
    g = torch.Generator().manual_seed(0)
    ref, query = torch.randn(300, 6, generator=g), torch.randn(50, 6, generator=g)
    got = bench.knn_score(ref, query, k=4, bs=16)
    d = np.linalg.norm(query.numpy()[:, None] - ref.numpy()[None], axis=-1)
    want = np.sort(d, 1)[:, :4].mean(1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "tchnet"])
def test_embed_points_are_unit_pre_logit_features_of_the_classifier(name):
    margs = {"in_features": 5, "cat_cardinalities": [3, 4], "num_classes": 2, "window": 1}
    model = bench.build_model(name, {k: v for k, v in margs.items() if k != "window"}, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 5, generator=g)
    c = torch.stack([torch.randint(0, 3, (10, 1), generator=g), torch.randint(0, 4, (10, 1), generator=g)], -1)
    emb = bench.embed_points(model, x, c, bs=4)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(10))
    # the logits are a linear map of these features (before normalisation): the last layer applied to them
    model.eval()
    with torch.no_grad():
        last = model.net[-1] if name == "mlp" else model.head.fc
        raw = model.features(x, c) if name == "mlp" else model.forward_head(model.forward_features(x, c)[1], True)
        torch.testing.assert_close(last(raw), model(x, c))
        torch.testing.assert_close(emb, torch.nn.functional.normalize(raw, dim=1))


def test_flow_points_one_hot_encodes_the_categories_of_the_scored_flow():
    x = torch.arange(12.0).reshape(2, 2, 3)  # [N=2, T=2, F=3]
    c = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [1, 2]]])  # [N, T, K=2], cardinalities 3 and 3
    pts = bench.flow_points(x, c, [3, 3])
    assert pts.shape == (2, 3 + 6)
    torch.testing.assert_close(pts[0], torch.tensor([3.0, 4, 5, 0, 0, 1, 1, 0, 0]))
    torch.testing.assert_close(pts[1], torch.tensor([9.0, 10, 11, 0, 1, 0, 0, 0, 1]))


def test_combine_makes_the_arg_max_equal_to_the_or_rule():
    rng = np.random.default_rng(0)
    p, s = rng.random(1000), rng.exponential(1.0, 1000)
    prob = bench.combine(np.stack([1 - p, p], 1), s, thr=1.3)
    assert prob.shape == (1000, 2)
    np.testing.assert_allclose(prob.sum(1), 1.0)
    np.testing.assert_array_equal(prob.argmax(1) == 1, (p > 0.5) | (s > 1.3))
    # the attack score sees both signals: max(p, s / (s + thr))
    np.testing.assert_allclose(prob[:, 1], np.maximum(p, s / (s + 1.3)))
    np.testing.assert_allclose(bench.combine(np.stack([1 - p, p], 1), None, math.inf)[:, 1], p)


def test_the_five_class_rule_gives_a_flagged_normal_flow_its_most_probable_attack_class():
    prob = np.array([[0.70, 0.05, 0.20, 0.03, 0.02],   # normal, novel: becomes class 2 (its best attack class)
                     [0.70, 0.05, 0.20, 0.03, 0.02],   # normal, not novel: stays normal
                     [0.30, 0.10, 0.15, 0.40, 0.05],   # classifier says class 3: the rule leaves it
                     [0.40, 0.15, 0.15, 0.15, 0.15]])  # arg-max normal although p(normal) < 0.5; novel: class 1
    score = np.array([5.0, 0.5, 5.0, 9.0])
    np.testing.assert_array_equal(bench.rule_classes(prob, score, 1.0), [2, 0, 3, 1])
    np.testing.assert_array_equal(bench.rule_classes(prob, None, 1.0), [0, 0, 3, 0])
    out = bench.combine(prob, score, 1.0)
    np.testing.assert_allclose(out.sum(1), 1.0)
    np.testing.assert_array_equal(out.argmax(1), [2, 0, 3, 1])
    g = score / (score + 1.0)
    np.testing.assert_allclose(1 - out[:, 0], np.maximum(1 - prob[:, 0], g))
    # an unflagged attack keeps its attack classes' proportions
    np.testing.assert_allclose(out[2, 1:] / out[2, 1:].sum(), prob[2, 1:] / prob[2, 1:].sum())
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5), 2000)
    s = rng.exponential(1.0, 2000)
    np.testing.assert_array_equal(bench.combine(p, s, 1.2).argmax(1), bench.rule_classes(p, s, 1.2))


def test_choose_rule_picks_a_separating_score_and_declines_a_useless_one():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(400, int), np.ones(300, int)]
    normal = y == 0
    # the classifier misses the last 100 attacks (an unseen type); "good" scores exactly those far from normal
    p = np.r_[rng.uniform(0, 0.3, 400), rng.uniform(0.7, 1, 200), rng.uniform(0, 0.3, 100)]
    good = np.r_[rng.uniform(0, 1, 400), rng.uniform(0, 1, 200), rng.uniform(5, 6, 100)]
    rule, grid = bench.choose_rule(y, normal, np.stack([1 - p, p], 1), {"good": good})
    assert rule["score"] == "good" and rule["val_mcc"] > grid[0]["val_mcc"]
    assert rule["thr"] == pytest.approx(np.quantile(good[normal], 1 - rule["fpr"]))
    assert len(grid) == 1 + len(bench.FPR_GRID)
    # a score independent of the label only adds false alarms: the plain classifier is kept
    noise = rng.uniform(0, 1, 700)
    p_ok = np.r_[rng.uniform(0, 0.3, 400), rng.uniform(0.7, 1, 300)]
    rule, _ = bench.choose_rule(y, normal, np.stack([1 - p_ok, p_ok], 1), {"noise": noise})
    assert rule["score"] is None and math.isinf(rule["thr"])


def _run(seed, model, acc, mcc, task="binary"):
    test = {"accuracy": acc, "mcc": mcc, "f1_attack": acc}
    return {"task": task, "model": model, "seed": seed, "val": 0.99, "params": 10, "test": test, "seconds": 1.0}


def _doc(path, seeds, epochs=25, **extra):
    env = {"epochs": epochs, "recipe": bench.RECIPE, "widths": bench.SMALL, "limit": 0, "device": "x", "torch": "t",
           "date": "d", **extra}
    runs = [r for s in seeds for r in (_run(s, "tchnet", 0.80 + 0.01 * s, 0.60 + 0.01 * s),
                                       _run(s, "tchnet_nofusion", 0.79, 0.60))]
    path.write_text(json.dumps({"env": env, "runs": runs, "summary": []}))
    return str(path)


def test_merge_combines_disjoint_seeds_and_recomputes_table_and_paired_gain(tmp_path):
    a, b = _doc(tmp_path / "a.json", [0, 1, 2]), _doc(tmp_path / "b.json", [3, 4])
    md = bench.merge_runs([a, b], tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "results.json").read_text())
    assert len(doc["runs"]) == 10 and doc["env"]["seeds"] == [0, 1, 2, 3, 4]
    row = next(t for t in doc["summary"] if t["model"] == "tchnet")
    accs = [0.80 + 0.01 * s for s in range(5)]
    assert row["seeds"] == 5
    assert row["test"]["accuracy"][0] == pytest.approx(np.mean(accs))
    assert row["test"]["accuracy"][1] == pytest.approx(np.std(accs))
    gain = doc["cbgaf_gain"]["binary"]["accuracy"]
    assert gain["per_seed"] == pytest.approx([100 * (a - 0.79) for a in accs])
    assert gain["mean"] == pytest.approx(100 * (np.mean(accs) - 0.79))
    assert "| binary | tchnet | 10 | 5 |" in md and "CB-GAF − concat" in md


def test_merging_a_merge_keeps_its_calls_and_sources(tmp_path):
    a, b = _doc(tmp_path / "a.json", [0, 1]), _doc(tmp_path / "b.json", [2])
    bench.merge_runs([a, b], tmp_path / "m1")
    c = _doc(tmp_path / "c.json", [3])
    bench.merge_runs([str(tmp_path / "m1" / "results.json"), c], tmp_path / "m2")
    doc = json.loads((tmp_path / "m2" / "results.json").read_text())
    assert doc["merged_from"] == [a, b, c]
    assert len(doc["env"]["runs"]) == 3 and doc["env"]["seeds"] == [0, 1, 2, 3]


def test_merge_refuses_other_settings_and_repeated_seeds(tmp_path):
    a = _doc(tmp_path / "a.json", [0, 1])
    with pytest.raises(ValueError, match="epochs"):
        bench.merge_runs([a, _doc(tmp_path / "b.json", [3], epochs=5)], tmp_path / "m")
    with pytest.raises(ValueError, match="repeats"):
        bench.merge_runs([a, _doc(tmp_path / "c.json", [1, 2])], tmp_path / "m")
    # a run that held out other types is another study; a run from before the option had the default
    with pytest.raises(ValueError, match="holdout_keep_class"):
        bench.merge_runs([a, _doc(tmp_path / "d.json", [3], holdout_keep_class=True)], tmp_path / "m")
    bench.merge_runs([a, _doc(tmp_path / "e.json", [3], holdout_keep_class=False)], tmp_path / "m")


def test_shipped_benchmark_json_has_the_settings_a_new_default_run_writes():
    # the new seeds must be trained exactly like the old ones: the script's defaults equal the recorded settings
    old = json.loads((Path(__file__).resolve().parents[2] / "docs/benchmarks/tchnet_nslkdd.json").read_text())["env"]
    assert old["recipe"] == bench.RECIPE and old["widths"] == bench.SMALL
    assert old["epochs"] == 25 and old["limit"] == 0


def test_row_labels_follow_the_split_and_agree_with_the_binary_labels(tmp_path):
    train = need(NSLKDD_FILES["train20"])
    lines = train.read_text().splitlines()[:1500]
    small = tmp_path / "train.txt"
    small.write_text("\n".join(lines) + "\n")
    dm = FlowDataModule(train_path=str(small), test_path=str(small), task="binary")
    dm.setup()
    for split in ("train", "val", "test"):
        names, y = dm.row_labels[split], dm.datasets[split].y.numpy()
        assert len(names) == len(y)
        np.testing.assert_array_equal(names != "normal", y == 1)
    assert len(dm.row_labels["train"]) + len(dm.row_labels["val"]) == 1500
    df = read_nslkdd(small)
    np.testing.assert_array_equal(attack_names(df) != "normal", labels_of(df, "nslkdd", "binary") == 1)
    with pytest.raises(ValueError, match="no label column"):
        attack_names(df.drop(columns=["label"]))


@pytest.mark.parametrize("task", ["binary", "5class"])
def test_novelty_study_chooses_on_validation_and_scores_the_full_classifier_once(tmp_path, monkeypatch, task):
    lines = need(NSLKDD_FILES["train20"]).read_text().splitlines()[:3000]
    small = tmp_path / "train.txt"
    small.write_text("\n".join(lines) + "\n")
    dm = FlowDataModule(train_path=str(small), test_path=str(small), task=task)
    dm.setup()
    data = {k: bench.tensors(dm.datasets[k], torch.device("cpu")) for k in ("train", "val", "test")}
    margs = dm.model_args()
    ctx = bench.novelty_context(data, dict(dm.row_labels), margs, dm.class_counts, 2, torch.device("cpu"), task,
                                dm.label_names)
    assert ctx["held"] and not ctx["unseen"].any()  # the "test" file here is the training file: nothing unseen
    full = bench.build_model("mlp", margs, 0, torch.device("cpu"))
    bench.train_nn(full, data, task, dm.class_counts, 2, 0, torch.device("cpu"), lambda m: None)
    # the held-out classifier must never see a held-out type: wrap train_nn to check what it is given
    seen = []
    real = bench.train_nn

    def spy(model, sub, *a, **k):
        seen.append(sub["train"][2].shape[0])
        return real(model, sub, *a, **k)

    monkeypatch.setattr(bench, "train_nn", spy)
    row = bench.novelty_study("mlp", 0, full, ctx, lambda m: None)
    n_held = int(np.isin(dm.row_labels["train"], ctx["held"]).sum())
    assert seen == [len(dm.row_labels["train"]) - n_held]
    assert row["novelty_val_rows"]["held_out"] == n_held + int(np.isin(dm.row_labels["val"], ctx["held"]).sum())
    best = max(g["val_mcc"] for g in row["val_grid"])
    assert row["rule"]["val_mcc"] == best
    # the MLP has no reconstruction head
    assert {g["score"] for g in row["val_grid"]} == {None, "knn", "knn_emb", "iforest"}
    ys = data["test"][2].numpy()
    plain = bench.flow_metrics(ys, bench.predict(full, data["test"][0], data["test"][1]).numpy(), dm.label_names)
    assert row["task"] == task
    assert row["test_plain"]["accuracy"] == pytest.approx(plain["accuracy"])
    assert ("accuracy_multiclass" in row["test"]) == (task == "5class")
    if row["rule"]["score"] is None:
        assert row["test"]["accuracy"] == pytest.approx(plain["accuracy"])
    else:
        assert row["diagnostics"]["normal_false_alarm"] >= row["diagnostics"]["normal_false_alarm_plain"]
