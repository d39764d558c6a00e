"""Single-cell tasks: masked-expression pretraining, cell-type fine-tuning, embeddings, linear / kNN probes.

Batches are the dicts of :func:`gatedzoo.data.singlecell.collate_cells` (``genes``, ``bins``, ``seq_lens``,
``targets``, ``labels``, ``batches``). Both tasks adapt the model to the data module in ``setup``: a model built
from scratch gets the vocabulary size of the data, and a classifier gets one output per label name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter

from gatedzoo.zoo import create_model

from .base import TEST_LOSS, TRAIN_LOSS, VAL_LOSS, ZooTask, gather_cat, register_evaluator

log = logging.getLogger("gatedzoo")

MASKED_EXPRESSION = "masked_expression"  # task names (zoo_config["task"], evaluators)
CELL_TYPE = "cell_type_classification"
VAL_CELL_ACC = "val/acc"
VAL_MACRO_F1 = "val/macro_f1"


def _model_args(task: ZooTask) -> dict:
    return dict(task.model.zoo_config.get("model_args", {}))


class _SingleCellTask(ZooTask):
    """Shared set-up: match the model to the data module's vocabulary and bins; freeze the first blocks."""

    def __init__(self, *args, freeze_layers: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._freeze_blocks(freeze_layers)

    def _freeze_blocks(self, n: int) -> None:
        """Freeze the embeddings and the first ``n`` blocks (``n = -1``: the whole encoder, a linear probe)."""
        if n == 0:
            return
        blocks = list(self.model.blocks)
        n = len(blocks) if n < 0 else n
        if n > len(blocks):
            raise ValueError(f"freeze_layers={n} but the model has {len(blocks)} blocks.")
        frozen = [self.model.gene_embed, self.model.value_embed, *blocks[:n]]
        if n == len(blocks):
            frozen.append(self.model.norm)
        for m in frozen:
            m.requires_grad_(False)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or getattr(dm, "vocab", None) is None:
            return
        want = {"vocab_size": len(dm.vocab), "n_bins": dm.hparams.n_bins}
        have = {"vocab_size": self.model.vocab_size, "n_bins": self.model.n_bins}
        if want != have:
            if self.hparams.pretrained:
                raise ValueError(
                    f"the pretrained model has {have} but the data module built {want}; set data.vocab to the "
                    f"same weights ({self.hparams.arch}) so the data is tokenised with the model's vocabulary."
                )
            args = {**_model_args(self), **want}
            self.model = create_model(self.hparams.arch, **args)
            self._freeze_blocks(self.hparams.get("freeze_layers", 0))
            log.info("%s: model rebuilt for the data module's vocabulary (%s)", type(self).__name__, want)


class MaskedExpression(_SingleCellTask):
    """Masked-expression pretraining: predict the expression bin of masked genes (cross-entropy over bins).

    Logs ``train/loss`` and ``val/loss`` (masked-gene cross-entropy, nats). ``predict_step`` returns cell
    embeddings ``[B, C]`` (float32) for the embed recipe.

    Args:
        freeze_layers (int): freeze the embeddings and the first N blocks (``-1`` = all). Default: ``0``.
        **kwargs: see :class:`~gatedzoo.tasks.ZooTask` (``arch``, ``model_args``, ``lr``, ...).
    """

    def __init__(self, *args, freeze_layers: int = 0, **kwargs):
        super().__init__(*args, freeze_layers=freeze_layers, **kwargs)
        self.save_hyperparameters()

    def _loss(self, batch) -> torch.Tensor:
        return self.model.masked_expression_loss(batch["genes"], batch["bins"], batch["seq_lens"], batch["targets"],
                                                 neg_genes=batch.get("neg_genes"))

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=len(batch["seq_lens"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log(VAL_LOSS, self._loss(batch), prog_bar=True, batch_size=len(batch["seq_lens"]), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log(TEST_LOSS, self._loss(batch), batch_size=len(batch["seq_lens"]), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.model.forward_features(batch["genes"], batch["bins"], batch["seq_lens"]).float()


class CellTypeClassification(_SingleCellTask):
    """Cell-type fine-tuning: cross-entropy on ``labels`` (cells without a label are ignored).

    The head gets ``len(datamodule.label_names)`` outputs; the label names travel with the weights. Logs
    ``train/loss``, ``val/loss``, ``val/acc``, ``val/macro_f1``. ``predict_step`` returns probabilities.

    Args:
        freeze_layers (int): freeze the embeddings and the first N blocks; ``-1`` trains the head only (a linear
            probe of the pretrained encoder). Default: ``0``.
        label_smoothing (float): cross-entropy label smoothing. Default: ``0.0``.
        **kwargs: see :class:`~gatedzoo.tasks.ZooTask`.
    """

    def __init__(self, *args, freeze_layers: int = 0, label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, freeze_layers=freeze_layers, **kwargs)
        self.save_hyperparameters()
        self._val_pred: list[torch.Tensor] = []
        self._val_true: list[torch.Tensor] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "label_names", None)
        if not names:
            raise ValueError("CellTypeClassification needs labels: set data.labels_key (an obs column of cell types).")
        if self.model.num_classes != len(names):
            self.model.reset_classifier(len(names))
            log.info("CellTypeClassification: head reset to %d classes %s", len(names), names[:5])

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.model.zoo_config["task"] = CELL_TYPE  # the weights now answer `gatedzoo eval` as a classifier

    def _logits(self, batch):
        return self.model(batch["genes"], batch["bins"], batch["seq_lens"])

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self._logits(batch).float(), batch["labels"], ignore_index=-1,
                               label_smoothing=self.hparams.label_smoothing)
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self._logits(batch).float()
        y = batch["labels"]
        self.log(VAL_LOSS, F.cross_entropy(logits, y, ignore_index=-1), batch_size=len(y), sync_dist=True)
        self._val_pred.append(logits.argmax(-1).cpu())
        self._val_true.append(y.cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_true:
            return
        from sklearn.metrics import f1_score

        # every rank holds its shard of the validation cells: gather them so accuracy and macro-F1 are global
        p = gather_cat(self, torch.cat(self._val_pred)).numpy()
        t = gather_cat(self, torch.cat(self._val_true)).numpy()
        keep = t >= 0
        self._val_pred, self._val_true = [], []
        if keep.any():
            self.log(VAL_CELL_ACC, float((p[keep] == t[keep]).mean()), prog_bar=True, sync_dist=True)
            self.log(VAL_MACRO_F1, float(f1_score(t[keep], p[keep], average="macro")), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return torch.softmax(self._logits(batch).float(), dim=-1)


@torch.no_grad()
def embed_cells(model, cells, *, max_genes: int = 512, batch_size: int = 64, device=None) -> np.ndarray:
    """Cell embeddings ``[N, C]`` float32 of :class:`~gatedzoo.data.singlecell.TokenizedCells` (top genes, no mask)."""
    from gatedzoo.data.singlecell import CellDataset, collate_cells

    return _run(model, cells, lambda b: model.forward_features(b["genes"], b["bins"], b["seq_lens"]),
                max_genes, batch_size, device, CellDataset, collate_cells)


@torch.no_grad()
def predict_proba(model, cells, *, max_genes: int = 512, batch_size: int = 64, device=None) -> np.ndarray:
    """Class probabilities ``[N, num_classes]`` of a model with a cell-type head."""
    from gatedzoo.data.singlecell import CellDataset, collate_cells

    return _run(model, cells, lambda b: torch.softmax(model(b["genes"], b["bins"], b["seq_lens"]).float(), -1),
                max_genes, batch_size, device, CellDataset, collate_cells)


def _run(model, cells, fn, max_genes, batch_size, device, dataset_cls, collate):
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    ds = dataset_cls(cells)
    out = []
    for i in range(0, len(ds), batch_size):
        b = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))], max_genes=max_genes, mask_ratio=0.0,
                    mask_bin=model.mask_bin, sample=False)
        b = {k: v.to(device) for k, v in b.items()}
        out.append(fn(b).float().cpu())
    model.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def masked_loss(model, cells, *, max_genes: int = 512, mask_ratio: float = 0.15, batch_size: int = 64, seed: int = 0,
                device=None, part: str = "token") -> float:
    """Mean masked-expression cross-entropy (nats) over ``cells``, with a fixed masking seed (reproducible).

    ``part``: ``"token"`` (bins from the token states: the masked-expression loss proper) or ``"cell"`` (bins from
    the cell embedding, models with ``mvc``).
    """
    from gatedzoo.data.singlecell import CellDataset, collate_cells

    device = device or next(model.parameters()).device
    rng = np.random.default_rng(seed)
    ds = CellDataset(cells)
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(ds), batch_size):
        b = collate_cells([ds[j] for j in range(i, min(i + batch_size, len(ds)))], max_genes=max_genes,
                          mask_ratio=mask_ratio, mask_bin=model.mask_bin, sample=False, generator=rng)
        b = {k: v.to(device) for k, v in b.items()}
        k = int((b["targets"] != -100).sum())
        loss = model.masked_expression_loss(b["genes"], b["bins"], b["seq_lens"], b["targets"], parts=True)[part]
        tot += float(loss) * k
        n += k
    model.train(was)
    return tot / max(n, 1)


