"""Image data: Fashion-MNIST (offline default), CIFAR-10 and an image folder of your own, as LightningDataModules.

- Fashion-MNIST: the four IDX ``.gz`` files, from ``$GATEDZOO_DATA/fashion_mnist/`` or the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``); train 60,000 (split 55,000 / 5,000 for
  validation), test 10,000, 28x28 grey, 10 classes (MIT licence).
- CIFAR-10: the python batches (``cifar-10-batches-py/``) under ``$GATEDZOO_DATA/cifar10/``, downloaded through
  torchvision when online; train 50,000 (45,000 / 5,000), test 10,000, 32x32 RGB.
- Image folder: ``root/<class>/<image>`` (torchvision's ``ImageFolder`` layout), optionally ``root/train`` +
  ``root/val``; every file is checked up front and unreadable ones are named.

Every module reports the preprocessing (input size, mean/std, interpolation, crop) and the label names through
``zoo_metadata()`` so that they travel with the weights; the transforms come from timm.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from .paths import data_dir

FASHION_MNIST_DEB = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot"]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain): uint8 images ``[N, H, W]`` or labels ``[N]``."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path) as fh:
            raw = fh.read()
    else:
        raw = path.read_bytes()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x}); expected Fashion-MNIST's files.")
    ndim = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST ``.gz`` files: ``root``, ``$GATEDZOO_DATA/fashion_mnist`` or the
    Debian package's folder, whichever holds them first."""
    candidates = [Path(root).expanduser()] if root else [data_dir() / "fashion_mnist", FASHION_MNIST_DEB]
    for c in candidates:
        if all((c / f).exists() for pair in FASHION_MNIST_FILES.values() for f in pair):
            return c
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {', '.join(map(str, candidates))}. Install it with `apt-get install "
        "dataset-fashion-mnist` (or `apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb "
        "DIR`), or put the four IDX .gz files into $GATEDZOO_DATA/fashion_mnist/."
    )


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``split`` (``"train"`` or ``"test"``)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST split {split!r}; use 'train' or 'test'.")
    folder = fashion_mnist_root(root)
    images, labels = (read_idx(folder / f) for f in FASHION_MNIST_FILES[split])
    return images, labels.astype(np.int64)


