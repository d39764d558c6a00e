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


def test_base_overrides_ride_on_every_cell_and_on_the_controls():
    assert gs.parse_base("cycle_len=24,dropout=0.2") == {"cycle_len": 24, "dropout": 0.2} and gs.parse_base("") == {}
    with pytest.raises(SystemExit, match="not key=value"):
        gs.parse_base("cycle_len")
    common = {"cycle_len": 24}
    stage1 = [gs.Cell("etth1", 96, label, over, gs.STAGE1_SEED, 1) for label, over in gs.grid("etth1", 96, common)]
    assert stage1[0].overrides == common and all(c.overrides["cycle_len"] == 24 for c in stage1)
    assert stage1[1].spec == "etth1_96+cycle_len=24+dropout=0.2+seed=2021"
    val = {"paper": 0.70, "dropout 0.2": 0.72, "dropout 0.3": 0.69, "lr x2": 0.68, "batch 32": 0.75}
    pool = FakePool(4, lambda c: (val[c.label], 0.4))
    cells, sel = gs.schedule(stage1, pool, seeds=[0, 1], controls=True, t_end=time.time() + 60,
                             stage2_reserve_s=0, cap_minutes=1.0, min_train_s=0)
    assert sel["etth1_96"]["label"] == "lr x2"
    # the fresh seeds of the pick and the controls (the grid's own "paper" cell) keep the common overrides
    assert all(c.overrides["cycle_len"] == 24 for c in cells if c.stage in (2, 3))
    assert [c.overrides for c in cells if c.stage == 3] == [common, common]


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


# ---- the loss study (--study loss) ----


