"""``benchmarks/sweep.py --ab``: each A/B pair rewrites the tile class the launcher really picks for its call.

A pair whose class differs from the launcher's would time one tile twice and report a ratio of ~1.0 as a finding;
this runs on the CPU because it only needs ``triton_kernels._size_class``, never a kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sweep = pytest.importorskip("sweep", reason="benchmarks/sweep.py imports triton, a CUDA-side dependency")
tk = sweep.tk


@pytest.mark.parametrize("pair", sweep.AB + sweep.AB_V10, ids=lambda p: f"D{p[0]}-N{p[1]}-{p[2]}")
def test_ab_pairs_name_the_launchers_class(pair):
    D, N, call, a, b = pair
    assert a.keys() == b.keys()
    for pass_name, size in a:
        assert (pass_name, size) in tk.CONFIGS
        causal, varlen = sweep.FWD_CALLS.get(call, (False, False))
        assert tk._size_class(pass_name, D, N, False, causal, varlen) == size
    assert a != b


def test_tiles_restored_puts_production_back():
    before = dict(tk.CONFIGS)
    with pytest.raises(RuntimeError), sweep._tiles_restored() as saved:
        assert saved == before
        tk.CONFIGS[("fwd", "d128")] = [sweep.cfg(16, 16, 1, 1)]
        raise RuntimeError("an exception inside the block")
    assert before == tk.CONFIGS


@pytest.mark.parametrize("D", sorted(sweep.BWD_TILES))
def test_bwd_tile_lists_start_with_production(D):
    """``bwd_tiles`` times every entry against the first: the first must be the tile production runs."""
    for pass_name, tiles in sweep.BWD_TILES[D].items():
        prod = tk.CONFIGS[(pass_name, tk._size_class(pass_name, D, 16384, False, False))][0]
        assert sweep._label(tiles[0]) == sweep._label(prod), (D, pass_name)
