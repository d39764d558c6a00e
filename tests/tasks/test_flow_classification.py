"""Flow-classification task: loss, metrics, a real Lightning fit, ``gatedzoo eval`` and the golden shipped numbers."""

import json
import logging

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datafiles import need

from gatedzoo import create_model
from gatedzoo.cli import main
from gatedzoo.data.flows import NSLKDD_FILES, FlowDataModule, read_nslkdd
from gatedzoo.tasks.flows import (
    FlowClassification,
    class_weights,
    evaluate_flows,
    flow_metrics,
    focal_loss,
    fpr_at_tpr,
    predict_table,
)

TINY = dict(conv_channels=[8, 16, 16], gru=8, gru2=8, conv2=8, tf_dim=16, tf_heads=2, tf_ffn=32, merge_heads=2,
            fusion_dim=16, head_hidden=32, stat_hidden=16, stat_dim=8, ctx_dim=4, raw_dim=8)

#: KDDTest+ numbers of the shipped weights as `gatedzoo eval NAME --json` prints them on CPU (docs/models/tchnet.md)
GOLDEN = {
    "tchnet.nslkdd_binary": {"accuracy": 0.816137, "mcc": 0.655674, "roc_auc": 0.936082},
    "tchnet.nslkdd_5class": {"accuracy_multiclass": 0.806689, "accuracy": 0.827049, "mcc": 0.673229},
}


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
