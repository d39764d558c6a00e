"""Single-cell data: AnnData checks, gene vocabulary, tokenisation into gene/bin tokens, and the LightningDataModule.

A cell becomes the list of its expressed genes that are in the vocabulary, ordered by decreasing expression, each
with a per-cell quantile *bin* of its value (scGPT-style value binning: ``1 .. n_bins - 1``, ties share a bin).
Because the bins are per-cell ranks, raw counts and their ``normalize_total`` + ``log1p`` transform give the same
tokens; scaled (z-scored) data do not (zeros are no longer zeros), so they are refused. Tokenised cells are kept in
a compact CSR-like :class:`TokenizedCells` (``int32`` genes, ``uint8`` bins) that is saved as a small ``.pt`` file:
the GPU machine reads those without anndata or scanpy.

Datasets: ``"pbmc68k_reduced"`` (ships inside scanpy; its ``.X`` is scaled, so ``.raw`` (log-normalised) is used and
recorded as ``input="log1p"``), ``"pbmc_stim"`` (``$GATEDZOO_DATA/pbmc_stim/pbmc_stim.h5ad``, raw counts, two
batches), or any ``.h5ad`` path (read in backed mode with ``backed=True``: ``.X`` in row chunks from the file;
anndata loads a backed file's layers into memory, so a file larger than memory needs its counts in ``.X``).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .paths import DatasetFile, fetch

log = logging.getLogger("gatedzoo")

SPECIAL_TOKENS = ("<pad>", "<cls>")  # indices 0 and 1, as in gatedzoo.models.scfm
PBMC68K = "pbmc68k_reduced"
PBMC_STIM = DatasetFile(
    "pbmc_stim/pbmc_stim.h5ad", sha256="38b2892f930b2e59f5ada4df37d036b25ddba24f9222e949b054ad1cbbc86d8f", url=None,
    license="GPL-3", source="Kang et al. 2018 IFN-beta PBMC subset, from immunogenomics/harmony data/pbmc_stim.RData",
)
INPUT_KINDS = ("counts", "log1p")
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "gene_symbol", "symbol", "gene_ids", "ensembl_id")
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")
MIN_GENE_OVERLAP = 0.5


#: where :meth:`gatedzoo.singlecell.SCFM.setup_anndata` registers an AnnData's fields, and which fields those are
SETUP_KEY = "_scfm_setup"
SETUP_FIELDS = ("layer", "gene_key", "batch_key", "labels_key", "input")


class DataCheckError(ValueError):
    """An AnnData cannot be used as given; the message says what is wrong and how to fix it."""


class LowGeneOverlapWarning(UserWarning):
    """The data cover less of the model's gene vocabulary than ``MIN_GENE_OVERLAP`` (a gene subset): accepted."""


class DuplicateGeneWarning(UserWarning):
    """Several columns carry the same vocabulary gene; only the first one is tokenised."""


def _strip_version(g: str) -> str:
    return g.split(".")[0] if _ENSEMBL.match(g) else g


class GeneVocab:
    """Gene vocabulary: ``<pad>`` = 0, ``<cls>`` = 1, then genes. Matches symbols and Ensembl ids (version-free).

    Args:
        genes (list[str]): gene identifiers (symbols, or Ensembl ids), without the special tokens.
        ensembl_ids (list[str], Optional): Ensembl ids aligned with ``genes`` when known, so that either id matches.
    """

    def __init__(self, genes: list[str], ensembl_ids: list[str] | None = None):
        if len(set(genes)) != len(genes):
            raise ValueError("GeneVocab: gene identifiers must be unique; deduplicate var_names first.")
        self.genes = list(genes)
        self.ensembl_ids = list(ensembl_ids) if ensembl_ids else None
        self._index = {g: i + len(SPECIAL_TOKENS) for i, g in enumerate(self.genes)}
        for i, e in enumerate(self.ensembl_ids or []):
            if e:
                self._index.setdefault(_strip_version(e), i + len(SPECIAL_TOKENS))

    def __len__(self) -> int:
        return len(self.genes) + len(SPECIAL_TOKENS)

    def encode(self, names) -> np.ndarray:
        """Vocabulary indices (``int64``) of ``names``; ``-1`` for genes not in the vocabulary."""
        return np.array([self._index.get(_strip_version(str(n)), -1) for n in names], dtype=np.int64)

    @property
    def uses_ensembl(self) -> bool:
        return bool(self.ensembl_ids) or (bool(self.genes) and all(_ENSEMBL.match(g) for g in self.genes[:50]))

    def to_config(self) -> dict:
        return {"genes": self.genes, "ensembl_ids": self.ensembl_ids}

    @classmethod
    def from_config(cls, cfg: dict) -> GeneVocab:
        return cls(cfg["genes"], cfg.get("ensembl_ids"))

    @classmethod
    def union(cls, *gene_lists) -> GeneVocab:
        """Vocabulary of all genes in ``gene_lists`` (first-seen order)."""
        seen: dict[str, None] = {}
        for genes in gene_lists:
            seen.update(dict.fromkeys(map(str, genes)))
        return cls(list(seen))