class Clock:
    """A virtual clock standing in for the ``time`` module inside the script: ``sleep`` advances it instantly."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    @staticmethod
    def strftime(fmt, *args):
        return time.strftime(fmt, *args)


class ClockPool:
    """Stands in for ``Pool`` on a ``Clock``: a cell runs ``min(train_s, its max_time) + tail_s`` virtual seconds.

    ``metrics(cell) -> (val_mse, test_mse)``; ``train_s(cell)`` and ``tail_s(cell)`` (start-up and test, outside
    Lightning's ``max_time``; a large tail is a child that hangs) default to 40 and 0 seconds.
    """

    def __init__(self, clock, jobs, metrics, train_s=lambda c: 40.0, tail_s=lambda c: 0.0):
        self.clock, self.jobs, self.metrics, self.train_s, self.tail_s = clock, jobs, metrics, train_s, tail_s
        self.running, self.launched = [], []

    def launch(self, cell, max_minutes):
        cell.max_minutes, cell.status = max_minutes, "running"
        capped = self.train_s(cell) > max_minutes * 60
        end = self.clock.now + min(self.train_s(cell), max_minutes * 60) + self.tail_s(cell)
        self.running.append((cell, end, capped))
        self.launched.append(cell)

    def reap(self):
        done = [(c, capped) for c, end, capped in self.running if end <= self.clock.now]
        self.running = [r for r in self.running if r[1] > self.clock.now]
        for c, capped in done:
            val, test = self.metrics(c)
            c.result = {"best_val_mse": val, "mse": test, "mae": test / 2, "train_seconds": 1.0, "time_capped": capped}
            c.status = "done"
        return [c for c, _ in done]

    def kill_all(self):
        killed = [c for c, _, _ in self.running]
        for c in killed:
            c.status = "killed at the deadline"
        self.running = []
        return killed


def _run_loss_study(monkeypatch, metrics, *, jobs=16, t_end=1e6, seeds=(0, 1, 2), **pool_kw):
    """Schedule, run and summarise the whole study on a ``ClockPool``; returns ``(cells, summary, pool)``."""
    clock = Clock()
    monkeypatch.setattr(gs, "time", clock)
    pool = ClockPool(clock, jobs, metrics, **pool_kw)
    cells = gs.run_queue(gs.loss_study_cells(list(gs.HORIZONS), list(seeds)), pool, t_end=t_end, cap_minutes=2.5,
                         min_train_s=30.0)
    return cells, gs.summarise_loss_study(cells, list(gs.HORIZONS)), pool


def test_selected_settings_table_matches_the_recorded_selection(tmp_path, monkeypatch):
    check = gs.check_selected()  # the fourth run's selections, as committed
    assert check == {"file": "docs/benchmarks/gateformer_select.json", "agrees": True, "differences": []}
    # check_selected names its file relative to the repository root: a stand-in root keeps the checkout unwritten
    monkeypatch.setattr(gt, "ROOT", tmp_path)
    other = tmp_path / "sel.json"
    other.write_text('{"selections": {"etth1_96": {"label": "paper", "overrides": {}}}}')
    check = gs.check_selected(other)
    assert check["agrees"] is False and len(check["differences"]) == 4 and "etth1_96" in check["differences"][0]


def test_loss_study_runs_seed_by_seed_every_loss_of_every_horizon():
    cells = gs.loss_study_cells(list(gs.HORIZONS), [0, 1, 2])
    assert len(cells) == 36 and {c.stage for c in cells} == {4}
    # seed-major, then the longest horizons first, then the loss order
    assert [(c.seed, c.horizon, c.label) for c in cells] == [
        (s, h, loss) for s in (0, 1, 2) for h in (96, 336, 192, 720) for loss in ("mse", "mae", "huber")]
    for c in cells:  # the horizon's selected setting plus the loss, and the child parses the same back
        assert c.overrides == {**gs.ETTH1_SELECTED[c.horizon][1], "loss": c.label}
        name, parsed, folder = gt.parse_cell(c.spec)
        assert name == f"etth1_{c.horizon}" and parsed.pop("seed") == c.seed and parsed["loss"] == c.label
        assert "'" not in folder  # loss names are written bare: no quotes in folder and log names
    # only the horizons asked for, in the study's order
    assert [(c.horizon, c.label) for c in gs.loss_study_cells([720, 96], [5])] == [
        (96, "mse"), (96, "mae"), (96, "huber"), (720, "mse"), (720, "mae"), (720, "huber")]


def test_loss_selection_is_mean_validation_mse_over_seeds_and_never_reads_test(monkeypatch):
    # per-seed validation MSE; the test MSE runs opposite to it, so a rule that peeked at test would pick otherwise
    val = {96: {"mse": (0.70, 0.70, 0.70), "mae": (0.69, 0.69, 0.75), "huber": (0.71, 0.71, 0.71)},
           192: {"mse": (1.00, 1.00, 1.00), "mae": (0.98, 0.99, 1.00), "huber": (1.01, 0.99, 1.00)},
           336: {"mse": (1.30, 1.30, 1.30), "mae": (1.31, 1.31, 1.31), "huber": (1.29, 1.29, 1.29)},
           720: {"mse": (1.60, 1.60, 1.60), "mae": (1.62, 1.62, 1.62), "huber": (1.61, 1.61, 1.61)}}
    seen = []

    def spy(candidates):
        seen.append([dict(c) for c in candidates])
        return select(candidates)

    select = gs.select
    monkeypatch.setattr(gs, "select", spy)
    cells, summary, pool = _run_loss_study(
        monkeypatch, lambda c: (val[c.horizon][c.label][c.seed], 3.0 - val[c.horizon][c.label][c.seed]))
    assert pool.launched == cells and all(c.status == "done" for c in cells)
    picks = {h: summary["groups"][f"etth1_{h}"]["selection"]["label"] for h in gs.HORIZONS}
    # H = 96: mae wins two of three seeds, but its mean (0.71) is above mse's (0.70)
    assert picks == {96: "mse", 192: "mae", 336: "huber", 720: "mse"}
    g = summary["groups"]["etth1_192"]
    assert g["selection_seeds"] == [0, 1, 2]
    assert g["selection"]["val_mse"] == pytest.approx(statistics.fmean([0.98, 0.99, 1.00]))
    assert [lbl for lbl, _ in g["selection"]["ranking"]] == ["mae", "mse", "huber"]
    # the rule saw loss names and validation means only, one call per horizon
    assert len(seen) == 4
    tests = {c.result["mse"] for c in cells}
    for cands in seen:
        assert [c["label"] for c in cands] == list(gs.LOSSES)
        assert all(set(c) == {"label", "val_mse"} and c["val_mse"] not in tests for c in cands)
    # the averages: per seed over the four horizons, for each fixed loss and for the selection
    sel = summary["averages"]["selected"]
    assert sel["losses"] == picks
    assert sel["per_seed"][2]["test_mse"] == pytest.approx(
        statistics.fmean([3.0 - 0.70, 3.0 - 1.00, 3.0 - 1.29, 3.0 - 1.60]))
    assert set(summary["averages"]) == {"mse", "mae", "huber", "selected"}
    assert summary["averages"]["mae"]["test_mse"]["n"] == 3
    md = gs.loss_study_markdown([c.row() for c in cells], summary, [0, 1, 2])
    assert "| 192 | dropout 0.3 | **mae** (selected) |" in md and "selected (mse/mae/huber/mse)" in md
    assert md.count("(selected)") == 4 and "not measurable" not in md


def test_loss_selection_ties_go_to_mse():
    cells = gs.loss_study_cells([96], [0, 1])
    for c in cells:
        c.status, c.result = "done", {"best_val_mse": 0.5 if c.label != "huber" else 0.6, "mse": 0.4, "mae": 0.4}
    assert gs.summarise_loss_study(cells, [96])["groups"]["etth1_96"]["selection"]["label"] == "mse"
    for c in cells:  # mae and huber tie below mse: the earlier of the two in LOSSES
        c.result["best_val_mse"] = 0.5 if c.label == "mse" else 0.4
    assert gs.summarise_loss_study(cells, [96])["groups"]["etth1_96"]["selection"]["label"] == "mae"


def test_loss_selection_compares_only_the_seeds_every_finished_loss_has():
    val = {"mse": (0.70, 0.70, 0.60), "mae": (0.69, 0.69, 0.80), "huber": (0.71, 0.71, None)}
    cells = gs.loss_study_cells([96], [0, 1, 2])
    for c in cells:
        v = val[c.label][c.seed]
        if v is None:
            c.status = "failed (exit 1; see its log)"
        else:
            c.status, c.result = "done", {"best_val_mse": v, "mse": 0.4, "mae": 0.3}
    g = gs.summarise_loss_study(cells, [96])["groups"]["etth1_96"]
    # over all its seeds mse (0.667) would beat mae (0.727); on the seeds huber also finished, mae wins
    assert g["selection_seeds"] == [0, 1] and g["selection"]["label"] == "mae"
    assert g["candidates"]["mse"]["val_mse_selection_seeds"] == pytest.approx(0.70)
    # the table still reports each loss over every seed it finished
    assert g["candidates"]["mse"]["val_mse"]["n"] == 3 and g["candidates"]["huber"]["val_mse"]["n"] == 2


def test_loss_study_budget_cut_keeps_whole_seeds_and_marks_the_rest(monkeypatch):
    # 6 at a time, 40 s each, deadline at 100 s: the seed-0 cells fill two waves (each max_time cut to what is left
    # before the deadline after the child overhead), then less than min_train_s is left for any seed-1 cell; one
    # H = 720 cell hangs after its training (start-up or test beyond the overhead) and is killed at the deadline
    hang = ("huber", 720, 0)
    cells, summary, pool = _run_loss_study(
        monkeypatch, lambda c: (1.0 + 0.01 * gs.LOSSES.index(c.label), 0.5), jobs=6, t_end=100.0,
        tail_s=lambda c: 1000.0 if (c.label, c.horizon, c.seed) == hang else 0.0)
    assert {c.seed for c in pool.launched} == {0} and len(pool.launched) == 12
    by_status = {}
    for c in cells:
        by_status.setdefault(c.status, []).append(c)
    assert len(by_status["not run (budget)"]) == 24 and {c.seed for c in by_status["not run (budget)"]} == {1, 2}
    assert [(c.label, c.horizon, c.seed) for c in by_status["killed at the deadline"]] == [hang]
    assert len(by_status["done"]) == 11
    # max_time: the 2.5-minute cap cut to what is left (launched at 0 s, then at 40 s when the first wave ended)
    assert [c.max_minutes for c in pool.launched] == pytest.approx(
        [(100.0 - gs.CHILD_OVERHEAD_S) / 60] * 6 + [(100.0 - 40.0 - gs.CHILD_OVERHEAD_S) / 60] * 6)
    # the second wave trained 35 s of its 40: capped, and still tested (its numbers count)
    assert all(c.result["time_capped"] for c in pool.launched[6:] if c.status == "done")
    groups = summary["groups"]
    assert all(groups[f"etth1_{h}"]["selection_seeds"] == [0] for h in gs.HORIZONS)
    # H = 720: the killed huber cell takes no part; mse and mae are compared on seed 0
    assert groups["etth1_720"]["selection"]["ranking"] == [("mse", 1.0), ("mae", 1.01)]
    # no huber-everywhere average without a huber cell at H = 720; the others over seed 0 only
    assert set(summary["averages"]) == {"mse", "mae", "selected"}
    assert summary["averages"]["selected"]["test_mse"]["n"] == 1
    md = gs.loss_study_markdown([c.row() for c in cells], summary, [0, 1, 2])
    assert md.count("| not run (budget) |") == 24 and md.count("| killed at the deadline |") == 1
    assert "over 1 seeds" in md


def test_loss_study_with_no_time_left_runs_nothing_and_still_summarises(monkeypatch):
    cells, summary, pool = _run_loss_study(monkeypatch, lambda c: (1.0, 0.5), t_end=gs.CHILD_OVERHEAD_S + 10)
    assert pool.launched == [] and {c.status for c in cells} == {"not run (budget)"} and len(cells) == 36
    assert all(g["selection"] is None and g["selection_seeds"] == [] for g in summary["groups"].values())
    assert summary["averages"] == {}
    md = gs.loss_study_markdown([c.row() for c in cells], summary, [0, 1, 2])
    assert "not measurable from this run" in md and md.count("| not run (budget) |") == 36


def test_loss_study_cells_still_queued_when_hung_children_are_killed_are_marked(monkeypatch):
    # every child hangs past the deadline: the first 6 are killed, the 30 behind them never left the queue
    cells, summary, pool = _run_loss_study(monkeypatch, lambda c: (1.0, 0.5), jobs=6, t_end=100.0,
                                           tail_s=lambda c: 1000.0)
    assert [c.status for c in cells] == ["killed at the deadline"] * 6 + ["not run (budget)"] * 30
    assert summary["averages"] == {}
