"""gatedzoo.tasks.EMAWeights: the average it keeps is the exponential moving average of the optimiser's weights.

Trained for real on scikit-learn's digits (the toy attention classifier); the average is recomputed by hand from
the weights recorded after every optimiser step.
"""

import lightning as L
import pytest
import torch
from toy import DigitsDataModule

from gatedzoo.tasks import Classification, EMAWeights


class RecordWeights(L.Callback):
    """Copies the module's parameters after every optimiser step."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


def test_kept_weights_are_the_moving_average_of_every_step(tmp_path):
    L.seed_everything(0)
    task = Classification(arch="toy_attention_classifier", lr=3e-2, weight_decay=0.0, schedule="constant")
    rec, decay = RecordWeights(), 0.6
    trainer = L.Trainer(max_steps=7, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[rec, EMAWeights(decay=decay)])
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=32))
    assert len(rec.steps) == 7
    kept = dict(task.named_parameters())
    moved = 0.0
    for name, first in rec.steps[0].items():
        ema = first.clone()
        for step in rec.steps[1:]:
            ema = decay * ema + (1 - decay) * step[name]
        torch.testing.assert_close(kept[name].detach(), ema, rtol=1e-5, atol=1e-6)
        moved = max(moved, (ema - rec.steps[-1][name]).abs().max().item())
    assert moved > 1e-3  # the average differs from the last step's weights


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        EMAWeights(decay=decay)


def _fit(tmp_path, callbacks, max_steps, ckpt_path=None):
    task = Classification(arch="toy_attention_classifier", lr=3e-2, weight_decay=0.0, schedule="constant")
    trainer = L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return task


def test_same_average_as_lightnings_ema_callback(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    L.seed_everything(1)
    ours = dict(_fit(tmp_path / "a", [EMAWeights(decay=0.9)], 9).named_parameters())
    L.seed_everything(1)
    theirs = dict(_fit(tmp_path / "b", [EMAWeightAveraging(decay=0.9)], 9).named_parameters())
    for name, p in ours.items():
        torch.testing.assert_close(p, theirs[name], rtol=1e-5, atol=1e-6)


def test_resuming_continues_the_average_from_the_checkpoint(tmp_path):
    L.seed_everything(2)
    decay, ckpt_dir = 0.8, tmp_path / "ckpt"
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=4)
    _fit(tmp_path, [save, EMAWeights(decay=decay)], 4)
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["averaging_state"]["n_averaged"].item() == 4
    rec = RecordWeights()
    task = _fit(tmp_path, [rec, EMAWeights(decay=decay)], 7, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert len(rec.steps) == 3
    for name, p in task.named_parameters():  # the restored average, moved on by three steps (not re-copied)
        ema = saved["state_dict"][name].clone()
        for step in rec.steps:
            ema = decay * ema + (1 - decay) * step[name]
        torch.testing.assert_close(p.detach(), ema, rtol=1e-5, atol=1e-6)
