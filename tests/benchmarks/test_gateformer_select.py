"""benchmarks/gateformer_select.py: the grid, the validation-only selection rule, the scheduler and the summaries.

No training here: a stand-in pool "finishes" cells instantly with chosen metrics, so the scheduling logic (which
cell is selected, what stage 2 re-trains, what a spent budget skips) is checked in milliseconds. The training
path itself is the ``--run-cell`` child of ``gateformer_tslib.py``, exercised by the script's ``--tiny`` smoke run.
"""

import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gateformer_select as gs  # noqa: E402
import gateformer_tslib as gt  # noqa: E402


@pytest.mark.parametrize("dataset", ["etth1", "exchange"])
@pytest.mark.parametrize("horizon", gs.HORIZONS)
def test_grid_brackets_the_paper_setting(dataset, horizon):
    cells = gs.grid(dataset, horizon)
    base = gs.recipe_settings(dataset, horizon)
    assert cells[0] == ("paper", {})
    assert len({label for label, _ in cells}) == len(cells)
    lrs = sorted(o["lr"] / base["lr"] for _, o in cells if "lr" in o)
    assert lrs == pytest.approx([2.0] if (dataset, horizon) == ("etth1", 96) else [0.5] if dataset == "etth1"
                                else [0.5, 2.0])
    assert ("batch 32", {"batch_size": 32}) in cells and base["batch_size"] == 8
    for _, over in cells:  # every spec parses back to the same overrides (what the child process will apply)
        name, parsed, _ = gt.parse_cell(gs.spec_of(dataset, horizon, over, 7))
        assert name == f"{dataset}_{horizon}" and parsed.pop("seed") == 7
        assert {k: float(v) if k == "lr" else v for k, v in parsed.items()} == pytest.approx(over)


def test_select_is_argmin_validation_and_skips_missing():
    cands = [{"label": "paper", "val_mse": 0.70}, {"label": "a", "val_mse": None}, {"label": "b", "val_mse": 0.69},
             {"label": "c", "val_mse": 0.69}]
    pick = gs.select(cands)
    assert pick["label"] == "b" and pick["val_mse"] == 0.69  # tie with "c": the earlier grid cell wins
    assert [lbl for lbl, _ in pick["ranking"]] == ["b", "c", "paper"]
    assert gs.select([{"label": "x", "val_mse": None}]) is None


class FakePool:
    """Stands in for ``Pool``: a launched cell finishes at the next ``reap`` with metrics from ``metrics(cell)``."""

    def __init__(self, jobs, metrics):
        self.jobs, self.metrics, self.running, self.launched = jobs, metrics, [], []

    def launch(self, cell, max_minutes):
        cell.max_minutes, cell.status = max_minutes, "running"
        self.running.append((cell, None))
        self.launched.append(cell)

    def reap(self):
        done = [c for c, _ in self.running]
        for c in done:
            val, test = self.metrics(c)
            c.result, c.status = {"best_val_mse": val, "mse": test, "mae": test / 2, "train_seconds": 1.0}, "done"
        self.running = []
        return done

    def kill_all(self):
        self.running = []
        return []


def _stage1(datasets=("etth1",), horizons=(96,)):
    return [gs.Cell(ds, h, label, over, gs.STAGE1_SEED, 1)
            for ds in datasets for h in horizons for label, over in gs.grid(ds, h)]


def test_schedule_selects_on_validation_and_retrains_with_fresh_seeds():
    # test MSE is made anti-correlated with validation MSE: a rule that peeked at test would pick "paper"
    val = {"paper": 0.70, "dropout 0.2": 0.72, "dropout 0.3": 0.69, "lr x2": 0.68, "batch 32": 0.75}
    pool = FakePool(4, lambda c: (val[c.label] + 0.001 * c.seed, 1.5 - val[c.label]))
    cells, sel = gs.schedule(_stage1(), pool, seeds=[0, 1, 2], controls=True, t_end=time.time() + 60,
                             stage2_reserve_s=0, cap_minutes=1.0, min_train_s=0)
    assert sel["etth1_96"]["label"] == "lr x2"
    stage2 = [c for c in cells if c.stage == 2]
    assert [c.seed for c in stage2] == [0, 1, 2] and all(c.label == "lr x2" for c in stage2)
    assert all(c.overrides == {"lr": pytest.approx(2e-4)} for c in stage2)
    assert sorted(c.seed for c in cells if c.stage == 3) == [0, 1, 2]  # --controls: the paper setting, same seeds
    assert all(c.status == "done" for c in cells)


def test_schedule_skips_cells_the_budget_cannot_fit():
    pool = FakePool(2, lambda c: (0.7, 0.4))
    # the deadline leaves less than the child overhead: nothing may be launched, the study still returns
    cells, sel = gs.schedule(_stage1(), pool, seeds=[0], controls=False, t_end=time.time() + 5,
                             stage2_reserve_s=0, cap_minutes=1.0, min_train_s=10)
    assert pool.launched == [] and {c.status for c in cells} == {"not run (budget)"}
    assert sel == {"etth1_96": None}


def test_summarise_averages_per_seed_over_the_four_horizons():
    cells = []
    for i, h in enumerate(gs.HORIZONS):
        for s in (0, 1):
            c = gs.Cell("exchange", h, "paper", {}, s, 2, status="done")
            c.result = {"mse": 0.1 * (i + 1) + 0.01 * s, "mae": 0.2, "best_val_mse": 0.3}
            cells.append(c)
    out = gs.summarise(cells, {}, [0, 1])
    avg = out["averages"]["exchange_stage2"]
    assert avg["per_seed"][0]["test_mse"] == pytest.approx(0.25)
    assert avg["per_seed"][1]["test_mse"] == pytest.approx(0.26)
    assert avg["test_mse"]["mean"] == pytest.approx(0.255)
    assert avg["test_mse"]["sd"] == pytest.approx(statistics.stdev([0.25, 0.26]))
    assert out["groups"]["exchange_96"]["stage2"]["test_mse"]["n"] == 2
    md = gs.markdown([c.row() for c in cells], {}, out, [0, 1])
    assert "0.255 ± 0.007" in md and "### etth1" not in md
