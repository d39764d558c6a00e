"""The scvi-tools-style API: setup_anndata, embed in place on a fresh AnnData, checks, fine-tune, predict, save/load."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from datafiles import need

import gatedzoo
from gatedzoo.data.singlecell import PBMC_STIM, DataCheckError, read_dataset
from gatedzoo.singlecell import SCFM


@pytest.fixture(scope="module")
def stim_genes():
    return list(ad.read_h5ad(need(PBMC_STIM), backed="r").var_names)


@pytest.fixture()
def model(stim_genes, tmp_path):
    """An untrained tiny model over the pbmc_stim + pbmc68k genes, saved and reloaded as a user would."""
    torch.manual_seed(0)
    p68 = list(read_dataset("pbmc68k_reduced")[0].raw.var_names)
    genes = list(dict.fromkeys(stim_genes + p68))
    net = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=len(genes) + 2)
    net.zoo_config.update(gene_vocab={"genes": genes}, preprocessing={"n_bins": 51, "max_genes": 64,
                                                                      "expected_input": "counts"})
    net.save_pretrained(tmp_path / "m")
    return SCFM(str(tmp_path / "m"), device="cpu")


@pytest.fixture()
def fresh():
    """A fresh AnnData built here: 40 real pbmc_stim cells, counts in layers['counts'], log1p in .X."""
    src = ad.read_h5ad(need(PBMC_STIM))
    idx = np.r_[0:20, 1000:1020]
    counts = sp.csr_matrix(src.X[idx])
    x = counts.multiply(1e4 / counts.sum(1)).tocsr()
    x.data = np.log1p(x.data)
    a = ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame({"batch": src.obs["batch"].to_numpy()[idx]},
                                                            index=[f"c{i}" for i in range(40)]),
                   var=pd.DataFrame(index=src.var_names.copy()))
    a.layers["counts"] = counts
    return a


def test_embed_writes_into_the_callers_fresh_anndata(model, fresh):
    SCFM.setup_anndata(fresh, layer="counts", batch_key="batch")
    ident = id(fresh)
    assert model.embed(fresh) is None
    assert id(fresh) == ident and fresh.obsm["X_scfm"].shape == (40, 64)
    assert np.isfinite(fresh.obsm["X_scfm"]).all()
    assert np.allclose(model.get_latent_representation(fresh), fresh.obsm["X_scfm"], atol=1e-5)
    model.embed(fresh, key_added="X_other")
    assert "X_other" in fresh.obsm and fresh.uns["scfm"]["X_other"]["max_genes"] == 64
    import scanpy as sc

    sc.pp.neighbors(fresh, use_rep="X_scfm", n_neighbors=5)  # the scanpy contract: use_rep works
    assert fresh.obsp["connectivities"].shape == (40, 40)


def test_checks_before_work(model, fresh):
    with pytest.raises(DataCheckError, match="setup_anndata"):
        model.embed(fresh)
    SCFM.setup_anndata(fresh)  # .X is log-normalised but the model expects counts
    with pytest.raises(DataCheckError, match=r"expects raw counts.*layer= one of \['counts'\]"):
        model.embed(fresh)
    assert "X_scfm" not in fresh.obsm
    with pytest.raises(DataCheckError, match="obs has no column 'cell_type'"):
        SCFM.setup_anndata(fresh, layer="counts", labels_key="cell_type")
    with pytest.raises(DataCheckError, match="layer 'raw_counts' not found"):
        SCFM.setup_anndata(fresh, layer="raw_counts")
    low = ad.AnnData(X=fresh.layers["counts"][:, :500], obs=fresh.obs.copy(),
                     var=pd.DataFrame(index=[f"gene{i}" for i in range(500)]))
    SCFM.setup_anndata(low)
    with pytest.raises(DataCheckError, match=r"only 0 of 500 genes \(0.0%\)"):
        model.embed(low)
    SCFM.setup_anndata(fresh, input="log1p")  # knowingly using log data where no counts exist: allowed
    assert model.check(fresh)["input"] == "log1p"


def test_finetune_predict_and_save_roundtrip(model, tmp_path):
    p68, _ = read_dataset("pbmc68k_reduced")
    adata = p68.raw.to_adata()[::7].copy()  # 100 labelled cells, log1p (pbmc68k has no counts)
    adata.obs["bulk_labels"] = p68.obs["bulk_labels"].to_numpy()[::7]
    SCFM.setup_anndata(adata, labels_key="bulk_labels", input="log1p")
    with pytest.raises(ValueError, match="no cell-type head"):
        model.predict(adata)
    metrics = model.train(adata, max_epochs=1, freeze_layers=1, batch_size=16, enable_progress_bar=False)
    assert "val/acc" in metrics
    query = p68.raw.to_adata()[1::7].copy()
    SCFM.setup_anndata(query, input="log1p")
    model.predict(query)
    assert set(query.obs["scfm_pred"].cat.categories) <= set(p68.obs["bulk_labels"].astype(str))
    # plain str names after an in-memory training (np.str_ came out of indexing a NumPy array of the names)
    for names in (model.label_names, list(query.obs["scfm_pred"].cat.categories), query.uns["scfm_label_names"],
                  list(query.obs["scfm_pred"])):
        assert names and all(type(n) is str for n in names)
    assert query.obsm["scfm_probs"].shape == (100, len(model.label_names))
    assert np.allclose(query.obsm["scfm_probs"].sum(1), 1, atol=1e-4)
    assert np.allclose(query.obs["scfm_prob"], query.obsm["scfm_probs"].max(1))
    model.save_pretrained(tmp_path / "tuned")
    # the folder describes the fine-tuned weights: their validation metrics and the cells they learned from
    cfg = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert cfg["metrics"] == pytest.approx(metrics) and "val/macro_f1" in cfg["metrics"]
    assert cfg["training_data"].startswith("an AnnData passed to SCFM.train: 100 labelled of 100 cells, labels from "
                                           "obs['bulk_labels']")
    model.embed(query)
    assert query.uns["scfm"]["X_scfm"]["model"].endswith("/m, fine-tuned by SCFM.train")
    again = SCFM(str(tmp_path / "tuned"), device="cpu")
    assert again.label_names == model.label_names and again.vocab.genes == model.vocab.genes
    assert again.preprocessing["expected_input"] == "counts"
    q2 = query.copy()
    again.predict(q2, key="again")
    assert np.allclose(q2.obsm["again_probs"], query.obsm["scfm_probs"], atol=1e-5)


def test_model_without_vocabulary_is_refused():
    with pytest.raises(ValueError, match="gene vocabulary"):
        SCFM(gatedzoo.create_model("scfm_sigmoid_tiny"), device="cpu")


def test_an_architecture_without_weights_says_what_scfm_can_load():
    # the registry's advice, "use pretrained=False", is an argument SCFM does not have
    for name in ("scfm_sigmoid_tiny", "scfm_softmax_small"):
        with pytest.raises(KeyError, match=rf"SCFM\('{name}'\): there are no trained weights .*SCFM needs a trained "
                                           r"model. Use shipped weights \('scfm_sigmoid_small.pbmc'\).*"
                                           rf"--model.arch {name}") as err:
            SCFM(name, device="cpu")
        assert "pretrained=False" not in str(err.value)
    with pytest.raises(KeyError, match="scfm_sigmoid_smal"):  # a typo keeps the registry's list of names
        SCFM("scfm_sigmoid_smal", device="cpu")


def test_the_model_card_states_what_the_shipped_vocabulary_matches():
    from gatedzoo.zoo.pretrained import pretrained_config

    # the card said "Ensembl ids also matched"; the shipped vocabulary has none, so Ensembl var_names are refused
    vocab = pretrained_config("scfm_sigmoid_small.pbmc")["gene_vocab"]
    assert not vocab.get("ensembl_ids")
    card = (Path(__file__).parents[1] / "docs" / "models" / "scfm.md").read_text()
    assert "Ensembl ids also matched" not in card
    assert "the shipped vocabulary has no Ensembl ids: for Ensembl `var_names` pass `gene_key=`" in card


def test_saved_setup_travels_with_the_file_into_gatedzoo_eval(model, fresh, tmp_path):
    from gatedzoo.tasks import EVALUATORS

    fresh.obs["cell_type"] = np.where(np.arange(40) < 20, "ctrl_like", "stim_like")
    del fresh.layers["counts"]  # a user file with log-normalised data only
    path = tmp_path / "mine.h5ad"
    fresh.write_h5ad(path)
    evaluate = EVALUATORS[model.module.zoo_config["task"]]
    with pytest.raises(DataCheckError, match=r"setup_anndata\(adata, input='log1p'\).*write_h5ad"):
        evaluate(model.module, data=str(path), split="test")
    SCFM.setup_anndata(fresh, input="log1p", labels_key="cell_type")
    fresh.write_h5ad(path)
    assert read_dataset(str(path))[1] == {"input": "log1p", "labels_key": "cell_type"}
    out = evaluate(model.module, data=str(path), split="test")
    assert out["n_cells"] == 40 and np.isfinite(out["masked_loss"]) and 0 <= out["knn_acc"] <= 1


def test_embed_of_a_backed_view_equals_the_same_cells_in_memory(model, fresh, tmp_path):
    path = tmp_path / "cells.h5ad"
    fresh.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    SCFM.setup_anndata(backed, layer="counts", batch_key="batch")
    view = backed[(backed.obs["batch"] == "stim").to_numpy()]  # the last 20 of the file's 40 cells
    emb = model.get_latent_representation(view)
    mem = fresh[20:].copy()
    SCFM.setup_anndata(mem, layer="counts", batch_key="batch")
    assert emb.shape == (20, 64)
    assert np.allclose(emb, model.get_latent_representation(mem), atol=1e-5)


def test_unlabelled_cells_are_left_out_of_finetuning(model):
    p68, _ = read_dataset("pbmc68k_reduced")
    ref = p68.raw.to_adata()[::7].copy()
    lab = p68.obs["bulk_labels"].to_numpy()[::7].astype(object)
    lab[::3] = np.nan
    ref.obs["cell_type"] = pd.Categorical(lab)
    SCFM.setup_anndata(ref, labels_key="cell_type", input="log1p")
    with pytest.warns(UserWarning, match="8.5%"):  # pbmc68k_reduced keeps 765 genes of this 9,048-gene vocabulary
        model.train(ref, max_epochs=1, batch_size=16, limit_train_batches=1, limit_val_batches=1,
                    enable_progress_bar=False)
    assert "nan" not in model.label_names and model.label_names == sorted(set(lab[pd.notna(lab)]))
    model.predict(ref)
    assert "nan" not in list(ref.obs["scfm_pred"].cat.categories)
    ref.obs["cell_type"] = pd.Categorical([np.nan] * ref.n_obs, categories=["T"])
    with pytest.raises(DataCheckError, match="every cell's label is missing"):
        model.train(ref, max_epochs=1)


def test_check_reports_a_low_gene_overlap_visibly(model, fresh):
    from gatedzoo.data.singlecell import LowGeneOverlapWarning

    top = np.argsort(-np.asarray(fresh.layers["counts"].sum(0)).ravel())[:40]
    few = fresh[:, top].copy()
    SCFM.setup_anndata(few, layer="counts")
    with pytest.warns(LowGeneOverlapWarning, match=r"only 40 of the model's 9048 vocabulary genes \(0.4%\)"):
        assert model.check(few)["genes_in_vocab"] == 1.0
