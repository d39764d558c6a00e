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
    for cmd in ("fit", "validate", "test", "predict", "list", "info", "eval", "tour"):
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
    for name in (str(out), f"local-dir:{out}", str(out / "model.safetensors")):  # info reads a folder like eval
        assert main(["info", name, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["architecture"] == "toy_attention_classifier" and info["metrics"] == cfg["metrics"]
        assert info["parameters"] > 1000 and info["usage"][0] == f"gatedzoo eval {out} --json"
    assert main(["info", str(tmp_path / "no_such_folder" / "model.safetensors")]) == 2


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


def _manifest() -> dict:
    from gatedzoo.zoo.registry import MANIFEST

    return json.loads(MANIFEST.read_text())


def test_list_pretrained_shows_what_a_user_chooses_by(capsys):
    assert main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["weights", "task", "data", "test", "metrics", "params", "size", "licence", "paper"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(_manifest())  # every shipped weight, one row each
    for name, entry in _manifest().items():
        assert f"{entry['size_bytes'] / 1e6:.1f} MB" in rows[name] and "arXiv" in rows[name], rows[name]
        assert "seed=" not in rows[name]  # bookkeeping entries never pass for metrics
    # the documented test metrics lead, formatted from the manifest
    assert "test/mse=0.3813, test/mae=0.3977" in rows["gateformer.etth1_96"]  # 4 significant digits: 0.38128
    assert "test_accuracy=0.8162, test_mcc=0.6557" in rows["tchnet.nslkdd_binary"]
    assert "test_accuracy_multiclass=0.8067" in rows["tchnet.nslkdd_5class"]
    # parameters are counted on each tag's own configuration, not the architecture's defaults
    assert rows["gateformer.etth1_96"].split()[-7] != rows["gateformer.etth1_336"].split()[-7]


def test_list_pretrained_filters_by_architecture(capsys):
    assert main(["list", "--pretrained", "tchnet"]) == 0
    out = capsys.readouterr().out
    assert "tchnet.nslkdd_binary" in out and "tchnet.nslkdd_5class" in out and "gateformer" not in out
    assert main(["list", "--pretrained", "nothing_like_this"]) == 0
    assert "no pretrained weights match" in capsys.readouterr().out


def test_info_of_a_tag_gives_task_data_size_licence_paper_recipe_sha(capsys):
    name = "tchnet.nslkdd_binary"
    entry = _manifest()[name]
    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "flow_classification" and info["data"] == entry["data"]
    assert info["sha256"] == entry["sha256"] and info["size_mb"] == round(entry["size_bytes"] / 1e6, 2)
    assert (ROOT / info["recipe"]).is_file() and info["license"].startswith("Apache-2.0") and "arXiv" in info["paper"]
    assert list(info["metrics"])[:2] == ["test_accuracy", "test_mcc"]
    # float32 weights: 4 bytes a parameter, plus buffers and config.json (a few %)
    assert 0.9 < info["parameters"] * 4 / entry["size_bytes"] < 1.05
    assert info["usage"][0] == f"gatedzoo eval {name} --json"
    # the validated novelty rule its config records: how to apply it, and its KDDTest+ figures
    assert info["usage"][-1] == f"gatedzoo eval {name} --novelty --json"
    assert info["novelty_rule"]["k"] == 5 and info["novelty_rule"]["false_alarm_rate"] == 0.1
    assert info["novelty_rule"]["test_accuracy"] == pytest.approx(0.91266, abs=1e-6)


def test_info_of_an_architecture_lists_its_weights_and_text_output(capsys):
    assert main(["info", "gateformer", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pretrained"] == sorted(n for n in _manifest() if n.startswith("gateformer."))
    assert info["parameters"] > 0 and "sha256" not in info
    assert main(["info", "gateformer.etth1_96"]) == 0
    text = capsys.readouterr().out
    sha = _manifest()["gateformer.etth1_96"]["sha256"]["model.safetensors"]
    assert f"model.safetensors: {sha}" in text and "recipes/gateformer/etth1_96_cycle_ema.yaml" in text


def test_info_of_an_unknown_name_is_a_clear_error(capsys):
    assert main(["info", "gatefromer.etth1_96"]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'gatefromer'" in err and "gatedzoo list" in err
