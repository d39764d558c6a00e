"""Write a synthetic-but-realistic single-cell collection as ``.h5ad`` shards (raw integer counts).

The generative model is fitted to the real two-batch PBMC file (``$GATEDZOO_DATA/pbmc_stim/pbmc_stim.h5ad``, 2,000
cells x 9,015 genes, raw counts) and keeps its gene symbols:

* cell states: k-means (``--clusters``, default 8) on the top 20 SVD components of log1p(counts per 10k); a cell
  draws its state with the real states' frequencies;
* library size per cell: log-normal with the mean / sd of the real log library sizes of its state;
* per gene and state: mean expression fraction ``mu[k, g]`` (pooled counts / pooled library size);
* per gene: negative-binomial dispersion ``phi[g]`` by the method of moments around ``L_c * mu[k(c), g]``, clipped
  to [0.01, 50];
* per gene: dropout, the excess of the real zero fraction over the NB zero probability, as a zero-inflation
  ``pi[g]`` in [0, 0.95].

Counts are Gamma-Poisson draws (= NB(mean, phi)), zero-inflated, written shard by shard (``--shard-size`` cells)
in chunks of ``--chunk`` cells: neither the collection nor a dense shard is ever held in memory. Every shard is
written to ``<name>.tmp`` and renamed when complete (an interrupted run leaves no partial shard; rerunning skips
finished shards). Shard ``i`` uses the seed ``[seed, i]``, so the output does not depend on ``--workers``.
Needs numpy, scipy, scikit-learn and h5py only (no anndata); anndata / scanpy read the shards.

    python benchmarks/make_sharded_collection.py --out runs/shards --cells 200000 --shard-size 20000 --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

DEFAULT_SOURCE = "pbmc_stim/pbmc_stim.h5ad"


def _decode(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in a]


def read_counts(path: str) -> tuple[sp.csr_matrix, list[str]]:
    """The source's raw counts (CSR, cells x genes) and gene symbols, read with h5py."""
    with h5py.File(path, "r") as f:
        x = f["X"]
        if not isinstance(x, h5py.Group) or x.attrs.get("encoding-type") != "csr_matrix":
            raise ValueError(f"{path}: X must be a CSR matrix of raw counts.")
        m = sp.csr_matrix((x["data"][:], x["indices"][:], x["indptr"][:]), shape=tuple(x.attrs["shape"]))
        genes = _decode(f["var"][f["var"].attrs["_index"]][:])
    if m.data.size and (m.data.min() < 0 or not np.allclose(m.data, np.round(m.data))):
        raise ValueError(f"{path}: X is not raw integer counts; the statistics must come from counts.")
    return m, genes


def fit_statistics(counts: sp.csr_matrix, clusters: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Gene-wise NB statistics per cell state (see the module docstring). Arrays are float64 / float32."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD

    lib = np.asarray(counts.sum(1)).ravel()
    norm = sp.diags(1e4 / lib) @ counts
    norm.data = np.log1p(norm.data)
    z = TruncatedSVD(20, random_state=seed).fit_transform(norm)
    labels = KMeans(clusters, n_init=4, random_state=seed).fit_predict(z)
    dense = counts.toarray().astype(np.float64)
    mu = np.stack([dense[labels == k].sum(0) / lib[labels == k].sum() for k in range(clusters)])
    m = lib[:, None] * mu[labels]
    resid = ((dense - m) ** 2 - m).sum(0)
    denom = (m ** 2).sum(0)
    phi = np.clip(np.where(denom > 0, resid / np.maximum(denom, 1e-12), 1.0), 0.01, 50.0)
    p0 = ((1 + phi * m) ** (-1 / phi)).mean(0)
    zero = (dense == 0).mean(0)
    pi = np.clip((zero - p0) / np.maximum(1 - p0, 1e-6), 0.0, 0.95)
    loglib = np.log(lib)
    return {"mu": mu, "phi": phi, "pi": pi, "props": np.bincount(labels, minlength=clusters) / len(labels),
            "loglib_mean": np.array([loglib[labels == k].mean() for k in range(clusters)]),
            "loglib_sd": np.array([loglib[labels == k].std() + 1e-3 for k in range(clusters)])}


def sample_cells(stats: dict, n: int, rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """``n`` cells of zero-inflated NB counts (CSR float32 integer values) and their state labels."""
    k = rng.choice(len(stats["props"]), n, p=stats["props"])
    lib = np.exp(rng.normal(stats["loglib_mean"][k], stats["loglib_sd"][k]))
    mean = lib[:, None] * stats["mu"][k]
    phi = stats["phi"]
    lam = rng.gamma(1.0 / phi, phi * mean + 1e-12)  # Gamma-Poisson mixture = NB(mean, phi)
    x = rng.poisson(lam).astype(np.float32)
    x[rng.random(x.shape) < stats["pi"]] = 0.0
    empty = np.flatnonzero(x.sum(1) == 0)
    x[empty, stats["mu"][k[empty]].argmax(1)] = 1.0  # a cell always expresses at least one gene
    return sp.csr_matrix(x), k


def _strings(group, name: str, values) -> None:
    d = group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
    d.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})


