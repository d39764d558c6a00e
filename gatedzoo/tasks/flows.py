"""Flow classification (intrusion detection): focal loss + auxiliary reconstruction, IDS metrics, ``gatedzoo eval``.

Metrics (:func:`flow_metrics`): accuracy, F1 of the attack class, ROC-AUC and PR-AUC of the attack score, MCC,
FPR at TPR 0.99, and the same accuracy / F1 / MCC for the trivial rule that calls every flow an attack. For
5-class models the attack score is ``1 - p(normal)`` and the multi-class accuracy and macro-F1 are added.
"""

from __future__ import annotations

import logging
import math

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
def predict_table(model, df, fmt: str | None = None, batch_size: int = 2048) -> np.ndarray:
    """Class probabilities ``[N, C]`` for every flow of a raw table, with the model's stored preprocessing."""
    from gatedzoo.data.flows import FlowPreprocessor, FlowWindows, table_windows

    cfg = getattr(model, "zoo_config", {})
    if "preprocessing" not in cfg:
        raise ValueError("the model carries no flow preprocessing (zoo_config['preprocessing']); train it with "
                         "FlowDataModule or load shipped flow weights.")
    pre = FlowPreprocessor.from_state(cfg["preprocessing"])
    x, c, _ = pre.transform(df)
    ds = FlowWindows(x, c, None, table_windows(df, fmt or pre.fmt, int(cfg.get("window", 1))))
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ds), batch_size):
        xb, cb = ds[torch.arange(i, min(i + batch_size, len(ds)))]
        out.append(torch.softmax(model(xb.to(device), cb.to(device)).float(), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_classes))


@register_evaluator("flow_classification")
def evaluate_flows(model, data: str | None = None, split: str = "test") -> dict[str, float]:
    """Score a flow model on its test table (NSL-KDD ``KDDTest+``) or on ``data`` (a table in its format)."""
    from gatedzoo.data.flows import NSLKDD_FILES, fetch, labels_of, read_flow_table

    cfg = model.zoo_config
    fmt = cfg.get("preprocessing", {}).get("format", "nslkdd")
    if data is None:
        if split != "test" or fmt != "nslkdd":
            raise ValueError(f"no default {split} table for a {fmt} model; pass --data PATH.")
        data = str(fetch(NSLKDD_FILES["test"]))
    df, fmt = read_flow_table(data, fmt)
    task = cfg.get("flow_task", "binary")
    y = labels_of(df, fmt, task)
    prob = predict_table(model, df, fmt)
    metrics = flow_metrics(y, prob, cfg.get("label_names"))
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


__all__ = ["FlowClassification", "TEST_ACC", "TEST_F1", "VAL_ACC", "VAL_F1", "VAL_MACRO_F1", "VAL_MCC", "class_weights",
           "evaluate_flows", "flow_metrics", "focal_loss", "fpr_at_tpr", "predict_table"]
