"""Masked-expression pretraining and cell-type fine-tuning through Lightning, freezing, probes, evaluators."""

import json

import lightning as L
import numpy as np
import pytest
import torch

import gatedzoo
from gatedzoo.data.singlecell import GeneVocab, SingleCellDataModule, read_dataset, tokenize_anndata
from gatedzoo.tasks import EVALUATORS
from gatedzoo.tasks.masked_expression import (
    CELL_TYPE,
    MASKED_EXPRESSION,
    CellTypeClassification,
    MaskedExpression,
    embed_cells,
    knn_probe,
    linear_probe,
    masked_loss,
)


@pytest.fixture(scope="module")
def p68_cells():
    adata, kw = read_dataset("pbmc68k_reduced")
    return tokenize_anndata(adata, GeneVocab(list(adata.raw.var_names)), **kw)


def _dm(cells, **kw):
    dm = SingleCellDataModule(dataset=[], **{"max_genes": 48, "batch_size": 16, "val_fraction": 0.25, **kw})
    dm.vocab = GeneVocab.from_config({"genes": cells.meta.get("genes") or _genes()})
    dm.cells, dm.label_names = cells, list(cells.label_names)
    return dm


def _genes():
    adata, _ = read_dataset("pbmc68k_reduced")
    return list(adata.raw.var_names)


def _trainer(tmp_path, steps):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                     limit_val_batches=2, accelerator="cpu")


def test_pretraining_lowers_the_masked_loss_and_rebuilds_for_the_vocab(p68_cells, tmp_path):
    L.seed_everything(0, verbose=False)
    cells = p68_cells.subset(range(0, 700, 7))
    task = MaskedExpression(arch="scfm_sigmoid_tiny", lr=3e-3, warmup_epochs=0, schedule="constant")
    dm = _dm(cells)
    _trainer(tmp_path, 40).fit(task, datamodule=dm)
    assert task.model.vocab_size == 767  # rebuilt from the default 20000 for the data's vocabulary
    fresh = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=767)
    trained = masked_loss(task.model, cells, max_genes=48)
    assert trained < masked_loss(fresh, cells, max_genes=48) - 0.2
    assert len(task.model.zoo_config["gene_vocab"]["genes"]) == 765  # merged from zoo_metadata at fit start


def test_freeze_layers_and_classification_head(p68_cells, tmp_path):
    L.seed_everything(0, verbose=False)
    net = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=767)
    net.zoo_config.update(gene_vocab={"genes": _genes()}, preprocessing={"n_bins": 51, "max_genes": 48})
    net.save_pretrained(tmp_path / "pre")
    task = CellTypeClassification(arch=str(tmp_path / "pre"), pretrained=True, freeze_layers=1, lr=3e-3)
    frozen = {n for n, p in task.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("gene_embed") for n in frozen) and any(n.startswith("blocks.0.") for n in frozen)
    assert not any(n.startswith("blocks.1.") for n in frozen)
    before = task.model.blocks[0].attn.q_proj.weight.clone()
    cells = p68_cells.subset(range(0, 700, 5))
    _trainer(tmp_path, 12).fit(task, datamodule=_dm(cells, mask_ratio=0.0))
    assert task.model.num_classes == 10 and task.model.zoo_config["label_names"][0] == "CD14+ Monocyte"
    assert torch.equal(before, task.model.blocks[0].attn.q_proj.weight)
    with pytest.raises(ValueError, match="freeze_layers=5"):
        CellTypeClassification(arch="scfm_sigmoid_tiny", freeze_layers=5)


def test_probes_separate_real_cell_types_from_noise(p68_cells):
    adata, _ = read_dataset("pbmc68k_reduced")
    labels = p68_cells.labels
    pca = adata.obsm["X_pca"]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=pca.shape)
    chance = np.bincount(labels).max() / len(labels)
    assert knn_probe(pca, labels) > chance + 0.2 > knn_probe(noise, labels) + 0.1
    assert linear_probe(pca, labels) > chance + 0.2


def test_evaluators_registered_and_run_on_pbmc68k(tmp_path):
    assert MASKED_EXPRESSION in EVALUATORS and CELL_TYPE in EVALUATORS
    torch.manual_seed(0)
    m = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=767)
    m.zoo_config.update(gene_vocab={"genes": _genes()}, preprocessing={"n_bins": 51, "max_genes": 32})
    res = EVALUATORS[MASKED_EXPRESSION](m, data=None, split="test")
    assert set(res) >= {"masked_loss", "silhouette_label", "knn_acc"} and res["n_cells"] == 700
    assert 2.0 < res["masked_loss"] < 6.0  # untrained: near log(50) = 3.9
    json.dumps(res)


def test_embed_cells_is_deterministic(p68_cells):
    m = gatedzoo.create_model("scfm_softmax_tiny", vocab_size=767)
    a = embed_cells(m, p68_cells.subset(range(20)), max_genes=32)
    b = embed_cells(m, p68_cells.subset(range(20)), max_genes=32, batch_size=7)
    assert np.allclose(a, b, atol=1e-5)


def test_embedding_writer_refuses_a_truncated_h5ad_run_up_front():
    from types import SimpleNamespace

    from gatedzoo.tasks.masked_expression import EmbeddingWriter

    partial = SimpleNamespace(limit_predict_batches=2)
    with pytest.raises(ValueError, match="limit_predict_batches 2 predicts only part"):
        EmbeddingWriter("runs/x.h5ad").on_predict_start(partial, None)
    EmbeddingWriter("runs/x.npy").on_predict_start(partial, None)  # an array of the predicted rows is fine
    EmbeddingWriter("runs/x.h5ad").on_predict_start(SimpleNamespace(limit_predict_batches=1.0), None)
