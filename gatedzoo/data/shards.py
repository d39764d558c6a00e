"""Single-cell pretraining over a collection of ``.h5ad`` shards larger than host memory.

The shards are read lazily with h5py, straight from the CSR arrays of ``X`` (or ``layers/<name>``): a block of
consecutive cells is three contiguous slice reads (``indptr``, then ``indices`` and ``data`` between two offsets),
so memory is bounded by the shuffle buffer, not by the collection. h5py rather than anndata's backed mode because
(i) a backed AnnData opens the whole ``obs`` / ``var`` frames and fancy-indexes rows through its own machinery,
while a block read here is exactly the bytes of those cells, (ii) file handles are opened inside each DataLoader
worker after the fork (h5py handles must not cross a fork), and (iii) the GPU machines have h5py but no anndata.
The shards are written by anndata (or ``benchmarks/make_sharded_collection.py``) in its standard on-disk layout.

Shuffling, per epoch ``e`` with seed ``s`` (identical on every rank, nothing communicated): the collection is cut
into blocks of ``block_size`` consecutive cells of one shard; the training blocks are permuted with
``default_rng([s, e])`` (so consecutive blocks come from different shards); that cell sequence is cut into
``world_size * num_workers`` equal, contiguous, disjoint *streams* (one per rank and worker); each stream reads
``shuffle_blocks`` blocks at a time into a buffer, permutes the cells inside it and emits batches. Every rank
therefore sees disjoint cells and the same number of batches (training drops the last ``< batch_size`` cells of a
stream; validation drops at most ``world_size * num_workers - 1`` cells so that streams are equal), which DDP and
FSDP need to stay in step. Validation blocks are a fixed, seeded ``val_fraction`` of the blocks.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .singlecell import DataCheckError, GeneVocab, _Collate, detect_input_kind, tokenize_matrix

log = logging.getLogger("gatedzoo")


def list_shards(shards: str | list[str]) -> list[str]:
    """Resolve ``shards`` (a folder of ``.h5ad`` files, a glob pattern, or a list of files) to sorted paths."""
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    out: list[str] = []
    for item in map(str, items):
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(str(f) for f in p.glob("*.h5ad"))
        elif any(c in item for c in "*?["):
            out += sorted(glob.glob(str(p)))
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"shard {item!r} does not exist; pass a folder of .h5ad files, a glob or a list.")
    if not out:
        raise FileNotFoundError(f"no .h5ad shard found in {shards!r}; write one with "
                                "benchmarks/make_sharded_collection.py or point data.shards at your folder.")
    bad = [f for f in out if not f.endswith(".h5ad")]
    if bad:
        raise ValueError(f"{bad[:3]} are not .h5ad files; a shard collection holds .h5ad files only.")
    return out


def _decode(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in a]


def _matrix_node(f, layer: str | None, path: str):
    import h5py

    node = f["X"] if layer is None else f.get(f"layers/{layer}")
    if node is None:
        raise DataCheckError(f"{path}: no layer {layer!r}; layers are {list(f.get('layers', {}).keys())}. "
                             "Pass data.layer=None to use X.")
    if not isinstance(node, h5py.Group) or node.attrs.get("encoding-type") != "csr_matrix":
        kind = node.attrs.get("encoding-type", "dense array") if isinstance(node, h5py.Group) else "dense array"
        raise DataCheckError(f"{path}: the matrix is stored as {kind}, not csr_matrix; rewrite the shard with a CSR "
                             "matrix (adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(path)).")
    return node


def read_var_names(path: str, gene_key: str | None = None) -> list[str]:
    """Gene identifiers of a shard: ``var``'s index, or its column ``gene_key`` (h5py, no anndata needed)."""
    import h5py

    with h5py.File(path, "r") as f:
        var = f["var"]
        key = gene_key or var.attrs["_index"]
        if key not in var:
            raise DataCheckError(f"{path}: var has no column {gene_key!r}; columns are {list(var.keys())}.")
        node = var[key]
        if isinstance(node, h5py.Group):  # categorical column: codes into categories
            return _decode(node["categories"][:][node["codes"][:]])
        return _decode(node[:])


@dataclass
class ShardInfo:
    """One shard: its path, number of cells and the vocabulary index of each of its genes (``-1`` = unknown)."""

    path: str
    n_cells: int
    gene_ids: np.ndarray


