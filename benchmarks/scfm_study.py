"""Sigmoid vs softmax single-cell foundation model: the study, the step-time benchmark and the stability stress test.

Three stages, so that the GPU machine needs neither anndata nor scanpy:

1. ``prepare`` (CPU, here): tokenise ``pbmc_stim`` (raw counts, 2 batches) + ``pbmc68k_reduced`` (``.raw``,
   log1p, 10 cell types) with one gene vocabulary into ``.gdata/scfm/cells.pt`` (a few MB).
2. ``gpu`` (pure torch + gatedzoo): for each seed and activation, pretrain ``scfm_<act>_small`` with masked
   expression on all 2,700 cells (labels unused), record the validation masked-expression loss, the step time and
   the embeddings of every cell; time ``scfm_<act>_base`` steps on padding-heavy 2,048-gene cells with the
   ``auto`` (Triton when it runs) and ``reference`` backends; run the stress test (``scfm_<act>_large``, >= 100M
   parameters, 8,192-token cells = CLS + the 8,191 most often detected genes of each real cell with their zeros,
   no gradient clipping, one learning rate for both). Writes ``study.pt``, ``stress.pt``, ``log.json`` and the
   sigmoid seed-0 zoo weights under ``--out``.
3. ``analyze`` (CPU, here): scanpy / scikit-learn metrics from the embeddings (silhouette on cell types, NMI / ARI
   of Leiden clusters, kNN accuracy, batch ASW on pbmc_stim), the HVG + PCA baseline, the tables and the plots.

Usage::

    python benchmarks/scfm_study.py prepare
    python benchmarks/scfm_study.py gpu --out $OUT                       # on the GPU machine
    python benchmarks/scfm_study.py gpu --out runs/scfm_cpu --tiny       # end-to-end dry run on CPU
    python benchmarks/scfm_study.py gpu --out $OUT --step-time-only      # step times only (ABBA repeats)
    python benchmarks/scfm_study.py analyze --results <folder with study.pt, stress.pt, log.json>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / ".gdata" / "scfm" / "cells.pt"
STRESS_LEN = 8192


def prepare(args) -> None:
    from gatedzoo.data.singlecell import SingleCellDataModule

    dm = SingleCellDataModule(["pbmc_stim", "pbmc68k_reduced"], n_bins=51)
    cells = dm.tokenize()
    cells.meta["zoo_metadata"] = {**_zoo_meta(dm), "training_data": "pbmc_stim+pbmc68k_reduced (labels unused)"}
    cells.save(CELLS)
    print(f"wrote {CELLS}: {len(cells)} cells, {len(cells.genes)} tokens, {CELLS.stat().st_size / 1e6:.1f} MB")


def _zoo_meta(dm) -> dict:
    dm.cells = dm.cells or dm.tokenize()
    return dm.zoo_metadata()


def _batches(cells, idx, *, batch_size, max_genes, mask_bin, seed, steps, negatives=1.0):
    """Endless shuffled training batches (random gene subsets, 15% masked, "not expressed" queries) from workers."""
    from torch.utils.data import DataLoader

    from gatedzoo.data.singlecell import CellDataset, _Collate

    ds = CellDataset(cells.subset(idx))
    g = torch.Generator().manual_seed(seed)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, generator=g,
                    collate_fn=_Collate(max_genes, 0.15, mask_bin, True, seed, negatives),
                    num_workers=4 if steps > 50 else 0, persistent_workers=steps > 50)
    while True:
        yield from dl


def _cosine(step, total, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def _train(model, batches, *, steps, lr, warmup, device, amp, deadline, clip=None, record_every=1, full=None,
           fused=False):
    """AdamW (``fused``: one fused kernel, as the tasks use on a GPU) training loop; returns per-step losses, grad
    norms and GPU-synchronised step times (seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98), fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, warmup))
    hist = {"loss": [], "grad_norm": [], "step_time": [], "step": []}
    model.train()
    for step in range(steps):
        if time.time() > deadline:
            hist["stopped_early"] = step
            break
        b = next(batches) if full is None else full(step)
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.masked_expression_loss(b["genes"], b["bins"], b["seq_lens"], b["targets"],
                                                neg_genes=b.get("neg_genes"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
        opt.step()
        sched.step()
        _sync(device)
        if step % record_every == 0 or full is not None:
            hist["loss"].append(float(loss.detach()))
            hist["grad_norm"].append(float(gn))
            hist["step"].append(step)
        hist["step_time"].append(time.perf_counter() - t0)
    return hist


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def probe_backend(device) -> dict:
    """Which attention backend ``auto`` runs here, and whether it matches the reference (fwd + grads)."""
    from gatedzoo.kernels import attention

    torch.manual_seed(0)
    out = {}
    for act in ("sigmoid", "softmax"):
        q, k, v = (torch.randn(3, 300, 4, 32, device=device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        lens = torch.tensor([300, 177, 5], device=device, dtype=torch.int32)
        try:
            y = attention(q, k, v, activation=act, seq_lens=lens, backend="triton")
            y.float().square().sum().backward()
            g = q.grad.clone()
            q.grad = None
            r = attention(q, k, v, activation=act, seq_lens=lens, backend="reference")
            r.float().square().sum().backward()
            err = float((y.float() - r.float()).abs().max())
            gerr = float((g.float() - q.grad.float()).abs().max() / q.grad.float().abs().max())
            out[act] = {"triton": True, "max_abs_err_out": err, "max_rel_err_dq": gerr,
                        "ok": err < 0.05 and gerr < 0.05}
        except Exception as e:  # noqa: BLE001  (any failure of the new kernels means: measure with the reference)
            out[act] = {"triton": False, "error": f"{type(e).__name__}: {str(e)[:300]}", "ok": False}
    return out


def gpu(args) -> None:
    import gatedzoo
    from gatedzoo.data.singlecell import TokenizedCells

    t_start = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = TokenizedCells.load(args.cells)
    zmeta = cells.meta["zoo_metadata"]
    vocab_size = len(zmeta["gene_vocab"]["genes"]) + 2
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "tiny": args.tiny, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    info["probe"] = probe_backend(device) if device.type == "cuda" else {}
    backend = "auto" if all(p.get("ok") for p in info["probe"].values()) and info["probe"] else "reference"
    info["backend_used"] = backend if device.type == "cuda" else "reference (cpu)"
    print(json.dumps(info), flush=True)
    amp = device.type == "cuda"
    if args.step_time_only:
        # the step-time figures again, each activation timed 4 times in ABBA order on a fixed batch: base on 16
        # padding-heavy cells of up to 2,048 genes; small on 64 cells of up to 512 genes (the study's size); large on
        # the stress test's batch of 8,192-token cells
        variants = tuple(args.step_variants.split(","))
        runs = {
            "step_time_large": lambda: step_time_stress(cells, vocab_size, device, amp, args.tiny,
                                                        batch_size=args.stress_batch, variants=variants),
            "step_time_base": lambda: step_time_base(cells, vocab_size, device, amp, args.tiny, repeats=4,
                                                     variants=variants),
            "step_time_small": lambda: step_time_base(cells, vocab_size, device, amp, args.tiny, size="small",
                                                      max_genes=512, n_cells=64, backends=("auto",), repeats=4,
                                                      variants=variants),
        }
        runs = {key: run for key, run in runs.items() if key.removeprefix("step_time_") in args.step_sizes.split(",")}
        for key, run in runs.items():  # log.json after each size: a call cut short keeps what it measured
            info[key] = run()
            print(json.dumps(info[key]), flush=True)
            (out / "log.json").write_text(json.dumps(info, indent=1))
        info["total_s"] = time.time() - t_start
        (out / "log.json").write_text(json.dumps(info, indent=1))
        return

    size = "tiny" if args.tiny else args.size
    steps, seeds = (6, [0, 1]) if args.tiny else (args.steps,
                                                   list(range(args.first_seed, args.first_seed + args.seeds)))
    rng = np.random.default_rng(0)
    val = np.sort(rng.permutation(len(cells))[: len(cells) // 10])
    train = np.setdiff1d(np.arange(len(cells)), val)
    study = {"val_idx": val, "runs": []}
    from gatedzoo.tasks.masked_expression import embed_cells, masked_loss

    for seed in seeds:
        for act in ("sigmoid", "softmax"):
            torch.manual_seed(seed)
            model = gatedzoo.create_model(f"scfm_{act}_{size}", vocab_size=vocab_size, backend=backend,
                                          contrastive=args.contrastive).to(device)
            batches = _batches(cells, train, batch_size=args.batch_size, max_genes=args.max_genes,
                               mask_bin=model.mask_bin, seed=seed, steps=steps, negatives=args.negatives)
            hist = _train(model, batches, steps=steps, lr=1e-3, warmup=min(100, steps // 10 + 1), device=device,
                          amp=amp, deadline=time.time() + args.run_budget, record_every=10)
            model.float().eval()
            run = {"activation": act, "seed": seed, "size": size, "hist": hist, "negatives": args.negatives,
                   "contrastive": args.contrastive,
                   "val_loss": masked_loss(model, cells.subset(val), max_genes=512, device=device),
                   "val_cell_loss": masked_loss(model, cells.subset(val), max_genes=512, device=device, part="cell"),
                   "emb": torch.from_numpy(embed_cells(model, cells, max_genes=512, device=device)).half(),
                   "step_time_median": float(np.median(hist["step_time"][min(20, len(hist["step_time"]) - 1):]))}
            study["runs"].append(run)
            print(f"study {act} seed {seed}: val {run['val_loss']:.4f} step {run['step_time_median'] * 1e3:.1f} ms "
                  f"steps {len(hist['step_time'])} t={time.time() - t_start:.0f}s", flush=True)
            if act == "sigmoid" and seed == 0:
                model.zoo_config.update(zmeta)
                model.zoo_config["metrics"] = {"val_masked_loss": run["val_loss"]}
                model.zoo_config["recipe"] = "recipes/scfm/pretrain.yaml (hyper-parameters); benchmarks/scfm_study.py"
                model.half().save_pretrained(out / "zoo_scfm_sigmoid_small")
            del model
    torch.save(study, out / "study.pt")

    if args.skip_stress:
        info["total_s"] = time.time() - t_start
        (out / "log.json").write_text(json.dumps(info, indent=1))
        return
    info["step_time_base"] = step_time_base(cells, vocab_size, device, amp, args.tiny)
    print(json.dumps(info["step_time_base"]), flush=True)
    (out / "log.json").write_text(json.dumps(info, indent=1))

    stress = {}
    for act in ("sigmoid", "softmax"):
        stress[act] = stress_test(cells, vocab_size, act, device, amp, args, backend)
        h = stress[act]
        print(f"stress {act}: {len(h['loss'])} steps, loss {h['loss'][0]:.3f} -> {h['loss'][-1]:.3f}, grad norm max "
              f"{max(h['grad_norm']):.3g}, t={time.time() - t_start:.0f}s", flush=True)
        torch.save(stress, out / "stress.pt")
    info["total_s"] = time.time() - t_start
    (out / "log.json").write_text(json.dumps(info, indent=1))


def base_batch(cells, tiny: bool, max_genes: int = 2048, n_cells: int = 16) -> dict:
    """One fixed batch of ``n_cells`` real cells of up to ``max_genes`` genes, picked evenly along the length order
    (padding-heavy: 19 ... 2,007 genes at the defaults), 15 % masked."""
    from gatedzoo.data.singlecell import CellDataset, collate_cells

    order = np.argsort(-cells.lengths())
    ds = CellDataset(cells.subset(order[:: max(len(order) // n_cells, 1)][:n_cells]))
    return collate_cells([ds[i] for i in range(len(ds))], max_genes=64 if tiny else max_genes, mask_ratio=0.15,
                         mask_bin=51, sample=False, generator=np.random.default_rng(0))


def large_batch(cells, vocab_size: int, tiny: bool, batch_size: int = 2) -> dict:
    """The stress test's first batch: ``batch_size`` cells of 8,192 tokens (no padding)."""
    full = _stress_batches(cells, vocab_size, 64 if tiny else STRESS_LEN, 1 if tiny else batch_size,
                           np.random.default_rng(0))
    return full(0)


def step_time_base(cells, vocab_size, device, amp, tiny, size: str = "base", max_genes: int = 2048,
                   n_cells: int = 16, backends=("auto", "reference"), repeats: int = 1, variants=("eager",)) -> dict:
    """Median step time of ``scfm_<act>_<size>`` (default ``base``) on :func:`base_batch`; see
    :func:`time_activations`."""
    if device.type != "cuda" and not tiny:
        return {}
    batch = base_batch(cells, tiny, max_genes, n_cells)
    return time_activations(batch, vocab_size, device, amp, tiny, "tiny" if tiny else size, backends, repeats,
                            variants)


def step_time_stress(cells, vocab_size, device, amp, tiny, batch_size: int = 2, repeats: int = 4,
                     variants=("eager",)) -> dict:
    """Median step time of ``scfm_<act>_large`` on one fixed batch of the stress test's 8,192-token cells (no
    padding: every cell carries the whole gene panel), ABBA repeats; see :func:`time_activations`."""
    if device.type != "cuda" and not tiny:
        return {}
    return time_activations(large_batch(cells, vocab_size, tiny, batch_size), vocab_size, device, amp, tiny,
                            "tiny" if tiny else "large", ("auto",), repeats, variants)


#: step-time variants: name -> (fused AdamW, blocks compiled). "eager" is the study's loop (for-each AdamW), kept so
#: that earlier figures stay comparable; "fused" is the tasks' optimizer on a GPU; "compiled" adds SCFM.compile()
STEP_VARIANTS = {"eager": (False, False), "fused": (True, False), "compiled": (True, True)}


def step_model(act: str, size: str, vocab_size: int, backend: str, variant: str, device):
    """``(model, fused)``: a fresh ``scfm_<act>_<size>`` (seed 0) prepared for one ``STEP_VARIANTS`` entry, and
    whether its AdamW is to be fused."""
    import gatedzoo

    fused, compiled = STEP_VARIANTS[variant]
    torch.manual_seed(0)
    model = gatedzoo.create_model(f"scfm_{act}_{size}", vocab_size=vocab_size, backend=backend).to(device)
    if compiled:
        model.compile()
    return model, fused


def time_activations(batch, vocab_size, device, amp, tiny, size, backends, repeats, variants=("eager",)) -> dict:
    """Median step time (ms, AdamW step included) of ``scfm_sigmoid_<size>`` and ``scfm_softmax_<size>`` on one
    fixed ``batch``, for each backend and each of ``variants`` (``STEP_VARIANTS``). ``repeats`` > 1 times each
    activation that many times in ABBA order (sigmoid, softmax, softmax, sigmoid, ...), each time a fresh model, and
    takes the median over all timed steps (25 per run, the first 5 dropped: compilation happens there), so that
    drift of the GPU's clocks between the two activations cancels. Keys: ``<act>_<backend>_ms`` for ``eager``,
    ``<act>_<backend>_<variant>_ms`` for the others."""

    lens = batch["seq_lens"].float() + 1  # + CLS
    res = {"size": size, "cells": len(lens), "max_len": int(lens.max()), "repeats": repeats,
           "padding_fraction": float(1 - lens.mean() / lens.max())}
    for backend in backends:
        # the materialised reference is the slow baseline, not a configuration to tune: timed eager only
        for variant in variants if backend != "reference" else ("eager",):
            suffix = backend if variant == "eager" else f"{backend}_{variant}"
            times = {"sigmoid": [], "softmax": []}
            for rep in range(repeats):
                for act in ("sigmoid", "softmax") if rep % 2 == 0 else ("softmax", "sigmoid"):
                    model, fused = step_model(act, size, vocab_size, backend, variant, device)
                    try:
                        hist = _train(model, iter(lambda: batch, None), steps=3 if tiny else 25, lr=1e-4, warmup=1,
                                      device=device, amp=amp, deadline=time.time() + 180, fused=fused)
                        times[act] += hist["step_time"][5 if not tiny else 1:]
                    except Exception as e:  # noqa: BLE001  (a failing backend is reported, not fatal to the study)
                        res[f"{act}_{suffix}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    del model
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            for act, t in times.items():
                if t:
                    res[f"{act}_{suffix}_ms"] = 1e3 * float(np.median(t))
    return res


def _stress_batches(cells, vocab_size, length, bsz, rng):
    """``full(step)`` -> a batch of ``bsz`` random pbmc_stim cells over one fixed panel of ``length`` - 1 genes (the
    genes detected in the most cells; every cell carries all of them, its zeros as bin 0) plus CLS."""
    from gatedzoo.data.singlecell import collate_cells

    counts = np.bincount(cells.genes, minlength=vocab_size)
    panel = np.sort(np.argsort(-counts)[: length - 1])
    bins_dense = np.zeros((len(cells), vocab_size), np.uint8)
    for i in range(len(cells)):
        g, b = cells.cell(i)
        bins_dense[i, g] = b
    panel_bins = bins_dense[:, panel]
    stim = np.flatnonzero(cells.batches >= 0)  # the pbmc_stim cells measure the whole transcriptome

    def full(step):
        idx = rng.choice(stim, bsz, replace=False)
        items = [(panel.astype(np.int64), panel_bins[i].astype(np.int64), -1, -1) for i in idx]
        return collate_cells(items, max_genes=length, mask_ratio=0.15, mask_bin=51, sample=False, generator=rng)

    return full


def stress_test(cells, vocab_size, act, device, amp, args, backend) -> dict:
    """``scfm_<act>_large`` on 8,192-token full-gene-vector cells, lr 1e-3, no clipping: loss + grad norm per step."""
    import gatedzoo

    tiny = args.tiny
    length = 64 if tiny else STRESS_LEN
    bsz = 1 if tiny else args.stress_batch
    full = _stress_batches(cells, vocab_size, length, bsz, np.random.default_rng(0))
    torch.manual_seed(0)
    model = gatedzoo.create_model(f"scfm_{act}_{'tiny' if tiny else 'large'}", vocab_size=vocab_size,
                                  backend=backend).to(device)
    if backend == "reference" and not tiny:
        model.set_grad_checkpointing(True)  # materialised 8K x 8K scores: recompute per block instead of storing
    n_params = sum(p.numel() for p in model.parameters())
    hist = _train(model, None, steps=6 if tiny else args.stress_steps, lr=args.stress_lr, warmup=10, device=device,
                  amp=amp, deadline=time.time() + args.stress_budget, full=full)
    hist.update(params=n_params, tokens=length, batch=bsz, lr=args.stress_lr, backend=backend,
                nonfinite=int(sum(not math.isfinite(x) for x in hist["loss"])))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return hist


def _leiden_scores(emb, labels, seed=0):
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = ad.AnnData(np.zeros((len(emb), 1), np.float32))
    a.obsm["X_e"] = np.asarray(emb, np.float32)
    sc.pp.neighbors(a, use_rep="X_e", n_neighbors=15, random_state=seed)
    sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    cl = a.obs["leiden"].to_numpy()
    return normalized_mutual_info_score(labels, cl), adjusted_rand_score(labels, cl)


def metrics_for(emb_lab, labels, emb_batch, batches) -> dict:
    """Cell-type (silhouette, Leiden NMI / ARI, kNN, linear probe) and batch-mixing (scib-style batch ASW) metrics.

    The linear probe is 5-fold stratified accuracy of a logistic regression on standardised embeddings: it shows
    whether cell types are linearly readable even where the embedding's distances (kNN, silhouette) ignore them.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_samples, silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gatedzoo.tasks.masked_expression import knn_probe

    nmi, ari = _leiden_scores(emb_lab, labels)
    s_batch = silhouette_samples(emb_batch, batches)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return {"silhouette": float(silhouette_score(emb_lab, labels)), "nmi": float(nmi), "ari": float(ari),
            "knn_acc": knn_probe(emb_lab, labels), "batch_asw": float(np.mean(1 - np.abs(s_batch))),
            "linear_probe": float(cross_val_score(probe, emb_lab, labels, cv=folds).mean())}


def hvg_pca_baseline() -> tuple[dict, np.ndarray]:
    """HVG + PCA embeddings: pbmc68k_reduced ``.raw`` (log1p) and pbmc_stim (normalize_total + log1p)."""
    import anndata as ad
    import scanpy as sc

    from gatedzoo.data.paths import fetch
    from gatedzoo.data.singlecell import PBMC_STIM

    def pca(a, n_top):
        sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
        a = a[:, a.var["highly_variable"]].copy()
        sc.pp.scale(a, max_value=10)
        sc.pp.pca(a, n_comps=50, random_state=0)
        return a.obsm["X_pca"]

    p68 = sc.datasets.pbmc68k_reduced()
    lab = p68.raw.to_adata()
    e68 = pca(lab, 500)
    stim = ad.read_h5ad(fetch(PBMC_STIM))
    sc.pp.normalize_total(stim, target_sum=1e4)
    sc.pp.log1p(stim)
    est = pca(stim, 2000)
    labels = p68.obs["bulk_labels"].astype(str).to_numpy()
    return metrics_for(e68, labels, est, stim.obs["batch"].astype(str).to_numpy()), e68


def load_studies(folders: list[Path]) -> dict:
    """The ``study.pt`` of several GPU calls of disjoint seeds (``--first-seed``) as one study.

    Raises:
        ValueError: a call held out other validation cells, or repeats an (activation, seed) of an earlier one.
    """
    study = torch.load(folders[0] / "study.pt", weights_only=False)
    for other in folders[1:]:
        more = torch.load(other / "study.pt", weights_only=False)
        if not np.array_equal(more["val_idx"], study["val_idx"]):
            raise ValueError(f"{other} held out other validation cells than {folders[0]}; analyse them separately.")
        seen = {(r["activation"], r["seed"]) for r in study["runs"]}
        if any((r["activation"], r["seed"]) in seen for r in more["runs"]):
            raise ValueError(f"{other} repeats an (activation, seed) of an earlier call; merge disjoint seeds.")
        study["runs"] += more["runs"]
    return study


def analyze(args) -> None:
    from gatedzoo.data.singlecell import TokenizedCells

    folders = [Path(f) for f in args.results.split(",")]
    res = folders[0]
    cells = TokenizedCells.load(args.cells)
    study = load_studies(folders)
    stress = torch.load(res / "stress.pt", weights_only=False) if (res / "stress.pt").exists() else {}
    info = json.loads((res / "log.json").read_text())
    if len(folders) > 1:
        info["calls"] = [json.loads((f / "log.json").read_text()) for f in folders]
    lab_idx = np.flatnonzero(cells.labels >= 0)
    bat_idx = np.flatnonzero(cells.batches >= 0)
    labels = np.array(cells.label_names)[cells.labels[lab_idx]]
    batches = cells.batches[bat_idx]
    rows = []
    for r in study["runs"]:
        emb = r["emb"].float().numpy()
        m = metrics_for(emb[lab_idx], labels, emb[bat_idx], batches)
        rows.append({"activation": r["activation"], "seed": r["seed"], "val_loss": r["val_loss"],
                     "val_cell_loss": r.get("val_cell_loss", float("nan")), "steps": len(r["hist"]["step_time"]),
                     "step_ms": 1e3 * r["step_time_median"], **m})
        print(rows[-1], flush=True)
    base, base_emb = hvg_pca_baseline()
    summary = {"runs": rows, "hvg_pca": base, "info": info, "stress": _stress_summary(stress)}
    keys = ["silhouette", "nmi", "ari", "knn_acc", "linear_probe", "batch_asw", "val_loss", "val_cell_loss", "steps",
            "step_ms"]
    for act in ("sigmoid", "softmax"):
        sel = [r for r in rows if r["activation"] == act]
        summary[act] = {k: [float(np.mean([r[k] for r in sel])), float(np.std([r[k] for r in sel]))] for k in keys}
    out = Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scfm_study.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("sigmoid", "softmax", "hvg_pca", "stress")}, indent=1))
    _plots(study, stress, cells, lab_idx, labels, base_emb, Path(args.figs))


def _stress_summary(stress) -> dict:
    out = {}
    for act, h in stress.items():
        g = np.array(h["grad_norm"])
        finite = g[np.isfinite(g)]
        out[act] = {"steps": len(h["loss"]), "params": h["params"], "tokens": h["tokens"], "lr": h["lr"],
                    "backend": h["backend"], "loss_first": h["loss"][0], "loss_last": h["loss"][-1],
                    "loss_min": float(np.nanmin(h["loss"])), "grad_norm_first10_median": float(np.median(g[:10])),
                    "grad_norm_max": float(finite.max()) if len(finite) else float("nan"),
                    "grad_norm_last": float(g[-1]), "nonfinite_losses": h["nonfinite"],
                    "step_ms_median": 1e3 * float(np.median(h["step_time"][3:]))}
    return out


def _plots(study, stress, cells, lab_idx, labels, base_emb, figs: Path) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    figs.mkdir(parents=True, exist_ok=True)
    panels = [("HVG + PCA", base_emb)]
    for act in ("sigmoid", "softmax"):
        r = next(r for r in study["runs"] if r["activation"] == act and r["seed"] == 0)
        panels.append((f"scfm_{act}_small (seed 0)", r["emb"].float().numpy()[lab_idx]))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    cats = sorted(set(labels))
    colors = plt.get_cmap("tab10")
    for ax, (title, emb) in zip(axes, panels):
        a = ad.AnnData(np.zeros((len(emb), 1), np.float32))
        a.obsm["X_e"] = np.asarray(emb, np.float32)
        sc.pp.neighbors(a, use_rep="X_e", n_neighbors=15, random_state=0)
        sc.tl.umap(a, random_state=0)
        xy = a.obsm["X_umap"]
        for i, c in enumerate(cats):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colors(i), label=c)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("pbmc68k_reduced (700 cells), UMAP of cell embeddings coloured by bulk_labels")
    fig.tight_layout()
    fig.savefig(figs / "scfm_umap.png", dpi=110)
    plt.close(fig)
    if stress:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for act, h in stress.items():
            axes[0].plot(h["step"], h["loss"], label=act)
            axes[1].plot(h["step"], h["grad_norm"], label=act)
        axes[0].set_ylabel("masked-expression loss")
        axes[1].set_ylabel("gradient norm (before the optimiser; no clipping)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend()
        h = next(iter(stress.values()))
        fig.suptitle(f"stress test: scfm_*_large ({h['params'] / 1e6:.0f}M params), {h['tokens']}-token cells, "
                     f"batch {h['batch']}, lr {h['lr']}, bf16, no gradient clipping")
        fig.tight_layout()
        fig.savefig(figs / "scfm_stress.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("prepare", "gpu", "analyze"))
    p.add_argument("--cells", default=str(CELLS))
    p.add_argument("--out", default=os.environ.get("OUT", "runs/scfm_study"))
    p.add_argument("--results", default="runs/scfm_study", help="GPU output folder(s), comma-separated")
    p.add_argument("--docs", default="docs/benchmarks")
    p.add_argument("--figs", default="docs/models")
    p.add_argument("--tiny", action="store_true", help="tiny models and a few steps (CPU dry run)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="study seeds are first_seed .. first_seed + seeds - 1")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--run-budget", type=float, default=40.0, help="seconds per study run at most")
    p.add_argument("--size", default="small", help="study model size (tiny, small, base, large)")
    p.add_argument("--batch-size", type=int, default=64, help="study: cells per step")
    p.add_argument("--max-genes", type=int, default=512, help="study: most gene tokens per training cell")
    p.add_argument("--negatives", type=float, default=1.0,
                   help='"not expressed" queries per masked gene in the cell loss (0 = the v1/v2 objective)')
    p.add_argument("--contrastive", type=float, default=0.0, help="study: weight of the cell-level contrastive loss "
                   "(SCFM(contrastive=...); 0 = off, as studies v1-v3)")
    p.add_argument("--skip-stress", action="store_true", help="study only (no base timing, no stress test)")
    p.add_argument("--step-time-only", action="store_true",
                   help="only the step times (base, small and large; fixed batches, ABBA repeats): no study, no stress")
    p.add_argument("--step-variants", default="eager",
                   help="with --step-time-only: comma-separated STEP_VARIANTS (eager, fused, compiled)")
    p.add_argument("--step-sizes", default="large,base,small", help="with --step-time-only: which sizes, in order")
    p.add_argument("--stress-steps", type=int, default=250)
    p.add_argument("--stress-batch", type=int, default=2)
    p.add_argument("--stress-lr", type=float, default=1e-3)
    p.add_argument("--stress-budget", type=float, default=70.0, help="seconds per activation at most")
    args = p.parse_args(argv)
    unknown = set(args.step_variants.split(",")) - set(STEP_VARIANTS)
    if unknown:
        p.error(f"--step-variants: unknown {sorted(unknown)}; choose from {sorted(STEP_VARIANTS)}")
    {"prepare": prepare, "gpu": gpu, "analyze": analyze}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
