"""TCH-Net on NSL-KDD with an honest protocol: train / validation split of the training file, KDDTest+ as test.

For each task (binary, 5-class) and seed, trains TCH-Net, TCH-Net without CB-GAF (``fusion="concat"``), an MLP on
the same preprocessed features and scikit-learn's HistGradientBoosting; every model is selected on the validation
split only (early stopping on validation MCC for binary, validation macro-F1 for 5-class), then scored once on
KDDTest+. The preprocessing (vocabulary, category encodings, log + robust scaler) is fitted on the training split.
Writes ``results.json`` and ``results.md`` and, per task, the TCH-Net of the best-validation seed as a zoo folder.

``--novelty tchnet,mlp`` adds an unseen-attack rule: "a flow the classifier calls normal is an attack if its novelty
score > threshold" (5-class, ``--novelty-tasks binary,5class``: it then gets the classifier's most probable attack
class), chosen by a leave-attack-types-out validation without KDDTest+ (:func:`novelty_study`): attack types with
< 1 % of the training split's rows are held out of a second training of the same classifier; the candidate scores
(mean distance to the 5 nearest normal training flows, the same in the classifier's own pre-logit space, an
isolation forest on normal training flows, TCH-Net's auxiliary reconstruction error) and thresholds (1 - r quantile
of the validation normals, r in :data:`FPR_GRID`) are compared on the validation split plus the held-out rows by MCC
(multi-class MCC for 5-class); the winner is applied to the classifier trained on the whole training split and
KDDTest+ is scored once. ``--holdout-keep-class`` leaves every attack class its most frequent type in training (a
second design for 5-class, where the first holds out every R2L and U2R row). ``--merge A.json B.json`` combines
runs of disjoint seeds; ``--models none`` runs the novelty studies alone.

Usage::

    GATEDZOO_DATA=/path/to/data python benchmarks/tchnet_nslkdd.py --out runs/tchnet_bench [--seeds 5] [--epochs 25]
    python benchmarks/tchnet_nslkdd.py --out /tmp/t --seeds 1 --epochs 1 --limit 2000   # smoke test on CPU
    python benchmarks/tchnet_nslkdd.py --plot docs/models/tchnet_confusion.png          # shipped weights, KDDTest+
    python benchmarks/tchnet_nslkdd.py --out runs/b --first-seed 3 --seeds 2 --novelty tchnet,mlp \\
        --novelty-seeds 3,4,0,1,2 --budget 500                                       # seeds 3-4 + novelty study
    python benchmarks/tchnet_nslkdd.py --merge docs/benchmarks/tchnet_nslkdd.json runs/b/results.json --out runs/m
    python benchmarks/tchnet_nslkdd.py --out runs/n --models none --tasks 5class --novelty tchnet,mlp \
        --novelty-tasks 5class                                                      # the 5-class novelty study only
    python benchmarks/tchnet_nslkdd.py --record-novelty tchnet.nslkdd_binary --out runs/guarded   # CPU, ~15 s:
        # the rule validation chose (kNN, 10 % false alarms) into the classifier's config, scored on KDDTest+
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gatedzoo.data.flows import FlowDataModule
from gatedzoo.io import write_json
from gatedzoo.layers.novelty import combine_novelty, knn_distance, novelty_rule, onehot_points
from gatedzoo.tasks.flows import class_weights, evaluate_flows, fit_novelty_guard, flow_metrics, focal_loss
from gatedzoo.zoo import create_model
from gatedzoo.zoo.pretrained import CONFIG_NAME, WEIGHTS_NAME, resolve_source

#: widths of the shipped TCH-Net (paper widths halved; about 0.73 M parameters with the NSL-KDD vocabulary)
SMALL = dict(conv_channels=[32, 64, 64], gru=64, gru2=32, conv2=32, tf_dim=64, tf_heads=4, tf_ffn=128, merge_heads=4,
             fusion_dim=64, head_hidden=128, stat_hidden=64, stat_dim=32, ctx_dim=16, raw_dim=32)
#: training recipe (shared by the recipes in recipes/tchnet/)
RECIPE = dict(lr=5e-4, weight_decay=5e-5, warmup_epochs=2, min_lr_ratio=0.05, batch_size=512, gamma=2.0,
              smoothing=0.01, aux_weight=0.05, noise_std=0.01, noise_p=0.3, patience=6, grad_clip=1.0)
#: the settings a merged run must share with the run it extends (``--merge``)
SAME_SETTINGS = ("epochs", "recipe", "widths", "limit", "holdout_keep_class", "ema")
#: values of settings that runs recorded before the setting existed
SETTING_DEFAULTS = {"holdout_keep_class": False, "ema": 0.0}
#: leave-attack-types-out validation of the novelty rule: attack types with fewer than this share of the training
#: split's rows are held out of training (rare types stand in for types never seen); fixed before any run
HOLDOUT_SHARE = 0.01
#: false-alarm rates on the validation normals that set a novelty score's threshold (its 1 - rate quantile)
FPR_GRID = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
#: neighbours averaged by the k-nearest-normal-flows score
KNN_K = 5


class FlowMLP(nn.Module):
    """Baseline: categorical embeddings + numeric features of the scored flow -> 3-layer MLP."""

    def __init__(self, in_features: int, cat_cardinalities: list[int], num_classes: int, hidden: int = 256):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(c, 8) for c in cat_cardinalities)
        w = in_features + 8 * len(cat_cardinalities)
        self.net = nn.Sequential(nn.Linear(w, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(0.15),
                                 nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Dropout(0.15),
                                 nn.Linear(hidden // 2, num_classes))

    def _inputs(self, x, c):
        x, c = x[:, -1], c[:, -1]
        return torch.cat([x, *(e(c[:, i]) for i, e in enumerate(self.emb))], -1)

    def features(self, x, c):
        """Pre-logit features ``[B, hidden // 2]`` (the input of the last layer)."""
        return self.net[:-1](self._inputs(x, c))

    def forward(self, x, c, return_aux=False):
        logits = self.net(self._inputs(x, c))
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


def train_nn(model, data, task, counts, epochs, seed, device, log, ema: float = 0.0):
    """Train with the recipe, select the epoch on validation; ``ema`` > 0 validates and keeps the exponential moving
    average of the weights (decay ``ema`` per step, as ``gatedzoo.tasks.EMAWeights`` does for Lightning recipes)."""
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
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema > 0 else None
    kept = average.module if average is not None else model
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
            if average is not None:
                average.update_parameters(model)
        score = select_score(yv_np, predict(kept, xv, cv).numpy(), task)
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(kept.state_dict()), epoch, 0
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


def holdout_types(names: np.ndarray, y: np.ndarray, share: float = HOLDOUT_SHARE,
                  keep_per_class: bool = False) -> list[str]:
    """Attack types (raw names) whose rows are fewer than ``share`` of ``names [N]`` (``y [N]``: 0 = normal).

    ``keep_per_class``: a class (value of ``y``) whose every type is rare keeps its most frequent type in training,
    so that a classifier trained without the held-out types can still predict every class (5-class: R2L keeps
    ``warezclient``, U2R ``buffer_overflow``; for binary labels nothing changes while one attack type is common).
    """
    rare = {str(t) for t, c in zip(*np.unique(names[y != 0], return_counts=True)) if c < share * len(names)}
    if keep_per_class:
        for cls in np.unique(y[y != 0]):
            types, counts = np.unique(names[y == cls], return_counts=True)
            if all(str(t) in rare for t in types):
                rare.discard(str(types[counts.argmax()]))
    return sorted(rare)


def flow_points(x: torch.Tensor, c: torch.Tensor, cards: list[int]) -> torch.Tensor:
    """Scaled numeric features ``x [N, T, F]`` of the scored flow + one-hot categories ``c [N, T, K]`` -> ``[N, D]``.

    The space of the k-nearest-normal and isolation-forest scores: the robust-scaled (clipped) numbers and one unit
    per categorical value, so a different service or flag counts like a feature one scaled unit apart.
    """
    return onehot_points(x[:, -1], c[:, -1], cards, torch.float32)


def knn_score(ref: torch.Tensor, query: torch.Tensor, k: int = KNN_K, bs: int = 2048) -> np.ndarray:
    """Mean Euclidean distance ``[N]`` from each query row to its ``k`` nearest rows of ``ref`` (normal flows)."""
    return knn_distance(ref, query, k, bs).cpu().numpy()


@torch.no_grad()
def embed_points(model, x: torch.Tensor, c: torch.Tensor, bs: int = 4096) -> torch.Tensor:
    """L2-normalised pre-logit features ``[N, E]`` of a classifier (TCH-Net's residual head before its last layer,
    the MLP's last hidden layer): the space of the deep-kNN score (Sun et al., ICML 2022)."""
    model.eval()
    out = []
    for i in range(0, len(x), bs):
        xb, cb = x[i:i + bs], c[i:i + bs]
        if hasattr(model, "forward_head"):
            h = model.forward_head(model.forward_features(xb, cb)[1], pre_logits=True)
        else:
            h = model.features(xb, cb)
        out.append(F.normalize(h.float(), dim=1))
    return torch.cat(out)


@torch.no_grad()
def recon_score(model, x: torch.Tensor, c: torch.Tensor, bs: int = 4096) -> np.ndarray | None:
    """Per-flow MSE ``[N]`` of the model's auxiliary reconstruction of its input; `None` for models without one."""
    model.eval()
    out = []
    for i in range(0, len(x), bs):
        _, recon = model(x[i:i + bs], c[i:i + bs], return_aux=True)
        if recon is None:
            return None
        out.append((recon.float() - x[i:i + bs].mean(1)).pow(2).mean(1))
    return torch.cat(out).cpu().numpy()


def novelty_scores(model, detectors: dict, x: torch.Tensor, c: torch.Tensor, cards: list[int],
                   only: str | None = None) -> dict[str, np.ndarray]:
    """The candidate novelty scores ``[N]`` (higher = less like normal training traffic) of the flows ``x, c``.

    ``knn`` (input space), ``knn_emb`` (the same in the classifier's own L2-normalised pre-logit space, the normal
    training flows embedded by ``model``) and ``iforest`` always; ``recon`` for models with a reconstruction head.
    ``only``: compute just this one.
    """
    pts = flow_points(x, c, cards)
    out = {}
    if only in (None, "knn"):
        out["knn"] = knn_score(detectors["ref"], pts)
    if only in (None, "knn_emb"):
        nx, nc = detectors["normal_flows"]
        out["knn_emb"] = knn_score(embed_points(model, nx, nc), embed_points(model, x, c))
    if only in (None, "iforest"):
        out["iforest"] = -detectors["iforest"].score_samples(pts.cpu().numpy())
    if only in (None, "recon"):
        rec = recon_score(model, x, c)
        if rec is not None:
            out["recon"] = rec
    return out


def fit_detectors(ref: torch.Tensor, seed: int, normal_flows: tuple | None = None) -> dict:
    """Detectors fitted on the normal training flows only: the kNN reference ``ref [N, D]``, an isolation forest,
    and the flows themselves ``(x, c)`` for the classifier-space kNN (embedded by each classifier when scored)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=-1).fit(ref.cpu().numpy())
    return {"ref": ref, "iforest": forest, "normal_flows": normal_flows}


def rule_classes(prob: np.ndarray, score: np.ndarray | None, thr: float) -> np.ndarray:
    """Class ``[N]`` of each flow under the novelty rule (:func:`gatedzoo.layers.novelty_rule` on numpy arrays): the
    arg-max of ``prob [N, C]`` (class 0 = normal), except that a flow the classifier calls normal whose novelty
    ``score`` exceeds ``thr`` becomes an attack: for C = 2 "attack if p(attack) > 0.5 or score > thr", for more
    classes the flow's most probable attack class."""
    s = None if score is None else torch.as_tensor(np.asarray(score, np.float64))
    return novelty_rule(torch.as_tensor(np.asarray(prob)), s, thr).numpy()


def combine(prob: np.ndarray, score: np.ndarray | None, thr: float) -> np.ndarray:
    """Class probabilities ``[N, C]`` whose arg-max is :func:`rule_classes` and whose attack score ``1 - p(normal)``
    is ``max(1 - p0, s / (s + thr))`` (:func:`gatedzoo.layers.combine_novelty` on numpy arrays), so the ranking
    metrics (ROC-AUC, PR-AUC) see both signals. ``score`` `None` (rule off) returns ``prob`` unchanged."""
    s = None if score is None else torch.as_tensor(np.asarray(score, np.float64))
    return combine_novelty(torch.as_tensor(np.asarray(prob, np.float64)), s, thr).numpy()


def choose_rule(y: np.ndarray, normal: np.ndarray, prob: np.ndarray, scores: dict) -> tuple[dict, list]:
    """The (score, false-alarm rate) that maximises the rule's MCC on a validation set, or the rule off.

    Args:
        y: ``[N]`` class labels, 0 = normal (binary: 1 = attack; 5-class: the MCC is the multi-class one).
        normal: ``[N]`` bool, rows whose quantile sets the threshold. prob: ``[N, C]`` classifier probabilities.
        scores: name -> ``[N]`` novelty score.
    Returns: the chosen ``{"score", "fpr", "thr", "val_mcc", "val_acc"}`` (ties keep the earlier, more conservative
    candidate: the plain classifier first, then lower false-alarm rates) and every candidate's validation metrics.
    """
    from sklearn.metrics import matthews_corrcoef

    def rate(pred):
        return float(matthews_corrcoef(y, pred)), float((pred == y).mean())

    mcc, acc = rate(rule_classes(prob, None, math.inf))
    best = {"score": None, "fpr": 0.0, "thr": math.inf, "val_mcc": mcc, "val_acc": acc}
    grid = [dict(best)]
    for name, s in scores.items():
        for fpr in FPR_GRID:
            thr = float(np.quantile(s[normal], 1 - fpr))
            mcc, acc = rate(rule_classes(prob, s, thr))
            grid.append({"score": name, "fpr": fpr, "thr": thr, "val_mcc": mcc, "val_acc": acc})
            if mcc > best["val_mcc"]:
                best = grid[-1]
    return best, grid


def novelty_study(model_name, seed, full_model, ctx, log):
    """Leave-attack-types-out choice of a novelty rule, then the rule on KDDTest+ with the full-data classifier.

    1. A classifier of the same recipe is trained on the training split without the held-out types (early stopping
       on the validation split without them). 2. Its validation set for the rule = the whole validation split plus
       the training-split rows of the held-out types; every candidate (score, false-alarm rate on the validation
       normals) is scored there and the best MCC wins (or the plain classifier). 3. The same rule (same score, its
       threshold re-set at the same false-alarm rate on the validation normals with the full classifier) is applied
       to ``full_model`` (trained on the whole training split) and KDDTest+ is scored once.
    """
    data, names, held, det, cards, device = (ctx[k] for k in ("data", "names", "held", "det", "cards", "device"))
    task, label_names = ctx["task"], ctx["label_names"]
    ts = time.time()
    (xt, ct, yt), (xv, cv, yv), (xs, cs, ys) = data["train"], data["val"], data["test"]
    keep_t = torch.as_tensor(~np.isin(names["train"], held), device=device)
    keep_v = torch.as_tensor(~np.isin(names["val"], held), device=device)
    sub = {"train": (xt[keep_t], ct[keep_t], yt[keep_t]), "val": (xv[keep_v], cv[keep_v], yv[keep_v])}
    counts = np.bincount(sub["train"][2].cpu().numpy(), minlength=ctx["margs"]["num_classes"]).tolist()
    model = build_model(model_name, ctx["margs"], seed, device)
    val_sel, _ = train_nn(model, sub, task, counts, ctx["epochs"], seed, device, log)
    out_t = ~keep_t
    xn, cn = torch.cat([xv, xt[out_t]]), torch.cat([cv, ct[out_t]])
    yn = torch.cat([yv, yt[out_t]]).cpu().numpy()
    normal = yn == 0
    n_held = int(np.isin(names["val"], held).sum() + out_t.sum().item())
    p_val = predict(model, xn, cn).numpy()
    rule, grid = choose_rule(yn, normal, p_val, novelty_scores(model, det, xn, cn, cards))
    # the chosen rule with the full classifier: threshold at the same false-alarm rate on the validation normals
    p_test = predict(full_model, xs, cs).numpy()
    plain = flow_metrics(ys.cpu().numpy(), p_test, label_names)
    thr, s_test = math.inf, None
    if rule["score"] is not None:
        # one call for both splits: a row's score does not depend on the others, and the classifier-space kNN then
        # embeds its normal reference flows once
        s = novelty_scores(full_model, det, torch.cat([xv, xs]), torch.cat([cv, cs]), cards, rule["score"])
        s_val, s_test = np.split(s[rule["score"]], [len(xv)])
        thr = float(np.quantile(s_val[yv.cpu().numpy() == 0], 1 - rule["fpr"]))
    prob = combine(p_test, s_test, thr)
    ys_np = ys.cpu().numpy()
    m = flow_metrics(ys_np, prob, label_names)
    unseen = ctx["unseen"]
    flag_plain, flag = p_test.argmax(1) != 0, prob.argmax(1) != 0

    def share(flags, mask):
        return float(flags[mask].mean()) if mask.any() else math.nan

    seen_attack = (ys_np != 0) & ~unseen
    diag = {"unseen_flows": int(unseen.sum()), "unseen_recall_plain": share(flag_plain, unseen),
            "unseen_recall": share(flag, unseen), "seen_attack_recall_plain": share(flag_plain, seen_attack),
            "seen_attack_recall": share(flag, seen_attack), "normal_false_alarm_plain": share(flag_plain, ys_np == 0),
            "normal_false_alarm": share(flag, ys_np == 0)}
    row = {"task": task, "model": model_name, "seed": seed, "held_out_types": held,
           "novelty_val_rows": {"normal": int(normal.sum()), "attack": int((~normal).sum()), "held_out": n_held},
           "holdout_classifier_val": val_sel, "rule": {**rule, "thr_full": thr}, "val_grid": grid,
           "test_plain": plain, "test": m, "diagnostics": diag, "seconds": time.time() - ts}
    log(f"  novelty {task} {model_name} seed {seed}: rule {rule['score']} @ fpr {rule['fpr']} "
        f"(val MCC {rule['val_mcc']:.4f}, "
        f"plain {grid[0]['val_mcc']:.4f}); test acc {plain['accuracy']:.4f} -> {m['accuracy']:.4f}, "
        f"mcc {plain['mcc']:.4f} -> {m['mcc']:.4f}, acc5 {plain.get('accuracy_multiclass', math.nan):.4f} -> "
        f"{m.get('accuracy_multiclass', math.nan):.4f}, unseen recall {diag['unseen_recall_plain']:.3f} -> "
        f"{diag['unseen_recall']:.3f} ({time.time() - ts:.1f}s)")
    return row


def novelty_context(data, names, margs, counts, epochs, device, task="binary", label_names=None,
                    keep_per_class: bool = False) -> dict:
    """What :func:`novelty_study` needs of one data set (``task`` "binary" or "5class", its ``label_names``).

    Args:
        data: split -> ``(x [N, T, F], c [N, T, K], y [N])`` tensors on ``device``. names: split -> ``[N]`` attack
            names. margs: the networks' arguments. counts: training class counts. epochs: the recipe's maximum.
        keep_per_class: the held-out types leave every class one type (:func:`holdout_types`).
    Returns: the held-out types, detectors fitted on the training split's normal flows (seed 0: they do not depend
    on the classifier's seed) and the diagnostic mask ``unseen [N_test]`` of test attacks of types absent from the
    training file (never used for a choice).
    """
    held = holdout_types(names["train"], data["train"][2].cpu().numpy(), keep_per_class=keep_per_class)
    cards = margs["cat_cardinalities"]
    is_normal = data["train"][2] == 0
    normal_pts = flow_points(data["train"][0], data["train"][1], cards)[is_normal]
    known = sorted(set(names["train"]) | set(names["val"]))
    return {"data": data, "names": names, "held": held, "cards": cards, "device": device, "margs": margs,
            "epochs": epochs, "counts": counts, "task": task, "label_names": label_names,
            "det": fit_detectors(normal_pts, 0, (data["train"][0][is_normal], data["train"][1][is_normal])),
            "unseen": (data["test"][2].cpu().numpy() != 0) & ~np.isin(names["test"], known)}


def record_novelty(source: str, out: Path, fpr: float = 0.1, k: int = KNN_K) -> dict:
    """Record the validated novelty rule in the binary classifier's zoo config (``novelty_rule``) and score it.

    ``source``: a zoo name or folder of a binary TCH-Net trained here. The rule is the one the leave-attack-types-out
    validation chose for every network and seed (kNN over ``k`` = 5 normal training flows, threshold at a ``fpr`` =
    10 % false-alarm rate on the validation normals). The guard is fitted on this benchmark's split (seed 0), KDDTest+
    is scored once with it, and the folder ``out`` gets the source's files unchanged (the guard's reference flows are
    rows of the training data, so they are not saved: ``gatedzoo eval NAME --novelty`` re-reads them) except that its
    config gains ``novelty_rule``: the rule, its threshold, its reference split and its KDDTest+ metrics."""
    model = create_model(source, pretrained=True)
    if model.zoo_config.get("flow_task") != "binary":
        raise ValueError(f"{source} is a {model.zoo_config.get('flow_task')} model; the validated rule is binary.")
    # this benchmark's split and preprocessing (seed 0); fit_novelty_guard refuses a different scaler
    dm = FlowDataModule(task="binary", seed=0, window=int(model.zoo_config.get("window", 1)))
    fit_novelty_guard(model, dm, fpr, k)
    metrics = evaluate_flows(model)
    rule = model.zoo_config["novelty_rule"]
    rule.update({"chosen_by": "leave-attack-types-out validation, every network and seed (docs/models/tchnet.md)",
                 "recorded_by": f"benchmarks/tchnet_nslkdd.py --record-novelty {source}",
                 "test_metrics": metrics})
    _, folder = resolve_source(source, True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / WEIGHTS_NAME, out / WEIGHTS_NAME)
    write_json(out / CONFIG_NAME, {**json.loads((folder / CONFIG_NAME).read_text()), "novelty_rule": rule})
    return rule


def build_model(model_name, margs, seed, device):
    """A fresh network of the comparison, initialised from ``seed``."""
    torch.manual_seed(seed)
    if model_name == "mlp":
        model = FlowMLP(margs["in_features"], margs["cat_cardinalities"], margs["num_classes"])
    else:
        fusion = "concat" if model_name == "tchnet_nofusion" else "cbgaf"
        model = create_model("tchnet", **margs, fusion=fusion, attn_backend="sdpa")
    return model.to(device)


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


def paired_gain(rows, model="tchnet", base="tchnet_nofusion"):
    """Per task: ``model`` minus ``base`` on the seeds both ran (same data, same seeds), mean, std and per seed."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        a = {r["seed"]: r["test"] for r in rows if r["task"] == task and r["model"] == model}
        b = {r["seed"]: r["test"] for r in rows if r["task"] == task and r["model"] == base}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        gain = {"seeds": seeds}
        for key in ("accuracy", "mcc", "f1_attack", "accuracy_multiclass", "macro_f1_multiclass"):
            if key in a[seeds[0]]:
                d = [100 * (a[s][key] - b[s][key]) for s in seeds]
                gain[key] = {"mean": float(np.mean(d)), "std": float(np.std(d)), "per_seed": d}
        out[task] = gain
    return out


def gain_markdown(gains) -> str:
    lines = ["| task | metric | seeds | CB-GAF − concat (points, mean ± std) | per seed |", "|---|---|---|---|---|"]
    for task, g in gains.items():
        for key, v in g.items():
            if key != "seeds":
                per = ", ".join(f"{d:+.2f}" for d in v["per_seed"])
                lines.append(f"| {task} | {key} | {len(g['seeds'])} | {v['mean']:+.2f} ± {v['std']:.2f} | {per} |")
    return "\n".join(lines)


def novelty_markdown(nrows) -> str:
    """Plain classifier vs classifier + novelty rule on KDDTest+, per task, mean ± std over seeds, in %."""
    cols = ["accuracy", "f1_attack", "mcc", "roc_auc", "pr_auc", "fpr_at_tpr99", "accuracy_multiclass",
            "macro_f1_multiclass"]
    diag = ["unseen_recall", "seen_attack_recall", "normal_false_alarm"]

    def cell(vals):
        return f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals):.2f}"

    lines = ["| task | model | seeds | rules chosen (score @ val false-alarm rate) | " + " | ".join(cols + diag) + " |",
             "|" + "---|" * (4 + len(cols) + len(diag))]
    for task, model in dict.fromkeys((r.get("task", "binary"), r["model"]) for r in nrows):
        rs = [r for r in nrows if r.get("task", "binary") == task and r["model"] == model]
        rules = ", ".join(f"{r['seed']}: {r['rule']['score'] or 'off'}"
                          + (f" @ {r['rule']['fpr']:g}" if r["rule"]["score"] else "") for r in rs)
        for label, key, suffix in ((model, "test_plain", "_plain"), (f"{model} + novelty", "test", "")):
            cells = [cell([r[key][c] for r in rs]) if c in rs[0][key] else "–" for c in cols]
            cells += [cell([r["diagnostics"][d + suffix] for r in rs]) for d in diag]
            lines.append(f"| {task} | {label} | {len(rs)} | {rules if suffix == '' else '–'} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def write_report(out: Path, env, rows, nrows, sources=None) -> str:
    """``results.json`` (env, runs, summary, paired gain, novelty runs) and ``results.md``; returns the markdown."""
    gains = paired_gain(rows)
    doc = {"env": env, "runs": rows, "summary": summarise(rows), "cbgaf_gain": gains, "novelty": nrows}
    if sources:
        doc["merged_from"] = sources
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    # a novelty-only run (--models none) has no comparison table
    md = (markdown(summarise(rows)) + "\n" if rows else "") + ("\n" + gain_markdown(gains) + "\n" if gains else "")
    if nrows:
        md += ("\n" if md else "") + novelty_markdown(nrows) + "\n"
    (out / "results.md").write_text(md)
    return md


def merge_runs(paths: list[str], out: Path) -> str:
    """Combine the per-run JSON of several runs of this script into one table (``--merge OLD.json NEW.json``).

    Raises:
        ValueError: the runs differ in a setting of :data:`SAME_SETTINGS`, or two runs hold the same
            (task, model, seed).
    """
    docs = [json.loads(Path(p).read_text()) for p in paths]
    ref = docs[0]["env"]

    def setting(env, k):
        return env.get(k, SETTING_DEFAULTS.get(k))

    for path, doc in zip(paths[1:], docs[1:]):
        diff = [k for k in SAME_SETTINGS if setting(doc["env"], k) != setting(ref, k)]
        if diff:
            raise ValueError(f"{path} differs from {paths[0]} in {diff}: "
                             + "; ".join(f"{k}: {setting(ref, k)} vs {setting(doc['env'], k)}" for k in diff))
    rows, nrows, seen = [], [], set()
    for path, doc in zip(paths, docs):
        for r in doc["runs"]:
            key = (r["task"], r["model"], r["seed"])
            if key in seen:
                raise ValueError(f"{path} repeats {key}: merge runs of disjoint seeds.")
            seen.add(key)
            rows.append(r)
        for r in doc.get("novelty", []):
            key = ("novelty", r.get("task", "binary"), r["model"], r["seed"])
            if key in seen:
                raise ValueError(f"{path} repeats {key}: merge runs of disjoint seeds.")
            seen.add(key)
            nrows.append(r)
    rows.sort(key=lambda r: (r["task"] != "binary", r["seed"]))
    nrows.sort(key=lambda r: (r.get("task", "binary") != "binary", r["model"], r["seed"]))
    # an input that is itself a merge contributes its own calls and sources, so history is never lost
    calls = [c for d in docs
             for c in d["env"].get("runs") or [{k: d["env"].get(k) for k in ("device", "torch", "date")}]]
    sources = [s for p, d in zip(paths, docs) for s in d.get("merged_from") or [str(p)]]
    env = {**ref, "seeds": sorted({r["seed"] for r in rows}), "runs": calls}
    out.mkdir(parents=True, exist_ok=True)
    return write_report(out, env, rows, nrows, sources=sources)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/tchnet_bench")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first_seed .. first_seed + seeds - 1")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--tasks", default="binary,5class")
    ap.add_argument("--models", default="tchnet,tchnet_nofusion,mlp,hgb", help="compared models; 'none': the novelty "
                    "studies alone")
    ap.add_argument("--budget", type=float, default=0, help="seconds; start no new seed after this (0 = no limit)")
    ap.add_argument("--novelty", default="", help="networks (e.g. tchnet,mlp) that get the novelty study")
    ap.add_argument("--novelty-tasks", default="binary", help="tasks of the novelty study (binary, 5class)")
    ap.add_argument("--holdout-keep-class", action="store_true", help="novelty study: every attack class keeps its "
                    "most frequent type in training (the held-out types are the other rare ones)")
    ap.add_argument("--novelty-seeds", default="", help="seeds of the novelty study (default: the seeds run); "
                    "seeds outside the comparison train their own full classifier, after all tasks, within --budget")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only merge these results.json files (same settings, disjoint seeds) into --out")
    ap.add_argument("--plot", default="", help="only plot the shipped weights' KDDTest+ confusion matrices to this PNG")
    ap.add_argument("--ema", type=float, default=0.0, help="compared networks validate and keep the exponential "
                    "moving average of their weights, decay per step (0 = off; not with --novelty)")
    ap.add_argument("--limit", type=int, default=0, help="use only this many training rows (smoke tests)")
    ap.add_argument("--record-novelty", default="", metavar="MODEL", help="only write --out: MODEL (binary TCH-Net) "
                    "with the validated kNN novelty rule recorded in its config, scored on KDDTest+")
    args = ap.parse_args()
    if args.plot:
        return plot_confusion(args.plot)
    out = Path(args.out)
    if args.record_novelty:
        print(json.dumps(record_novelty(args.record_novelty, out), indent=2))
        return None
    if args.merge:
        print(merge_runs(args.merge, out))
        return None
    if not 0.0 <= args.ema < 1.0 or (args.ema and args.novelty):
        ap.error(f"--ema {args.ema}: give a decay in [0, 1) (0 = off), without --novelty (the novelty study trains "
                 "without the average)")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    def log(msg):
        print(msg, flush=True)
        with open(out / "log.txt", "a") as f:
            f.write(msg + "\n")

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    nov_models = [m for m in args.novelty.split(",") if m]
    nov_tasks = [t for t in args.novelty_tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m and m != "none"]
    nov_seeds = [int(x) for x in args.novelty_seeds.split(",") if x] or seeds
    env = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "epochs": args.epochs, "seeds": args.seeds, "recipe": RECIPE, "widths": SMALL, "limit": args.limit,
           "first_seed": args.first_seed, "budget": args.budget, "novelty": nov_models, "novelty_seeds": nov_seeds,
           "novelty_tasks": nov_tasks, "models": models,
           "holdout_share": HOLDOUT_SHARE, "holdout_keep_class": args.holdout_keep_class, "fpr_grid": FPR_GRID,
           "ema": args.ema,
           "knn_k": KNN_K}
    log(json.dumps(env))
    rows, nrows, t0 = [], [], time.time()
    tasks = args.tasks.split(",")
    # measured seconds of one novelty seed per network (full training + study): decides whether another fits
    nov_ctx, nov_cost = {}, {}
    for task in tasks:
        dm = FlowDataModule(task=task, seed=0, window=1)
        dm.setup()
        names = dict(dm.row_labels)
        if args.limit:
            for k in ("train", "val"):
                d = dm.datasets[k]
                d.index, d.y = d.index[: args.limit], d.y[: args.limit]
                names[k] = names[k][: args.limit]
        data = {k: tensors(dm.datasets[k], device) for k in ("train", "val", "test")}
        data_np = [tuple(t.cpu().numpy()[:, -1] if t.ndim == 3 else t.cpu().numpy() for t in data[k])
                   for k in ("train", "val", "test")]
        ys = data["test"][2].cpu().numpy()
        margs = {**dm.model_args(), **SMALL}
        env[f"rows_{task}"] = {k: len(data[k][0]) for k in data}
        best_ship = None
        log(f"== {task}: train {len(data['train'][0])} val {len(data['val'][0])} test {len(ys)}; {dm.report}")
        if task in nov_tasks and nov_models:
            ctx = nov_ctx[task] = novelty_context(data, names, margs, dm.class_counts, args.epochs, device, task,
                                                  dm.label_names, args.holdout_keep_class)
            log(f"  novelty: held-out types {ctx['held']} "
                f"({int(np.isin(names['train'], ctx['held']).sum())} training rows); "
                f"{len(ctx['det']['ref'])} normal reference flows; "
                f"{int(ctx['unseen'].sum())} test flows of unseen types")
        for seed in seeds:
            share = 1 if task == tasks[-1] else 0.5
            if seed > args.first_seed and args.budget and time.time() - t0 > args.budget * share:
                log(f"  time budget reached: {task} stops before seed {seed}")
                break
            trained = {}
            for model_name in models:
                ts = time.time()
                if model_name == "hgb":
                    val, rounds, prob = run_hgb(data_np, task, dm.class_counts, seed)
                    params, extra = 0, {"rounds": rounds}
                else:
                    model = build_model(model_name, margs, seed, device)
                    params = sum(p.numel() for p in model.parameters())
                    val, epochs = train_nn(model, data, task, dm.class_counts, args.epochs, seed, device, log,
                                           ema=args.ema)
                    prob = predict(model, data["test"][0], data["test"][1]).numpy()
                    extra = {"epochs": epochs}
                    trained[model_name] = model
                    if model_name == "tchnet" and (best_ship is None or val > best_ship[0]):
                        best_ship = (val, seed, copy.deepcopy(model).cpu())
                m = flow_metrics(ys, prob, dm.label_names)
                rows.append({"task": task, "model": model_name, "seed": seed, "val": val, "params": params,
                             "test": m, **extra, "seconds": time.time() - ts})
                log(f"  {task} {model_name} seed {seed}: val {val:.4f} test acc {m['accuracy']:.4f} "
                    f"mcc {m['mcc']:.4f} acc5 {m.get('accuracy_multiclass', float('nan')):.4f} "
                    f"({time.time() - ts:.1f}s, total {time.time() - t0:.0f}s)")
            if task in nov_ctx and seed in nov_seeds:
                for model_name in nov_models:
                    ts = time.time()
                    full = trained.get(model_name)
                    if full is None:
                        full = build_model(model_name, margs, seed, device)
                        train_nn(full, data, task, dm.class_counts, args.epochs, seed, device, log)
                    nrows.append(novelty_study(model_name, seed, full, nov_ctx[task], log))
                    full_s = next((r["seconds"] for r in rows[::-1] if r["model"] == model_name), 0.0)
                    nov_cost[model_name] = max(nov_cost.get(model_name, 0.0), time.time() - ts + full_s)
        if best_ship is not None:
            val, seed, model = best_ship
            model.zoo_config["model_args"]["attn_backend"] = "auto"
            model.zoo_config.update(dm.zoo_metadata())
            test = next(r["test"] for r in rows if r["task"] == task and r["model"] == "tchnet" and r["seed"] == seed)
            model.save_pretrained(out / f"tchnet.nslkdd_{task}", metrics={
                "val_select": val, "seed": seed, **{f"test_{k}": v for k, v in test.items()}},
                benchmark="benchmarks/tchnet_nslkdd.py", device=env["device"])
        write_report(out, env, rows, nrows)
    # novelty seeds outside the comparison: train the full classifier too
    for task, seed in [(t, s) for t in nov_ctx for s in nov_seeds if s not in seeds]:
        ctx = nov_ctx[task]
        est = sum(nov_cost.values())
        if args.budget and time.time() - t0 + est > args.budget:
            log(f"  time budget reached: novelty stops before {task} seed {seed} "
                f"({time.time() - t0:.0f}s + ~{est:.0f}s)")
            break
        for model_name in nov_models:
            ts = time.time()
            full = build_model(model_name, ctx["margs"], seed, device)
            train_nn(full, ctx["data"], task, ctx["counts"], args.epochs, seed, device, log)
            nrows.append(novelty_study(model_name, seed, full, ctx, log))
            nrows[-1]["seconds_full"] = time.time() - ts - nrows[-1]["seconds"]
            nov_cost[model_name] = max(nov_cost.get(model_name, 0.0), time.time() - ts)
        write_report(out, env, rows, nrows)
    md = write_report(out, env, rows, nrows)
    log(md)
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