def _blocks(shards: list[ShardInfo], block_size: int) -> np.ndarray:
    """``[n_blocks, 3]`` int64 rows ``(shard, start, stop)`` cutting every shard into ``block_size`` cells."""
    rows = [(i, a, min(a + block_size, s.n_cells)) for i, s in enumerate(shards) for a in range(0, s.n_cells,
                                                                                                 block_size)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ShardedCells(IterableDataset):
    """Batches of tokenised cells streamed from ``.h5ad`` shards; disjoint across ranks and DataLoader workers.

    Yields the dicts of :func:`~gatedzoo.data.singlecell.collate_cells` (use ``DataLoader(batch_size=None)``).
    ``len()`` is the number of batches this rank yields per epoch (the same on every rank).

    Args:
        shards (list[ShardInfo]): the collection.
        blocks (np.ndarray): ``[n, 3]`` ``(shard, start, stop)`` blocks this split reads.
        batch_size (int): cells per batch (per rank).
        collate (callable): ``_Collate`` (max genes, masking).
        n_bins (int): expression bins of the tokens.
        layer (str, Optional): ``layers/<layer>`` instead of ``X``.
        shuffle (bool): permute blocks per epoch and cells within the buffer (training); else read in order.
        shuffle_blocks (int): blocks per shuffle buffer (memory: about ``shuffle_blocks * block_size`` cells).
        drop_last (bool): drop each stream's last incomplete batch.
        num_workers (int): DataLoader workers per rank (the streams are split over them).
        seed (int): shuffle seed.
    """

    def __init__(self, shards: list[ShardInfo], blocks: np.ndarray, *, batch_size: int, collate, n_bins: int,
                 layer: str | None = None, shuffle: bool = True, shuffle_blocks: int = 16, drop_last: bool = True,
                 num_workers: int = 0, seed: int = 0):
        self.shards, self.blocks, self.batch_size, self.collate = shards, blocks, batch_size, collate
        self.n_bins, self.layer, self.shuffle, self.shuffle_blocks = n_bins, layer, shuffle, shuffle_blocks
        self.drop_last, self.num_workers, self.seed = drop_last, max(num_workers, 0), seed
        self.epoch = 0
        self._files: dict[int, object] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (call before iterating; the data module's loader does it)."""
        self.epoch = int(epoch)

    @property
    def n_cells(self) -> int:
        return int((self.blocks[:, 2] - self.blocks[:, 1]).sum())

    def _streams(self, world: int) -> int:
        return world * max(self.num_workers, 1)

    def _stream_len(self, world: int) -> int:
        return self.n_cells // self._streams(world)

    def _batches_per_stream(self, world: int) -> int:
        n = self._stream_len(world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        world, _ = _dist_info()
        return self._batches_per_stream(world) * max(self.num_workers, 1)

    def epoch_order(self) -> np.ndarray:
        """The epoch's block order (rows of ``blocks``), identical on every rank."""
        if not self.shuffle:
            return self.blocks
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.blocks[rng.permutation(len(self.blocks))]

    def stream_pieces(self, stream: int, world: int) -> list[tuple[int, int, int]]:
        """``(shard, start, stop)`` pieces of the epoch's cell sequence that ``stream`` reads, in order."""
        order = self.epoch_order()
        sizes = order[:, 2] - order[:, 1]
        ends = np.cumsum(sizes)
        length = self._stream_len(world)
        lo, hi = stream * length, (stream + 1) * length
        pieces = []
        for (shard, a, b), end, size in zip(order, ends, sizes):
            begin = end - size
            if end <= lo or begin >= hi:
                continue
            pieces.append((int(shard), int(a + max(lo - begin, 0)), int(b - max(end - hi, 0))))
        return pieces

    def _file(self, shard: int):
        import h5py

        if shard not in self._files:
            if len(self._files) >= 64:  # bounded number of open handles per worker
                self._files.pop(next(iter(self._files))).close()
            self._files[shard] = h5py.File(self.shards[shard].path, "r")
        return self._files[shard]

    def read(self, shard: int, a: int, b: int):
        """Cells ``a:b`` of a shard, tokenised: ``(indptr, genes, bins)`` as in :class:`TokenizedCells`."""
        import scipy.sparse as sp

        f = self._file(shard)
        node = _matrix_node(f, self.layer, self.shards[shard].path)
        ptr = node["indptr"][a:b + 1].astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        m = sp.csr_matrix((node["data"][lo:hi], node["indices"][lo:hi], ptr - lo),
                          shape=(b - a, len(self.shards[shard].gene_ids)))
        return tokenize_matrix([m], self.shards[shard].gene_ids, self.n_bins)

    def __iter__(self):
        world, rank = _dist_info()
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        stream = rank * max(self.num_workers, 1) + worker
        rng = np.random.default_rng([self.seed, self.epoch, stream, 1])
        # masking / gene sampling differ across streams and epochs (a worker id alone would repeat across ranks)
        self.collate.rng = np.random.default_rng([self.seed, self.epoch, stream, 2])
        budget = self._batches_per_stream(world)
        pieces = self.stream_pieces(stream, world)
        buf: list = []
        try:
            for i in range(0, len(pieces), self.shuffle_blocks):
                for shard, a, b in pieces[i:i + self.shuffle_blocks]:
                    indptr, genes, bins = self.read(shard, a, b)
                    # the shard index is the cell's source: negatives come from cells measured on its gene panel
                    buf += [(genes[indptr[j]:indptr[j + 1]], bins[indptr[j]:indptr[j + 1]], -1, -1, shard)
                            for j in range(b - a)]
                if self.shuffle:
                    buf = [buf[j] for j in rng.permutation(len(buf))]
                while len(buf) >= self.batch_size and budget > 0:
                    yield self.collate(buf[:self.batch_size])
                    buf, budget = buf[self.batch_size:], budget - 1
            if buf and budget > 0 and not self.drop_last:
                yield self.collate(buf)
        finally:
            for f in self._files.values():
                f.close()
            self._files.clear()


class _EpochLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardedCells` the epoch before each pass (workers copy it at start)."""

    epoch_source = None

    def __iter__(self):
        if self.epoch_source is not None:
            self.dataset.set_epoch(self.epoch_source())
        return super().__iter__()


class ShardedSingleCellDataModule(L.LightningDataModule):
    """Masked-expression pretraining over a folder (or list) of ``.h5ad`` shards, streamed lazily.

    Works with :class:`~gatedzoo.tasks.masked_expression.MaskedExpression` exactly like
    :class:`~gatedzoo.data.singlecell.SingleCellDataModule` (``vocab``, ``hparams.n_bins``, ``zoo_metadata``), on one
    process or under DDP / FSDP (ranks and workers read disjoint cells; see the module docstring).

    Args:
        shards (str | list[str]): folder of ``.h5ad`` files, glob pattern, or list of files. Default:
            ``"runs/shards"``.
        vocab (str, Optional): zoo weights whose gene vocabulary to use. Default: the union of the shards' genes.
        layer (str, Optional): layer with raw counts. Default: ``X``.
        gene_key (str, Optional): var column with gene symbols / Ensembl ids. Default: ``var`` index.
        n_bins (int): expression bins. Default: ``51``.
        max_genes (int): most gene tokens per cell. Default: ``512``.
        mask_ratio (float): masked fraction of each cell's genes. Default: ``0.15``.
        negatives (float): "not expressed" gene queries per masked gene for the cell-level loss (drawn from the
            same shard's other cells; see :func:`~gatedzoo.data.singlecell.collate_cells`). Default: ``1.0``.
        val_fraction (float): fraction of blocks held out for validation (at least one block when > 0).
            Default: ``0.01``.
        batch_size (int): cells per batch and rank. Default: ``64``.
        num_workers (int): DataLoader workers per rank. Default: ``2``.
        block_size (int): consecutive cells read at once (one contiguous read). Default: ``256``.
        shuffle_blocks (int): blocks mixed in one shuffle buffer. Default: ``16``.
        seed (int): split, shuffle and masking seed. Default: ``0``.
    """

    def __init__(self, shards: str | list[str] = "runs/shards", vocab: str | None = None, layer: str | None = None,
                 gene_key: str | None = None, n_bins: int = 51, max_genes: int = 512, mask_ratio: float = 0.15,
                 negatives: float = 1.0, val_fraction: float = 0.01, batch_size: int = 64, num_workers: int = 2,
                 block_size: int = 256, shuffle_blocks: int = 16, seed: int = 0):
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio} must lie in [0, 1).")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1).")
        if min(batch_size, block_size, shuffle_blocks) < 1:
            raise ValueError("batch_size, block_size and shuffle_blocks must be >= 1.")
        self.save_hyperparameters()
        self.vocab: GeneVocab | None = None
        self.shards: list[ShardInfo] = []
        self.expected_input = "counts"
        self.input_kind = "counts"
        self.train_blocks = self.val_blocks = None

    def _build_vocab(self, paths: list[str], names: dict[str, list[str]]) -> GeneVocab:
        if self.hparams.vocab is not None:
            from gatedzoo.zoo.pretrained import _read_config, resolve_source

            _, folder = resolve_source(self.hparams.vocab, pretrained=True)
            cfg = _read_config(folder)
            if "gene_vocab" not in cfg:
                raise ValueError(f"{self.hparams.vocab} has no gene_vocab in its config: not a single-cell model.")
            self.expected_input = cfg.get("preprocessing", {}).get("expected_input", "counts")
            return GeneVocab.from_config(cfg["gene_vocab"])
        return GeneVocab.union(*(names[p] for p in paths))

    def setup(self, stage: str | None = None) -> None:
        if self.train_blocks is not None:
            return
        import h5py

        hp = self.hparams
        paths = list_shards(hp.shards)
        names = {p: read_var_names(p, hp.gene_key) for p in paths}
        self.vocab = self.vocab or self._build_vocab(paths, names)
        ids_cache: dict[tuple, np.ndarray] = {}  # shards with one gene list share one index array
        for p in paths:
            key = tuple(names[p])
            if key not in ids_cache:
                ids_cache[key] = self.vocab.encode(names[p])
            with h5py.File(p, "r") as f:
                node = _matrix_node(f, hp.layer, p)
                n_cells, n_genes = (int(x) for x in node.attrs["shape"])
                if n_genes != len(names[p]):
                    raise DataCheckError(f"{p}: the matrix has {n_genes} genes but var lists {len(names[p])}.")
                if p == paths[0]:
                    self._check_sample(node, p)
            found = float((ids_cache[key] >= 0).mean())
            if found < 0.5:
                raise DataCheckError(f"{p}: only {found:.0%} of its genes are in the {len(self.vocab.genes)}-gene "
                                     "vocabulary; pass data.gene_key (a var column of symbols / Ensembl ids) or a "
                                     "vocabulary built from these shards.")
            self.shards.append(ShardInfo(p, n_cells, ids_cache[key]))
        blocks = _blocks(self.shards, hp.block_size)
        n_val = 0 if hp.val_fraction == 0 else max(1, int(round(hp.val_fraction * len(blocks))))
        if n_val >= len(blocks):
            raise ValueError(f"{len(blocks)} blocks of {hp.block_size} cells leave none for training with "
                             f"val_fraction={hp.val_fraction}; lower block_size or val_fraction.")
        is_val = np.zeros(len(blocks), bool)
        is_val[np.random.default_rng(hp.seed).permutation(len(blocks))[:n_val]] = True
        self.train_blocks, self.val_blocks = blocks[~is_val], blocks[is_val]
        log.info("sharded collection: %d shards, %d cells (%d train / %d val), %d-gene vocabulary", len(paths),
                 sum(s.n_cells for s in self.shards), int((self.train_blocks[:, 2] - self.train_blocks[:, 1]).sum()),
                 int((self.val_blocks[:, 2] - self.val_blocks[:, 1]).sum()), len(self.vocab.genes))

    def _check_sample(self, node, path: str) -> None:
        import scipy.sparse as sp

        n = min(int(node.attrs["shape"][0]), 200)
        ptr = node["indptr"][:n + 1].astype(np.int64)
        sample = sp.csr_matrix((node["data"][:ptr[-1]], node["indices"][:ptr[-1]], ptr),
                               shape=(n, int(node.attrs["shape"][1])))
        kind = detect_input_kind(sample)
        if kind == "scaled":
            raise DataCheckError(f"{path}: negative values (scaled / centred data); shards must hold raw counts "
                                 "(or log1p of normalised counts). Set data.layer to the counts layer.")
        self.input_kind = "counts" if kind == "counts" else "log1p"

    def _dataset(self, blocks: np.ndarray, train: bool) -> ShardedCells:
        hp = self.hparams
        collate = _Collate(hp.max_genes, hp.mask_ratio, hp.n_bins, sample=train, seed=hp.seed + (0 if train else 1000),
                           negatives=hp.negatives)
        return ShardedCells(self.shards, blocks, batch_size=hp.batch_size, collate=collate, n_bins=hp.n_bins,
                            layer=hp.layer, shuffle=train, shuffle_blocks=hp.shuffle_blocks, drop_last=train,
                            num_workers=hp.num_workers, seed=hp.seed)

    def _loader(self, blocks: np.ndarray, train: bool) -> DataLoader:
        ds = self._dataset(blocks, train)
        loader = _EpochLoader(ds, batch_size=None, num_workers=self.hparams.num_workers)
        trainer = getattr(self, "trainer", None)
        # the trainer's epoch (restored on resume) picks the shuffle, so a resumed run replays the same order
        loader.epoch_source = (lambda: trainer.current_epoch) if (train and trainer is not None) else None
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_blocks, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_blocks, train=False)

    def zoo_metadata(self) -> dict:
        """Vocabulary and preprocessing that must travel with the weights."""
        return {"gene_vocab": self.vocab.to_config(),
                "preprocessing": {"n_bins": self.hparams.n_bins, "max_genes": self.hparams.max_genes,
                                  "expected_input": self.expected_input, "binning": "per-cell quantile",
                                  "inputs_seen": [self.input_kind]},
                "training_data": f"shards:{self.hparams.shards} ({len(self.shards)} files, "
                                 f"{sum(s.n_cells for s in self.shards)} cells)"}
