"""Single-cell data: input detection, vocabulary matching, rank binning, checks, backed reading, the data module."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from datafiles import need

from gatedzoo.data.singlecell import (
    PBMC_STIM,
    DataCheckError,
    GeneVocab,
    SingleCellDataModule,
    TokenizedCells,
    bin_values,
    check_anndata,
    collate_cells,
    detect_input_kind,
    read_dataset,
    tokenize_anndata,
)


@pytest.fixture(scope="module")
def stim():
    """60 real pbmc_stim cells (raw counts; 30 ctrl + 30 stim) with a counts layer and log-normalised .X."""
    import scanpy as sc

    full = ad.read_h5ad(need(PBMC_STIM))
    idx = np.r_[0:30, 1000:1030]
    a = full[idx].copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


@pytest.fixture(scope="module")
def p68():
    return read_dataset("pbmc68k_reduced")


def test_detect_input_kind_on_real_matrices(stim, p68):
    adata, _ = p68
    assert detect_input_kind(adata.X[:100]) == "scaled"
    assert detect_input_kind(adata.raw.X[:100]) == "log1p"
    assert detect_input_kind(stim.layers["counts"]) == "counts"
    assert detect_input_kind(stim.X) == "log1p"


def test_vocab_matches_symbols_and_versioned_ensembl_ids():
    v = GeneVocab(["CD3E", "MS4A1"], ensembl_ids=["ENSG00000198851", "ENSG00000156738"])
    assert len(v) == 4
    assert v.encode(["MS4A1", "ENSG00000198851.9", "NOPE"]).tolist() == [3, 2, -1]
    assert GeneVocab.from_config(v.to_config()).encode(["ENSG00000156738"]).tolist() == [3]
    with pytest.raises(ValueError, match="unique"):
        GeneVocab(["A", "A"])


def test_rank_bins_make_counts_and_log1p_tokenise_alike(stim):
    vocab = GeneVocab(list(stim.var_names))
    counts = tokenize_anndata(stim, vocab, layer="counts")
    logged = tokenize_anndata(stim, vocab, input="log1p")
    assert np.array_equal(counts.indptr, logged.indptr)
    assert np.array_equal(counts.bins, logged.bins)
    # genes come by decreasing expression, bins 1..50 non-increasing along a cell
    g, b = counts.cell(0)
    assert b.min() >= 1 and b.max() == 50 and np.all(np.diff(b.astype(int)) <= 0)
    assert counts.meta["input"] == "counts" and logged.meta["input"] == "log1p"


def test_bin_values_ties_share_a_bin():
    b = bin_values(np.array([1.0, 1.0, 1.0, 5.0]), 51)
    assert b[0] == b[1] == b[2] < b[3] == 50


def test_checks_refuse_bad_input_with_the_fix(stim, p68):
    vocab = GeneVocab(list(stim.var_names))
    with pytest.raises(DataCheckError, match="layer=.*counts"):
        check_anndata(stim, vocab)  # log1p .X where counts are expected: names the counts layer
    adata, _ = p68
    # pbmc68k .X is scaled and it has no layers: the fix is its .raw, which setup_anndata cannot name
    with pytest.raises(DataCheckError, match=r"negative values.*layers: \[\], or .raw: pass adata.raw.to_adata\(\) "
                                             r"\(with input='log1p'"):
        check_anndata(adata, GeneVocab(list(adata.var_names)))
    with pytest.raises(DataCheckError, match="obs has no column 'cell_type'"):
        check_anndata(stim, vocab, layer="counts", labels_key="cell_type")
    renamed = stim.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(stim.n_vars)]
    with pytest.raises(DataCheckError, match="Ensembl ids but the vocabulary holds symbols"):
        check_anndata(renamed, vocab, layer="counts")
    bad = stim.copy()
    bad.layers["counts"] = bad.layers["counts"].toarray()
    bad.layers["counts"][2, 5] = np.nan
    with pytest.raises(DataCheckError, match="NaN or inf"):
        check_anndata(bad, vocab, layer="counts")
    bad.layers["counts"][2] = 0
    with pytest.raises(DataCheckError, match="no expressed gene"):
        check_anndata(bad, vocab, layer="counts")


def test_backed_reading_equals_in_memory(stim, tmp_path):
    path = tmp_path / "cells.h5ad"
    stim.write_h5ad(path)
    vocab = GeneVocab(list(stim.var_names))
    mem = tokenize_anndata(stim, vocab, layer="counts", batch_key="batch")
    backed = tokenize_anndata(ad.read_h5ad(path, backed="r"), vocab, layer="counts", batch_key="batch")
    assert np.array_equal(mem.genes, backed.genes) and np.array_equal(mem.bins, backed.bins)
    assert backed.batch_names == ["ctrl", "stim"] and backed.batches.tolist() == [0] * 30 + [1] * 30


def test_tokenized_cells_save_load_subset_concat(stim, tmp_path):
    vocab = GeneVocab(list(stim.var_names))
    a = tokenize_anndata(stim, vocab, layer="counts", batch_key="batch")
    a.save(tmp_path / "a.pt")
    b = TokenizedCells.load(tmp_path / "a.pt")
    assert np.array_equal(a.genes, b.genes) and b.batch_names == ["ctrl", "stim"]
    sub = b.subset([3, 40])
    assert np.array_equal(sub.cell(1)[0], b.cell(40)[0])
    both = TokenizedCells.concat([sub, sub])
    assert len(both) == 4 and both.batches.tolist() == [0, 1, 0, 1] and both.labels.tolist() == [-1] * 4


def test_collate_pads_truncates_and_masks(stim):
    cells = tokenize_anndata(stim, GeneVocab(list(stim.var_names)), layer="counts")
    items = [(*cells.cell(i), -1, -1) for i in range(4)]
    rng = np.random.default_rng(0)
    b = collate_cells(items, max_genes=64, mask_ratio=0.25, mask_bin=51, sample=False, generator=rng)
    lens = [min(len(g), 64) for g, *_ in items]
    assert b["seq_lens"].tolist() == lens and b["genes"].shape == (4, max(lens))
    masked = (b["targets"] != -100).sum(1).tolist()
    assert masked == [max(1, round(0.25 * n)) for n in lens]
    assert (b["bins"][b["targets"] != -100] == 51).all()
    # top-expressed genes are kept when not sampling
    assert np.array_equal(b["genes"][0, : lens[0]].numpy()[b["targets"][0, : lens[0]].numpy() == -100],
                          items[0][0][:64][b["targets"][0, : lens[0]].numpy() == -100])


def test_collate_negatives_are_unexpressed_genes_of_the_same_source(stim):
    cells = tokenize_anndata(stim, GeneVocab(list(stim.var_names)), layer="counts")
    # cells 2-3 come from a second "dataset" with a disjoint gene panel (ids shifted past the first panel)
    shift = len(stim.var_names) + 10
    items = [(*cells.cell(i), -1, -1, 0) for i in range(2)] + [(g + shift, b, -1, -1, 1)
                                                              for g, b in map(cells.cell, (2, 3))]
    b = collate_cells(items, max_genes=64, mask_ratio=0.2, mask_bin=51, sample=True,
                      generator=np.random.default_rng(1), negatives=1.5)
    masked = (b["targets"] != -100).sum(1).tolist()
    neg = b["neg_genes"].numpy()
    for i, (genes, *_rest, src) in enumerate(items):
        drawn = neg[i][neg[i] > 0]
        assert len(drawn) == max(1, round(1.5 * masked[i])) and len(set(drawn)) == len(drawn)
        assert not np.isin(drawn, genes).any()  # never a gene the cell expresses, even one cut by max_genes
        others = np.concatenate([items[j][0] for j in range(4) if j != i and items[j][4] == src])
        assert np.isin(drawn, others).all()  # expressed by another cell of the same panel
    assert "neg_genes" not in collate_cells(items, max_genes=64, mask_ratio=0.0, mask_bin=51, sample=False,
                                            negatives=1.0)
    with pytest.raises(ValueError, match="negatives"):
        SingleCellDataModule("pbmc68k_reduced", negatives=-1)


def test_concat_records_the_source_of_every_cell(stim):
    cells = tokenize_anndata(stim, GeneVocab(list(stim.var_names)), layer="counts")
    both = TokenizedCells.concat([cells.subset([0, 1, 2]), cells.subset([3, 4])])
    assert both.source.tolist() == [0, 0, 0, 1, 1] and both.subset([4, 0]).source.tolist() == [1, 0]


def test_datamodule_on_pbmc68k_keeps_labels_and_metadata():
    dm = SingleCellDataModule("pbmc68k_reduced", max_genes=32, batch_size=16, val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.label_names) == 10 and len(dm.train_idx) + len(dm.val_idx) == 700
    batch = next(iter(dm.train_dataloader()))
    assert batch["genes"].shape[0] == 16 and batch["seq_lens"].max() <= 32 and (batch["labels"] >= 0).all()
    meta = dm.zoo_metadata()
    assert meta["preprocessing"]["inputs_seen"] == ["log1p"] and len(meta["gene_vocab"]["genes"]) == 765
    with pytest.raises(ValueError, match="mask_ratio"):
        SingleCellDataModule("pbmc68k_reduced", mask_ratio=1.5)


def test_unknown_dataset_message():
    with pytest.raises(FileNotFoundError, match="pbmc68k_reduced"):
        read_dataset("nope.h5ad")


def test_sparse_and_dense_tokenise_alike(stim):
    vocab = GeneVocab(list(stim.var_names))
    dense = stim.copy()
    dense.layers["counts"] = sp.csr_matrix(stim.layers["counts"]).toarray()
    a = tokenize_anndata(stim, vocab, layer="counts")
    b = tokenize_anndata(dense, vocab, layer="counts")
    assert np.array_equal(a.genes, b.genes) and np.array_equal(a.bins, b.bins)


@pytest.fixture(scope="module")
def stim600():
    """600 real pbmc_stim cells, raw counts in a sparse .X (more than the 500 cells the checks once sampled)."""
    return ad.read_h5ad(need(PBMC_STIM))[:600].copy()


def _same_tokens(a: TokenizedCells, b: TokenizedCells) -> bool:
    return (np.array_equal(a.indptr, b.indptr) and np.array_equal(a.genes, b.genes)
            and np.array_equal(a.bins, b.bins))


@pytest.mark.parametrize("where", ["layer", "X"])
def test_backed_view_reads_the_views_cells_in_order(stim, tmp_path, where):
    from gatedzoo.data.singlecell import _row_chunks

    a = stim.copy()
    if where == "X":
        a.X = a.layers["counts"].copy()
        del a.layers["counts"]
    layer = "counts" if where == "layer" else None
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    vocab = GeneVocab(list(stim.var_names))
    keep = np.r_[45:60, 3:20, 7]  # not a prefix of the file, out of file order, one cell twice
    backed = ad.read_h5ad(path, backed="r")
    got = tokenize_anndata(backed[keep], vocab, layer=layer, batch_key="batch")
    want = tokenize_anndata(a[keep].copy(), vocab, layer=layer, batch_key="batch")
    assert len(got) == len(keep) and _same_tokens(got, want)
    assert got.batches.tolist() == want.batches.tolist() == [1] * 15 + [0] * 18
    # a view of cells and genes, read in small chunks (contiguous and scattered rows): the same matrix as in memory
    cols = np.r_[100:4000, 5000:9000]
    chunks = list(_row_chunks(backed[keep, cols], layer, False, chunk=7))
    ref = a[keep, cols].copy()
    ref = ref.layers["counts"] if layer else ref.X
    assert sum(c.shape[0] for c in chunks) == len(keep)
    assert abs(sp.vstack([sp.csr_matrix(c) for c in chunks]) - sp.csr_matrix(ref)).sum() == 0


def test_missing_labels_are_coded_missing_never_a_nan_class(stim):
    a = stim.copy()
    lab = a.obs["batch"].astype(object).to_numpy()
    lab[::3] = np.nan
    a.obs["cell_type"] = pd.Categorical(lab)
    a.obs["batch_obj"] = pd.Series(lab, index=a.obs_names, dtype=object)  # NaN in an object column too
    cells = tokenize_anndata(a, GeneVocab(list(stim.var_names)), layer="counts", labels_key="cell_type",
                             batch_key="batch_obj")
    assert cells.label_names == ["ctrl", "stim"] and cells.batch_names == ["ctrl", "stim"]
    assert (cells.labels[::3] == -1).all() and (np.delete(cells.labels, np.s_[::3]) >= 0).all()
    assert (cells.batches == cells.labels).all()
    dm = SingleCellDataModule(dataset=[], val_fraction=0.2)
    dm.cells = cells
    dm.setup("fit")
    assert dm.label_names == ["ctrl", "stim"]


def test_gene_overlap_refused_on_mismatch_and_warned_on_a_subset(stim):
    from gatedzoo.data.singlecell import LowGeneOverlapWarning

    vocab = GeneVocab(list(stim.var_names))
    top = np.argsort(-np.asarray(stim.layers["counts"].sum(0)).ravel())[:40]  # the 40 most expressed genes only
    subset = stim[:, top].copy()
    with pytest.warns(LowGeneOverlapWarning, match=r"only 40 of the model's 9015 vocabulary genes \(0.4%\)"):
        info = check_anndata(subset, vocab, layer="counts")
    assert info["gene_overlap"] == pytest.approx(40 / 9015) and info["genes_in_vocab"] == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", LowGeneOverlapWarning)
        assert check_anndata(stim, vocab, layer="counts")["gene_overlap"] == 1.0
    renamed = subset.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(40)]
    renamed.var["gene_symbols"] = list(subset.var_names)
    with pytest.raises(DataCheckError, match=r"only 0 of 40 genes \(0.0%\).*covering 0.0% of it.*"
                                             r"gene_key=.*\['gene_symbols'\]"):
        check_anndata(renamed, vocab, layer="counts")


def test_value_checks_cover_every_cell(stim600):
    vocab = GeneVocab(list(stim600.var_names))
    assert check_anndata(stim600, vocab)["input"] == "counts"

    def with_rows(fn):
        a = stim600.copy()
        x = a.X.toarray()
        fn(x)
        a.X = x
        return a

    late = stim600.obs_names[550]
    bad = with_rows(lambda x: x.__setitem__((550, slice(0, 5)), np.nan))
    with pytest.raises(DataCheckError, match=rf"NaN or inf values in 1 of 600 cells \(e.g. obs_names \['{late}'\]"):
        check_anndata(bad, vocab)
    with pytest.raises(DataCheckError, match="NaN or inf"):
        check_anndata(with_rows(lambda x: x.__setitem__((599, 7), np.inf)), vocab)
    with pytest.raises(DataCheckError, match="negative values in 1 of 600 cells"):
        check_anndata(with_rows(lambda x: x.__setitem__((560, 3), -1.0)), vocab)

    def log_tail(x):  # the last 100 cells log-normalised, the first 500 counts
        t = x[500:]
        x[500:] = np.log1p(t / t.sum(1, keepdims=True) * 1e4)

    with pytest.raises(DataCheckError, match="non-integer values.*expects raw counts"):
        check_anndata(with_rows(log_tail), vocab)
    with pytest.raises(DataCheckError, match=r"1 of 600 cells .* have no expressed gene"):
        check_anndata(with_rows(lambda x: x.__setitem__(580, 0)), vocab)


def test_duplicated_genes_warn_and_count_once(stim):
    from gatedzoo.data.singlecell import DuplicateGeneWarning

    vocab = GeneVocab(list(stim.var_names))
    x = stim.layers["counts"][:, :4000]
    d = ad.AnnData(sp.hstack([x, x]).tocsr(), obs=stim.obs.copy(),
                   var=pd.DataFrame(index=list(stim.var_names[:4000]) * 2))
    with pytest.warns(DuplicateGeneWarning, match=r"4000 gene columns repeat.*var_names_make_unique"):
        dup = tokenize_anndata(d, vocab)
    once = tokenize_anndata(ad.AnnData(x, obs=stim.obs.copy(), var=pd.DataFrame(index=stim.var_names[:4000])), vocab)
    assert _same_tokens(dup, once)
    assert all(len(set(dup.cell(i)[0])) == len(dup.cell(i)[0]) for i in range(len(dup)))



def test_tokens_do_not_depend_on_the_gene_order_or_the_csr_storage_order(stim):
    # real cells hold many genes with equal counts (1-2 UMIs), so the top-max_genes cut falls inside ties
    vocab = GeneVocab(list(stim.var_names))
    base = tokenize_anndata(stim, vocab, layer="counts")
    perm = np.random.default_rng(0).permutation(stim.n_vars)
    shuffled = stim[:, perm].copy()
    shuffled.layers["counts"] = sp.csr_matrix(shuffled.layers["counts"].toarray())  # sorted indices, new order
    unsorted = stim.copy()
    m = sp.csr_matrix(stim.layers["counts"])
    rev = sp.csr_matrix((m.data.copy(), m.indices.copy(), m.indptr.copy()), shape=m.shape)
    for r in range(rev.shape[0]):  # the same matrix, each row's entries stored in reverse column order
        a, b = rev.indptr[r], rev.indptr[r + 1]
        rev.data[a:b], rev.indices[a:b] = rev.data[a:b][::-1], rev.indices[a:b][::-1]
    rev.has_sorted_indices = False
    unsorted.layers["counts"] = rev
    counts = np.asarray(m[0].todense()).ravel()
    assert (counts == 1).sum() > 100  # the ties this is about
    for other in (shuffled, unsorted):
        assert _same_tokens(base, tokenize_anndata(other, vocab, layer="counts"))
    # equal values come by increasing vocabulary index
    ids = vocab.encode(list(stim.var_names))
    count_of = dict(zip(ids.tolist(), counts.tolist()))
    g = base.genes[base.indptr[0]:base.indptr[1]].tolist()
    keys = [(-count_of[i], i) for i in g]
    assert keys == sorted(keys)