@dataclass
class TokenizedCells:
    """Cells as CSR-like token lists (genes by decreasing expression) plus per-cell annotations.

    ``indptr`` ``[N + 1]`` int64; ``genes`` ``[nnz]`` int32 vocabulary indices; ``bins`` ``[nnz]`` uint8 in
    ``1 .. n_bins - 1``; ``labels`` / ``batches`` ``[N]`` int64 codes (``-1`` = missing) into ``label_names`` /
    ``batch_names``; ``meta`` holds the provenance (dataset, layer, input kind, vocabulary size, n_bins);
    ``source`` ``[N]`` int64 is the index of the dataset (gene panel) each cell came from after :meth:`concat`
    (``None`` = one dataset).
    """

    indptr: np.ndarray
    genes: np.ndarray
    bins: np.ndarray
    labels: np.ndarray | None = None
    batches: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    batch_names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    source: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.genes[a:b], self.bins[a:b]

    def subset(self, idx) -> TokenizedCells:
        idx = np.asarray(idx)
        lens = self.lengths()[idx]
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        take = np.concatenate([np.arange(self.indptr[i], self.indptr[i + 1]) for i in idx]) if len(idx) else []
        take = np.asarray(take, dtype=np.int64)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return TokenizedCells(indptr, self.genes[take], self.bins[take], pick(self.labels), pick(self.batches),
                              self.label_names, self.batch_names, dict(self.meta), pick(self.source))

    def save(self, path: str | Path) -> None:
        """Write a ``.pt`` file readable with plain torch (no anndata needed)."""
        obj = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
               for k, v in self.__dict__.items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)

    @classmethod
    def load(cls, path: str | Path) -> TokenizedCells:
        obj = torch.load(path, weights_only=False)
        return cls(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()})

    @staticmethod
    def concat(parts: list[TokenizedCells]) -> TokenizedCells:
        """Stack datasets that share one vocabulary; label/batch names are merged."""
        offs = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offs)]).astype(np.int64)

        def merge(attr, names_attr):
            names = list(dict.fromkeys(n for p in parts for n in getattr(p, names_attr)))
            codes = []
            for p in parts:
                c = getattr(p, attr)
                if c is None:
                    codes.append(np.full(len(p), -1))
                else:
                    lut = np.array([names.index(n) for n in getattr(p, names_attr)] + [-1])
                    codes.append(lut[c])
            return np.concatenate(codes).astype(np.int64), names

        labels, label_names = merge("labels", "label_names")
        batches, batch_names = merge("batches", "batch_names")
        meta = {"parts": [p.meta for p in parts], "n_bins": parts[0].meta.get("n_bins")}
        source = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
        return TokenizedCells(indptr, np.concatenate([p.genes for p in parts]), np.concatenate([p.bins for p in parts]),
                              labels, batches, label_names, batch_names, meta, source)


def detect_input_kind(sample) -> str:
    """Classify a matrix sample as ``"counts"``, ``"log1p"``, ``"normalized"`` (non-integer, unlogged) or ``"scaled"``.

    ``sample``: dense or sparse ``[cells, genes]``. Negative values mean scaled / centred data; non-integer values
    up to ~30 mean log-normalised data (log1p of 1e4-normalised counts stays below ~12).
    """
    import scipy.sparse as sp

    vals = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return "counts"
    return _input_kind(float(vals.min()), bool(np.allclose(vals, np.round(vals))), float(vals.max()))


def _input_kind(vmin: float, integer: bool, vmax: float) -> str:
    if vmin < 0:
        return "scaled"
    if integer:
        return "counts"
    return "log1p" if vmax <= 30 else "normalized"


