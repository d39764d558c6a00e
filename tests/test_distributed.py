"""The multi-process path on CPU: DDP with gloo and 2 processes (tests/distributed_run.py, launched by Lightning).

FSDP is not covered here because it cannot run on a CPU: Lightning 2.6 refuses ``strategy="fsdp"`` without a GPU
("requires a GPU accelerator", lightning/pytorch/trainer/connectors/accelerator_connector.py), and past that check
torch's FSDP (the FullyShardedDataParallel that Lightning wraps) raises "FSDP needs a non-CPU accelerator device"
(torch/distributed/fsdp/_init_utils.py). FSDP is exercised by benchmarks/scaling.py on the GPU machine (training,
validation, checkpoint resume, zoo weights gathered on rank 0 and loaded on the CPU; see docs/scaling.md).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import toy  # noqa: F401  (registers toy_attention_classifier)
from datafiles import need

from gatedzoo.data.singlecell import PBMC_STIM
from gatedzoo.zoo import create_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the 2-process script once; return (output folder, rank-0 record, rank-1 record)."""
    from make_sharded_collection import make_collection

    need(PBMC_STIM)
    tmp = tmp_path_factory.mktemp("ddp")
    make_collection(tmp / "shards", cells=1200, shard_size=500)
    out = tmp / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "distributed_run.py"), str(out), str(tmp / "shards")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, recs[0], recs[1]


def test_ranks_train_on_disjoint_halves(run):
    _, a, b = run
    assert len(a["rows"]) == len(b["rows"]) == 700
    assert not set(a["rows"]) & set(b["rows"]), "two ranks trained on the same digit"
    assert len(set(a["rows"]) | set(b["rows"])) == 1400
    assert sorted(a["sampler"] + b["sampler"]) == list(range(1400))
    assert a["batches"] == b["batches"] == 14


def test_reduced_validation_metric_equals_single_process(run):
    _, a, b = run
    assert a["val"] == b["val"], "ranks disagree on the reduced metric"
    for k in ("val/acc", "val/loss"):
        assert a["val"][k] == pytest.approx(a["single"][k], abs=1e-5), k


def test_gather_cat_joins_rows_of_unequal_ranks_in_rank_order(run):
    _, a, b = run
    assert a["gathered"] == b["gathered"] == [0, 1, 2, 0, 1, 2, 3]


def test_resume_continues_from_the_saved_step(run):
    _, a, b = run
    for r in (a, b):
        assert r["steps_epoch1"] == 14
        assert r["resume_start_step"] == r["steps_epoch1"]
        assert r["resume_end_step"] == 2 * r["steps_epoch1"]


def test_zoo_weights_from_ddp_load_on_cpu_with_the_same_outputs(run):
    out, a, _ = run
    best = torch.load(a["best"], map_location="cpu", weights_only=False)["state_dict"]
    model = create_model(str(out / "zoo")).eval()
    ref = create_model("toy_attention_classifier").eval()
    ref.load_state_dict({k[len("model."):]: v for k, v in best.items() if k.startswith("model.")})
    x = torch.rand(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    cfg = json.loads((out / "zoo" / "config.json").read_text())
    assert cfg["label_names"] == [str(i) for i in range(10)] and "val/acc" in cfg["metrics"]
    assert sorted(p.name for p in (out / "zoo").iterdir()) == ["config.json", "model.safetensors"]


def test_sharded_pretraining_splits_cells_across_ranks(run):
    out, a, b = run
    cells = lambda r: {(s, i) for s, lo, hi in r["shard_pieces"] for i in range(lo, hi)}  # noqa: E731
    ca, cb = cells(a), cells(b)
    assert not ca & cb, "two ranks read the same cell"
    assert len(ca) == len(cb) and a["shard_batches"] == b["shard_batches"] == a["shard_len"]
    assert a["shard_val_loss"] == b["shard_val_loss"]
    model = create_model(str(out / "scfm_zoo"))
    assert model.vocab_size == len(model.zoo_config["gene_vocab"]["genes"]) + 2


def test_embeddings_predicted_on_two_ranks_are_written_once_in_order(run):
    import numpy as np

    out, _, _ = run
    emb, ref = np.load(out / "emb.npy"), np.load(out / "emb_single.npy")
    assert emb.shape == ref.shape == (2000, 32)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
