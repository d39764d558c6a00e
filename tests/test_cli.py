"""The `gatedzoo` command: help, list, info, eval, ship and a real `fit` of a recipe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import toy  # noqa: F401  (registers the toy architecture, data module and evaluator)

from gatedzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY_RECIPE = """\
# Launch: gatedzoo fit -c toy.yaml
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  callbacks:
    - class_path: gatedzoo.tasks.SaveZooWeights
      init_args: {dirpath: %s}
model:
  class_path: gatedzoo.tasks.Classification
  init_args: {arch: toy_attention_classifier, lr: 0.01}
data:
  class_path: toy.DigitsDataModule
"""


def test_console_script_help_lists_every_command():
    exe = Path(sys.executable).parent / "gatedzoo"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("fit", "validate", "test", "predict", "list", "info", "eval"):
        assert cmd in out


def test_list_and_info(capsys):
    assert main(["list", "toy_*"]) == 0
    assert "toy_attention_classifier" in capsys.readouterr().out
    assert main(["info", "toy_attention_classifier", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "toy_classification" and info["parameters"] > 1000


def test_fit_then_eval_the_trained_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "zoo"
    (tmp_path / "toy.yaml").write_text(TOY_RECIPE % out)
    main(["fit", "-c", "toy.yaml", "--trainer.max_epochs", "3"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["metrics"]["val/acc"] > 0.5  # three epochs on real digits learn something
    assert cfg["label_names"][0] == "0" and cfg["task"] == "toy_classification"
    capsys.readouterr()
    assert main(["eval", f"local-dir:{out}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["metrics"]["accuracy"] - cfg["metrics"]["val/acc"]) < 1e-6


def test_print_config_resolves_the_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(TOY_RECIPE % (tmp_path / "zoo"))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", "toy.yaml", "--model.init_args.lr", "0.5", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "lr: 0.5" in printed and "toy_attention_classifier" in printed


def test_eval_without_evaluator_is_a_clear_error(tmp_path, capsys):
    from gatedzoo.zoo import create_model

    model = create_model("toy_attention_classifier")
    model.zoo_config["task"] = "unknown_task"
    model.save_pretrained(tmp_path / "m")
    assert main(["eval", str(tmp_path / "m")]) == 2
    assert "no evaluator for task 'unknown_task'" in capsys.readouterr().err


def test_ship_copies_weights_and_records_checksums(tmp_path, monkeypatch):
    from gatedzoo.zoo import create_model, registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(registry, "MANIFEST", tmp_path / "weights" / "manifest.json")
    create_model("toy_attention_classifier").save_pretrained(tmp_path / "run")
    assert main(["ship", str(tmp_path / "run"), "toy_attention_classifier.test", "--data", "digits"]) == 0
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    entry = manifest["toy_attention_classifier.test"]
    assert set(entry["sha256"]) == {"config.json", "model.safetensors"} and entry["data"] == "digits"


def test_module_entry_point_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    out = subprocess.run([sys.executable, "-m", "gatedzoo.cli", "list"], capture_output=True, text=True, env=env,
                         check=True)
    assert "architecture" in out.stdout or "no architectures" in out.stdout


def test_dotted_model_args_override_is_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(TOY_RECIPE % (tmp_path / "zoo"))
    from gatedzoo.cli import run_lightning

    cli = run_lightning(["fit", "-c", "toy.yaml", "--model.init_args.model_args.num_classes", "3"], run=False)
    assert cli.model.model.head.out_features == 3
