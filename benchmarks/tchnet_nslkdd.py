"""TCH-Net on NSL-KDD with an honest protocol: train / validation split of the training file, KDDTest+ as test.

For each task (binary, 5-class) and seed, trains TCH-Net, TCH-Net without CB-GAF (``fusion="concat"``), an MLP on
the same preprocessed features and scikit-learn's HistGradientBoosting; every model is selected on the validation
split only (early stopping on validation MCC for binary, validation macro-F1 for 5-class), then scored once on
KDDTest+. The preprocessing (vocabulary, category encodings, log + robust scaler) is fitted on the training split.
Writes ``results.json`` and ``results.md`` and, per task, the TCH-Net of the best-validation seed as a zoo folder.

Usage::

    GATEDZOO_DATA=/path/to/data python benchmarks/tchnet_nslkdd.py --out runs/tchnet_bench [--seeds 5] [--epochs 25]
    python benchmarks/tchnet_nslkdd.py --out /tmp/t --seeds 1 --epochs 1 --limit 2000   # smoke test on CPU
    python benchmarks/tchnet_nslkdd.py --plot docs/models/tchnet_confusion.png          # shipped weights, KDDTest+
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gatedzoo.data.flows import FlowDataModule
from gatedzoo.tasks.flows import class_weights, flow_metrics, focal_loss
from gatedzoo.zoo import create_model

#: widths of the shipped TCH-Net (paper widths halved; about 0.73 M parameters with the NSL-KDD vocabulary)
SMALL = dict(conv_channels=[32, 64, 64], gru=64, gru2=32, conv2=32, tf_dim=64, tf_heads=4, tf_ffn=128, merge_heads=4,
             fusion_dim=64, head_hidden=128, stat_hidden=64, stat_dim=32, ctx_dim=16, raw_dim=32)
#: training recipe (shared by the recipes in recipes/tchnet/)
RECIPE = dict(lr=5e-4, weight_decay=5e-5, warmup_epochs=2, min_lr_ratio=0.05, batch_size=512, gamma=2.0,
              smoothing=0.01, aux_weight=0.05, noise_std=0.01, noise_p=0.3, patience=6, grad_clip=1.0)


class FlowMLP(nn.Module):
    """Baseline: categorical embeddings + numeric features of the scored flow -> 3-layer MLP."""

    def __init__(self, in_features: int, cat_cardinalities: list[int], num_classes: int, hidden: int = 256):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(c, 8) for c in cat_cardinalities)
        w = in_features + 8 * len(cat_cardinalities)
        self.net = nn.Sequential(nn.Linear(w, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(0.15),
                                 nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Dropout(0.15),
                                 nn.Linear(hidden // 2, num_classes))

    def forward(self, x, c, return_aux=False):
        x, c = x[:, -1], c[:, -1]
        logits = self.net(torch.cat([x, *(e(c[:, i]) for i, e in enumerate(self.emb))], -1))
        return (logits, None) if return_aux else logits


def tensors(ds, device):
    idx = ds.index
    return ds.x_num[idx].to(device), ds.x_cat[idx].to(device), ds.y.to(device)


@torch.no_grad()
def predict(model, x, c, bs=4096):
    model.eval()
    return torch.cat([torch.softmax(model(x[i:i + bs], c[i:i + bs]).float(), -1) for i in range(0, len(x), bs)]).cpu()


def select_score(y, prob, task):
    m = flow_metrics(y, prob)
    return m["mcc"] if task == "binary" else m["macro_f1_multiclass"]


def train_nn(model, data, task, counts, epochs, seed, device, log):
    torch.manual_seed(seed)
    r = RECIPE
    (xt, ct, yt), (xv, cv, yv) = data["train"], data["val"]
    alpha = torch.tensor(class_weights(counts), device=device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"])
    per_epoch = len(xt) // r["batch_size"]
    total, warm = per_epoch * epochs, per_epoch * r["warmup_epochs"]

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        t = min((step - warm) / max(total - warm, 1), 1.0)
        return r["min_lr_ratio"] + (1 - r["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator(device=device).manual_seed(seed)
    best, best_state, best_epoch, bad = -math.inf, None, -1, 0
    yv_np = yv.cpu().numpy()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), device=device, generator=gen)
        for i in range(per_epoch):
            b = perm[i * r["batch_size"]:(i + 1) * r["batch_size"]]
            x = xt[b]
            if torch.rand((), generator=gen, device=device) < r["noise_p"]:
                x = x + r["noise_std"] * torch.randn(x.shape, device=device, generator=gen)
            logits, recon = model(x, ct[b], return_aux=True)
            loss = focal_loss(logits, yt[b], r["gamma"], alpha, r["smoothing"])
            if recon is not None:
                loss = loss + r["aux_weight"] * F.mse_loss(recon, x.mean(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()
            sched.step()
        score = select_score(yv_np, predict(model, xv, cv).numpy(), task)
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= r["patience"]:
                break
    model.load_state_dict(best_state)
    log(f"    best val {best:.4f} at epoch {best_epoch + 1}/{epoch + 1}")
    return best, best_epoch + 1


def run_hgb(data_np, task, counts, seed, max_iter=300):
    from sklearn.ensemble import HistGradientBoostingClassifier

    (xt, ct, yt), (xv, cv, yv), (xs, cs, ys) = data_np
    k = ct.shape[1]
    feats = lambda x, c: np.concatenate([c, x], 1)  # noqa: E731
    clf = HistGradientBoostingClassifier(learning_rate=0.1, max_iter=max_iter, categorical_features=list(range(k)),
                                         early_stopping=False, random_state=seed)
    clf.fit(feats(xt, ct), yt, sample_weight=np.asarray(class_weights(counts))[yt])
    # the number of boosting rounds is chosen on the validation split (every 25 rounds), like the networks' epochs;
    # boosting is sequential, so the truncated ensemble is the model refitted with that many rounds
    best = (-math.inf, 0)
    for it, prob in enumerate(clf.staged_predict_proba(feats(xv, cv))):
        if (it + 1) % 25 == 0:
            best = max(best, (select_score(yv, prob, task), it + 1))
    prob = next(p for i, p in enumerate(clf.staged_predict_proba(feats(xs, cs))) if i + 1 == best[1])
    return best[0], best[1], prob


def summarise(rows):
    out = {}
    for r in rows:
        out.setdefault((r["task"], r["model"]), []).append(r)
    table = []
    for (task, model), rs in out.items():
        keys = [k for k in rs[0]["test"] if isinstance(rs[0]["test"][k], float)]
        agg = {k: (float(np.mean([r["test"][k] for r in rs])), float(np.std([r["test"][k] for r in rs])))
               for k in keys}
        table.append({"task": task, "model": model, "seeds": len(rs), "params": rs[0]["params"],
                      "val": float(np.mean([r["val"] for r in rs])), "test": agg})
    return table


def markdown(table):
    cols = ["accuracy", "f1_attack", "mcc", "roc_auc", "pr_auc", "fpr_at_tpr99", "accuracy_multiclass",
            "macro_f1_multiclass"]
    lines = ["| task | model | params | seeds | val select | " + " | ".join(cols) + " |",
             "|" + "---|" * (5 + len(cols))]
    for t in table:
        cells = [f"{100 * t['test'][c][0]:.2f} ± {100 * t['test'][c][1]:.2f}" if c in t["test"] else "–"
                 for c in cols]
        lines.append(f"| {t['task']} | {t['model']} | {t['params']} | {t['seeds']} | {t['val']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_confusion(path: str) -> None:
    """Confusion matrices of the shipped weights on KDDTest+ (computed on this machine, CPU or GPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    from gatedzoo.data.flows import NSLKDD_FILES, fetch, labels_of, read_flow_table
    from gatedzoo.tasks.flows import predict_table

    df, fmt = read_flow_table(fetch(NSLKDD_FILES["test"]), "nslkdd")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [2, 5]})
    for ax, task in zip(axes, ("binary", "5class")):
        model = create_model(f"tchnet.nslkdd_{task}", pretrained=True)
        y, pred = labels_of(df, fmt, task), predict_table(model, df).argmax(1)
        names = model.zoo_config["label_names"]
        cm = confusion_matrix(y, pred, labels=range(len(names)))
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = (y == pred).mean()
        ax.set_title(f"tchnet.nslkdd_{task}: KDDTest+ acc {100 * acc:.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/tchnet_bench")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first_seed .. first_seed + seeds - 1")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--tasks", default="binary,5class")
    ap.add_argument("--models", default="tchnet,tchnet_nofusion,mlp,hgb")
    ap.add_argument("--budget", type=float, default=0, help="seconds; start no new seed after this (0 = no limit)")
    ap.add_argument("--plot", default="", help="only plot the shipped weights' KDDTest+ confusion matrices to this PNG")
    ap.add_argument("--limit", type=int, default=0, help="use only this many training rows (smoke tests)")
    args = ap.parse_args()
    if args.plot:
        return plot_confusion(args.plot)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    def log(msg):
        print(msg, flush=True)
        with open(out / "log.txt", "a") as f:
            f.write(msg + "\n")

    env = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "epochs": args.epochs, "seeds": args.seeds, "recipe": RECIPE, "widths": SMALL, "limit": args.limit}
    log(json.dumps(env))
    rows, t0 = [], time.time()
    tasks = args.tasks.split(",")
    for task in tasks:
        dm = FlowDataModule(task=task, seed=0, window=1)
        dm.setup()
        if args.limit:
            for k in ("train", "val"):
                d = dm.datasets[k]
                d.index, d.y = d.index[: args.limit], d.y[: args.limit]
        data = {k: tensors(dm.datasets[k], device) for k in ("train", "val", "test")}
        data_np = [tuple(t.cpu().numpy()[:, -1] if t.ndim == 3 else t.cpu().numpy() for t in data[k])
                   for k in ("train", "val", "test")]
        ys = data["test"][2].cpu().numpy()
        margs = {**dm.model_args(), **SMALL}
        best_ship = None
        log(f"== {task}: train {len(data['train'][0])} val {len(data['val'][0])} test {len(ys)}; {dm.report}")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            share = 1 if task == tasks[-1] else 0.5
            if seed > args.first_seed and args.budget and time.time() - t0 > args.budget * share:
                log(f"  time budget reached: {task} stops before seed {seed}")
                break
            for model_name in args.models.split(","):
                ts = time.time()
                if model_name == "hgb":
                    val, rounds, prob = run_hgb(data_np, task, dm.class_counts, seed)
                    params, extra = 0, {"rounds": rounds}
                else:
                    torch.manual_seed(seed)
                    if model_name == "mlp":
                        model = FlowMLP(margs["in_features"], margs["cat_cardinalities"], margs["num_classes"])
                    else:
                        fusion = "concat" if model_name == "tchnet_nofusion" else "cbgaf"
                        model = create_model("tchnet", **margs, fusion=fusion, attn_backend="sdpa")
                    model = model.to(device)
                    params = sum(p.numel() for p in model.parameters())
                    val, epochs = train_nn(model, data, task, dm.class_counts, args.epochs, seed, device, log)
                    prob = predict(model, data["test"][0], data["test"][1]).numpy()
                    extra = {"epochs": epochs}
                    if model_name == "tchnet" and (best_ship is None or val > best_ship[0]):
                        best_ship = (val, seed, copy.deepcopy(model).cpu())
                m = flow_metrics(ys, prob, dm.label_names)
                rows.append({"task": task, "model": model_name, "seed": seed, "val": val, "params": params,
                             "test": m, **extra, "seconds": time.time() - ts})
                log(f"  {task} {model_name} seed {seed}: val {val:.4f} test acc {m['accuracy']:.4f} "
                    f"mcc {m['mcc']:.4f} acc5 {m.get('accuracy_multiclass', float('nan')):.4f} "
                    f"({time.time() - ts:.1f}s, total {time.time() - t0:.0f}s)")
        if best_ship is not None:
            val, seed, model = best_ship
            model.zoo_config["model_args"]["attn_backend"] = "auto"
            model.zoo_config.update(dm.zoo_metadata())
            test = next(r["test"] for r in rows if r["task"] == task and r["model"] == "tchnet" and r["seed"] == seed)
            model.save_pretrained(out / f"tchnet.nslkdd_{task}", metrics={
                "val_select": val, "seed": seed, **{f"test_{k}": v for k, v in test.items()}},
                benchmark="benchmarks/tchnet_nslkdd.py", device=env["device"])
        (out / "results.json").write_text(json.dumps({"env": env, "runs": rows, "summary": summarise(rows)}, indent=1))
    (out / "results.md").write_text(markdown(summarise(rows)) + "\n")
    log(markdown(summarise(rows)))
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
