"""The CPU-side parts of the GPU measurement scripts: ``ab_rev.py`` (another revision's kernels as a second module),
``scfm_profile.py`` (kernel groups), ``scfm_study.py --step-variants`` (refused before any work when unknown) and the
study's reading of several calls as one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
pytest.importorskip("triton", reason="the kernels module that ab_rev.py loads imports triton")
import ab_rev  # noqa: E402
import scfm_profile  # noqa: E402
import scfm_study  # noqa: E402


def _has_history() -> bool:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_history(), reason="needs the repository's git history (a checkout, not an export)")
def test_a_revision_loads_as_its_own_module(tmp_path):
    from gatedzoo.kernels import triton_kernels

    old = ab_rev.load_revision("HEAD", tmp_path)
    assert old is not triton_kernels
    assert old.__name__.startswith("triton_kernels_")
    assert callable(old.attention_forward) and callable(old.attention_backward)
    # the same file given as a path (how the GPU machine, which has no history, receives it)
    path = tmp_path / "copy.py"
    path.write_text(Path(old.__file__).read_text())
    assert callable(ab_rev.load_revision(str(path), tmp_path / "x").attention_backward)


def test_an_unknown_revision_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="git could not show kernels/triton_kernels.py at 'no-such-rev'"):
        ab_rev.load_revision("no-such-rev", tmp_path)


def test_shapes_parse_and_bad_ones_are_refused():
    assert ab_rev.parse_shapes("64x8192x2x12,128x1024x16x16") == [(64, 8192, 2, 12), (128, 1024, 16, 16)]
    assert len(ab_rev.parse_shapes(ab_rev.SHAPES)) == 6
    for bad in ("64x8192x2", "64x0x2x12", "Dx1x1x1"):
        with pytest.raises(SystemExit, match="is not DxNxBxH"):
            ab_rev.parse_shapes(bad)


def test_features_parse_and_unknown_ones_name_the_valid_ones():
    assert ab_rev.parse_features("plain, gate-elem,softmax") == ["plain", "gate-elem", "softmax"]
    with pytest.raises(SystemExit, match="choose from plain, gate-head, gate-elem, softmax"):
        ab_rev.parse_features("plain,gate")
    with pytest.raises(SystemExit, match="unknown --features"):
        ab_rev.parse_features(" , ")


@pytest.mark.parametrize("name, group", [
    ("_attn_fwd", "attn fwd"), ("_attn_bwd_dkdv", "attn dK/dV"), ("_attn_bwd_dq", "attn dQ"),
    ("_bwd_preprocess", "attn bwd prep"), ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>", "matmul"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", "optimizer"),
    ("void at::native::_fused_adam_kernel<float>", "optimizer"),
    ("triton_poi_fused_gelu_gelu_backward_view_4", "other"),
    ("void at::native::vectorized_layer_norm_kernel<float, float, false>", "other"),
])
def test_kernel_names_fall_into_their_groups(name, group):
    assert scfm_profile.kernel_group(name) == group


def test_an_unknown_step_variant_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        scfm_study.main(["gpu", "--step-time-only", "--step-variants", "eager,turbo", "--cells", "/nonexistent"])
    assert "unknown ['turbo']; choose from ['compiled', 'eager', 'fused']" in capsys.readouterr().err


def test_a_tile_variant_switches_one_class_and_restores_production():
    from gatedzoo.kernels import triton_kernels as tk

    before, fast = dict(tk.CONFIGS), tk.FAST_SIGMOID
    cls = {p: tk._size_class(p, 64, 8192, False, False, True, False) for p in ("fwd", "dkdv", "dq")}
    tile = scfm_profile._Variant("dkdv", (32, 128, 4, 3), cls)
    tile.on()
    got = tk.CONFIGS[("dkdv", cls["dkdv"])][0]
    assert (got.kwargs["BLOCK_M"], got.kwargs["BLOCK_N"], got.num_warps, got.num_stages) == (32, 128, 4, 3)
    assert tk.CONFIGS[("fwd", cls["fwd"])] == before[("fwd", cls["fwd"])]
    tile.off()
    assert before == tk.CONFIGS
    formula = scfm_profile._Variant("fast", 2, cls)
    formula.on()
    assert tk.FAST_SIGMOID == 2 and formula.label == "FAST_SIGMOID=2"
    formula.off()
    assert fast == tk.FAST_SIGMOID and before == tk.CONFIGS


def test_scfm_study_reads_calls_of_disjoint_seeds_as_one_study(tmp_path):
    def call(name, seeds, val=(1, 4, 7)):
        folder = tmp_path / name
        folder.mkdir()
        runs = [{"activation": a, "seed": s} for s in seeds for a in ("sigmoid", "softmax")]
        torch.save({"val_idx": np.array(val), "runs": runs}, folder / "study.pt")
        return folder

    a, b, c = call("a", [0]), call("b", [1, 2]), call("c", [1])
    study = scfm_study.load_studies([a, b])
    assert [(r["activation"], r["seed"]) for r in study["runs"]] == [
        ("sigmoid", 0), ("softmax", 0), ("sigmoid", 1), ("softmax", 1), ("sigmoid", 2), ("softmax", 2)]
    with pytest.raises(ValueError, match="repeats"):
        scfm_study.load_studies([a, b, c])
    with pytest.raises(ValueError, match="other validation cells"):
        scfm_study.load_studies([a, call("d", [3], val=(2, 5))])
