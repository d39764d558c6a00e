"""Flow classification (intrusion detection): focal loss + auxiliary reconstruction, IDS metrics, ``gatedzoo eval``.

Metrics (:func:`flow_metrics`): accuracy, F1 of the attack class, ROC-AUC and PR-AUC of the attack score, MCC,
FPR at TPR 0.99, and the same accuracy / F1 / MCC for the trivial rule that calls every flow an attack. For
5-class models the attack score is ``1 - p(normal)`` and the multi-class accuracy and macro-F1 are added.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import TEST_LOSS, TRAIN_LOSS, VAL_LOSS, ZooTask, gather_cat, register_evaluator

log = logging.getLogger("gatedzoo")

VAL_F1 = "val/f1"
VAL_MCC = "val/mcc"
VAL_ACC = "val/acc"
VAL_MACRO_F1 = "val/macro_f1"
TEST_F1 = "test/f1"
TEST_ACC = "test/acc"
TRAIN_AUX = "train/aux"


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """Mean focal loss ``-alpha_y (1 - p_y)^gamma log p_y`` with label smoothing.

    Args:
        logits: ``[B, C]`` float. y: ``[B]`` long.
        gamma: focusing exponent (0 = cross-entropy). alpha: ``[C]`` class weights or `None`.
        smoothing: label smoothing ``eps``: the target puts ``1 - eps`` on ``y`` and ``eps / C`` elsewhere.
    """
    logp = F.log_softmax(logits.float(), -1)
    c = logits.shape[-1]
    target = torch.full_like(logp, smoothing / c).scatter_(1, y[:, None], 1 - smoothing + smoothing / c)
    ce = -(target * logp).sum(-1)
    pt = logp.gather(1, y[:, None]).squeeze(1).exp()
    loss = (1 - pt).pow(gamma) * ce
    if alpha is not None:
        loss = loss * alpha.to(loss.device)[y]
    return loss.mean()


def class_weights(counts: list[int]) -> list[float]:
    """Normalised inverse-frequency weights (mean 1 over present classes), square-rooted to temper rare classes."""
    c = np.asarray(counts, np.float64)
    w = np.where(c > 0, 1.0 / np.sqrt(np.maximum(c, 1)), 0.0)
    return (w / w[c > 0].mean()).tolist()


def fpr_at_tpr(y: np.ndarray, score: np.ndarray, tpr: float = 0.99) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``."""
    from sklearn.metrics import roc_curve

    fpr, tprs, _ = roc_curve(y, score)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def flow_metrics(y: np.ndarray, prob: np.ndarray, label_names: list[str] | None = None) -> dict[str, float]:
    """IDS metrics from integer labels ``y [N]`` and class probabilities ``prob [N, C]`` (class 0 = normal).

    With a single class in ``y`` the ranking metrics (ROC-AUC, PR-AUC, FPR@TPR0.99) are undefined and left out,
    with a warning.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, matthews_corrcoef, roc_auc_score

    y, prob = np.asarray(y), np.asarray(prob, np.float64)
    if len(y) != len(prob):
        raise ValueError(f"{len(y)} labels but {len(prob)} predictions.")
    yb = (y != 0).astype(np.int64)
    score = 1.0 - prob[:, 0]
    pred = prob.argmax(1)
    pb = (pred != 0).astype(np.int64)
    out = {"n": float(len(y)), "attack_share": float(yb.mean()), "accuracy": float(accuracy_score(yb, pb)),
           "f1_attack": float(f1_score(yb, pb, zero_division=0)), "mcc": float(matthews_corrcoef(yb, pb))}
    if yb.min() != yb.max():
        out.update(roc_auc=float(roc_auc_score(yb, score)), pr_auc=float(average_precision_score(yb, score)),
                   fpr_at_tpr99=fpr_at_tpr(yb, score))
    else:
        log.warning("the labels hold only one class (%s): ROC-AUC, PR-AUC and FPR@TPR0.99 are undefined and left out.",
                    "attack" if yb[0] else "normal")
    ones = np.ones_like(yb)
    out.update(all_attack_accuracy=float(yb.mean()), all_attack_f1=float(f1_score(yb, ones, zero_division=0)),
               all_attack_mcc=0.0)
    if prob.shape[1] > 2:
        out["accuracy_multiclass"] = float(accuracy_score(y, pred))
        out["macro_f1_multiclass"] = float(f1_score(y, pred, average="macro", labels=list(range(prob.shape[1])),
                                                    zero_division=0))
        names = label_names or [str(i) for i in range(prob.shape[1])]
        for i, name in enumerate(names):
            if (y == i).any():
                out[f"recall_{name}"] = float((pred[y == i] == i).mean())
    return out


class FlowClassification(ZooTask):
    """Trains TCH-Net on ``(x_num, x_cat, y)`` windows: focal loss + ``aux_weight`` * reconstruction MSE.

    Args:
        gamma (float): focal exponent. Default: ``2.0``.
        label_smoothing (float): Default: ``0.01``.
        aux_weight (float): weight of the auxiliary reconstruction of the window-mean numeric input. Default:
            ``0.05``.
        class_weighting (bool): focal ``alpha`` = tempered inverse class frequency of the training split. Default:
            `True`.
        noise_std (float): Gaussian input noise during training (applied to ``noise_p`` of the batches). Default:
            ``0.01``.
        noise_p (float): Default: ``0.3``.
        **kwargs: see :class:`~gatedzoo.tasks.ZooTask`. ``model_args`` gets ``in_features``, ``cat_cardinalities``
            and ``num_classes`` from the data module when the recipe leaves them out (see :meth:`setup`).
    """

    def __init__(self, *args, gamma: float = 2.0, label_smoothing: float = 0.01, aux_weight: float = 0.05,
                 class_weighting: bool = True, noise_std: float = 0.01, noise_p: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.alpha: torch.Tensor | None = None
        self._val: list = []

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "model_args"):
            return
        dm.setup(stage)
        want = dm.model_args()
        have = {k: getattr(self.model, k, None) for k in ("in_features", "num_classes")}
        have["cat_cardinalities"] = [e.num_embeddings for e in getattr(self.model, "cat_embed", [])]
        if not self.hparams.pretrained and have != want:
            from gatedzoo.zoo import create_model

            # the vocabulary (input width, category sizes) is only known once the training table is read
            self.model = create_model(self.hparams.arch, **{**(self.hparams.model_args or {}), **want})
        elif self.hparams.pretrained:
            if have["in_features"] != want["in_features"] or have["cat_cardinalities"] != want["cat_cardinalities"]:
                raise ValueError(
                    f"the pretrained model reads {have['in_features']} features and categories of sizes "
                    f"{have['cat_cardinalities']}, but the table gives {want['in_features']} and "
                    f"{want['cat_cardinalities']}; set data.init_args.preprocessor_from to the pretrained weights."
                )
            if have["num_classes"] != want["num_classes"]:
                log.warning("fine-tuning: new %d-class head replaces the pretrained %d-class head",
                            want["num_classes"], have["num_classes"])
                self.model.reset_classifier(want["num_classes"])
                self.model.zoo_config["model_args"]["num_classes"] = want["num_classes"]
        if self.hparams.class_weighting:
            self.alpha = torch.tensor(class_weights(dm.class_counts), dtype=torch.float32)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if getattr(self.model, "novelty", None) is not None:
            # its reference flows were scaled by the loaded weights' preprocessing (refitted here) and its threshold
            # set for their classifier: kept, it would flag the new model's flows against another scale
            log.warning("fine-tuning: the loaded weights' novelty guard is dropped (it belongs to them); fit one for "
                        "the trained weights with gatedzoo.tasks.flows.fit_novelty_guard(model, datamodule).")
            self.model.attach_novelty(None)

    def _loss(self, batch):
        x, c, y = batch
        if self.training and self.hparams.noise_std > 0 and torch.rand(()) < self.hparams.noise_p:
            x = x + self.hparams.noise_std * torch.randn_like(x)
        logits, recon = self.model(x, c, return_aux=True)
        cls = focal_loss(logits, y, self.hparams.gamma, self.alpha, self.hparams.label_smoothing)
        aux = F.mse_loss(recon.float(), x.mean(1).float())
        return cls + self.hparams.aux_weight * aux, aux, logits, y

    def training_step(self, batch, batch_idx):
        loss, aux, _, y = self._loss(batch)
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=len(y))
        self.log(TRAIN_AUX, aux, batch_size=len(y))
        return loss

    def _eval_step(self, batch, loss_name: str) -> None:
        loss, _, logits, y = self._loss(batch)
        self.log(loss_name, loss, batch_size=len(y), sync_dist=True)
        self._val.append((y.cpu(), torch.softmax(logits.float(), -1).cpu()))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, VAL_LOSS)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, TEST_LOSS)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        if not self._val:
            return
        # each rank scored its shard of the table: gather before the (non-additive) F1 / MCC / ROC-AUC
        y = gather_cat(self, torch.cat([a for a, _ in self._val])).numpy()
        p = gather_cat(self, torch.cat([b for _, b in self._val])).numpy()
        self._val.clear()
        m = flow_metrics(y, p)
        self.log(f"{split}/acc", m["accuracy"], prog_bar=True, sync_dist=True)
        self.log(f"{split}/f1", m["f1_attack"], prog_bar=True, sync_dist=True)
        self.log(f"{split}/mcc", m["mcc"], sync_dist=True)
        if "roc_auc" in m:
            self.log(f"{split}/roc_auc", m["roc_auc"], sync_dist=True)
        if "accuracy_multiclass" in m:
            self.log(f"{split}/acc5", m["accuracy_multiclass"], sync_dist=True)
            self.log(f"{split}/macro_f1", m["macro_f1_multiclass"], sync_dist=True)

    def predict_step(self, batch, batch_idx):
        x, c = batch[0], batch[1]
        return torch.softmax(self.model(x, c).float(), dim=-1)


@torch.no_grad()
def predict_table(model, df, fmt: str | None = None, batch_size: int = 2048, time_format: str | None = None
                  ) -> np.ndarray:
    """Class probabilities ``[N, C]`` float32 for every flow of a raw table, with the model's stored preprocessing.

    Args:
        model: flow weights (``zoo_config["preprocessing"]``). df (pandas.DataFrame): the raw table, one row per flow;
            column names as the source writes them (CICFlowMeter's leading spaces are fine).
        fmt (str, Optional): the table's format. Default: the model's.
        batch_size (int): Default: ``2048``.
        time_format (str, Optional): ``strftime`` pattern of the time stamps (windowed models). Default: the one
            the model was trained with, else inferred (:func:`gatedzoo.data.flows.flow_times`).
    """
    from gatedzoo.data.flows import FlowPreprocessor, FlowWindows, table_windows

    cfg = getattr(model, "zoo_config", {})
    if "preprocessing" not in cfg:
        raise ValueError("the model carries no flow preprocessing (zoo_config['preprocessing']); train it with "
                         "FlowDataModule or load shipped flow weights.")
    pre = FlowPreprocessor.from_state(cfg["preprocessing"])
    x, c, _ = pre.transform(df)
    time_format = time_format or cfg.get("time_format")
    ds = FlowWindows(x, c, None, table_windows(df, fmt or pre.fmt, int(cfg.get("window", 1)), time_format))
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ds), batch_size):
        xb, cb = ds[torch.arange(i, min(i + batch_size, len(ds)))]
        out.append(torch.softmax(model(xb.to(device), cb.to(device)).float(), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_classes))


def _scored_flows(ds, normal_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored (last) flow of every window of a :class:`~gatedzoo.data.flows.FlowWindows`: ``x_num [N, F]``,
    ``x_cat [N, K]``; ``normal_only``: only the windows labelled 0 (normal)."""
    rows = ds.index[:, -1] if ds.index.ndim == 2 else ds.index
    if normal_only:
        rows = rows[ds.y == 0]
    return ds.x_num[rows], ds.x_cat[rows]


def fit_novelty_guard(model, datamodule, false_alarm_rate: float = 0.1, k: int = 5):
    """Fit a :class:`~gatedzoo.layers.KNNNoveltyGuard` on a flow data module and attach it to ``model`` (TCH-Net).

    The reference is the training split's normal flows, the threshold the ``1 - false_alarm_rate`` quantile of the
    score on the validation split's normal flows (so about that share of normal traffic is flagged). Both splits are
    read through the data module's preprocessing, which must be the model's (the module that trained it, or one
    built with ``preprocessor_from`` the model's weights). The rule and how to rebuild its reference are recorded in
    ``model.zoo_config['novelty_rule']`` (see :func:`rebuild_novelty_guard`). Returns the guard.

    ``tchnet.nslkdd_binary`` records ``false_alarm_rate=0.1, k=5``: the rule that a leave-attack-types-out
    validation chose for every network and seed (``benchmarks/tchnet_nslkdd.py --novelty``).
    """
    from gatedzoo.layers import KNNNoveltyGuard

    datamodule.setup("fit")
    if not hasattr(model, "attach_novelty"):
        raise TypeError(f"{type(model).__name__} takes no novelty guard; use TCH-Net (create_model('tchnet', ...)).")
    want = datamodule.model_args()
    cards = [e.num_embeddings for e in model.cat_embed]
    if want["in_features"] != model.in_features or want["cat_cardinalities"] != cards:
        raise ValueError(f"the data module gives {want['in_features']} features and categories "
                         f"{want['cat_cardinalities']}, the model reads {model.in_features} and {cards}; build the "
                         "data module with preprocessor_from set to the model's weights.")
    have = getattr(model, "zoo_config", {}).get("preprocessing")
    if have is not None:
        mine = datamodule.zoo_metadata()["preprocessing"]
        same = have["features"] == mine["features"] and all(
            np.allclose(np.asarray(have[key], float), np.asarray(mine[key], float)) for key in ("center", "scale"))
        if not same:
            raise ValueError("the data module's preprocessing (features, scaler) differs from the one the model "
                             "stores, so the guard would compare flows on another scale; fit the guard with the data "
                             "module that trained the model (the same tables, split seed and preprocessor_from).")
    ref, calib = _scored_flows(datamodule.datasets["train"]), _scored_flows(datamodule.datasets["val"])
    if len(ref[0]) < k:
        raise ValueError(f"the training split has {len(ref[0])} normal flows; the guard needs at least k={k}.")
    guard = KNNNoveltyGuard.fit(*ref, *calib, cards, k=k, false_alarm_rate=false_alarm_rate)
    model.attach_novelty(guard.to(next(model.parameters()).device))
    dm = datamodule
    # a user's table by its absolute path; a data-directory file by its name there (found again on any machine)
    train = str(Path(dm.train_path).expanduser().resolve()) if dm.train_path else dm.train_name
    reference = {"train_path": train, "format": dm.format, "task": dm.task,
                 "val_fraction": dm.val_fraction, "window": dm.window, "seed": dm.seed,
                 "preprocessor_from": dm.preprocessor_from, "max_train_rows": dm.max_train_rows,
                 "time_format": dm.time_format}
    rule = {"score": "knn", "k": k, "false_alarm_rate": false_alarm_rate, "threshold": float(guard.threshold),
            "reference_flows": len(guard.ref_num), "reference": reference}
    if hasattr(model, "zoo_config"):  # replaces an earlier rule whole: its notes and metrics described other data
        model.zoo_config["novelty_rule"] = rule
    return guard


def rebuild_novelty_guard(model):
    """Rebuild the guard that ``model.zoo_config['novelty_rule']`` records and attach it; returns it.

    Shipped weights carry the rule (score, ``k``, false-alarm rate, the threshold it gave) and how its reference was
    drawn (training table, split), not the reference flows themselves, which are rows of the training data: they are
    re-read from the data directory (NSL-KDD files are fetched with their sha256 when online) and the threshold is
    recomputed and checked against the recorded one. Only the training / validation split of that file is read: no
    test table is needed or loaded. ``gatedzoo eval NAME --novelty`` calls this.
    """
    from gatedzoo.data.flows import NSLKDD_FILES, FlowDataModule, fetch

    rule = getattr(model, "zoo_config", {}).get("novelty_rule")
    if not rule or "reference" not in rule:
        raise ValueError("the model records no novelty rule (zoo_config['novelty_rule']); fit one on your flows with "
                         "gatedzoo.tasks.flows.fit_novelty_guard(model, datamodule).")
    ref = dict(rule["reference"])
    known = {f.relpath: f for f in NSLKDD_FILES.values()}
    if ref["train_path"] in known:  # a data-directory file: its local copy, verified (or downloaded when online)
        ref["train_path"] = str(fetch(known[ref["train_path"]]))
    # the guard's reference and calibration are the training / validation split: the test table is never read
    guard = fit_novelty_guard(model, FlowDataModule(**ref, load_test=False), rule["false_alarm_rate"], rule["k"])
    model.zoo_config["novelty_rule"] = rule  # the recorded rule, with its notes and metrics, stays the model's
    recorded = rule.get("threshold")
    if recorded is not None and not math.isclose(float(guard.threshold), recorded, rel_tol=1e-9):
        model.attach_novelty(None)
        raise ValueError(f"the rebuilt guard's threshold {float(guard.threshold):.10g} differs from the recorded "
                         f"{recorded:.10g}: the reference data are not those the rule was fitted on (check the "
                         f"file {ref['train_path']} against the one in the model's training_data).")
    return guard


@register_evaluator("flow_classification")
def evaluate_flows(model, data: str | None = None, split: str = "test", novelty: bool = False) -> dict[str, float]:
    """Score a flow model on its test table (NSL-KDD ``KDDTest+``) or on ``data`` (a table in its format).

    Every flow of the table is scored: ``split`` must be ``"test"`` (a flow table has no other part to choose; a
    ``data`` file is never split). A ``data`` table without a label column (an unlabelled 41-column NSL-KDD file,
    say) gets predictions, not metrics: ``n`` and the share of flows predicted as attacks
    (``predicted_attack_share``), with a warning; :func:`predict_table` gives the per-flow scores.

    ``novelty``: first rebuild the novelty guard the model's config records (:func:`rebuild_novelty_guard`). With a
    guard attached, the metrics are the guarded detector's, followed by the classifier's own (``classifier_*``),
    the share of flows only the guard flagged (``novelty_flagged``) and the false alarms on normal flows of both.
    """
    from gatedzoo.data.flows import NSLKDD_FILES, fetch, label_column, labels_of, read_flow_table

    cfg = model.zoo_config
    fmt = cfg.get("preprocessing", {}).get("format", "nslkdd")
    if split != "test":
        # refused, not ignored: the metrics would be labelled with a split they were not computed on
        raise ValueError(f"split={split!r}: a flow model is scored on every flow of one table, its test table "
                         "(NSL-KDD models: KDDTest+) or the --data file, which is never split; leave --split out. To "
                         "score a part of your flows, write that part to its own file and pass it as --data.")
    if novelty and getattr(model, "novelty", None) is None:
        rebuild_novelty_guard(model)
    if data is None:
        if fmt != "nslkdd":
            raise ValueError(f"no default test table for a {fmt} model; pass --data PATH.")
        data = str(fetch(NSLKDD_FILES["test"]))
    df, fmt = read_flow_table(data, fmt)
    task = cfg.get("flow_task", "binary")
    if label_column(df) is None:
        prob = predict_table(model, df, fmt)
        log.warning("%s has no label column: predictions only, no metrics (per-flow scores: "
                    "gatedzoo.tasks.flows.predict_table).", data)
        return {"n": float(len(df)), "predicted_attack_share": round(float((prob.argmax(1) != 0).mean()), 6)}
    y = labels_of(df, fmt, task)
    prob = predict_table(model, df, fmt)
    metrics = flow_metrics(y, prob, cfg.get("label_names"))
    guard = getattr(model, "novelty", None)
    if guard is not None and guard.enabled:
        # the guarded detector's metrics first, then the classifier's own, so the guard's share is visible
        guard.enabled = False
        try:
            plain = predict_table(model, df, fmt)
        finally:
            guard.enabled = True
        alone = flow_metrics(y, plain, cfg.get("label_names"))
        normal = y == 0
        metrics["novelty_flagged"] = float(((prob.argmax(1) != 0) & (plain.argmax(1) == 0)).mean())
        if normal.any():
            metrics["false_alarms"] = float((prob.argmax(1)[normal] != 0).mean())
            metrics["classifier_false_alarms"] = float((plain.argmax(1)[normal] != 0).mean())
        metrics.update({f"classifier_{k}": alone[k] for k in ("accuracy", "f1_attack", "mcc", "roc_auc") if k in alone})
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


__all__ = ["FlowClassification", "TEST_ACC", "TEST_F1", "VAL_ACC", "VAL_F1", "VAL_MACRO_F1", "VAL_MCC", "class_weights",
           "evaluate_flows", "fit_novelty_guard", "flow_metrics", "focal_loss", "fpr_at_tpr", "predict_table",
           "rebuild_novelty_guard"]