def knn_probe(emb: np.ndarray, labels: np.ndarray, *, k: int = 10, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a kNN classifier (scikit-learn) on embeddings: a zero-shot label probe."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(k), emb, labels, cv=cv).mean())


def linear_probe(emb: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a standardised logistic regression (scikit-learn) on embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, emb, labels, cv=cv).mean())


def _eval_cells(model, data: str | None, labels_key: str | None):
    from gatedzoo.data.singlecell import PBMC68K, GeneVocab, read_dataset, tokenize_anndata

    vocab = GeneVocab.from_config(model.zoo_config["gene_vocab"])
    pre = model.zoo_config.get("preprocessing", {})
    adata, kw = read_dataset(data or PBMC68K)
    if labels_key:
        kw["labels_key"] = labels_key
    elif "labels_key" not in kw:
        kw["labels_key"] = next((c for c in ("cell_type", "celltype", "bulk_labels") if c in adata.obs), None)
    return tokenize_anndata(adata, vocab, n_bins=pre.get("n_bins", model.n_bins), name=data or PBMC68K,
                            expected_input=pre.get("expected_input", "counts"),
                            label_names=model.zoo_config.get("label_names") or None, **kw), pre


@register_evaluator(MASKED_EXPRESSION)
def evaluate_masked_expression(model, data: str | None = None, split: str = "test") -> dict[str, float]:
    """Masked-expression loss (fixed masking seed) and zero-shot label metrics of the embeddings.

    ``data``: ``pbmc68k_reduced`` (default; labels ``bulk_labels``), ``pbmc_stim`` or an ``.h5ad`` (labels from
    ``obs["cell_type"]`` when present). ``split`` is ignored: every cell is evaluated (no labels were used to train).
    """
    from sklearn.metrics import silhouette_score

    cells, pre = _eval_cells(model, data, None)
    model = model.float().eval()
    max_genes = pre.get("max_genes", 512)
    out = {"masked_loss": masked_loss(model, cells, max_genes=max_genes), "n_cells": float(len(cells))}
    if cells.labels is not None and len(set(cells.labels.tolist())) > 1:
        emb = embed_cells(model, cells, max_genes=max_genes)
        out["silhouette_label"] = float(silhouette_score(emb, cells.labels))
        out["knn_acc"] = knn_probe(emb, cells.labels)
    return out


