"""Pure helpers of benchmarks/swinrmt_fmnist.py: the learning-rate schedule, the epoch plan, the augmentations."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import swinrmt_fmnist as bench  # noqa: E402


def test_lr_schedule_warms_up_then_anneals_to_the_floor_at_the_last_step():
    total, warm, floor = 100, 10, 0.01
    f = [bench.lr_factor(s, total, warm, floor) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)
    assert f[warm] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(floor)  # the schedule completes on the last optimiser step
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))  # monotone cosine after the warm-up
    mid = warm + (total - 1 - warm) // 2
    assert f[mid] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=0.02)


def test_plan_epochs_fits_the_whole_schedule_in_the_margin():
    # 117 steps an epoch at 0.1 s: 11.7 s an epoch; 300 s * 0.85 = 255 s -> 21 epochs (21 * 11.7 = 245.7 s)
    assert bench.plan_epochs(300, 0.1, 117, 0.85, 1, 100) == 21
    assert 21 * 117 * 0.1 <= 0.85 * 300 < 22 * 117 * 0.1
    assert bench.plan_epochs(300, 0.1, 117, 0.85, 1, 10) == 10  # capped
    assert bench.plan_epochs(-5, 0.1, 117, 0.85, 2, 10) == 2  # no time left: the floor, never zero


def test_random_erase_rectangles_have_the_documented_size_and_value():
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(2000, 1, 28, 28)
    out = bench.random_erase(x, gen, p=1.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    erased = (out == 0).flatten(1).sum(1).float() / (28 * 28)
    assert (erased > 0).all()  # p = 1: every image gets a rectangle
    assert erased.max() <= 0.4 * 1.5 and erased.mean() == pytest.approx(0.21, abs=0.04)  # U(0.02, 0.4), clipped
    for img in out[:50, 0]:  # one axis-aligned rectangle: its bounding box is all zeros
        rows, cols = (img == 0).nonzero(as_tuple=True)
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == 0).all()
    rate = (bench.random_erase(x, gen, p=0.25) == 0).flatten(1).any(1).float().mean()
    assert rate == pytest.approx(0.25, abs=0.03)
    assert bench.random_erase(x, gen, p=0.0) is x


def test_augment_crop_keeps_the_image_and_pads_with_background():
    gen = torch.Generator().manual_seed(1)
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28).repeat(64, 1, 1, 1)
    out = bench.augment(x, gen, pad=3, flip=False)
    assert out.shape == x.shape
    for img in out[:, 0]:
        inside = img[img != bench.BACKGROUND]
        assert inside.numel() >= 25 * 25  # shifted by at most 3 pixels on each axis
        assert torch.isin(inside, x[0, 0]).all()  # pixels come from the image, nothing invented
    flipped = bench.augment(x, torch.Generator().manual_seed(2), pad=0, flip=True)
    same, mirrored = (flipped == x).flatten(1).all(1), (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_throughput_only_measures_the_chosen_variants_on_both_backends_and_trains_nothing(tmp_path, monkeypatch):
    """``--throughput-only --variants swat`` (CPU smoke sizes, real Fashion-MNIST images) writes ``throughput.json``
    with our kernels and the reference attention for SWAT alone, and starts no training worker."""
    import json
    import subprocess

    def no_workers(*args, **kwargs):
        raise AssertionError("--throughput-only must not start training workers")

    monkeypatch.setattr(subprocess, "Popen", no_workers)
    monkeypatch.setattr(sys, "argv", ["swinrmt_fmnist.py", "--throughput-only", "--smoke", "--variants", "swat",
                                      "--out", str(tmp_path)])
    bench.main()
    tp = json.loads((tmp_path / "throughput.json").read_text())["throughput"]
    assert set(tp) == {"swat/auto", "swat/reference"}
    for row in tp.values():
        assert row["batch"] == 32 and row["train_img_s"] > 0 and row["infer_img_s"] > 0


def test_skip_throughput_trains_the_chosen_variant_size_and_seeds_only(tmp_path, monkeypatch):
    """``--skip-throughput --size small --variants rmt --first-seed 1`` (CPU smoke sizes, real Fashion-MNIST images,
    a real worker process) trains one run, RMT small with seed 1, and measures no throughput."""
    import json

    monkeypatch.setitem(bench.HPARAMS, "size", "tiny")  # main() sets the module's size; restored after the test
    monkeypatch.setattr(sys, "argv", ["swinrmt_fmnist.py", "--smoke", "--skip-throughput", "--size", "small",
                                      "--variants", "rmt", "--seeds", "1", "--first-seed", "1",
                                      "--out", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    bench.main()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["throughput"] == {} and res["precompile"] == {} and res["env"]["size"] == "small"
    (run,) = res["runs"]
    assert (run["variant"], run["seed"], run["epochs_done"], run["schedule_complete"]) == ("rmt", 1, 1, True)
    assert bench.model_name("rmt") == "gated_swinrmt_rmt_small"
    small = bench.build("rmt", 0, torch.device("cpu"))
    assert run["params"] == sum(p.numel() for p in small.parameters()) > 10_000_000
    assert 0.0 <= run["test_top1"] <= 1.0
    assert not (tmp_path / "weights.tar").exists()  # seed 0 of SWAT / Retention is what ships


def test_a_paused_run_resumes_where_it_stopped_and_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    """``--epochs 3 --pause-after 2`` checkpoints after two epochs and scores nothing; the same command again resumes
    it and ends exactly where one uninterrupted 3-epoch run ends (same losses, same test top-1: the CPU is
    deterministic); a third call retrains nothing; a checkpoint of another schedule is refused before any work.
    Real Fashion-MNIST images, smoke sizes, real worker processes."""
    import json
    import subprocess

    monkeypatch.setitem(bench.HPARAMS, "size", "tiny")

    def run(work, *extra):
        monkeypatch.setattr(sys, "argv", ["swinrmt_fmnist.py", "--smoke", "--skip-throughput", "--variants", "swat",
                                          "--seeds", "1", "--epochs", "3", "--out", str(work / "out"),
                                          "--work-dir", str(work), *extra])
        bench.main()
        (res,) = json.loads((work / "out" / "results.json").read_text())["runs"]
        return res

    paused = run(tmp_path / "a", "--pause-after", "2")
    assert (paused["paused"], paused["epochs_done"], paused["test_top1"]) == (True, 2, None)
    assert (tmp_path / "a" / "ckpt_swat_0.pt").exists()
    resumed = run(tmp_path / "a")
    straight = run(tmp_path / "b")
    assert resumed["segments"] == [[0, 2], [2, 3]] and straight["segments"] == [[0, 3]]
    assert resumed["schedule_complete"] and not resumed["paused"]
    assert len(resumed["losses"]) == 3 and resumed["losses"] == straight["losses"]
    assert resumed["test_top1"] == straight["test_top1"] is not None

    def no_workers(*args, **kwargs):
        raise AssertionError("a finished run must not be retrained")

    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", no_workers)
        assert run(tmp_path / "a") == resumed
    with pytest.raises(SystemExit, match="differs in: epochs"):
        run(tmp_path / "a", "--epochs", "4")


def test_merge_keeps_the_completed_run_of_a_resumed_schedule_and_refuses_mixed_or_open_comparisons(tmp_path):
    """``--merge``: a run paused in one call and completed in the next counts once; calls of another schedule, a run
    completed twice, and a run that no call completes are refused with the reason."""
    import json

    def call(name, epochs, runs):
        doc = {"env": {"hparams": {"lr": 2e-3}, "size": "small", "compile": "reduce-overhead", "torch": "t",
                       "device": "d", "argv": [name]}, "epochs": epochs, "steps_per_epoch": 117,
               "runs": [{"variant": v, "seed": s, "epochs_done": done, "test_top1": acc} for v, s, done, acc in runs],
               "concurrent_step_s": 0.05, "workers_ready_s": 100.0, "phases": {}, "total_s": 500.0}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        return str(path)

    a = call("a", 100, [("swat", 0, 58, None), ("retention", 0, 100, 0.93)])
    b = call("b", 100, [("swat", 0, 100, 0.946)])
    doc = bench.merge([a, b], str(tmp_path / "m.json"))
    assert [(r["variant"], r["test_top1"]) for r in doc["runs"]] == [("swat", 0.946), ("retention", 0.93)]
    assert doc["per_call"][0]["runs"] == ["swat_0 (paused at 58)", "retention_0"]
    assert json.loads((tmp_path / "m.json").read_text())["runs"] == doc["runs"]
    with pytest.raises(SystemExit, match="differs .* in epochs"):
        bench.merge([a, call("c", 50, [("rmt", 0, 50, 0.91)])], str(tmp_path / "x.json"))
    with pytest.raises(SystemExit, match="repeats the complete run swat seed 0"):
        bench.merge([b, b], str(tmp_path / "x.json"))
    with pytest.raises(SystemExit, match="never completed in these calls: swat_0"):
        bench.merge([a], str(tmp_path / "x.json"))


def test_split_file_cuts_a_large_file_into_parts_that_join_back_and_leaves_a_small_one(tmp_path):
    """Weights over the device tool's per-file limit come back in parts; ``cat path.part*`` restores the bytes."""
    data = bytes(range(256)) * 40  # 10,240 bytes
    big = tmp_path / "weights.tar"
    big.write_bytes(data)
    parts = bench.split_file(big, 4096)
    assert [p.name for p in parts] == ["weights.tar.part00", "weights.tar.part01", "weights.tar.part02"]
    assert not big.exists() and [p.stat().st_size for p in parts] == [4096, 4096, 2048]
    assert b"".join(p.read_bytes() for p in sorted(tmp_path.glob("weights.tar.part*"))) == data
    small = tmp_path / "small.tar"
    small.write_bytes(data[:100])
    assert bench.split_file(small, 4096) == [small] and small.read_bytes() == data[:100]
