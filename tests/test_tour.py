"""The zoo tour's machinery: one real family end to end, skipped and FAILED rows, the exit code, the CLI.

The full four-family tour runs in the docs test (the README's `make demo` block).
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from gatedzoo import tour
from gatedzoo.cli import main as cli_main


def _console(tmp_path: Path) -> Console:
    return Console(file=open(tmp_path / "console.txt", "w"), width=160)  # noqa: SIM115  (closed with the test)


def test_gateformer_family_end_to_end(tmp_path, monkeypatch):
    """Train, evaluate, load the shipped weights, fine-tune on an own CSV: four real rows and a summary."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "tour"
    rows = tour.run_tour(["gateformer"], out=out, console=_console(tmp_path))
    assert [r.step for r in rows] == list(tour.STEPS)
    by_step = {r.step: r for r in rows}
    for step in ("train", "eval", "fine-tune"):  # offline data only: these always run
        assert by_step[step].status == tour.OK, by_step[step].note
    # a trained forecaster beats predicting the mean (MSE 1 on the normalised scale) on vic_elec's test split
    assert 0 < by_step["eval"].metrics["mse"] < 1.0
    assert by_step["fine-tune"].metrics["windows"] > 0  # windows of the own CSV's test split
    zoo_row = by_step["zoo weights"]
    from gatedzoo.data.paths import data_dir

    if (data_dir() / "ett/ETTh1.csv").exists():
        # the shipped weights reproduce the manifest's test MSE through the evaluator of `gatedzoo eval`
        from gatedzoo.zoo.registry import MANIFEST

        want = json.loads(MANIFEST.read_text())["gateformer.etth1_96"]["metrics"]["test/mse"]
        assert zoo_row.status == tour.OK and zoo_row.metrics["mse"] == pytest.approx(want, rel=1e-4)
    else:
        assert zoo_row.status == tour.SKIPPED and "ett/ETTh1.csv" in zoo_row.note
    # what ran is on disk: rerunnable recipes writing under the tour folder, the weights, the summary
    ran = yaml.safe_load((out / "gateformer/train/recipe.yaml").read_text())
    assert ran["trainer"]["default_root_dir"] == str(out / "gateformer/train")
    assert (out / "gateformer/train/zoo/model.safetensors").exists()
    tuned = json.loads((out / "gateformer/finetune/zoo/config.json").read_text())
    assert tuned["model_args"]["n_vars"] == 2 and tuned["source_data"]["dataset"].endswith("my_series.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary] == list(tour.STEPS)
    printed = (tmp_path / "console.txt").read_text()
    assert "gatedzoo tour" in printed and "vic_elec test split" in printed
    assert "HF_HUB_OFFLINE" not in os.environ  # set only while the tour runs


def test_missing_optional_data_skips_with_instructions_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GATEDZOO_DATA", str(tmp_path / "empty"))
    assert cli_main(["tour", "--families", "tchnet", "--out", str(tmp_path / "tour")]) == 0
    rows = json.loads((tmp_path / "tour/summary.json").read_text())
    assert [r["status"] for r in rows] == [tour.SKIPPED] * 4
    assert all("nsl_kdd/KDDTrain+_20Percent.txt" in r["note"] and "GATEDZOO_DATA" in r["note"] for r in rows)
    assert "skipped for want of optional data" in capsys.readouterr().out


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path):
    t = tour.Tour(tmp_path, _console(tmp_path))

    def broken():
        raise ValueError("the data has 3 variables but the weights expect 7")

    t.step("fam", "train", "d", broken)
    t.step("fam", "eval", "d", lambda: t.rows[0].metrics["never"])
    t.step("other", "eval", "d", lambda: ({"acc": 0.5}, ("acc",)))
    first, second, third = t.rows
    assert first.status == tour.FAILED and "ValueError: the data has 3 variables" in first.note
    assert second.status == tour.FAILED and "KeyError" in second.note
    assert third.status == tour.OK and third.value == "0.5000"
    assert "Traceback" in (tmp_path / "fam/log.txt").read_text()
    table = t.table()
    assert table.caption.startswith("[1] ValueError") and "[2] KeyError" in table.caption


def test_unknown_family_or_foreign_out_folder_is_refused_before_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown family \\['gatefromer'\\]; choose from gateformer"):
        tour.run_tour(["gatefromer"], out=tmp_path / "tour")
    assert not (tmp_path / "tour").exists()
    assert tour.parse_families(["scfm,tchnet", "scfm"]) == ["scfm", "tchnet"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("not the tour's")
    assert cli_main(["tour", "--families", "tchnet", "--out", str(tmp_path / "mine")]) == 2
    assert "not written by gatedzoo tour" in capsys.readouterr().err
    assert (tmp_path / "mine/notes.txt").exists()
