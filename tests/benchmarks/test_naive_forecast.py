"""benchmarks/naive_forecast.py: the repeat-last-value forecast on the real Exchange splits.

The scores are per-sample averages over every window (``drop_last=False``), by hand on a small batch list, and on
the real file they pin the protocol: the numbers docs/models/gateformer.md reports against the trained models.
"""

import json
import sys
from pathlib import Path

import torch
from datafiles import need

from gatedzoo.data.timeseries import EXCHANGE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import naive_forecast as nf  # noqa: E402


def test_scores_are_per_window_averages_of_the_repeated_last_value():
    x1, y1 = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[2.0], [4.0], [5.0]]])  # errors 0, -2, -3
    x2, y2 = torch.tensor([[[0.0], [1.0]], [[3.0], [3.0]]]), torch.ones(2, 3, 1)    # errors 0,0,0 and 2,2,2
    got = nf.repeat_last_scores([(x1, y1, "step"), (x2, y2)])
    assert got["n"] == 3
    assert abs(got["mse"] - ((0 + 4 + 9) / 3 + 0 + 4) / 3) < 1e-6
    assert abs(got["mae"] - ((0 + 2 + 3) / 3 + 0 + 2) / 3) < 1e-6


def test_exchange_naive_scores_as_documented(tmp_path):
    need(EXCHANGE)
    out = tmp_path / "naive.json"
    nf.main(["--datasets", "exchange", "--out", str(out)])
    rows = {r["horizon"]: r for r in json.loads(out.read_text())["rows"]}
    # docs/benchmarks/naive_forecast.json; test windows 1,422 / 1,326 / 1,182 / 798 as the TSLib protocol gives
    for h, mse, windows in ((96, 0.0811, 1422), (192, 0.1671, 1326), (336, 0.3057, 1182), (720, 0.8101, 798)):
        assert abs(rows[h]["test_mse"] - mse) < 1e-4 and rows[h]["test_windows"] == windows
    assert abs(rows[720]["val_mse"] - 1.1443) < 1e-4
