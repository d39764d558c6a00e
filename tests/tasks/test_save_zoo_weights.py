"""SaveZooWeights: the metrics written beside the weights describe those weights, not the last epoch's.

Real training on scikit-learn's digits; the checkpoint monitor is set to keep the *worst* validation accuracy
(mode="min"), so the kept weights are an early epoch's while the last epoch's metrics are better.
"""

import json

import lightning as L
import pytest
from toy import DigitsDataModule, evaluate_toy

from gatedzoo.tasks import Classification, SaveZooWeights
from gatedzoo.zoo import create_model


def _fit(tmp_path, mode):
    L.seed_everything(0)
    task = Classification(arch="toy_attention_classifier", lr=3e-3, weight_decay=0.0)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode=mode)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[ckpt, SaveZooWeights(dirpath=str(tmp_path / "zoo"))])
    trainer.fit(task, datamodule=DigitsDataModule())
    cfg = json.loads((tmp_path / "zoo" / "config.json").read_text())
    return cfg["metrics"], evaluate_toy(create_model(str(tmp_path / "zoo")))["accuracy"], trainer


def test_metrics_of_an_earlier_best_checkpoint_are_its_own(tmp_path):
    metrics, acc, trainer = _fit(tmp_path, "min")
    assert trainer.callback_metrics["val/acc"] > metrics["val/acc"] + 0.05  # the last epoch was better: not kept
    assert metrics == {"val/acc": pytest.approx(acc, abs=1e-6)}  # only the kept checkpoint's own score


def test_metrics_of_a_best_last_epoch_are_all_kept(tmp_path):
    metrics, acc, _ = _fit(tmp_path, "max")
    assert metrics["val/acc"] == pytest.approx(acc, abs=1e-6) and {"val/loss", "train/loss"} <= set(metrics)


def test_a_checkpoint_restores_the_models_zoo_config(tmp_path):
    class Named(DigitsDataModule):
        def zoo_metadata(self):
            return {**super().zoo_metadata(), "label_names": [f"digit {i}" for i in range(10)]}

    L.seed_everything(0)
    task = Classification(arch="toy_attention_classifier", lr=3e-3, weight_decay=0.0)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ckpt])
    trainer.fit(task, datamodule=Named())
    restored = Classification.load_from_checkpoint(ckpt.best_model_path)
    assert restored.model.zoo_config["label_names"][3] == "digit 3"
    assert restored.model.zoo_config["preprocessing"] == {"scale": 1 / 16.0}


def test_training_moves_the_source_scores_and_provenance_aside(tmp_path):
    L.seed_everything(0)
    src = create_model("toy_attention_classifier")
    src.save_pretrained(tmp_path / "src", metrics={"val/acc": 0.9}, recipe="recipes/x.yaml", training_data="digits",
                        hparams={"batch_size": 512})
    task = Classification(arch=str(tmp_path / "src"), lr=3e-3, weight_decay=0.0)
    assert task.model.zoo_config["metrics"] == {"val/acc": 0.9}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[SaveZooWeights(dirpath=str(tmp_path / "out"))])
    trainer.fit(task, datamodule=DigitsDataModule())
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "recipe" not in cfg and "training_data" in cfg  # the data module's own description, not the source's
    assert cfg["training_data"] == "sklearn digits[:1400]" and cfg["metrics"]["val/acc"] != 0.9
    assert "hparams" not in cfg  # the source run's batch size and epochs did not make these weights
    assert cfg["fine_tuned_from"] == {"metrics": {"val/acc": 0.9}, "recipe": "recipes/x.yaml",
                                      "training_data": "digits", "hparams": {"batch_size": 512}}
