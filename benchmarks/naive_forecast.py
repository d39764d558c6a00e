"""The repeat-last-value forecast on the TSLib benchmark splits: the floor any forecaster must clear.

A random walk's best forecast is its last value, and exchange rates are close to one, so on Exchange this naive
forecast is a baseline the published models do not all beat. It runs through the same data modules as the
recipes (same borders, scaler fitted on the training part, normalised scale, ``drop_last=False``, per-sample
averages), so its numbers sit beside ``benchmarks/gateformer_tslib.py``'s. CPU, a few seconds:

    GATEDZOO_DATA=/path/to/data python benchmarks/naive_forecast.py --out docs/benchmarks/naive_forecast.json

Writes one JSON with the validation and test MSE / MAE of every dataset and horizon, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from gatedzoo.data.timeseries import TimeSeriesDataModule

HORIZONS = (96, 192, 336, 720)


def repeat_last_scores(loader) -> dict[str, float]:
    """Mean per-sample MSE and MAE of forecasting every horizon step with the look-back's last value.

    Args:
        loader: batches ``(x [B, L, N], y [B, H, N], ...)`` on the normalised scale.
    Returns:
        ``{"mse": float, "mae": float, "n": int}`` (``n`` windows).
    """
    se = ae = 0.0
    n = 0
    for batch in loader:
        x, y = batch[0], batch[1]
        err = x[:, -1:] - y  # broadcast over the horizon
        se += float(err.square().mean(dim=(1, 2)).sum())
        ae += float(err.abs().mean(dim=(1, 2)).sum())
        n += x.shape[0]
    return {"mse": se / n, "mae": ae / n, "n": n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON file to write (printed only when omitted)")
    ap.add_argument("--datasets", default="etth1,exchange", help="comma-separated data-module dataset names")
    args = ap.parse_args(argv)
    rows = []
    for dataset in args.datasets.split(","):
        for h in HORIZONS:
            dm = TimeSeriesDataModule(dataset=dataset, seq_len=96, pred_len=h, eval_batch_size=512)
            dm.setup("fit")
            dm.setup("test")
            val, test = repeat_last_scores(dm.val_dataloader()), repeat_last_scores(dm.test_dataloader())
            rows.append({"dataset": dataset, "horizon": h, "val_mse": val["mse"], "val_mae": val["mae"],
                         "test_mse": test["mse"], "test_mae": test["mae"], "test_windows": test["n"]})
    print("| dataset | H | val MSE | test MSE / MAE |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['horizon']} | {r['val_mse']:.4f} | {r['test_mse']:.4f} / {r['test_mae']:.4f} |")
    for dataset in args.datasets.split(","):
        mine = [r for r in rows if r["dataset"] == dataset]
        print(f"{dataset} average test MSE {sum(r['test_mse'] for r in mine) / len(mine):.4f}, "
              f"validation {sum(r['val_mse'] for r in mine) / len(mine):.4f}")
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "python": platform.python_version(), "forecast": "repeat the last look-back value", "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
