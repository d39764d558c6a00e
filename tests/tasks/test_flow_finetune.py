"""Fine-tuned flow weights describe themselves, not the weights they started from (their novelty guard, head size and
rule), and ``gatedzoo eval`` refuses a ``--split`` it cannot honour, on real NSL-KDD rows."""

import json
import logging

import lightning as L
import pytest
import torch
from datafiles import need

from gatedzoo import create_model
from gatedzoo.cli import main
from gatedzoo.data.flows import NSLKDD_FILES, FlowDataModule, FlowPreprocessor, read_nslkdd
from gatedzoo.layers import KNNNoveltyGuard
from gatedzoo.tasks import SaveZooWeights
from gatedzoo.tasks.flows import FlowClassification, evaluate_flows


def guarded_weights(folder, flows):
    """The shipped binary weights with a novelty guard attached (reference: normal ``flows`` through the weights'
    own preprocessing), saved to ``folder``: what a user keeps after fitting a guard."""
    model = create_model("tchnet.nslkdd_binary", pretrained=True)
    pre = FlowPreprocessor.from_state(model.zoo_config["preprocessing"])
    x, c, _ = pre.transform(flows[flows["label"] == "normal"].head(400))
    x, c = torch.from_numpy(x), torch.from_numpy(c)
    cards = [e.num_embeddings for e in model.cat_embed]
    model.attach_novelty(KNNNoveltyGuard.fit(x[:300], c[:300], x[300:], c[300:], cards, k=5))
    model.save_pretrained(folder)
    return folder


def test_finetuning_drops_the_loaded_guard_and_records_the_new_head(tmp_path, caplog, capsys):
    flows = read_nslkdd(need(NSLKDD_FILES["test"])).head(3000)
    source = guarded_weights(tmp_path / "guarded", flows)
    assert create_model(str(source)).novelty is not None
    flows.iloc[:1500].to_csv(tmp_path / "mine.txt", header=False, index=False)
    flows.iloc[1500:].to_csv(tmp_path / "mine_test.txt", header=False, index=False)
    L.seed_everything(0)
    task = FlowClassification(str(source), pretrained=True, lr=1e-4)
    dm = FlowDataModule(train_path=str(tmp_path / "mine.txt"), task="5class", batch_size=64, load_test=False,
                        preprocessor_from=str(source))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[SaveZooWeights(dirpath=str(tmp_path / "tuned"))])
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        trainer.fit(task, dm)
    assert "novelty guard is dropped" in caplog.text
    cfg = json.loads((tmp_path / "tuned" / "config.json").read_text())
    # the constructor call the folder records builds the trained model: 5 classes, no guard of the old scale
    assert cfg["model_args"]["num_classes"] == cfg["init_args"]["num_classes"] == 5
    assert "novelty" not in cfg["model_args"] and cfg["init_args"]["novelty"] is None
    assert "novelty_rule" not in cfg and "novelty_rule" in cfg["fine_tuned_from"]
    tuned = create_model(str(tmp_path / "tuned"))
    assert tuned.novelty is None and tuned.head.fc.out_features == 5
    data = str(tmp_path / "mine_test.txt")
    with pytest.raises(ValueError, match="records no novelty rule.*fit_novelty_guard"):
        evaluate_flows(tuned, data=data, novelty=True)
    assert main(["eval", str(tmp_path / "tuned"), "--novelty", "--data", data, "--json"]) == 2
    assert "records no novelty rule" in capsys.readouterr().err


def test_eval_refuses_a_split_of_a_flow_table(tmp_path, capsys):
    path = tmp_path / "flows.txt"
    read_nslkdd(need(NSLKDD_FILES["test"])).head(200).to_csv(path, header=False, index=False)
    model = create_model("tchnet.nslkdd_binary", pretrained=True)
    for split in ("val", "train"):
        with pytest.raises(ValueError, match=f"split='{split}': .*never split; leave --split out"):
            evaluate_flows(model, data=str(path), split=split)
    assert evaluate_flows(model, data=str(path), split="test")["n"] == 200
    assert main(["eval", "tchnet.nslkdd_binary", "--data", str(path), "--split", "val", "--json"]) == 2
    assert "split='val'" in capsys.readouterr().err
