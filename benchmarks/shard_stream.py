"""How fast the sharded single-cell loader delivers cells when the collection is read from disk, not from RAM.

A collection larger than host memory is read from storage on every pass: the page cache cannot hold it. This
benchmark reproduces that for a collection of any size without filling the machine's RAM: before a "cold" pass it
drops every shard file from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed), so each byte
the pass reads comes from the device; a "warm" pass repeats it with the files cached. The device's own counter
(``/proc/diskstats``, sectors read) confirms which pass read from storage.

A pass is the whole training data path that a rank runs on the CPU — lazy block reads from the ``.h5ad`` shards,
tokenisation (per-cell expression bins), the shuffle buffer and the collate (gene sampling, masking, negatives) —
through ``ShardedSingleCellDataModule.train_dataloader()`` with ``--workers`` DataLoader workers; no model. Cells/s is
then the most one rank can train on with that many workers, to compare with what the GPU consumes
(docs/scaling.md: 2,951 cells/s per H200 for the pretraining recipe).

    python benchmarks/make_sharded_collection.py --out runs/shards --cells 100000 --shard-size 20000 --workers 2
    python benchmarks/shard_stream.py --shards runs/shards --workers 0,1,2 --out docs/benchmarks/shard_stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gatedzoo.data.shards import ShardedSingleCellDataModule, list_shards  # noqa: E402
from gatedzoo.io import write_json  # noqa: E402


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (clean pages only: the shards are read-only here)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _diskstats() -> list[list[str]]:
    """The rows of /proc/diskstats: major, minor, name, then the counters (the 6th field is sectors read)."""
    return [line.split() for line in Path("/proc/diskstats").read_text().splitlines()]


def _device_of(path: str) -> str | None:
    """The /proc/diskstats name of the block device holding ``path``, or None (an overlay or tmpfs has none)."""
    dev = os.stat(path).st_dev
    return next((f[2] for f in _diskstats() if (int(f[0]), int(f[1])) == (os.major(dev), os.minor(dev))), None)


def sectors_read(device: str | None) -> int | None:
    """Sectors (512 B) read from ``device`` since boot, or None where /proc/diskstats does not list it."""
    return None if device is None else next((int(f[5]) for f in _diskstats() if f[2] == device), None)


def one_pass(shards: str, workers: int, batch_size: int, max_genes: int, max_cells: int | None) -> dict:
    """Iterate the training loader once (or until ``max_cells``): cells, seconds, cells/s."""
    dm = ShardedSingleCellDataModule(shards, batch_size=batch_size, num_workers=workers, max_genes=max_genes,
                                     val_fraction=0.0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    cells = tokens = 0
    t0 = time.perf_counter()
    first = None
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        cells += int(batch["seq_lens"].numel())
        tokens += int(batch["seq_lens"].sum())
        if max_cells is not None and cells >= max_cells:
            break
    wall = time.perf_counter() - t0
    return {"cells": cells, "tokens": tokens, "wall_s": round(wall, 2), "first_batch_s": round(first or 0.0, 2),
            "cells_per_s": round(cells / wall, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="folder (or glob) of .h5ad shards, e.g. from "
                                                    "make_sharded_collection.py")
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts to measure, comma-separated")
    ap.add_argument("--batch-size", type=int, default=64, help="cells per batch (the pretraining recipe's 64)")
    ap.add_argument("--max-genes", type=int, default=512, help="gene tokens per cell (the recipe's 512)")
    ap.add_argument("--max-cells", type=int, default=None, help="stop a pass after this many cells (default: all)")
    ap.add_argument("--modes", default="cold,warm", help="cold (page cache dropped first) and/or warm")
    ap.add_argument("--out", default=None, help="write the results here as JSON (atomically)")
    a = ap.parse_args(argv)
    workers = [int(w) for w in a.workers.split(",")]
    modes = a.modes.split(",")
    if any(w < 0 for w in workers) or not set(modes) <= {"cold", "warm"}:
        ap.error("--workers takes counts >= 0 and --modes takes 'cold' and/or 'warm'")
    paths = list_shards(a.shards)  # raises with the fix when the folder holds no shards
    device = _device_of(paths[0])
    size = sum(os.path.getsize(p) for p in paths)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "command": "python " + " ".join(sys.argv if argv is None else ["benchmarks/shard_stream.py", *argv]),
            "shards": len(paths), "bytes_on_disk": size, "block_device": device,
            "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    rows = []
    for w in workers:
        for mode in modes:
            if mode == "cold":
                evict(paths)
            before = sectors_read(device)
            r = one_pass(a.shards, w, a.batch_size, a.max_genes, a.max_cells)
            after = sectors_read(device)
            r.update(workers=w, mode=mode,
                     mib_read_from_device=None if before is None else round((after - before) * 512 / 2**20, 1))
            r["mib_per_s_from_device"] = (None if r["mib_read_from_device"] is None
                                          else round(r["mib_read_from_device"] / r["wall_s"], 1))
            rows.append(r)
            print(json.dumps(r), flush=True)
    result = {"meta": meta, "rows": rows}
    if a.out:
        write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
