"""benchmarks/gateformer_tslib.py's ``--run-cell`` child on real ETTh1 rows (``--tiny``: 2 epochs of 5 batches).

The ``ema=DECAY`` key adds Lightning's ``EMAWeightAveraging``: the weights that are validated, kept and tested must
then be the averaged ones. The kept checkpoint holds both (``state_dict`` = average, ``current_model_state`` = the
optimiser's weights); the zoo folder the cell wrote, whose test MSE is reported, must hold the average.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from datafiles import need
from safetensors.torch import load_file

from gatedzoo.data.timeseries import ETTH1

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gateformer_tslib as gt  # noqa: E402


def _run(spec, out):
    res = gt.run_cell(spec, out, tiny=True, backend="reference", max_minutes=2)
    (ckpt,) = (out / gt.parse_cell(spec)[2] / "ckpt").glob("*.ckpt")
    zoo = out / gt.parse_cell(spec)[2] / "zoo"
    return res, torch.load(ckpt, map_location="cpu", weights_only=False), load_file(zoo / "model.safetensors"), zoo


def test_ema_key_keeps_and_tests_the_averaged_weights(tmp_path):
    need(ETTH1)
    plain, plain_ckpt, _, _ = _run("etth1_96+cycle_len=24+seed=3", tmp_path)
    ema, ckpt, zoo_state, zoo = _run("etth1_96+cycle_len=24+seed=3+ema=0.9", tmp_path)
    assert plain["ema"] is None and ema["ema"] == 0.9
    assert ema["overrides"] == plain["overrides"] == {"cycle_len": 24} and ema["steps"] == plain["steps"] == 10
    assert "current_model_state" not in plain_ckpt
    average = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    current = {k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items()}
    assert max((average[k] - current[k]).abs().max().item() for k in average) > 1e-5
    assert zoo_state.keys() == average.keys()
    for k, v in zoo_state.items():  # the tested (and shipped) weights are the average
        torch.testing.assert_close(v, average[k], rtol=0, atol=0)
    metrics = json.loads((zoo / "config.json").read_text())["metrics"]
    assert metrics["test/mse"] == pytest.approx(ema["mse"], rel=1e-6)
    assert abs(ema["mse"] - plain["mse"]) > 1e-4