@register_evaluator(CELL_TYPE)
def evaluate_cell_type(model, data: str | None = None, split: str = "test") -> dict[str, float]:
    """Accuracy and macro-F1 of the cell-type head on ``data`` (default ``pbmc68k_reduced``, all cells)."""
    from sklearn.metrics import f1_score

    cells, pre = _eval_cells(model, data, None)
    if cells.labels is None:
        raise ValueError("no labels to evaluate against: the data needs an obs 'cell_type' (or bulk_labels) column.")
    prob = predict_proba(model.float().eval(), cells, max_genes=pre.get("max_genes", 512))
    keep = cells.labels >= 0
    pred = prob.argmax(1)[keep]
    true = cells.labels[keep]
    return {"acc": float((pred == true).mean()), "macro_f1": float(f1_score(true, pred, average="macro"))}


def _flat_indices(nested) -> list[int]:
    """Flatten Lightning's per-dataloader / per-batch lists of sample indices."""
    if isinstance(nested, (list, tuple)):
        return [i for item in nested for i in _flat_indices(item)]
    return [int(nested)]


class EmbeddingWriter(BasePredictionWriter):
    """Writes the predict-loop output (embeddings or probabilities) of a single-dataset data module.

    Args:
        output (str): ``.h5ad`` (the dataset with the result in ``obsm[key]``) or ``.npy`` (the array).
        key (str): ``obsm`` key. Default: ``"X_scfm"``.
    """

    def __init__(self, output: str, key: str = "X_scfm"):
        super().__init__(write_interval="epoch")
        self.output, self.key = Path(output), key

    def on_predict_start(self, trainer: L.Trainer, pl_module) -> None:
        # an .h5ad needs one row per cell: a truncated predict loop would fail only after all the work
        if self.output.suffix != ".npy" and trainer.limit_predict_batches not in (1.0, None):
            raise ValueError(
                f"EmbeddingWriter: --trainer.limit_predict_batches {trainer.limit_predict_batches} predicts only part "
                f"of the cells, but {self.output.name} needs one row per cell. Drop the limit, or write a .npy "
                "(--trainer.callbacks.output emb.npy) for a partial run."
            )

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        arr = torch.cat(list(predictions))
        if trainer.world_size > 1:
            # each rank predicted a disjoint part of the cells (Lightning's unrepeated sampler): gather every row
            # with its dataset index, put them back in dataset order, and write once, on rank 0
            idx = torch.as_tensor(_flat_indices(batch_indices), dtype=torch.int64)
            if len(idx) != len(arr):
                raise RuntimeError("EmbeddingWriter: the predict loop gave no batch indices to order the rows of "
                                   "several ranks; predict with --trainer.devices 1.")
            arr, idx = gather_cat(pl_module, arr), gather_cat(pl_module, idx)
            if not trainer.is_global_zero:
                return
            arr = arr[torch.argsort(idx)]
        arr = arr.numpy()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.output.suffix == ".npy":
            np.save(self.output, arr)
            return
        from gatedzoo.data.singlecell import read_dataset

        dm = trainer.datamodule
        if len(dm.datasets) != 1:
            raise ValueError("EmbeddingWriter writes .h5ad for one dataset only; use a .npy output for several.")
        adata, _ = read_dataset(dm.datasets[0])
        adata = adata.to_memory() if adata.isbacked else adata
        adata.obsm[self.key] = arr
        adata.write_h5ad(self.output)
        log.info("wrote %s with obsm[%r] %s", self.output, self.key, arr.shape)