def read_cifar10(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10's python batches under ``root/cifar-10-batches-py``: ``(uint8 [N, 32, 32, 3], int64 [N])``."""
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split {split!r}; use 'train' or 'test'.")
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 files {missing} are missing in {folder}; use CIFAR10DataModule(download="
                                "True) online, or unpack cifar-10-python.tar.gz there.")
    xs, ys = [], []
    for n in names:
        with open(folder / n, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class ArrayImageDataset(Dataset):
    """uint8 images ``[N, H, W]`` or ``[N, H, W, C]`` + labels, returned through a PIL-level ``transform``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def image_transforms(input_size: tuple[int, int, int], mean, std, train: bool, augment: str = "basic",
                     interpolation: str = "bilinear", crop_pct: float = 1.0):
    """timm transforms for ``input_size = (C, H, W)``.

    ``augment``: ``"none"``; ``"basic"`` (small images: random crop with 1/8 padding + horizontal flip, the usual
    CIFAR / Fashion-MNIST augmentation); or ``"timm"`` (natural images: timm's random-resized crop, flip and
    RandAugment ``rand-m9-mstd0.5-inc1``,
    RMT's ImageNet policy, magnitude capped at 9). Evaluation resizes and centre-crops with
    ``crop_pct``. Grey models (``C == 1``) convert images to grey, RGB models to RGB. ``interpolation``
    (``"bilinear"``, ``"bicubic"``, ``"nearest"``, ...) is the one every resize uses, in training and evaluation.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    c, h, w = input_size
    try:
        mode_interp = T.InterpolationMode(interpolation)
    except ValueError:
        raise ValueError(f"interpolation={interpolation!r}; use one of "
                         f"{[m.value for m in T.InterpolationMode]}, e.g. 'bilinear'.") from None
    mode = T.Grayscale(1) if c == 1 else T.Lambda(lambda im: im.convert("RGB"))
    if train and augment == "timm":
        # mmax9: with the magnitude drawn up to timm's default ceiling of 10, increasing posterize keeps 0 bits,
        # which Pillow >= 11 refuses (ValueError mid-epoch); capping at 9 keeps at least one bit
        tf = create_transform((3, h, w), is_training=True, auto_augment="rand-m9-mstd0.5-inc1-mmax9",
                              interpolation=interpolation, mean=mean if c == 3 else (mean[0],) * 3,
                              std=std if c == 3 else (std[0],) * 3)
        return T.Compose([T.Lambda(lambda im: im.convert("RGB")), tf] + ([T.Grayscale(1)] if c == 1 else []))
    if augment not in ("none", "basic", "timm"):
        raise ValueError(f"augment={augment!r}; use 'none', 'basic' or 'timm'.")
    ops = [mode]
    if train and augment == "basic":
        ops += [T.Resize((h, w), interpolation=mode_interp), T.RandomCrop((h, w), padding=max(h // 8, 1)),
                T.RandomHorizontalFlip()]
    else:
        scale = int(round(max(h, w) / crop_pct))
        ops += [T.Resize(scale if crop_pct < 1 else (h, w), interpolation=mode_interp), T.CenterCrop((h, w))]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


class _ImageDataModule(L.LightningDataModule):
    """Shared loaders and metadata; subclasses fill ``self.train_set``, ``self.val_set``, ``self.test_set``."""

    label_names: list[str] = []
    mean: tuple = ()
    std: tuple = ()
    training_data = ""

    def __init__(self, batch_size: int, num_workers: int, input_size: tuple[int, int, int], augment: str,
                 interpolation: str = "bilinear", crop_pct: float = 1.0):
        super().__init__()
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.input_size, self.interpolation, self.crop_pct = tuple(input_size), interpolation, crop_pct

    def transforms(self, train: bool):
        return image_transforms(self.input_size, self.mean, self.std, train, self.augment, self.interpolation,
                                self.crop_pct)

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)

    def predict_dataloader(self):
        return self._loader(self.test_set, False)

    def zoo_metadata(self) -> dict:
        """Preprocessing, label names and training data, merged into the model's ``zoo_config``."""
        return {"preprocessing": {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                                  "interpolation": self.interpolation, "crop_pct": self.crop_pct},
                "label_names": list(self.label_names), "training_data": self.training_data}


def _split(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return perm[val_size:], perm[:val_size]


class FashionMNISTDataModule(_ImageDataModule):
    """Fashion-MNIST, 28x28 grey, 10 classes: train 55,000 / val 5,000 (seeded split of the official train set) /
    test 10,000.

    Args:
        root (str, Optional): folder with the four IDX ``.gz`` files. Default: ``$GATEDZOO_DATA/fashion_mnist`` or
            the Debian package's ``/usr/share/datasets/fashion-mnist``.
        batch_size (int): loader batch size. Default: ``128``.
        num_workers (int): loader worker processes. Default: ``2``.
        val_size (int): validation images taken from the train set. Default: ``5000``.
        input_size (list[int]): ``[C, H, W]`` fed to the model; ``C=3`` replicates the grey channel. Default:
            ``[1, 28, 28]``.
        augment (str): ``"basic"``, ``"timm"`` or ``"none"`` (see :func:`image_transforms`). Default: ``"basic"``.
        limit (int, Optional): keep the first ``limit`` images of every split (quick runs, tests). Default: `None`.
        seed (int): validation split seed. Default: ``0``.
    """

    label_names = FASHION_MNIST_LABELS
    mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    training_data = "fashion_mnist/train"

    def __init__(self, root: str | None = None, batch_size: int = 128, num_workers: int = 2, val_size: int = 5000,
                 input_size: list[int] = (1, 28, 28), augment: str = "basic", limit: int | None = None,
                 seed: int = 0):
        super().__init__(batch_size, num_workers, input_size, augment)
        if input_size[0] == 3:
            self.mean, self.std = self.mean * 3, self.std * 3
        self.root, self.val_size, self.limit, self.seed = root, val_size, limit, seed

    def prepare_data(self) -> None:
        fashion_mnist_root(self.root)

    def setup(self, stage: str | None = None) -> None:
        xtr, ytr = load_fashion_mnist("train", self.root)
        xte, yte = load_fashion_mnist("test", self.root)
        if self.limit:
            xtr, ytr, xte, yte = xtr[:self.limit], ytr[:self.limit], xte[:self.limit], yte[:self.limit]
        val_size = min(self.val_size, len(xtr) // 5)
        tr, va = _split(len(xtr), val_size, self.seed)
        self.train_set = Subset(ArrayImageDataset(xtr, ytr, self.transforms(True)), tr)
        self.val_set = Subset(ArrayImageDataset(xtr, ytr, self.transforms(False)), va)
        self.test_set = ArrayImageDataset(xte, yte, self.transforms(False))


class CIFAR10DataModule(_ImageDataModule):
    """CIFAR-10, 32x32 RGB, 10 classes: train 45,000 / val 5,000 / test 10,000.

    Args:
        root (str, Optional): folder holding ``cifar-10-batches-py/``. Default: ``$GATEDZOO_DATA/cifar10``.
        download (bool): download through torchvision when the files are missing (needs the network). Default: `True`.
        batch_size (int): as :class:`FashionMNISTDataModule`. Default: ``128``.
        num_workers (int): as :class:`FashionMNISTDataModule`. Default: ``2``.
        val_size (int): training images held out for validation. Default: ``5000``.
        input_size (list[int]): ``[C, H, W]``. Default: ``[3, 32, 32]``.
        augment (str): as :class:`FashionMNISTDataModule`. Default: ``"basic"``.
        limit (int, Optional): as :class:`FashionMNISTDataModule`. Default: `None`.
        seed (int): as :class:`FashionMNISTDataModule`. Default: ``0``.
    """

    label_names = CIFAR10_LABELS
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    training_data = "cifar10/train"

    def __init__(self, root: str | None = None, download: bool = True, batch_size: int = 128, num_workers: int = 2,
                 val_size: int = 5000, input_size: list[int] = (3, 32, 32), augment: str = "basic",
                 limit: int | None = None, seed: int = 0):
        super().__init__(batch_size, num_workers, input_size, augment)
        self.root = Path(root).expanduser() if root else data_dir() / "cifar10"
        self.download, self.val_size, self.limit, self.seed = download, val_size, limit, seed

    def prepare_data(self) -> None:
        if (self.root / "cifar-10-batches-py" / "test_batch").exists():
            return
        if not self.download:
            raise FileNotFoundError(f"CIFAR-10 is not in {self.root}; pass download=True (online) or unpack "
                                    "cifar-10-python.tar.gz there.")
        from torchvision.datasets import CIFAR10

        CIFAR10(str(self.root), train=True, download=True)

    def setup(self, stage: str | None = None) -> None:
        xtr, ytr = read_cifar10(self.root, "train")
        xte, yte = read_cifar10(self.root, "test")
        if self.limit:
            xtr, ytr, xte, yte = xtr[:self.limit], ytr[:self.limit], xte[:self.limit], yte[:self.limit]
        tr, va = _split(len(xtr), min(self.val_size, len(xtr) // 5), self.seed)
        self.train_set = Subset(ArrayImageDataset(xtr, ytr, self.transforms(True)), tr)
        self.val_set = Subset(ArrayImageDataset(xtr, ytr, self.transforms(False)), va)
        self.test_set = ArrayImageDataset(xte, yte, self.transforms(False))


def _decodes(path: Path) -> bool:
    """Whether PIL can read and decode the whole file ``path``.

    ``Image.verify()`` checks a PNG's chunk checksums but reads nothing of a JPEG's compressed data, so a truncated
    JPEG (an interrupted download) passes it and fails only when a training step decodes it: the image is also
    decoded, a JPEG at 1/8 scale (``draft``), which still reads every entropy-coded byte but skips most of the work.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.draft(im.mode, (1, 1))
            im.load()
    except Exception:  # PIL raises many exception types for broken files
        return False
    return True


def scan_image_folder(root: str | os.PathLike, verify: bool = True,
                      skip_unreadable: bool = False) -> tuple[list[tuple[Path, int]], list[str]]:
    """``([(path, class_index)], class_names)`` of ``root/<class>/<image>``; classes sorted by name.

    Args:
        root (str | PathLike): the folder.
        verify (bool): decode every image up front (truncated JPEGs included) so that a broken file is named now,
            not mid-epoch. Default: `True`.
        skip_unreadable (bool): leave out, with a warning naming them, the files that are not readable images (other
            extensions, e.g. a ``README.txt``, and files that do not decode) instead of refusing. Default: `False`.

    Raises a ``ValueError`` naming the problem and the fix for: a missing folder, fewer than two classes, a class
    without (readable) images, or files that are not readable images (unless ``skip_unreadable``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; give a folder laid out as root/<class>/<image>.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"image folder {root} has {len(classes)} class folder(s) ({classes}); classification needs "
                         "at least two: lay the images out as root/<class>/<image> with one sub-folder per class.")
    samples, empty, bad = [], [], []
    for idx, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and not p.name.startswith("."))
        kept = 0
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS or (verify and not _decodes(p)):
                bad.append(p)
                continue
            samples.append((p, idx))
            kept += 1
        if not kept:
            empty.append(c)
    if bad:
        shown = ", ".join(str(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        msg = f"image folder {root}: {len(bad)} file(s) are not readable images: {shown}."
        if not skip_unreadable:
            raise ValueError(f"{msg} Delete or fix them, or pass skip_unreadable=True to leave them out.")
        import warnings

        warnings.warn(f"{msg} Skipping them (skip_unreadable=True).", stacklevel=2)
    if empty:
        raise ValueError(f"image folder {root}: class folder(s) {empty} hold no readable images; remove them or add "
                         f"images ({', '.join(IMAGE_EXTENSIONS)}).")
    return samples, classes


class FolderDataset(Dataset):
    """Images listed by :func:`scan_image_folder`, returned through ``transform``."""

    def __init__(self, samples: list[tuple[Path, int]], transform=None):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()
        return (self.transform(im) if self.transform else im), label


def fit_channels(values, channels: int, what: str = "mean") -> tuple[float, ...]:
    """Per-channel normalisation ``values`` for ``channels`` input channels.

    One value is repeated (grey weights fed RGB copies of grey images: the adapted stem then sees exactly what the grey
    stem saw); several values for one channel are averaged (RGB statistics for a grey model: approximate). Returns a
    tuple of ``channels`` floats.
    """
    v = tuple(float(x) for x in values)
    if len(v) == channels:
        return v
    if len(v) == 1:
        return v * channels
    if channels == 1:
        return (sum(v) / len(v),)
    raise ValueError(f"{what} has {len(v)} values for {channels}-channel images; give one value or {channels}.")


class ImageFolderDataModule(_ImageDataModule):
    """Your own images: ``root/<class>/<image>`` (split ``val_fraction`` off, seeded) or ``root/train`` + ``root/val``.

    The preprocessing (mean/std, interpolation, crop) should be that of the weights being fine-tuned: name them in
    ``preprocessing_from`` and every setting left unset is taken from their ``config.json``, so validation, the saved
    ``preprocessing`` and ``gatedzoo eval`` match what the weights were trained with.

    Args:
        root (str): the folder.
        input_size (list[int]): ``[C, H, W]`` for the model (use the pretrained model's). Default: ``[3, 224, 224]``.
        preprocessing_from (str, Optional): weights whose ``preprocessing`` gives the defaults below: ``arch.tag``
            (e.g. ``gated_swinrmt_swat_tiny.fmnist``), ``hf-hub:``, ``local-dir:`` or a zoo folder. Their mean/std
            are fitted to ``C`` channels (:func:`fit_channels`: grey weights fine-tuned on RGB get their grey
            statistics on every channel, which keeps the adapted stem exact). Default: `None`.
        mean (list[float], Optional): normalisation mean. Default: the weights' (``preprocessing_from``), else
            ImageNet's (RGB) or Fashion-MNIST's (grey).
        std (list[float], Optional): normalisation std. Default: as ``mean``.
        val_fraction (float): share of images held out for validation/test when there is no ``val`` folder.
            Default: ``0.2``.
        augment (str): ``"timm"`` (default for natural images), ``"basic"`` or ``"none"``.
        skip_unreadable (bool): leave files that are not readable images (broken images, other files such as a
            ``README.txt``) out, with a warning naming them, instead of refusing. Default: `False`.
        batch_size (int): loader batch size. Default: ``64``.
        num_workers (int): loader worker processes. Default: ``2``.
        seed (int): seed of the validation split. Default: ``0``.
        interpolation (str, Optional): resize interpolation of every transform. Default: the weights'
            (``preprocessing_from``), else ``"bicubic"`` with ``augment="timm"`` (timm's training resize) and
            ``"bilinear"`` otherwise.
        crop_pct (float, Optional): centre-crop share at evaluation, in ``(0, 1]``. Default: the weights'
            (``preprocessing_from``), else ``0.875`` with ``augment="timm"`` (training crops at random scales) and
            ``1.0`` otherwise (``"basic"``/``"none"`` train on the full frame, so validation must see it too).

    When attached to a trainer, ``setup`` refuses a model whose classifier has a different number of outputs than the
    folder has classes, and warns when the model's own weights were normalised differently from this module.
    """

    training_data = "image_folder"

    def __init__(self, root: str, input_size: list[int] = (3, 224, 224), mean: list[float] | None = None,
                 std: list[float] | None = None, val_fraction: float = 0.2, augment: str = "timm",
                 skip_unreadable: bool = False, batch_size: int = 64, num_workers: int = 2, seed: int = 0,
                 interpolation: str | None = None, crop_pct: float | None = None,
                 preprocessing_from: str | None = None):
        c = input_size[0]
        pre = {}
        if preprocessing_from is not None:
            from gatedzoo.zoo.pretrained import pretrained_config

            pre = pretrained_config(preprocessing_from).get("preprocessing") or {}
            if not {"mean", "std"} <= set(pre):
                raise ValueError(f"preprocessing_from={preprocessing_from!r}: its config.json has no image "
                                 "preprocessing (mean, std); name image weights such as "
                                 "gated_swinrmt_swat_tiny.fmnist, or give mean/std yourself.")
        timm_aug = augment == "timm"
        interpolation = interpolation or pre.get("interpolation") or ("bicubic" if timm_aug else "bilinear")
        crop_pct = crop_pct if crop_pct is not None else pre.get("crop_pct", 0.875 if timm_aug else 1.0)
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct}; use a share in (0, 1], e.g. 1.0 (full frame) or 0.875.")
        super().__init__(batch_size, num_workers, input_size, augment, interpolation, crop_pct)
        grey = c == 1
        self.mean = fit_channels(mean or pre.get("mean") or (FASHION_MNIST_MEAN if grey else (0.485, 0.456, 0.406)),
                                 c, "mean")
        self.std = fit_channels(std or pre.get("std") or (FASHION_MNIST_STD if grey else (0.229, 0.224, 0.225)),
                                c, "std")
        self._explicit_norm = bool(mean or std or pre)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction}; use a share between 0 and 1, e.g. 0.2.")
        self.root, self.val_fraction, self.skip_unreadable, self.seed = Path(root).expanduser(), val_fraction, \
            skip_unreadable, seed
        self.preprocessing_from = preprocessing_from

    def _scan(self, folder: Path):
        return scan_image_folder(folder, skip_unreadable=self.skip_unreadable)

    def _check_model(self, classes: list[str]) -> None:
        """Compare the trainer's model with the folder before any step runs (no-op without a trainer)."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        model = getattr(module, "model", None)
        if model is None:
            return
        from gatedzoo.zoo.pretrained import classifier_outputs

        outputs = classifier_outputs(model)
        if outputs is not None and outputs != len(classes):
            raise ValueError(
                f"image folder {self.root} has {len(classes)} classes {classes} but the model's classifier has "
                f"{outputs} outputs; set num_classes to the number of class folders, e.g. --model.init_args.model_args "
                f"'{{num_classes: {len(classes)}}}'."
            )
        pre = getattr(model, "zoo_config", {}).get("preprocessing") or {}
        if self._explicit_norm or not {"mean", "std"} <= set(pre):
            return
        c = self.input_size[0]
        try:
            want = fit_channels(pre["mean"], c), fit_channels(pre["std"], c)
        except ValueError:
            return
        if not np.allclose(want, (self.mean, self.std), atol=1e-4):
            import warnings

            warnings.warn(f"the model's weights were trained with mean {list(pre['mean'])}, std {list(pre['std'])} "
                          f"but {type(self).__name__} normalises with mean {list(self.mean)}, std {list(self.std)} "
                          "(its default); pass preprocessing_from=<the weights> (or mean/std) so that the pretrained "
                          "features see the inputs they were trained on.", stacklevel=2)

    def setup(self, stage: str | None = None) -> None:
        if (self.root / "train").is_dir() and (self.root / "val").is_dir():
            train, classes = self._scan(self.root / "train")
            val, val_classes = self._scan(self.root / "val")
            if val_classes != classes:
                raise ValueError(f"{self.root}: train classes {classes} differ from val classes {val_classes}; give "
                                 "both folders the same class sub-folders.")
        else:
            samples, classes = self._scan(self.root)
            tr, va = _split(len(samples), max(1, int(round(len(samples) * self.val_fraction))), self.seed)
            train, val = [samples[i] for i in tr], [samples[i] for i in va]
        self._check_model(classes)
        self.label_names = classes
        self.training_data = f"image_folder:{self.root}"
        self.train_set = FolderDataset(train, self.transforms(True))
        self.val_set = self.test_set = FolderDataset(val, self.transforms(False))
