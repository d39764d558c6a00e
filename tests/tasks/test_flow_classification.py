"""Flow-classification task: loss, metrics, a real Lightning fit, ``gatedzoo eval`` and the golden shipped numbers."""

import json
import logging

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from datafiles import need

from gatedzoo import create_model
from gatedzoo.cli import main
from gatedzoo.data.flows import NSLKDD_COLUMNS, NSLKDD_FILES, FlowDataModule, read_flow_table, read_nslkdd
from gatedzoo.tasks.flows import (
    FlowClassification,
    class_weights,
    evaluate_flows,
    fit_novelty_guard,
    flow_metrics,
    focal_loss,
    fpr_at_tpr,
    predict_table,
    rebuild_novelty_guard,
)

TINY = dict(conv_channels=[8, 16, 16], gru=8, gru2=8, conv2=8, tf_dim=16, tf_heads=2, tf_ffn=32, merge_heads=2,
            fusion_dim=16, head_hidden=32, stat_hidden=16, stat_dim=8, ctx_dim=4, raw_dim=8)

#: KDDTest+ numbers of the shipped weights as `gatedzoo eval NAME --json` prints them on CPU (docs/models/tchnet.md)
GOLDEN = {
    "tchnet.nslkdd_binary": {"accuracy": 0.816137, "mcc": 0.655674, "roc_auc": 0.936082},
    "tchnet.nslkdd_5class": {"accuracy_multiclass": 0.806689, "accuracy": 0.827049, "mcc": 0.673229},
}
#: ``gatedzoo eval tchnet.nslkdd_binary --novelty --json``: the classifier + the validated kNN novelty guard rebuilt
#: from the training file; its classifier_* metrics are the plain weights' above
GOLDEN_NOVELTY = {"accuracy": 0.91266, "mcc": 0.82201, "roc_auc": 0.95625, "false_alarms": 0.137473,
                  "novelty_flagged": 0.150284, "classifier_accuracy": 0.816137, "classifier_false_alarms": 0.07507}


def _need(key):
    return need(NSLKDD_FILES[key])


def test_focal_loss_reduces_to_cross_entropy_and_down_weights_easy_flows():
    torch.manual_seed(0)
    logits, y = torch.randn(64, 3), torch.randint(0, 3, (64,))
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0, smoothing=0.1),
                               F.cross_entropy(logits, y, label_smoothing=0.1))
    assert focal_loss(logits, y, gamma=2.0) < F.cross_entropy(logits, y)
    alpha = torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(focal_loss(logits, y, 0.0, alpha),
                               (F.cross_entropy(logits, y, reduction="none") * (y == 1)).mean())


def test_class_weights_favour_rare_classes():
    w = class_weights([900, 100, 0])
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == 0 and np.mean(w[:2]) == pytest.approx(1.0)


def test_metrics_and_the_all_attack_baseline():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    prob = np.array([[.9, .1, 0], [.6, .4, 0], [.3, .7, 0], [.2, .8, 0], [.1, .9, 0], [.6, .4, 0], [.1, .2, .7],
                     [.2, .1, .7]])
    m = flow_metrics(y, prob, ["normal", "DoS", "Probe"])
    # binary view: attack = any class but 0; predicted attack for rows 2, 3, 4, 6, 7
    assert m["accuracy"] == pytest.approx(6 / 8) and m["f1_attack"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["all_attack_accuracy"] == pytest.approx(5 / 8) and m["all_attack_f1"] == pytest.approx(10 / 13)
    assert m["accuracy_multiclass"] == pytest.approx(5 / 8) and m["recall_Probe"] == 1.0
    assert fpr_at_tpr(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), 0.99) == 0.5


def test_single_class_file_gives_a_clear_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        m = flow_metrics(np.ones(5, int), np.tile([0.2, 0.8], (5, 1)))
    assert "only one class" in caplog.text and "roc_auc" not in m and m["accuracy"] == 1.0


