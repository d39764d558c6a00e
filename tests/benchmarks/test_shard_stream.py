"""benchmarks/shard_stream.py: every cell of a small real-statistics collection comes through the loader, cold
passes drop the shards from the page cache, and the JSON is written."""

import json
import sys
from pathlib import Path

import pytest
from datafiles import need

from gatedzoo.data.singlecell import PBMC_STIM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from make_sharded_collection import make_collection

    need(PBMC_STIM)
    out = tmp_path_factory.mktemp("stream")
    make_collection(out, cells=600, shard_size=300, seed=1, workers=1)
    return out


def test_cold_and_warm_passes_deliver_every_cell(shards, tmp_path):
    import shard_stream

    out = tmp_path / "res" / "stream.json"
    # 40 divides 600: the training loader drops a last partial batch, so every cell arrives only then
    res = shard_stream.main(["--shards", str(shards), "--workers", "0,1", "--batch-size", "40", "--max-genes", "64",
                             "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert [(r["workers"], r["mode"]) for r in res["rows"]] == [(0, "cold"), (0, "warm"), (1, "cold"), (1, "warm")]
    for r in res["rows"]:
        assert r["cells"] == 600 and r["cells_per_s"] > 0 and 600 <= r["tokens"] <= 600 * 64
    assert res["meta"]["shards"] == 2 and res["meta"]["bytes_on_disk"] > 0


def test_evict_drops_the_file_from_the_page_cache(shards):
    """mincore() through mmap says which pages are resident: after evict() none of the shard's pages are."""
    import ctypes
    import mmap
    import os

    import shard_stream

    path = sorted(shards.glob("*.h5ad"))[0]
    path.read_bytes()  # now cached

    def resident() -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        size = path.stat().st_size
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        # a private (copy-on-write) mapping is writable for ctypes and, untouched, shows the page cache's pages
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
            buf = (ctypes.c_char * size).from_buffer(m)
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec)
            del buf
        assert rc == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vec)

    assert resident() > 0
    shard_stream.evict([str(path)])
    assert resident() == 0


def test_bad_arguments_are_refused_before_any_pass(shards, tmp_path):
    import shard_stream

    with pytest.raises(SystemExit):
        shard_stream.main(["--shards", str(shards), "--modes", "hot"])
    with pytest.raises(SystemExit):
        shard_stream.main(["--shards", str(shards), "--workers", "-1"])
    with pytest.raises(FileNotFoundError, match="shard"):
        shard_stream.main(["--shards", str(tmp_path)])
