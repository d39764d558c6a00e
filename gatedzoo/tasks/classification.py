"""Classification: cross-entropy training, accuracy / loss logging, predictions with probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TEST_LOSS, TRAIN_LOSS, VAL_LOSS, ZooTask

VAL_ACC = "val/acc"
TEST_ACC = "test/acc"


class Classification(ZooTask):
    """Trains ``model(x) -> logits [B, num_classes]`` on batches ``(x, y)``.

    Args:
        label_smoothing (float): cross-entropy label smoothing. Default: ``0.0``.
        **kwargs: see :class:`~gatedzoo.tasks.ZooTask` (``arch``, ``model_args``, ``lr``, ...).
    """

    def __init__(self, *args, label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, loss_name, acc_name):
        x, y = batch
        logits = self.model(x)
        self.log(loss_name, F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)
        self.log(acc_name, (logits.argmax(-1) == y).float().mean(), prog_bar=True, batch_size=len(y), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, VAL_LOSS, VAL_ACC)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, TEST_LOSS, TEST_ACC)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self.model(x).float(), dim=-1)