def _dataframe(group, index: list[str], columns: dict[str, tuple[np.ndarray, list[str]]]) -> None:
    group.attrs.update({"_index": "_index", "encoding-type": "dataframe", "encoding-version": "0.2.0"})
    if columns:
        group.attrs.create("column-order", data=list(columns), dtype=h5py.string_dtype())
    else:  # anndata writes an empty column order as an empty float array
        group.attrs["column-order"] = np.zeros(0)
    _strings(group, "_index", index)
    for name, (codes, categories) in columns.items():
        c = group.create_group(name)
        c.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
        c.create_dataset("codes", data=codes.astype(np.int8)).attrs.update(
            {"encoding-type": "array", "encoding-version": "0.2.0"})
        _strings(c, "categories", categories)


def write_shard(path: Path, stats: dict, genes: list[str], n: int, seed: list[int], prefix: str,
                chunk: int = 1024) -> None:
    """Write one AnnData-compatible shard atomically (``path.tmp``, then rename), ``chunk`` cells at a time."""
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    labels = []
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n, len(genes)])})
        data = x.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 16,))
        indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 16,))
        indptr = [np.zeros(1, np.int64)]
        for a in range(0, n, chunk):
            m, k = sample_cells(stats, min(chunk, n - a), rng)
            off = data.shape[0]
            data.resize((off + m.nnz,))
            indices.resize((off + m.nnz,))
            data[off:] = m.data
            indices[off:] = m.indices
            indptr.append(m.indptr[1:].astype(np.int64) + off)
            labels.append(k)
        x.create_dataset("indptr", data=np.concatenate(indptr))
        k = np.concatenate(labels)
        _dataframe(f.create_group("obs"), [f"{prefix}_{i}" for i in range(n)],
                   {"state": (k, [f"state{j}" for j in range(len(stats["props"]))])})
        _dataframe(f.create_group("var"), genes, {})
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            f.create_group(name).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    os.replace(tmp, path)


def _job(args):
    path, stats, genes, n, seed, prefix, chunk = args
    write_shard(Path(path), stats, genes, n, seed, prefix, chunk)
    return path


def make_collection(out: str | Path, cells: int, shard_size: int, *, source: str | None = None, seed: int = 0,
                    clusters: int = 8, workers: int = 1, chunk: int = 1024) -> dict:
    """Write ``ceil(cells / shard_size)`` shards into ``out``; return the summary also written to
    ``out/collection.json``."""
    if cells < 1 or shard_size < 1:
        raise ValueError(f"--cells {cells} and --shard-size {shard_size} must be >= 1.")
    if source is None:
        root = Path(os.environ.get("GATEDZOO_DATA", Path.home() / ".cache/gatedzoo/data"))
        source = str(root / DEFAULT_SOURCE)
    if not Path(source).exists():
        raise FileNotFoundError(f"source {source} not found; set GATEDZOO_DATA to the data folder holding "
                                f"{DEFAULT_SOURCE}, or pass --source a raw-count .h5ad.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts, genes = read_counts(source)
    stats = fit_statistics(counts, clusters, seed)
    n_shards = -(-cells // shard_size)
    jobs = []
    for i in range(n_shards):
        path = out / f"shard_{i:05d}.h5ad"
        if not path.exists():
            jobs.append((str(path), stats, genes, min(shard_size, cells - i * shard_size), [seed, i], f"s{i}", chunk))
    if workers > 1 and len(jobs) > 1:
        with Pool(min(workers, len(jobs))) as pool:
            for p in pool.imap_unordered(_job, jobs):
                print("wrote", p, flush=True)
    else:
        for j in jobs:
            print("wrote", _job(j), flush=True)
    summary = {"cells": cells, "shards": n_shards, "shard_size": shard_size, "genes": len(genes), "seed": seed,
               "clusters": clusters, "source": str(source), "source_cells": int(counts.shape[0]),
               "bytes": sum(p.stat().st_size for p in out.glob("shard_*.h5ad")),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "collection.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created; finished shards are kept)")
    ap.add_argument("--cells", type=int, required=True, help="total number of cells")
    ap.add_argument("--shard-size", type=int, default=50_000, help="cells per shard (default 50000)")
    ap.add_argument("--source", default=None, help="raw-count .h5ad to fit (default $GATEDZOO_DATA/" + DEFAULT_SOURCE)
    ap.add_argument("--clusters", type=int, default=8, help="cell states fitted by k-means (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="shards written in parallel (default 1)")
    ap.add_argument("--chunk", type=int, default=1024, help="cells sampled at once (memory ~ chunk x genes x 8 B)")
    a = ap.parse_args(argv)
    summary = make_collection(a.out, a.cells, a.shard_size, source=a.source, seed=a.seed, clusters=a.clusters,
                              workers=a.workers, chunk=a.chunk)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
