"""Every recipe parses, names its launch command, and instantiates its trainer, model and data module."""

from pathlib import Path

import pytest

from gatedzoo.cli import run_lightning

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES, "recipes/ holds no YAML recipe"


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_instantiates(path, monkeypatch, tmp_path):
    rel = path.relative_to(ROOT)
    head = path.read_text().splitlines()[0]
    assert head.startswith("#") and f"gatedzoo fit -c {rel}" in path.read_text(), \
        f"{rel} must start with a comment giving its launch command 'gatedzoo fit -c {rel}'"
    monkeypatch.chdir(ROOT)
    cli = run_lightning(["fit", "-c", str(rel), "--trainer.logger", "false", "--trainer.default_root_dir",
                         str(tmp_path)], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_writes_under_runs(path):
    """A recipe launched from the checkout must not drop config.yaml or checkpoints/ into the working directory."""
    import yaml

    trainer = yaml.safe_load(path.read_text()).get("trainer", {})
    root = str(trainer.get("default_root_dir", ""))
    assert root.startswith("runs/"), f"{path.name}: set trainer.default_root_dir to runs/<family>/<name>"