def bin_values(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-cell quantile bins ``1 .. n_bins - 1`` of positive ``values`` (ties share the higher bin)."""
    s = np.sort(values)
    frac = np.searchsorted(s, values, side="right") / len(values)
    return np.clip(np.ceil(frac * (n_bins - 1)), 1, n_bins - 1).astype(np.uint8)


def tokenize_matrix(rows_iter, gene_ids: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenise row chunks of a cells x genes matrix.

    Args:
        rows_iter: iterable of ``[n, G]`` chunks (scipy sparse or dense), in cell order.
        gene_ids (np.ndarray): ``[G]`` vocabulary index of each column (``-1`` = unknown, dropped).
        n_bins (int): number of value bins (bin 0 = not expressed is never stored).

    Returns:
        ``(indptr int64 [N + 1], genes int32 [nnz], bins uint8 [nnz])``, genes by decreasing value per cell (equal
        values by increasing vocabulary index, whatever the column order).
    """
    import scipy.sparse as sp

    known = gene_ids >= 0
    indptr, genes, bins = [0], [], []
    for chunk in rows_iter:
        chunk = sp.csr_matrix(chunk)[:, known] if not sp.issparse(chunk) else chunk.tocsr()[:, known]
        ids = gene_ids[known]
        for r in range(chunk.shape[0]):
            a, b = chunk.indptr[r], chunk.indptr[r + 1]
            vals, cols = chunk.data[a:b], chunk.indices[a:b]
            pos = vals > 0
            vals, cols = vals[pos], cols[pos]
            # equal values (most genes hold 1-2 counts) are ordered by vocabulary index, not by column: a cell is a
            # set of genes, so its top-max_genes tokens must not depend on the file's gene order or CSR storage order
            order = np.lexsort((ids[cols], -vals))
            genes.append(ids[cols[order]].astype(np.int32))
            bins.append(bin_values(vals[order], n_bins) if len(vals) else np.zeros(0, np.uint8))
            indptr.append(indptr[-1] + len(vals))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return np.asarray(indptr, np.int64), cat(genes, np.int32), cat(bins, np.uint8)


def _matrix(adata, layer: str | None, use_raw: bool):
    if use_raw:
        return adata.raw.X
    if layer is None:
        return adata.X
    return adata.layers[layer]


def _row_chunks(adata, layer: str | None, use_raw: bool, chunk: int = 2048):
    """Yield ``[<= chunk, n_vars]`` row chunks of the matrix the model reads, in ``adata``'s cell and gene order.

    A backed AnnData keeps ``.X`` on disk: its rows are read from the file chunk by chunk; for a view
    (``adata[mask]``) the rows and genes are the view's, in the view's order. anndata loads a backed file's layers
    and ``.raw`` into memory when it opens the file, so those are sliced in memory like any in-memory matrix (a
    view's layer already holds only the view's cells).
    """
    if not (adata.isbacked and layer is None and not use_raw):
        m = _matrix(adata, layer, use_raw)
        for i in range(0, adata.n_obs, chunk):
            yield m[i:i + chunk]
        return
    if adata.is_view:
        # anndata refuses views of backed views, so the parent is the file-backed AnnData itself
        parent = adata._adata_ref
        m, rows, cols = parent.X, np.arange(parent.n_obs)[adata._oidx], adata._vidx
    else:
        m, rows, cols = adata.X, np.arange(adata.n_obs), slice(None)
    for i in range(0, len(rows), chunk):
        r = rows[i:i + chunk]
        if len(r) and r[-1] - r[0] == len(r) - 1 and (np.diff(r) == 1).all():
            part = m[int(r[0]):int(r[-1]) + 1]
        else:
            # h5py reads increasing, unique indices only: read those, then restore the view's order and repeats
            uniq, inv = np.unique(r, return_inverse=True)
            part = m[uniq][inv]
        yield part if isinstance(cols, slice) and cols == slice(None) else part[:, cols]


def _scan_values(adata, layer: str | None, use_raw: bool) -> dict:
    """One pass over every cell, in row chunks: what the input checks need to know about the values.

    Returns ``nonfinite`` / ``negative`` / ``empty`` (int64 row positions of cells with a NaN or inf, a negative
    value, no value > 0), ``integer`` (bool: all finite values are whole numbers) and ``vmax`` (float: largest
    finite value).
    """
    import scipy.sparse as sp

    nonfinite, negative, empty = [], [], []
    integer, vmax, start = True, -np.inf, 0
    for chunk in _row_chunks(adata, layer, use_raw):
        c = sp.csr_matrix(chunk)  # scipy stores NaN / inf of a dense chunk as non-zeros, so .data sees them
        n = c.shape[0]
        row = np.repeat(np.arange(n), np.diff(c.indptr))
        vals = c.data
        fin = np.isfinite(vals)
        nonfinite.append(start + np.unique(row[~fin]))
        neg = fin & (vals < 0)
        negative.append(start + np.unique(row[neg]))
        empty.append(start + np.flatnonzero(np.bincount(row[vals > 0], minlength=n) == 0))
        v = vals[fin]
        if v.size:
            vmax = max(vmax, float(v.max()))
            integer = integer and bool(np.allclose(v, np.round(v)))
        start += n
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return {"nonfinite": cat(nonfinite), "negative": cat(negative), "empty": cat(empty), "integer": integer,
            "vmax": vmax}


def _examples(adata, rows: np.ndarray, k: int = 3) -> str:
    return f"{len(rows)} of {adata.n_obs} cells (e.g. obs_names {list(map(str, adata.obs_names[rows[:k]]))})"


def check_anndata(adata, vocab: GeneVocab, *, layer: str | None = None, use_raw: bool = False,
                  gene_key: str | None = None, labels_key: str | None = None, batch_key: str | None = None,
                  input: str | None = None, expected_input: str = "counts",
                  min_overlap: float = MIN_GENE_OVERLAP) -> dict:
    """Validate an AnnData before any work; return what was found (gene column, overlap, input kind, ...).

    Two gene-overlap shares are measured: ``gene_overlap``, the share of the model's vocabulary present in the data,
    and ``genes_in_vocab``, the share of the data's genes found in the vocabulary. When both are below
    ``min_overlap`` (default 0.5) the gene identifiers do not match the vocabulary (Ensembl ids vs symbols, another
    species, a wrong ``gene_key``) and the data are refused. When only ``gene_overlap`` is below it (a gene subset:
    highly variable genes, a targeted panel) the data are accepted with a :class:`LowGeneOverlapWarning` that gives
    the share, because cells are then ranked among far fewer genes than in pretraining.

    The value checks read every cell (in row chunks of 2,048; a backed file is read once for them). Raises
    :class:`DataCheckError` naming the problem and its fix: unknown ``layer`` / ``gene_key`` / ``labels_key`` /
    ``batch_key``, non-matching gene identifiers, NaN/inf, scaled (negative) data, normalised or log data where
    ``expected_input="counts"`` (pass the counts layer, or ``input="log1p"`` to accept it: the per-cell rank binning
    makes log1p and counts give the same tokens), cells with no expressed gene. Duplicated gene names that are in
    the vocabulary give a :class:`DuplicateGeneWarning`; only the first column of each such gene is tokenised.

    Returns a dict: ``gene_names`` (list[str]), ``gene_ids`` (``[n_vars]`` int64 vocabulary index per column, ``-1``
    = not used), ``gene_overlap`` and ``genes_in_vocab`` (float in [0, 1]), ``input`` (``"counts"`` / ``"log1p"``:
    how the data are used), ``detected`` (the kind found in the values).
    """
    for key in (labels_key, batch_key):
        if key is not None and key not in adata.obs:
            raise DataCheckError(f"obs has no column {key!r}; columns are {list(adata.obs.columns)[:20]}. "
                                 f"Pass one of them (or None).")
    if layer is not None and layer not in adata.layers:
        raise DataCheckError(f"layer {layer!r} not found; layers are {list(adata.layers.keys())}. "
                             "Pass layer=None to use .X.")
    if input is not None and input not in INPUT_KINDS:
        raise DataCheckError(f"input={input!r}; use one of {INPUT_KINDS} (or None to detect).")
    var = adata.raw.var if use_raw else adata.var
    names = var.index if gene_key is None else var.get(gene_key, None)
    if names is None:
        raise DataCheckError(f"var has no column {gene_key!r}; columns are {list(var.columns)}. "
                             "Pass gene_key=None to use var_names.")
    names = [str(x) for x in names]
    ids = vocab.encode(names)
    n_found = int((ids >= 0).sum())
    overlap = n_found / max(len(vocab.genes), 1)
    found = n_found / len(ids) if len(ids) else 0.0
    if overlap < min_overlap and found < min_overlap:
        ens = sum(bool(_ENSEMBL.match(n)) for n in names[:200]) > 100
        alt = [c for c in SYMBOL_COLUMNS if c in var and c != gene_key]
        hint = ("your gene ids look like Ensembl ids but the vocabulary holds symbols; " if ens and
                not vocab.uses_ensembl else "")
        raise DataCheckError(
            f"only {n_found} of {len(names)} genes ({found:.1%}) are in the model's {len(vocab.genes)}-gene "
            f"vocabulary, covering {overlap:.1%} of it (refused when both are below {min_overlap:.0%}): the gene "
            f"identifiers do not match; {hint}pass gene_key= a var column with "
            f"{'Ensembl ids' if vocab.uses_ensembl else 'gene symbols'}"
            + (f" (candidates: {alt})" if alt else "") + ", or fine-tune a model on a vocabulary built from your genes."
        )
    if overlap < min_overlap:
        warnings.warn(
            f"only {n_found} of the model's {len(vocab.genes)} vocabulary genes ({overlap:.1%}) are in this AnnData "
            f"(below {min_overlap:.0%}; {found:.0%} of its {len(names)} genes match): it looks like a gene subset "
            "(highly variable genes, a targeted panel). Each cell is ranked among these genes only, unlike in "
            "pretraining, so embeddings and predictions are less reliable. Use all measured genes when you have "
            "them (the counts before subsetting to HVGs, or adata.raw.to_adata()).",
            LowGeneOverlapWarning, stacklevel=3)
    ids = _drop_duplicate_genes(names, ids)
    scan = _scan_values(adata, layer, use_raw)
    where = _where(layer, use_raw)
    if len(scan["nonfinite"]):
        raise DataCheckError(f"{where} contains NaN or inf values in {_examples(adata, scan['nonfinite'])}; remove "
                             "or impute them (e.g. keep the finite cells: adata = adata[np.isfinite(X).all(1)]) "
                             "before using the model.")
    if len(scan["negative"]):
        raw_hint = (", or .raw: pass adata.raw.to_adata() (with input='log1p' if .raw is log-normalised)"
                    if adata.raw is not None and not use_raw else "")
        raise DataCheckError(
            f"{where} has negative values in {_examples(adata, scan['negative'])}: it looks scaled (sc.pp.scale) "
            "or centred, which destroys the zero / non-zero structure the tokens are built from. Use the layer "
            f"with raw counts (layers: {list(adata.layers.keys())}{raw_hint})."
        )
    kind = _input_kind(0.0, scan["integer"], scan["vmax"])
    if kind in ("log1p", "normalized") and expected_input == "counts" and input is None:
        counts_layers = [k for k in adata.layers if k != layer]
        raise DataCheckError(
            f"{where} holds non-integer values (looks {kind}), but the model expects raw counts. "
            + (f"Pass layer= one of {counts_layers} if it holds counts. " if counts_layers else "")
            + "If no counts exist, pass input='log1p' to accept normalised/log data knowingly (tokens are per-cell "
            "ranks, so log1p(normalised counts) tokenises like counts; do not reverse-engineer counts). For a file "
            "(gatedzoo eval --data, recipes): SCFM.setup_anndata(adata, input='log1p') (or layer='counts'), then "
            "adata.write_h5ad(path): the setup travels in adata.uns."
        )
    if len(scan["empty"]):
        raise DataCheckError(f"{_examples(adata, scan['empty'])} have no expressed gene in {where}; filter them "
                             "first: sc.pp.filter_cells(adata, min_genes=1).")
    return {"gene_names": names, "gene_ids": ids, "gene_overlap": overlap, "genes_in_vocab": found,
            "input": input or ("counts" if kind == "counts" else "log1p"), "detected": kind}


def _drop_duplicate_genes(names: list[str], ids: np.ndarray) -> np.ndarray:
    """Keep the first column of each vocabulary gene named more than once (warn); later ones become ``-1``."""
    known = np.flatnonzero(ids >= 0)
    _, first = np.unique(ids[known], return_index=True)
    later = np.setdiff1d(known, known[first])
    if not len(later):
        return ids
    examples = list(dict.fromkeys(names[i] for i in later))[:5]
    warnings.warn(
        f"{len(later)} gene columns repeat a gene name already seen (e.g. {examples}); a gene must be one token "
        "per cell, so only the first column of each is used. Make the names unique (adata.var_names_make_unique(), "
        "or a unique gene_key column), or sum the duplicated columns into one per gene first if they are parts of "
        "the same gene.", DuplicateGeneWarning, stacklevel=3)
    ids = ids.copy()
    ids[later] = -1
    return ids


def _where(layer, use_raw) -> str:
    return ".raw.X" if use_raw else f"layers[{layer!r}]" if layer else ".X"


def tokenize_anndata(adata, vocab: GeneVocab, *, n_bins: int = 51, layer: str | None = None, use_raw: bool = False,
                     gene_key: str | None = None, labels_key: str | None = None, batch_key: str | None = None,
                     input: str | None = None, expected_input: str = "counts", label_names: list[str] | None = None,
                     name: str = "adata", min_overlap: float = MIN_GENE_OVERLAP) -> TokenizedCells:
    """Check (:func:`check_anndata`), then tokenise an AnnData (in memory or backed) into :class:`TokenizedCells`.

    ``label_names`` fixes the label coding (e.g. the classes of a trained head); unseen labels become ``-1``.
    Missing values (NaN / None) in ``labels_key`` or ``batch_key`` are coded ``-1`` (no label / batch), never a
    class of their own. ``min_overlap`` is :func:`check_anndata`'s. Cells that end up with no in-vocabulary gene
    raise a :class:`DataCheckError`.
    """
    info = check_anndata(adata, vocab, layer=layer, use_raw=use_raw, gene_key=gene_key, labels_key=labels_key,
                         batch_key=batch_key, input=input, expected_input=expected_input, min_overlap=min_overlap)
    indptr, genes, bins = tokenize_matrix(_row_chunks(adata, layer, use_raw), info["gene_ids"], n_bins)
    empty = np.flatnonzero(np.diff(indptr) == 0)
    if len(empty):
        raise DataCheckError(f"{len(empty)} cells (e.g. {list(adata.obs_names[empty[:3]])}) have no expressed gene in "
                             "the vocabulary; filter them out (sc.pp.filter_cells(adata, min_genes=1)) first.")

    def codes(key, names):
        if key is None:
            return None, []
        obs = adata.obs[key]
        # astype(str) would turn a missing value into the string "nan", i.e. a class of its own
        missing = obs.isna().to_numpy()
        col = np.array([str(v) for v in obs.astype(object)], dtype=object)
        names = list(names) if names is not None else sorted(set(col[~missing]))
        lut = {n: i for i, n in enumerate(names)}
        out = np.array([lut.get(c, -1) for c in col], dtype=np.int64)
        out[missing] = -1
        return out, names

    labels, lnames = codes(labels_key, label_names)
    batches, bnames = codes(batch_key, None)
    meta = {"dataset": name, "layer": "raw" if use_raw else layer, "input": info["input"], "n_bins": n_bins,
            "vocab_size": len(vocab), "gene_overlap": info["gene_overlap"], "n_cells": int(adata.n_obs)}
    log.info("tokenised %s: %d cells, %.1f%% of the vocabulary present, input=%s", name, adata.n_obs,
             100 * info["gene_overlap"], info["input"])
    return TokenizedCells(indptr, genes, bins, labels, batches, lnames, bnames, meta)


def read_dataset(name: str, backed: bool = False):
    """Return ``(adata, reader kwargs)`` for a named dataset or an ``.h5ad`` path.

    ``pbmc68k_reduced``: ``.X`` is scaled, so ``use_raw=True`` with ``input="log1p"`` (log-normalised; no counts
    exist) and ``labels_key="bulk_labels"``. ``pbmc_stim``: raw counts, ``batch_key="batch"``, no labels. A user
    ``.h5ad`` written after :meth:`gatedzoo.singlecell.SCFM.setup_anndata` gives back the fields registered there
    (``adata.uns["_scfm_setup"]``); otherwise ``{}`` (``.X``, counts expected).
    """
    import anndata as ad

    if name == PBMC68K:
        import scanpy as sc

        return sc.datasets.pbmc68k_reduced(), dict(use_raw=True, input="log1p", labels_key="bulk_labels")
    if name == "pbmc_stim":
        return ad.read_h5ad(fetch(PBMC_STIM), backed="r" if backed else None), dict(batch_key="batch")
    path = Path(name).expanduser()
    if path.suffix != ".h5ad" or not path.exists():
        raise FileNotFoundError(f"dataset {name!r}: use 'pbmc68k_reduced', 'pbmc_stim' or an existing .h5ad path.")
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    # a file saved after SCFM.setup_anndata carries its fields (layer, gene_key, labels_key, input, ...) in .uns,
    # as scvi-tools' registry does: `gatedzoo eval --data` and the data modules read it the way the user set it up
    setup = adata.uns.get(SETUP_KEY, {})
    return adata, {k: str(v) for k, v in dict(setup).items() if k in SETUP_FIELDS}


def dataset_genes(name: str) -> list[str]:
    """Gene identifiers a dataset would contribute to a vocabulary."""
    adata, kw = read_dataset(name, backed=True)
    return list(map(str, (adata.raw.var_names if kw.get("use_raw") else adata.var_names)))


def collate_cells(cells: list[tuple], *, max_genes: int, mask_ratio: float, mask_bin: int, sample: bool,
                  generator: np.random.Generator | None = None, negatives: float = 0.0) -> dict[str, torch.Tensor]:
    """Pad a list of ``(genes, bins, label, batch[, source])`` cells into a batch.

    Cells longer than ``max_genes`` keep a random subset (``sample=True``, training) or their top-expressed genes.
    ``mask_ratio > 0`` replaces that fraction (at least one) of each cell's bins by ``mask_bin``.
    ``negatives > 0`` (with masking) also draws, per cell, ``round(negatives x masked count)`` genes the cell does
    **not** express: genes expressed by other cells of the batch from the same ``source`` (the same measured gene
    panel), so frequent genes are drawn more often; they are the "not expressed" (bin 0) queries of the cell-level
    objective (see :meth:`gatedzoo.models.scfm.SCFM.masked_expression_loss`).

    Returns ``genes``, ``bins`` ``[B, T]`` int64 (padding 0), ``seq_lens`` ``[B]`` int32, ``targets`` ``[B, T]``
    int64 (true bin at masked positions, ``-100`` elsewhere), ``labels``, ``batches`` ``[B]`` int64, and with
    ``negatives`` ``neg_genes`` ``[B, Q]`` int64 (padding 0).
    """
    rng = generator if generator is not None else np.random.default_rng()
    lens = [min(len(g), max_genes) for g, *_ in cells]
    t = max(max(lens), 1)
    genes = np.zeros((len(cells), t), np.int64)
    bins = np.zeros((len(cells), t), np.int64)
    targets = np.full((len(cells), t), -100, np.int64)
    for i, (g, b, *_) in enumerate(cells):
        n = lens[i]
        keep = np.sort(rng.choice(len(g), n, replace=False)) if sample and len(g) > n else slice(0, n)
        genes[i, :n], bins[i, :n] = g[keep], b[keep]
        if mask_ratio > 0 and n:
            m = rng.choice(n, max(1, int(round(mask_ratio * n))), replace=False)
            targets[i, m] = bins[i, m]
            bins[i, m] = mask_bin
    out = {"genes": torch.from_numpy(genes), "bins": torch.from_numpy(bins),
           "seq_lens": torch.tensor(lens, dtype=torch.int32), "targets": torch.from_numpy(targets),
           "labels": torch.tensor([c[2] for c in cells], dtype=torch.int64),
           "batches": torch.tensor([c[3] for c in cells], dtype=torch.int64)}
    if negatives > 0 and mask_ratio > 0:
        counts = [max(1, int(round(negatives * max(1, int(round(mask_ratio * n)))))) if n else 0 for n in lens]
        out["neg_genes"] = torch.from_numpy(_negative_genes(cells, counts, rng))
    return out


def _negative_genes(cells: list[tuple], counts: list[int], rng: np.random.Generator) -> np.ndarray:
    """``[B, max(counts)]`` int64: per cell, genes expressed elsewhere in the batch (same source) but not in it."""
    sources = np.array([c[4] if len(c) > 4 else 0 for c in cells])
    out = np.zeros((len(cells), max(max(counts), 1)), np.int64)
    for src in np.unique(sources):
        members = np.flatnonzero(sources == src)
        uniq, freq = np.unique(np.concatenate([cells[i][0] for i in members]), return_counts=True)
        for i in members:
            own = cells[i][0]
            # all of the cell's genes are excluded, also those a max_genes subset left out of its tokens
            keep = ~np.isin(uniq, own)
            cand, w = uniq[keep], freq[keep].astype(np.float64)
            k = min(counts[i], len(cand))
            if k:
                out[i, :k] = rng.choice(cand, k, replace=False, p=w / w.sum())
    return out


class CellDataset(Dataset):
    """Items ``(genes, bins, label, batch, source)`` of :class:`TokenizedCells` (label / batch ``-1`` when missing)."""

    def __init__(self, cells: TokenizedCells):
        self.cells = cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i):
        g, b = self.cells.cell(i)
        lab = -1 if self.cells.labels is None else int(self.cells.labels[i])
        bat = -1 if self.cells.batches is None else int(self.cells.batches[i])
        src = 0 if self.cells.source is None else int(self.cells.source[i])
        return g, b, lab, bat, src


