"""The multi-process run behind tests/test_distributed.py: ``python tests/distributed_run.py OUT SHARDS``.

Lightning's DDP launcher re-executes this script once per extra rank (CPU, gloo), so it must be a script, not a
pytest function. Every rank writes ``OUT/rank<r>.json`` with what it saw; rank 0 also computes the single-process
references. Phases: (1) fit the toy classifier one epoch with checkpoints and zoo weights, (2) resume from the last
checkpoint for a second epoch, (3) validate (metrics reduced across ranks), (4) one epoch of masked-expression
pretraining over the ``.h5ad`` shards in ``SHARDS`` with the sharded data module, (5) embeddings of pbmc_stim
predicted on both ranks and written once by the ``EmbeddingWriter``.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import toy  # noqa: E402

from gatedzoo.data.shards import ShardedSingleCellDataModule  # noqa: E402
from gatedzoo.data.singlecell import SingleCellDataModule  # noqa: E402
from gatedzoo.tasks import Classification, SaveZooWeights  # noqa: E402
from gatedzoo.tasks.base import gather_cat  # noqa: E402
from gatedzoo.tasks.masked_expression import EmbeddingWriter, MaskedExpression, embed_cells  # noqa: E402

WORLD = 2


class EvenDigits(toy.DigitsDataModule):
    """The toy digits with 396 validation images (even, so the distributed sampler needs no padding)."""

    def setup(self, stage=None):
        super().setup(stage)
        self.val = torch.utils.data.Subset(self.val, range(396))


class Seen(L.Callback):
    """Records the hashes of the training rows a rank saw, its batch counts and the step it started from."""

    def __init__(self):
        self.rows, self.batches, self.start_step = [], 0, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1
        if isinstance(batch, (list, tuple)):
            self.rows += [hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in batch[0]]


def trainer(root, epochs, callbacks, **kw):
    return L.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=epochs, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                     callbacks=callbacks, num_sanity_val_steps=0, **kw)


def main(out: Path, shards: str) -> None:
    L.seed_everything(0, workers=True)
    rec: dict = {}
    dm = EvenDigits(batch_size=50)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", monitor="val/acc", mode="max", save_last=True)
    seen = Seen()
    model = Classification(arch="toy_attention_classifier", lr=0.01)
    t = trainer(out, 1, [ckpt, seen, SaveZooWeights(str(out / "zoo"))])
    t.fit(model, dm)
    rank = t.global_rank
    rec.update(rows=seen.rows, batches=seen.batches, steps_epoch1=t.global_step,
               sampler=list(iter(t.train_dataloader.sampler)), best=ckpt.best_model_path)

    seen2 = Seen()
    model2 = Classification(arch="toy_attention_classifier", lr=0.01)
    t2 = trainer(out, 2, [L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt2", save_last=True), seen2])
    t2.fit(model2, dm, ckpt_path=str(out / "ckpt" / "last.ckpt"))
    rec.update(resume_start_step=seen2.start_step, resume_end_step=t2.global_step)

    metrics = t2.validate(model2, dm, verbose=False)[0]
    rec["val"] = {k: float(v) for k, v in metrics.items()}
    # ranks holding different numbers of rows (what epoch-end F1 / accuracy gathers)
    rec["gathered"] = gather_cat(model2, torch.arange(3 + rank)).tolist()
    if rank == 0:
        x, y = dm.val[:][0], dm.val[:][1]
        with torch.no_grad():
            logits = model2.model.eval()(x)
        rec["single"] = {"val/acc": float((logits.argmax(-1) == y).float().mean()),
                         "val/loss": float(F.cross_entropy(logits, y))}
        torch.save(model2.model.state_dict(), out / "final_state.pt")

    seen3 = Seen()
    sdm = ShardedSingleCellDataModule(shards, batch_size=16, num_workers=0, block_size=64, max_genes=64,
                                      val_fraction=0.1, shuffle_blocks=4)
    mx = MaskedExpression(arch="scfm_sigmoid_small", model_args={"dim": 32, "depth": 1, "num_heads": 2}, lr=1e-3)
    t3 = trainer(out / "scfm", 1, [seen3, SaveZooWeights(str(out / "scfm_zoo"), best=False),
                                   EmbeddingWriter(str(out / "emb.npy"))])
    t3.fit(mx, sdm)
    ds = t3.train_dataloader.dataset
    world, r = torch.distributed.get_world_size(), torch.distributed.get_rank()
    rec.update(shard_pieces=ds.stream_pieces(r, world), shard_batches=seen3.batches, shard_len=len(ds),
               shard_val_loss=float(t3.callback_metrics["val/loss"]))

    # prediction: each rank embeds half of pbmc_stim; the writer gathers, reorders and writes once
    pdm = SingleCellDataModule("pbmc_stim", vocab=str(out / "scfm_zoo"), max_genes=64, batch_size=128)
    t3.predict(mx, datamodule=pdm, return_predictions=False)
    if rank == 0:
        np.save(out / "emb_single.npy", embed_cells(mx.model, pdm.cells, max_genes=64, batch_size=128))
    (out / f"rank{rank}.json").write_text(json.dumps(rec, default=lambda o: np.asarray(o).tolist()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