def test_lightning_fit_writes_usable_zoo_weights(tmp_path):
    _need("train20")
    L.seed_everything(0)
    dm = FlowDataModule(task="binary", max_train_rows=1200, batch_size=128)
    task = FlowClassification("tchnet", model_args=TINY, lr=3e-3)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=3, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert task.model.in_features == 80 and trainer.callback_metrics["val/acc"] > 0.8
    assert task.alpha is not None and task.alpha.shape == (2,)
    task.model.save_pretrained(tmp_path / "zoo")
    model = create_model(str(tmp_path / "zoo"))
    assert model.zoo_config["flow_task"] == "binary" and model.zoo_config["window"] == 1
    df = read_nslkdd(_need("test")).head(300)
    prob = predict_table(model, df)
    assert prob.shape == (300, 2) and np.allclose(prob.sum(1), 1, atol=1e-5)
    trainer.test(task, dm)
    assert "test/mcc" in trainer.callback_metrics


def test_eval_scores_a_user_file_and_refuses_a_foreign_model(tmp_path, capsys):
    test = read_nslkdd(_need("test"))
    path = tmp_path / "attacks_only.txt"
    test[test["label"] != "normal"].head(400).to_csv(path, header=False, index=False)
    assert main(["eval", "tchnet.nslkdd_binary", "--data", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["metrics"]
    assert out["n"] == 400 and out["attack_share"] == 1.0 and "roc_auc" not in out
    with pytest.raises(ValueError, match="carries no flow preprocessing"):
        predict_table(create_model("tchnet", **TINY), test.head(5))


def test_eval_of_an_unlabelled_file_gives_predictions_not_metrics(tmp_path, capsys):
    test = read_nslkdd(_need("test")).head(300)
    path = tmp_path / "unlabelled.txt"
    test[list(NSLKDD_COLUMNS[:41])].to_csv(path, header=False, index=False)
    model = create_model("tchnet.nslkdd_binary", pretrained=True)
    prob = predict_table(model, read_flow_table(path)[0])
    np.testing.assert_array_equal(prob, predict_table(model, test))
    share = pytest.approx(float((prob.argmax(1) == 1).mean()), abs=1e-6)
    assert main(["eval", "tchnet.nslkdd_binary", "--data", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"n": 300.0, "predicted_attack_share": share}
    # a header with difficulty but no label: unlabelled too, the difficulty numbers are never read as labels
    test.drop(columns="label").to_csv(tmp_path / "difficulty.csv", index=False)
    assert evaluate_flows(model, data=str(tmp_path / "difficulty.csv")) == {"n": 300.0, "predicted_attack_share": share}


def test_windowed_model_scores_a_cicflowmeter_frame_as_pandas_reads_it(tmp_path):
    rows = read_nslkdd(_need("test")).head(900)
    rng = np.random.default_rng(0)
    # real flows under CICFlowMeter's own (space-prefixed) names, day-first stamps over midnight 12 -> 13 February
    times = pd.Timestamp("2018-02-12 23:00") + pd.to_timedelta(rng.permutation(900) * 8, unit="s")
    table = pd.DataFrame({" Flow Duration": rows["duration"] * 1_000_000,
                          "Total Length of Fwd Packets": rows["src_bytes"],
                          " Total Length of Bwd Packets": rows["dst_bytes"], " Protocol": rows["protocol_type"],
                          " count": rows["count"], " srv_count": rows["srv_count"],
                          " Source IP": [f"10.0.0.{k}" for k in rng.integers(1, 5, 900)],
                          " Timestamp": times.strftime("%d/%m/%Y %H:%M:%S"), " Label": rows["label"]})
    path = tmp_path / "cic.csv"
    table.to_csv(path, index=False)
    L.seed_everything(0)
    dm = FlowDataModule(train_path=str(path), test_path=str(path), format="cicflowmeter", window=4, batch_size=64,
                        time_format="%d/%m/%Y %H:%M:%S")
    task = FlowClassification("tchnet", model_args=TINY, lr=3e-3)
    L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(task, dm)
    task.model.save_pretrained(tmp_path / "zoo")
    model = create_model(str(tmp_path / "zoo"))
    assert model.zoo_config["window"] == 4 and model.zoo_config["time_format"] == "%d/%m/%Y %H:%M:%S"
    prob = predict_table(model, pd.read_csv(path))  # the user's own read: names keep their leading spaces
    np.testing.assert_allclose(prob, predict_table(model, read_flow_table(path, "cicflowmeter")[0]), atol=1e-6)
    test = dm.datasets["test"]
    with torch.no_grad():
        want = torch.softmax(model.eval()(test.x_num[test.index], test.x_cat[test.index]), -1).numpy()
    np.testing.assert_allclose(prob, want, atol=1e-5)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_shipped_weights(name, capsys):
    _need("test")
    if name.endswith("binary"):
        assert main(["eval", name, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)["metrics"]
    else:
        got = evaluate_flows(create_model(name, pretrained=True))
    for key, value in GOLDEN[name].items():
        assert got[key] == pytest.approx(value, abs=2e-4), key


def test_golden_shipped_weights_with_their_novelty_rule(capsys):
    _need("test"), _need("train20")
    assert main(["eval", "tchnet.nslkdd_binary", "--novelty", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["metrics"]
    for key, value in GOLDEN_NOVELTY.items():
        assert got[key] == pytest.approx(value, abs=2e-4), key
    # the rule ships as config (its reference flows are training rows, re-read from the data directory), not weights
    model = create_model("tchnet.nslkdd_binary", pretrained=True)
    assert model.novelty is None and model.zoo_config["novelty_rule"]["test_metrics"]["accuracy"] == got["accuracy"]
    rebuild_novelty_guard(model)
    assert model.novelty is not None and "test_metrics" in model.zoo_config["novelty_rule"]  # the record is kept
    assert main(["eval", "gateformer.etth1_96", "--novelty"]) == 2
    assert "applies to flow models" in capsys.readouterr().err


def test_finetune_keeps_encodings_and_swaps_the_head(tmp_path):
    _need("train20")
    trainer_args = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    task = FlowClassification("tchnet.nslkdd_binary", pretrained=True, lr=1e-4)
    dm = FlowDataModule(task="5class", max_train_rows=800, batch_size=64, preprocessor_from="tchnet.nslkdd_binary")
    L.Trainer(**trainer_args).fit(task, dm)
    assert task.model.num_classes == 5 and task.model.head.fc.out_features == 5
    assert dm.pre.categorical["service"][:3] == ["<unknown>", "IRC", "X11"]  # the pretrained encodings
    # without the pretrained encodings the category vocabulary of 800 rows does not fit the embeddings
    task = FlowClassification("tchnet.nslkdd_binary", pretrained=True)
    with pytest.raises(ValueError, match="preprocessor_from"):
        L.Trainer(**trainer_args).fit(task, FlowDataModule(max_train_rows=800, batch_size=64))


def test_fit_novelty_guard_on_real_flows_and_its_refusals(tmp_path):
    _need("train20")
    dm = FlowDataModule(task="binary", max_train_rows=1500, batch_size=128)
    dm.setup("fit")
    model = create_model("tchnet", **TINY, **dm.model_args())
    model.zoo_config.update(dm.zoo_metadata())
    guard = fit_novelty_guard(model, dm, false_alarm_rate=0.2, k=3)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert model.novelty is guard and len(guard.ref_num) == int((train.y == 0).sum())
    normal = val.y == 0
    flagged = guard.score(val.x_num[val.index[:, -1]][normal], val.x_cat[val.index[:, -1]][normal]) > guard.threshold
    assert abs(float(flagged.double().mean()) - 0.2) < 0.02  # the calibration normals flag at the chosen rate
    with torch.no_grad():  # an untrained classifier that calls every flow normal: what is flagged is the guard's
        model.head.fc.bias.copy_(torch.tensor([20.0, -20.0]))
    test = read_nslkdd(_need("test")).head(400)
    path = tmp_path / "flows.txt"
    test.to_csv(path, header=False, index=False)
    got = evaluate_flows(model, data=str(path))
    guard.enabled = False
    plain = predict_table(model, test)
    guard.enabled = True
    guarded = predict_table(model, test)
    y = (test["label"] != "normal").to_numpy().astype(int)
    assert got["accuracy"] == pytest.approx((guarded.argmax(1) == y).mean(), abs=1e-6)
    assert got["classifier_accuracy"] == pytest.approx((plain.argmax(1) == y).mean(), abs=1e-6)
    assert got["novelty_flagged"] == pytest.approx(((guarded.argmax(1) == 1) & (plain.argmax(1) == 0)).mean(), abs=1e-6)
    assert (plain.argmax(1) == 0).all() and got["classifier_accuracy"] == pytest.approx((y == 0).mean(), abs=1e-6)
    assert got["novelty_flagged"] > 0.3 and got["accuracy"] > got["classifier_accuracy"]
    # the model's category encodings with a scaler refitted on other rows would put the flows on another scale
    model.save_pretrained(tmp_path / "m")
    other = FlowDataModule(task="binary", max_train_rows=1500, seed=1, preprocessor_from=str(tmp_path / "m"))
    with pytest.raises(ValueError, match="preprocessing .* differs"):
        fit_novelty_guard(model, other)
    with pytest.raises(ValueError, match="preprocessor_from"):
        fit_novelty_guard(create_model("tchnet", in_features=5, **TINY), dm)


def test_rebuild_novelty_guard_from_the_recorded_rule(tmp_path, monkeypatch):
    _need("train20")
    dm = FlowDataModule(task="binary", max_train_rows=1500)
    dm.setup("fit")
    model = create_model("tchnet", **TINY, **dm.model_args())
    model.zoo_config.update(dm.zoo_metadata())
    with pytest.raises(ValueError, match="records no novelty rule"):
        rebuild_novelty_guard(model)
    guard = fit_novelty_guard(model, dm, false_alarm_rate=0.2, k=3)
    rule = model.zoo_config["novelty_rule"]
    assert rule["k"] == 3 and rule["false_alarm_rate"] == 0.2 and rule["reference"]["max_train_rows"] == 1500
    assert rule["reference"]["train_path"] == "nsl_kdd/KDDTrain+_20Percent.txt"  # found again in any data directory
    assert rule["reference_flows"] == len(guard.ref_num) and rule["threshold"] == float(guard.threshold)
    model.attach_novelty(None)  # what ships: the rule, without the reference rows
    model.save_pretrained(tmp_path / "w")
    loaded = create_model(str(tmp_path / "w"))
    assert loaded.novelty is None
    again = rebuild_novelty_guard(loaded)
    assert loaded.novelty is again and float(again.threshold) == rule["threshold"]
    torch.testing.assert_close(again.ref_num, guard.ref_num)
    loaded.attach_novelty(None)
    loaded.zoo_config["novelty_rule"]["threshold"] *= 1.01
    with pytest.raises(ValueError, match="differs from the recorded"):
        rebuild_novelty_guard(loaded)
    assert loaded.novelty is None
    # a user's table is recorded by its absolute path, so the rule rebuilds from another working directory
    lines = _need("train20").read_text().splitlines()[:1200]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    mine = FlowDataModule(train_path="mine.csv", preprocessor_from=str(tmp_path / "w"))
    mine.setup("fit")
    user = create_model(str(tmp_path / "w"))
    user.zoo_config.update(mine.zoo_metadata())
    fit_novelty_guard(user, mine)
    assert user.zoo_config["novelty_rule"]["reference"]["train_path"] == str(tmp_path / "mine.csv")
    monkeypatch.chdir("/")
    threshold = float(user.novelty.threshold)
    user.attach_novelty(None)
    assert float(rebuild_novelty_guard(user).threshold) == threshold


def test_novelty_on_a_user_file_reads_no_test_file(tmp_path, monkeypatch):
    train20, test = _need("train20"), _need("test")
    dm = FlowDataModule(task="binary", max_train_rows=1500)
    dm.setup("fit")
    model = create_model("tchnet", **TINY, **dm.model_args())
    model.zoo_config.update(dm.zoo_metadata())
    threshold = float(fit_novelty_guard(model, dm, false_alarm_rate=0.2, k=3).threshold)
    model.attach_novelty(None)
    model.save_pretrained(tmp_path / "w")
    mine = tmp_path / "mine.txt"
    read_nslkdd(test).head(300).to_csv(mine, header=False, index=False)
    # a data directory with the training file only, offline: KDDTest+ can be neither found nor downloaded
    (tmp_path / "data" / "nsl_kdd").mkdir(parents=True)
    (tmp_path / "data" / "nsl_kdd" / train20.name).symlink_to(train20)
    monkeypatch.setenv("GATEDZOO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GATEDZOO_OFFLINE", "1")
    assert not NSLKDD_FILES["test"].path().exists()
    loaded = create_model(str(tmp_path / "w"))
    assert float(rebuild_novelty_guard(loaded).threshold) == threshold
    loaded.attach_novelty(None)
    got = evaluate_flows(loaded, data=str(mine), novelty=True)
    assert loaded.novelty is not None and got["n"] == 300 and "novelty_flagged" in got
    only = FlowDataModule(task="binary", max_train_rows=1500, load_test=False)
    only.setup("fit")
    assert set(only.datasets) == {"train", "val"}
    with pytest.raises(ValueError, match="load_test=False"):
        only.test_dataloader()