class _Collate:
    """Picklable collate function (DataLoader workers); a fresh RNG per worker process."""

    def __init__(self, max_genes, mask_ratio, mask_bin, sample, seed, negatives=0.0):
        self.kw = dict(max_genes=max_genes, mask_ratio=mask_ratio, mask_bin=mask_bin, sample=sample,
                       negatives=negatives)
        self.seed, self.rng = seed, None

    def __call__(self, items):
        if self.rng is None:
            info = torch.utils.data.get_worker_info()
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            # ranks get their own masking streams (one process: the seeds of a single-GPU run, unchanged)
            rank = torch.distributed.get_rank() if dist else 0
            self.rng = np.random.default_rng(self.seed + (info.id + 1 if info else 0) + 7919 * rank)
        return collate_cells(items, generator=self.rng, **self.kw)


class SingleCellDataModule(L.LightningDataModule):
    """Tokenised cells for masked-expression pretraining, cell-type fine-tuning, embedding and probing.

    Args:
        dataset (str | list[str]): ``"pbmc68k_reduced"``, ``"pbmc_stim"``, an ``.h5ad`` path, a tokenised ``.pt``
            file (:meth:`TokenizedCells.save`), or a list of them (stacked; one vocabulary). Default: ``"pbmc_stim"``.
        vocab (str, Optional): zoo weights (``arch.tag``, folder, ``local-dir:``) whose saved vocabulary to use
            (fine-tuning, embedding). Default: build the vocabulary from the datasets' genes.
        layer (str, Optional): AnnData layer holding raw counts (user files). Default: ``.X``.
        gene_key (str, Optional): var column with gene symbols or Ensembl ids. Default: ``var_names``.
        labels_key (str, Optional): obs column of cell-type labels (user files). Default: `None`.
        batch_key (str, Optional): obs column of batches (user files). Default: `None`.
        input (str, Optional): ``"counts"`` / ``"log1p"`` to state the data kind (user files). Default: detect.
        n_bins (int): expression bins (must match the model). Default: ``51``.
        max_genes (int): most gene tokens per cell (plus CLS). Default: ``512``.
        mask_ratio (float): masked fraction of each cell's genes (0 for classification). Default: ``0.15``.
        negatives (float): "not expressed" gene queries per masked gene for the cell-level (MVC) loss: genes that
            other cells of the batch from the same dataset express and this cell does not (see
            :func:`collate_cells`). ``0`` turns them off. Default: ``1.0``.
        val_fraction (float): cells held out for validation (stratified by label when labels exist). Default: ``0.1``.
        batch_size (int): cells per batch. Default: ``32``.
        num_workers (int): DataLoader workers. Default: ``0``.
        backed (bool): read ``.h5ad`` files in backed mode: ``.X`` stays on disk and is read in row chunks (files
            larger than memory); anndata still loads layers into memory, so such files need their counts in
            ``.X``. Default: `False`.
        seed (int): split and masking seed. Default: ``0``.
    """

    def __init__(self, dataset: str | list[str] = "pbmc_stim", vocab: str | None = None, layer: str | None = None,
                 gene_key: str | None = None, labels_key: str | None = None, batch_key: str | None = None,
                 input: str | None = None, n_bins: int = 51, max_genes: int = 512, mask_ratio: float = 0.15,
                 negatives: float = 1.0, val_fraction: float = 0.1, batch_size: int = 32, num_workers: int = 0,
                 backed: bool = False, seed: int = 0):
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio} must lie in [0, 1).")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1).")
        if negatives < 0:
            raise ValueError(f"negatives={negatives} must be >= 0 (0 turns the 'not expressed' queries off).")
        self.save_hyperparameters()
        self.datasets = [dataset] if isinstance(dataset, str) else list(dataset)
        self.vocab: GeneVocab | None = None
        self.label_names: list[str] = []
        self.cells: TokenizedCells | None = None
        self.expected_input = "counts"

    def _load_vocab(self) -> GeneVocab:
        if self.hparams.vocab is not None:
            from gatedzoo.zoo.pretrained import _read_config, resolve_source

            _, folder = resolve_source(self.hparams.vocab, pretrained=True)
            cfg = _read_config(folder)
            if "gene_vocab" not in cfg:
                raise ValueError(f"{self.hparams.vocab} has no gene_vocab in its config: not a single-cell model.")
            pre = cfg.get("preprocessing", {})
            self.expected_input = pre.get("expected_input", "counts")
            if pre.get("n_bins", self.hparams.n_bins) != self.hparams.n_bins:
                raise ValueError(f"n_bins={self.hparams.n_bins} but {self.hparams.vocab} was trained with "
                                 f"{pre['n_bins']}; set data.n_bins to {pre['n_bins']}.")
            self.label_names = list(cfg.get("label_names", []))
            return GeneVocab.from_config(cfg["gene_vocab"])
        pts = [d for d in self.datasets if str(d).endswith(".pt")]
        if pts:
            if len(pts) != len(self.datasets):
                raise ValueError("mix of tokenised .pt files and raw datasets: tokenise all of them with one vocab.")
            return GeneVocab.from_config(torch.load(pts[0], weights_only=False)["meta"]["gene_vocab"])
        return GeneVocab.union(*(dataset_genes(d) for d in self.datasets))

    def tokenize(self) -> TokenizedCells:
        """Tokenise every dataset with the vocabulary (read / build it first)."""
        hp = self.hparams
        # a vocabulary built here is the union of the datasets' genes: each dataset is in it by construction, and
        # a small panel covering little of a union is no mismatch (the overlap guard is for a model's vocabulary)
        own_vocab = self.vocab is None and hp.vocab is None
        self.vocab = self.vocab or self._load_vocab()
        parts = []
        for d in self.datasets:
            if str(d).endswith(".pt"):
                parts.append(TokenizedCells.load(d))
                continue
            adata, kw = read_dataset(d, backed=hp.backed)
            user = {k: v for k, v in dict(layer=hp.layer, gene_key=hp.gene_key, labels_key=hp.labels_key,
                                           batch_key=hp.batch_key, input=hp.input).items() if v is not None}
            kw = {**kw, **user}
            parts.append(tokenize_anndata(adata, self.vocab, n_bins=hp.n_bins, name=str(d),
                                          expected_input=self.expected_input,
                                          label_names=self.label_names or None,
                                          min_overlap=0.0 if own_vocab else MIN_GENE_OVERLAP, **kw))
        cells = parts[0] if len(parts) == 1 else TokenizedCells.concat(parts)
        cells.meta["gene_vocab"] = self.vocab.to_config()
        return cells

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_idx", None) is not None:
            return
        hp = self.hparams
        # cells set by the caller (SCFM.train, benchmarks) are used as they are
        self.cells = self.cells if self.cells is not None else self.tokenize()
        if not self.label_names:
            self.label_names = list(self.cells.label_names)
        n = len(self.cells)
        rng = np.random.default_rng(hp.seed)
        labels = self.cells.labels
        if labels is not None and (labels >= 0).any():
            val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: int(round(hp.val_fraction *
                                  (labels == c).sum()))] for c in np.unique(labels)])
        else:
            val = rng.permutation(n)[: int(round(hp.val_fraction * n))]
        is_val = np.zeros(n, bool)
        is_val[val] = True
        self.train_idx, self.val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)

    def _loader(self, idx, train: bool, mask: bool = True) -> DataLoader:
        hp = self.hparams
        fn = _Collate(hp.max_genes, hp.mask_ratio if mask else 0.0, hp.n_bins, sample=train,
                      seed=hp.seed + (0 if train else 1000), negatives=hp.negatives)
        return DataLoader(CellDataset(self.cells.subset(idx)), batch_size=hp.batch_size, shuffle=train,
                          collate_fn=fn, num_workers=hp.num_workers, drop_last=train and len(idx) > hp.batch_size)

    def train_dataloader(self):
        return self._loader(self.train_idx, train=True)

    def val_dataloader(self):
        return self._loader(self.val_idx, train=False)

    def test_dataloader(self):
        return self._loader(self.val_idx, train=False)

    def predict_dataloader(self):
        """Every cell in order, unmasked (embedding / prediction)."""
        return self._loader(np.arange(len(self.cells)), train=False, mask=False)

    def zoo_metadata(self) -> dict:
        """Vocabulary and preprocessing that must travel with the weights."""
        meta = {"gene_vocab": self.vocab.to_config(),
                "preprocessing": {"n_bins": self.hparams.n_bins, "max_genes": self.hparams.max_genes,
                                  "expected_input": self.expected_input, "binning": "per-cell quantile",
                                  "inputs_seen": sorted({str(p.get("input")) for p in
                                                         self.cells.meta.get("parts", [self.cells.meta])})},
                "training_data": "+".join(map(str, self.datasets))}
        if self.label_names:
            meta["label_names"] = list(self.label_names)
        return meta
