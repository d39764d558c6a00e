"""Sharded single-cell collections: the generator (fitted to the real PBMC counts) and the streaming data module."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from datafiles import need

from gatedzoo.data.shards import ShardedSingleCellDataModule, list_shards
from gatedzoo.data.singlecell import PBMC_STIM, DataCheckError, tokenize_anndata

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from make_sharded_collection import make_collection

    need(PBMC_STIM)
    out = tmp_path_factory.mktemp("shards")
    summary = make_collection(out, cells=1500, shard_size=400, seed=3)
    return out, summary


def test_generator_matches_the_real_gene_statistics(collection):
    import anndata as ad

    out, summary = collection
    assert summary["shards"] == 4 and sorted(p.name for p in out.iterdir()) == [
        "collection.json", "shard_00000.h5ad", "shard_00001.h5ad", "shard_00002.h5ad", "shard_00003.h5ad"]
    real = ad.read_h5ad(PBMC_STIM.path())
    syn = ad.concat([ad.read_h5ad(p) for p in list_shards(str(out))])
    assert syn.n_obs == 1500 and list(syn.var_names) == list(real.var_names)
    x, r = sp.csr_matrix(syn.X), sp.csr_matrix(real.X)
    assert np.array_equal(x.data, np.round(x.data)) and x.data.min() >= 1
    mean_syn, mean_real = np.asarray(x.mean(0)).ravel(), np.asarray(r.mean(0)).ravel()
    assert np.corrcoef(np.log1p(mean_syn), np.log1p(mean_real))[0, 1] > 0.98
    genes_syn, genes_real = np.median(np.diff(x.indptr)), np.median(np.diff(r.indptr))
    assert abs(genes_syn / genes_real - 1) < 0.15
    lib_syn, lib_real = np.median(np.asarray(x.sum(1))), np.median(np.asarray(r.sum(1)))
    assert abs(lib_syn / lib_real - 1) < 0.15
    # per-gene detection rate (dropout) follows the real one
    det_syn, det_real = np.asarray((x > 0).mean(0)).ravel(), np.asarray((r > 0).mean(0)).ravel()
    assert np.abs(det_syn - det_real).mean() < 0.02


def test_generator_is_seeded_and_skips_finished_shards(collection, tmp_path):
    from make_sharded_collection import make_collection

    out, _ = collection
    make_collection(tmp_path, cells=400, shard_size=400, seed=3, workers=1)
    with h5py.File(out / "shard_00000.h5ad") as f, h5py.File(tmp_path / "shard_00000.h5ad") as g:
        assert np.array_equal(f["X/data"][:], g["X/data"][:])
    before = (tmp_path / "shard_00000.h5ad").stat().st_mtime_ns
    make_collection(tmp_path, cells=400, shard_size=400, seed=3)
    assert (tmp_path / "shard_00000.h5ad").stat().st_mtime_ns == before
    assert not list(tmp_path.glob("*.tmp"))


def _dm(out, **kw):
    args = dict(batch_size=16, num_workers=0, block_size=50, shuffle_blocks=3, val_fraction=0.1, max_genes=128)
    dm = ShardedSingleCellDataModule(str(out), **{**args, **kw})
    dm.setup()
    return dm


def test_streams_are_disjoint_cover_the_data_and_reshuffle_per_epoch(collection):
    out, _ = collection
    dm = _dm(out, num_workers=2)
    ds = dm._dataset(dm.train_blocks, train=True)
    train_cells = {(s, i) for s, a, b in dm.train_blocks for i in range(a, b)}
    val_cells = {(s, i) for s, a, b in dm.val_blocks for i in range(a, b)}
    assert not train_cells & val_cells and len(train_cells | val_cells) == 1500
    world, streams = 2, 4  # 2 ranks x 2 workers
    seen = [{(s, i) for s, a, b in ds.stream_pieces(k, world) for i in range(a, b)} for k in range(streams)]
    assert all(len(c) == len(train_cells) // streams for c in seen)
    assert sum(len(c) for c in seen) == len(set().union(*seen)), "streams overlap"
    assert set().union(*seen) <= train_cells and len(train_cells) - len(set().union(*seen)) < streams
    first = ds.stream_pieces(0, world)
    ds.set_epoch(1)
    assert ds.stream_pieces(0, world) != first
    ds.set_epoch(0)
    assert ds.stream_pieces(0, world) == first


def test_loader_yields_its_length_with_workers(collection):
    out, _ = collection
    dm = _dm(out, num_workers=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) > 0
    assert all(b["genes"].shape[0] == 16 and b["genes"].shape[1] <= 128 for b in batches)
    assert all((b["targets"] != -100).any() for b in batches)
    val = list(dm.val_dataloader())
    assert sum(len(b["seq_lens"]) for b in val) == sum(b - a for _, a, b in dm.val_blocks)


def test_lazy_block_read_tokenises_like_anndata(collection):
    import anndata as ad

    out, _ = collection
    dm = _dm(out)
    ds = dm._dataset(dm.train_blocks, train=True)
    path = dm.shards[1].path
    indptr, genes, bins = ds.read(1, 120, 170)
    ref = tokenize_anndata(ad.read_h5ad(path)[120:170].copy(), dm.vocab, n_bins=dm.hparams.n_bins)
    assert np.array_equal(indptr, ref.indptr) and np.array_equal(genes, ref.genes) and np.array_equal(bins, ref.bins)
    meta = dm.zoo_metadata()
    assert meta["preprocessing"]["inputs_seen"] == ["counts"] and len(meta["gene_vocab"]["genes"]) == 9015


def test_bad_collections_fail_before_work(collection, tmp_path):
    import anndata as ad

    out, _ = collection
    with pytest.raises(FileNotFoundError, match="no .h5ad shard"):
        list_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards([str(tmp_path / "missing.h5ad")])
    with pytest.raises(DataCheckError, match="no layer 'counts'"):
        _dm(out, layer="counts")
    a = ad.read_h5ad(out / "shard_00000.h5ad")[:60].copy()
    a.X = a.X.toarray()
    a.write_h5ad(tmp_path / "dense.h5ad")
    with pytest.raises(DataCheckError, match="not csr_matrix"):
        _dm(tmp_path / "dense.h5ad")
    a.X = sp.csr_matrix(a.X - 1.0)
    a.write_h5ad(tmp_path / "dense.h5ad")
    with pytest.raises(DataCheckError, match="negative values"):
        _dm(tmp_path / "dense.h5ad")
