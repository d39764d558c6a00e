"""Plots of the model cards that no benchmark script draws (each card's caption names the run behind its plot).

    python docs/make_plots.py curve METRICS_CSV OUT_PNG --title TITLE
        learning curves from a Lightning CSV log (``lightning_logs/version_*/metrics.csv`` of a recipe run):
        every logged loss per step (training losses smoothed), validation metrics per epoch
    python docs/make_plots.py fmnist-confusion WEIGHTS OUT_PNG [--n 2000]
        row-normalised confusion matrix of zoo image weights on the first N Fashion-MNIST test images (CPU)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def plot_curves(metrics_csv: str | Path, out: str | Path, title: str) -> Path:
    """Learning curves: losses against the optimiser step (left), other validation metrics (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log = pd.read_csv(metrics_csv)
    if "step" not in log:
        raise ValueError(f"{metrics_csv} has no 'step' column; pass a Lightning CSVLogger metrics.csv")
    losses = [c for c in log.columns if c.endswith("loss") and log[c].notna().any()]
    others = [c for c in log.columns if c.startswith("val/") and not c.endswith("loss") and log[c].notna().any()]
    if not losses:
        raise ValueError(f"{metrics_csv} logs no loss column; columns are {list(log.columns)}")
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 6, 3.6), squeeze=False)
    ax = axes[0, 0]
    for col in losses:
        s = log[["step", col]].dropna()
        if col.startswith("train"):
            # per-step training losses are noisy: show them faintly and a running mean on top
            ax.plot(s["step"], s[col], alpha=0.25, lw=0.8)
            ax.plot(s["step"], s[col].rolling(max(1, len(s) // 15), min_periods=1).mean(), lw=1.8, label=col,
                    color=ax.lines[-1].get_color())
        else:
            ax.plot(s["step"], s[col], "o-", lw=1.8, label=col)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    if others:
        ax2 = axes[0, 1]
        for col in others:
            s = log[["step", col]].dropna()
            ax2.plot(s["step"], s[col], "o-", lw=1.5, label=col)
        ax2.set_xlabel("optimiser step")
        ax2.set_ylabel("validation metric")
        ax2.legend(frameon=False, fontsize=8)
        ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_fmnist_confusion(weights: str, out: str | Path, n: int = 2000) -> Path:
    """Row-normalised confusion matrix of ``weights`` on the first ``n`` Fashion-MNIST test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from sklearn.metrics import confusion_matrix

    import gatedzoo
    from gatedzoo.data.images import load_fashion_mnist

    model = gatedzoo.create_model(weights, pretrained=True).eval()
    pre, names = model.zoo_config["preprocessing"], model.zoo_config["label_names"]
    images, labels = load_fashion_mnist("test")
    x = (torch.tensor(images[:n]).float()[:, None] / 255 - pre["mean"][0]) / pre["std"][0]
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(-1) for b in x.split(500)]).numpy()
    cm = confusion_matrix(labels[:n], pred, labels=range(len(names)), normalize="true")
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j] >= 0.01:
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{weights}: first {n} Fashion-MNIST test images, top-1 {np.mean(pred == labels[:n]):.3f}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    curve = sub.add_parser("curve")
    curve.add_argument("metrics_csv")
    curve.add_argument("out")
    curve.add_argument("--title", default="")
    conf = sub.add_parser("fmnist-confusion")
    conf.add_argument("weights")
    conf.add_argument("out")
    conf.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.cmd == "curve":
        print(plot_curves(args.metrics_csv, args.out, args.title))
    else:
        print(plot_fmnist_confusion(args.weights, args.out, args.n))


if __name__ == "__main__":
    main()
