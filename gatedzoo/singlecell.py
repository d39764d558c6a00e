"""scvi-tools-style AnnData API for the single-cell foundation model (``scfm_*``).

Example::

    from gatedzoo.singlecell import SCFM
    SCFM.setup_anndata(adata, layer="counts", gene_key=None, batch_key="batch")
    model = SCFM("scfm_sigmoid_small")             # shipped weights (vocabulary + preprocessing travel with them)
    model.embed(adata)                              # adata.obsm["X_scfm"], in place
    sc.pp.neighbors(adata, use_rep="X_scfm"); sc.tl.umap(adata)

Fine-tune on labelled cells and predict::

    SCFM.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model.train(adata, max_epochs=10, freeze_layers=2)
    model.predict(query)                            # query.obs["scfm_pred"], query.obs["scfm_prob"]
    model.save_pretrained("my_model")               # SCFM("my_model") later

Every call checks the AnnData before work starts, every cell of it (gene overlap with the vocabulary, counts vs
normalised data, empty cells, NaN/inf, duplicated genes, missing keys) and says how to fix what it finds.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from gatedzoo.data.singlecell import (
    INPUT_KINDS,
    SETUP_FIELDS,
    SETUP_KEY,
    DataCheckError,
    GeneVocab,
    TokenizedCells,
    check_anndata,
    tokenize_anndata,
)
from gatedzoo.zoo import create_model

log = logging.getLogger("gatedzoo")

REGISTRY_KEY = SETUP_KEY  # adata.uns key of setup_anndata (read back by read_dataset for saved files)


def _load(name: str):
    """``create_model(name, pretrained=True)``; a registered architecture without shipped weights is refused with
    what ``SCFM`` can load instead (it has no ``pretrained=False``: an untrained network has no use here)."""
    from gatedzoo.zoo import get_arch, list_models

    try:
        return create_model(name, pretrained=True)
    except KeyError as err:
        arch = name.partition(".")[0]
        try:
            get_arch(arch)
        except KeyError:
            raise err from None  # not an architecture at all: the registry's message lists the known ones
        shipped = list_models("scfm*", pretrained=True)
        raise KeyError(
            f"SCFM({name!r}): there are no trained weights for {name!r}, and SCFM needs a trained model. Use shipped "
            f"weights ({', '.join(map(repr, shipped)) or 'none'}), a folder written by SCFM.save_pretrained or a "
            f"recipe's SaveZooWeights, or train {arch} first, e.g. gatedzoo fit -c recipes/scfm/pretrain.yaml "
            f"--model.arch {arch}, then SCFM('runs/scfm_pretrain/zoo')."
        ) from None


class SCFM:
    """A single-cell foundation model bound to its gene vocabulary and preprocessing.

    Args:
        model (str | nn.Module): zoo name (``"scfm_sigmoid_small"``, ``"arch.tag"``), a folder written by
            :meth:`save_pretrained`, or an ``SCFM`` network whose ``zoo_config`` holds ``gene_vocab``.
            Default: ``"scfm_sigmoid_small"``.
        device (str, Optional): ``"cuda"``, ``"cpu"``, ... Default: CUDA when available.
        batch_size (int): cells per forward pass. Default: ``64``.
    """

    def __init__(self, model="scfm_sigmoid_small", device: str | None = None, batch_size: int = 64):
        net = _load(str(model)) if isinstance(model, (str, Path)) else model
        cfg = getattr(net, "zoo_config", {})
        if "gene_vocab" not in cfg:
            raise ValueError(f"{model!r} carries no gene vocabulary (zoo_config['gene_vocab']); load trained "
                             "single-cell weights, e.g. SCFM('scfm_sigmoid_small').")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = net.float().eval().to(self.device)
        self.vocab = GeneVocab.from_config(cfg["gene_vocab"])
        self.preprocessing = dict(cfg.get("preprocessing", {}))
        self.batch_size = batch_size
        # what produced these weights, recorded with the embeddings: the name given, then how they were changed
        self.source = str(model) if isinstance(model, (str, Path)) else str(cfg.get("architecture", "SCFM network"))

    @property
    def label_names(self) -> list[str]:
        """The cell types of the head, plain ``str`` (empty without a head)."""
        return [str(n) for n in self.module.zoo_config.get("label_names", [])] if self.module.num_classes else []

    @staticmethod
    def setup_anndata(adata, layer: str | None = None, gene_key: str | None = None, batch_key: str | None = None,
                      labels_key: str | None = None, input: str | None = None) -> None:
        """Register which fields of ``adata`` the model reads (stored in ``adata.uns["_scfm_setup"]``).

        Args:
            layer (str, Optional): layer holding raw counts. Default: ``.X``.
            gene_key (str, Optional): var column with gene symbols or Ensembl ids. Default: ``var_names``.
            batch_key (str, Optional): obs column of batches (kept with the embeddings' metadata). Default: `None`.
            labels_key (str, Optional): obs column of cell types (fine-tuning); NaN = unlabelled cell, left out of
                fine-tuning. Default: `None`.
            input (str, Optional): ``"counts"`` or ``"log1p"``; say ``"log1p"`` to use log-normalised data on
                purpose when no counts exist. Default: detect (counts required).
        """
        if input is not None and input not in INPUT_KINDS:
            raise DataCheckError(f"input={input!r}; use one of {INPUT_KINDS} or None.")
        for key in (batch_key, labels_key):
            if key is not None and key not in adata.obs:
                raise DataCheckError(f"obs has no column {key!r}; columns are {list(adata.obs.columns)[:20]}.")
        if layer is not None and layer not in adata.layers:
            raise DataCheckError(f"layer {layer!r} not found; layers are {list(adata.layers.keys())}. "
                                 "Pass layer=None to use .X.")
        if gene_key is not None and gene_key not in adata.var:
            raise DataCheckError(f"var has no column {gene_key!r}; columns are {list(adata.var.columns)}.")
        fields = dict(layer=layer, gene_key=gene_key, batch_key=batch_key, labels_key=labels_key, input=input)
        adata.uns[REGISTRY_KEY] = {k: fields[k] for k in SETUP_FIELDS if fields[k] is not None}

    def _fields(self, adata) -> dict:
        if REGISTRY_KEY not in adata.uns:
            raise DataCheckError("this AnnData is not set up; call SCFM.setup_anndata(adata, layer='counts', ...) "
                                 "first (layer = the layer holding raw counts; None for .X).")
        return dict(adata.uns[REGISTRY_KEY])

    def check(self, adata) -> dict:
        """Run the input checks against this model's vocabulary; returns gene overlap and input kind.

        Returns ``gene_overlap`` (share of the model's vocabulary present in ``adata``), ``genes_in_vocab`` (share
        of ``adata``'s genes in the vocabulary), ``input`` and ``detected`` (see
        :func:`gatedzoo.data.singlecell.check_anndata`). A low ``gene_overlap`` also raises a
        :class:`~gatedzoo.data.singlecell.LowGeneOverlapWarning`; non-matching gene ids a :class:`DataCheckError`.
        """
        f = self._fields(adata)
        info = check_anndata(adata, self.vocab, expected_input=self.preprocessing.get("expected_input", "counts"),
                             **f)
        log.info("SCFM: %d of %d genes in the vocabulary (%.1f%%), input %s", int((info["gene_ids"] >= 0).sum()),
                 len(info["gene_ids"]), 100 * info["genes_in_vocab"], info["input"])
        return {k: info[k] for k in ("gene_overlap", "genes_in_vocab", "input", "detected")}

    def _tokenize(self, adata, with_labels: bool = False, label_names=None) -> TokenizedCells:
        f = self._fields(adata)
        if not with_labels:
            f.pop("labels_key", None)
        elif "labels_key" not in f:
            raise DataCheckError("fine-tuning needs labels: call SCFM.setup_anndata(adata, labels_key='<obs column "
                                 "of cell types>', ...).")
        return tokenize_anndata(adata, self.vocab, n_bins=self.module.n_bins, label_names=label_names,
                                expected_input=self.preprocessing.get("expected_input", "counts"), name="adata", **f)

    def get_latent_representation(self, adata) -> np.ndarray:
        """Cell embeddings ``[n_obs, C]`` float32 (scvi-tools' name)."""
        from gatedzoo.tasks.masked_expression import embed_cells

        cells = self._tokenize(adata)
        return embed_cells(self.module, cells, max_genes=self._max_genes(), batch_size=self.batch_size,
                           device=self.device)

    def embed(self, adata, key_added: str = "X_scfm") -> None:
        """Write the cell embeddings into ``adata.obsm[key_added]`` (in place; returns ``None``)."""
        adata.obsm[key_added] = self.get_latent_representation(adata)
        adata.uns.setdefault("scfm", {})[key_added] = {
            "model": self.source, "architecture": self.module.zoo_config.get("architecture"),
            "pool": self.module.pool, "max_genes": self._max_genes()}

    def predict(self, adata, key: str = "scfm") -> None:
        """Cell types into ``adata.obs[f"{key}_pred"]`` (categorical) and ``adata.obs[f"{key}_prob"]`` (max prob).

        The full probability matrix goes to ``adata.obsm[f"{key}_probs"]``, its columns to
        ``adata.uns[f"{key}_label_names"]``.
        """
        import pandas as pd

        from gatedzoo.tasks.masked_expression import predict_proba

        if not self.label_names:
            raise ValueError("this model has no cell-type head; fine-tune it first with SCFM.train(adata) on "
                             "labelled cells (setup_anndata(..., labels_key=...)).")
        cells = self._tokenize(adata)
        prob = predict_proba(self.module, cells, max_genes=self._max_genes(), batch_size=self.batch_size,
                             device=self.device)
        names = self.label_names
        # from codes, so the categories stay the plain str names (indexing a NumPy array would give np.str_)
        adata.obs[f"{key}_pred"] = pd.Categorical.from_codes(prob.argmax(1), categories=names)
        adata.obs[f"{key}_prob"] = prob.max(1).astype(np.float32)
        adata.obsm[f"{key}_probs"] = prob.astype(np.float32)
        adata.uns[f"{key}_label_names"] = list(names)

    def train(self, adata, max_epochs: int = 10, lr: float = 1e-4, freeze_layers: int = 0, batch_size: int = 32,
              val_fraction: float = 0.1, accelerator: str = "auto", seed: int = 0, **trainer_kwargs) -> dict:
        """Fine-tune a cell-type head (and the unfrozen blocks) on the labels registered with ``setup_anndata``.

        Cells whose label is missing (NaN / None in the ``labels_key`` column) are left out of training and of the
        validation metrics; the classes are the labels present (never a ``"nan"`` class).

        Args:
            freeze_layers (int): freeze the embeddings and the first N blocks; ``-1`` trains the head only.
            val_fraction (float): stratified hold-out for ``val/acc`` and ``val/macro_f1``.
            **trainer_kwargs: passed to ``lightning.Trainer``.

        Returns:
            The last logged metrics (``val/acc``, ``val/macro_f1``, ...); they also become the model's ``metrics``
            (the scores of the weights it started from move to ``fine_tuned_from``), and ``training_data`` says
            which cells it learned from.
        """
        import lightning as L

        from gatedzoo.data.singlecell import SingleCellDataModule
        from gatedzoo.tasks.masked_expression import CellTypeClassification

        cells = self._tokenize(adata, with_labels=True)
        n_obs = len(cells)
        labelled = np.flatnonzero(cells.labels >= 0)
        if not len(labelled):
            raise DataCheckError("every cell's label is missing (NaN in the labels_key column); fill it for at least "
                                 "the cells to learn from.")
        if len(labelled) < len(cells):
            # unlabelled cells carry no loss and no metric; leaving them out also keeps a batch from holding none
            log.info("SCFM.train: %d of %d cells have no label (NaN) and are left out", len(cells) - len(labelled),
                     len(cells))
            cells = cells.subset(labelled)
        L.seed_everything(seed, verbose=False)
        dm = SingleCellDataModule(dataset=[], n_bins=self.module.n_bins, max_genes=self._max_genes(),
                                  mask_ratio=0.0, val_fraction=val_fraction, batch_size=batch_size, seed=seed)
        dm.vocab, dm.cells, dm.label_names = self.vocab, cells, list(cells.label_names)
        dm.expected_input = self.preprocessing.get("expected_input", "counts")
        with tempfile.TemporaryDirectory() as tmp:
            self.module.save_pretrained(tmp)
            task = CellTypeClassification(arch=tmp, pretrained=True, lr=lr, freeze_layers=freeze_layers,
                                          warmup_epochs=min(1.0, max_epochs / 10))
            trainer = L.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
                                enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
            trainer.fit(task, datamodule=dm)
        task.model.zoo_config["preprocessing"] = {**self.preprocessing, **task.model.zoo_config.get("preprocessing",
                                                                                                    {})}
        task.model.zoo_config["task"] = "cell_type_classification"
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        # no checkpoint is restored, so the last epoch's metrics are those of the weights kept
        task.model.zoo_config["metrics"] = metrics
        task.model.zoo_config["training_data"] = (
            f"an AnnData passed to SCFM.train: {len(cells)} labelled of {n_obs} cells, labels from obs"
            f"[{self._fields(adata)['labels_key']!r}] ({len(cells.label_names)} cell types), "
            f"{val_fraction:.0%} held out for validation")
        self.module = task.model.float().eval().to(self.device)
        self.source = f"{self.source}, fine-tuned by SCFM.train"
        return metrics

    def save_pretrained(self, directory) -> Path:
        """Write weights + config (vocabulary, preprocessing, label names) into ``directory``."""
        return self.module.save_pretrained(directory)

    def _max_genes(self) -> int:
        return int(self.preprocessing.get("max_genes", 512))
