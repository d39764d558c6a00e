"""A tiny registered architecture and data module used by the zoo, task and CLI tests (real, trainable)."""

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gatedzoo.layers import GatedFusion, MultiheadAttention
from gatedzoo.tasks import register_evaluator
from gatedzoo.zoo import ZooMixin, register_model


class ToyAttentionClassifier(ZooMixin, nn.Module):
    """8x8 digit rows as 8 tokens -> gated sigmoid attention -> class logits."""

    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4, activation: str = "sigmoid"):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, heads, activation=activation, gate="headwise", decay="additive")
        self.fuse = GatedFusion(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.embed(x.view(x.shape[0], 8, 8))
        h = self.fuse(h + self.attn(self.norm(h)), h)
        return self.head(h.mean(1))


@register_model(family="toy", task="toy_classification", paper="-")
def toy_attention_classifier(**kwargs):
    """A tiny attention classifier used by the tests."""
    return ToyAttentionClassifier(**kwargs)


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's 1797 real 8x8 digits, split 1400 / 397."""

    def __init__(self, batch_size: int = 64):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y)
        self.train, self.val = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=256)

    test_dataloader = val_dataloader

    def zoo_metadata(self):
        return {"preprocessing": {"scale": 1 / 16.0}, "label_names": [str(i) for i in range(10)],
                "training_data": "sklearn digits[:1400]"}


@register_evaluator("toy_classification")
def evaluate_toy(model, data=None, split="test"):
    """Accuracy on the digits validation split (the toy's only held-out data)."""
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.val.tensors
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean()
    return {"accuracy": float(acc), "n": len(y)}
