"""Image classification: the evaluator behind ``gatedzoo eval`` for image models (task ``"image_classification"``).

Training uses the generic :class:`~gatedzoo.tasks.Classification` task; this module adds the evaluation of zoo
weights on their own dataset (Fashion-MNIST or CIFAR-10 test set, from ``zoo_config["training_data"]``) or on the
user's image folder (``--data root`` laid out as ``root/<class>/<image>``, class names as in the weights' labels).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import register_evaluator

TOP1 = "top1"
TOP5 = "top5"
LOSS = "loss"
COUNT = "n"


def parse_split(split: str) -> tuple[str, slice]:
    """``"test"`` -> ``("test", slice(None))``; ``"test[:2000]"`` / ``"test[1000:3000]"`` -> a fixed slice."""
    m = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
    if not m:
        raise ValueError(f"split {split!r}: use a name such as 'test', optionally sliced like 'test[:2000]'.")
    a, b = m.group(2), m.group(3)
    return m.group(1), slice(int(a) if a else None, int(b) if b else None)


@torch.no_grad()
def classify(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> dict:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on normalised ``images`` ``[N, C, H, W]``."""
    model.eval()
    correct1 = correct5 = 0
    loss = 0.0
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
    n = len(images)
    out = {TOP1: correct1 / n, LOSS: loss / n, COUNT: n}
    if model_classes(model) >= 5:
        out[TOP5] = correct5 / n
    return out


def model_classes(model) -> int:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return getattr(head, "out_features", 0)


def _preprocess(cfg: dict) -> dict:
    pre = cfg.get("preprocessing")
    if not pre:
        raise ValueError("the weights' config has no 'preprocessing' (input size, mean, std); they were not trained "
                         "through a gatedzoo image data module. Save them with FashionMNISTDataModule / "
                         "ImageFolderDataModule metadata.")
    return pre


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


def _array_images(images: np.ndarray, labels: np.ndarray, pre: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from gatedzoo.data.images import ArrayImageDataset, image_transforms

    c, h, w = pre["input_size"]
    if images.ndim == 3 and images.shape[1:] == (h, w) and c == 1:
        # grey images already at the model's size: normalise directly (the same maths as the transforms, faster)
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        return (x - pre["mean"][0]) / pre["std"][0], torch.from_numpy(labels)
    tf = image_transforms(tuple(pre["input_size"]), pre["mean"], pre["std"], train=False, augment="none",
                          interpolation=pre.get("interpolation", "bilinear"), crop_pct=pre.get("crop_pct", 1.0))
    return _stack(ArrayImageDataset(images, labels, tf))


def warn_if_training_folder(data: str, training_data: str) -> bool:
    """Warn (``UserWarning``) when the folder ``data`` is, or lies inside, the image folder the weights were trained
    on, as recorded in their ``training_data`` (``"image_folder:<root>"``, written by ``ImageFolderDataModule``).

    The data module fits on all of that folder but its validation share (and that share chose the checkpoint), so
    scores on it are optimistic: ``gatedzoo eval <fine-tuned> --data <the same folder>`` reports training accuracy.
    A relative recorded root is taken from the current directory, as the training command would have. Returns whether
    it warned.
    """
    prefix = "image_folder:"
    if not training_data.startswith(prefix):
        return False
    trained = Path(training_data[len(prefix):]).expanduser().resolve()
    given = Path(data).expanduser().resolve()
    if given != trained and trained not in given.parents:
        return False
    # with root/train + root/val the data module validates on root/val only; otherwise on a share of every class
    val = trained / "val"
    if (trained / "train").is_dir() and val.is_dir() and (given == val or val in given.parents):
        what = "the validation images, which chose the checkpoint"
    else:
        what = "training images (all but the validation share, which chose the checkpoint)"
    warnings.warn(f"--data {data} is in the image folder these weights were trained on (training_data "
                  f"{training_data!r}): it holds {what}, so these scores are optimistic. Evaluate on held-out "
                  "images, in a folder that was not passed to fit.", UserWarning, stacklevel=3)
    return True


@register_evaluator("image_classification")
def evaluate_image_classification(model, data: str | None = None, split: str = "test") -> dict:
    """Evaluate an image classifier from the zoo.

    Args:
        model: a zoo model with ``zoo_config`` (preprocessing, label names, training data).
        data (str, Optional): an image folder ``root/<class>/<image>`` whose class names are among the weights'
            label names (a warning when it is the folder the weights were trained on, see
            :func:`warn_if_training_folder`); default: the test split of the dataset the weights were trained on.
        split (str): ``"test"`` (whole split), or a fixed slice such as ``"test[:2000]"``. Default: ``"test"``.

    Returns:
        ``{"top1", "top5" (>= 5 classes), "loss", "n"}``.
    """
    cfg = getattr(model, "zoo_config", {})
    pre = _preprocess(cfg)
    name, part = parse_split(split)
    labels_known = list(cfg.get("label_names", []))
    if data is not None:
        from gatedzoo.data.images import FolderDataset, image_transforms, scan_image_folder

        warn_if_training_folder(data, cfg.get("training_data", ""))
        samples, classes = scan_image_folder(data)
        unknown = [c for c in classes if c not in labels_known]
        if unknown:
            raise ValueError(f"{data}: class folders {unknown} are not among the model's labels {labels_known}; name "
                             "the folders after the labels, or fine-tune on your classes (recipes/gated_swinrmt/"
                             "finetune_imagefolder_*.yaml).")
        samples = [(p, labels_known.index(classes[i])) for p, i in samples][part]
        tf = image_transforms(tuple(pre["input_size"]), pre["mean"], pre["std"], train=False, augment="none",
                              interpolation=pre.get("interpolation", "bilinear"), crop_pct=pre.get("crop_pct", 1.0))
        x, y = _stack(FolderDataset(samples, tf))
        return classify(model, x, y)
    source = cfg.get("training_data", "")
    if source.startswith("fashion_mnist"):
        from gatedzoo.data.images import load_fashion_mnist

        images, labels = load_fashion_mnist("train" if name == "train" else "test")
    elif source.startswith("cifar10"):
        from gatedzoo.data.images import read_cifar10
        from gatedzoo.data.paths import data_dir

        images, labels = read_cifar10(data_dir() / "cifar10", "train" if name == "train" else "test")
    else:
        raise ValueError(f"the weights were trained on {source!r}, which gatedzoo eval cannot load by itself; pass "
                         "--data <image folder> with one sub-folder per class.")
    if name not in ("train", "test"):
        raise ValueError(f"split {split!r}: this dataset has 'train' and 'test' splits.")
    x, y = _array_images(images[part], labels[part], pre)
    return classify(model, x, y)
