"""Image data modules on real data: Fashion-MNIST (Debian package), CIFAR-10 (the 20 test images shipped in the foolbox
wheel, written out in CIFAR-10's own python-batch format) and an image folder built from them."""

import importlib.util
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gatedzoo.data.images import (
    CIFAR10_LABELS,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    image_transforms,
    load_fashion_mnist,
    read_cifar10,
    read_idx,
)


def foolbox_cifar10() -> list[tuple[Path, int]]:
    """The 20 real CIFAR-10 test images of the foolbox wheel: ``(png path, label)`` (label in the file name)."""
    spec = importlib.util.find_spec("foolbox")  # locates the package without importing it
    if spec is None:
        pytest.fail("the foolbox wheel (test dependency, holds 20 real CIFAR-10 PNGs) is not installed: pip install "
                    "foolbox==3.3.4")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    files = sorted(folder.glob("cifar10_*.png"))
    assert len(files) == 20
    return [(p, int(re.fullmatch(r"cifar10_\d+_(\d+)\.png", p.name).group(1))) for p in files]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10's python batches (``data_batch_1..5``, ``test_batch``) holding the 20 real images."""
    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    samples = foolbox_cifar10()
    data = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in samples])
    flat = data.transpose(0, 3, 1, 2).reshape(len(data), -1)
    labels = [y for _, y in samples]
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        part = slice(None) if name == "test_batch" else slice(i * 4, i * 4 + 4)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": flat[part], b"labels": labels[part]}, fh)
    return root, data, np.array(labels)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for p, y in foolbox_cifar10():
        (root / CIFAR10_LABELS[y]).mkdir(exist_ok=True)
        (root / CIFAR10_LABELS[y] / p.name).write_bytes(p.read_bytes())
    return root


def test_fashion_mnist_files():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10  # the official test set is balanced
    assert load_fashion_mnist("train")[1][:3].tolist() == [9, 0, 0]  # Ankle boot, T-shirt, T-shirt
    with pytest.raises(ValueError, match="IDX"):
        read_idx(Path(__file__))


def test_fashion_mnist_module_batches():
    dm = FashionMNISTDataModule(num_workers=0, batch_size=32, limit=600)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (480, 120, 600)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 < float(x.mean()) < 0.5  # normalised with the dataset mean/std
    meta = dm.zoo_metadata()
    assert meta["preprocessing"]["input_size"] == [1, 28, 28] and meta["label_names"][9] == "Ankle boot"
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (32, 1, 28, 28)


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_cifar10_reader_on_real_images(cifar_root):
    root, data, labels = cifar_root
    x, y = read_cifar10(root, "test")
    assert np.array_equal(x, data) and np.array_equal(y, labels)
    assert read_cifar10(root, "train")[0].shape == (20, 32, 32, 3)
    dm = CIFAR10DataModule(root=str(root), download=False, num_workers=0, batch_size=20, val_size=4)
    dm.prepare_data()
    dm.setup("fit")
    xb, yb = next(iter(dm.test_dataloader()))
    assert xb.shape == (20, 3, 32, 32) and yb.tolist() == labels.tolist()
    back = xb * torch.tensor(dm.std)[:, None, None] + torch.tensor(dm.mean)[:, None, None]
    assert torch.allclose(back.permute(0, 2, 3, 1) * 255, torch.from_numpy(data).float(), atol=1e-3)
    assert len(dm.train_set) == 16 and len(dm.val_set) == 4


def test_cifar10_without_files_or_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        CIFAR10DataModule(root=str(tmp_path), download=False).prepare_data()


def test_image_folder_module(image_folder):
    dm = ImageFolderDataModule(str(image_folder), input_size=[3, 32, 32], augment="timm", num_workers=0,
                               batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    assert dm.label_names == sorted({CIFAR10_LABELS[y] for _, y in foolbox_cifar10()})
    assert len(dm.train_set) == 15 and len(dm.val_set) == 5
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and int(y.max()) < len(dm.label_names)
    grey = ImageFolderDataModule(str(image_folder), input_size=[1, 28, 28], augment="basic", num_workers=0)
    grey.setup("fit")
    assert grey.val_set[0][0].shape == (1, 28, 28)
    assert grey.zoo_metadata()["preprocessing"]["mean"] == [0.286]


def test_image_folder_bad_input(tmp_path, image_folder):
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "cat" / "a.png")
    with pytest.raises(ValueError, match="at least two"):
        ImageFolderDataModule(str(one)).setup("fit")
    broken = tmp_path / "broken"
    for c in ("a", "b"):
        (broken / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), color=(10, 20, 30)).save(broken / c / "ok.png")
    (broken / "b" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad\.png"):
        ImageFolderDataModule(str(broken)).setup("fit")
    dm = ImageFolderDataModule(str(broken), skip_unreadable=True, input_size=[3, 8, 8], num_workers=0)
    with pytest.warns(UserWarning, match="Skipping"):
        dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")


def test_transforms_shapes():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    for augment in ("none", "basic", "timm"):
        for train in (True, False):
            assert image_transforms((3, 32, 32), (0.5,) * 3, (0.5,) * 3, train, augment)(img).shape == (3, 32, 32)
    assert image_transforms((1, 28, 28), (0.5,), (0.5,), True, "timm")(img).shape == (1, 28, 28)
    with pytest.raises(ValueError, match="augment"):
        image_transforms((3, 32, 32), (0.5,) * 3, (0.5,) * 3, False, "heavy")
