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


def _resize_modes(tf) -> list[str]:
    from torchvision import transforms as T

    return [op.interpolation.value for op in tf.transforms if isinstance(op, T.Resize)]


def test_the_recorded_interpolation_is_the_one_that_runs(image_folder):
    """A real 32-px CIFAR image resized to 24 px: bicubic and bilinear differ, and each transform is the resize it
    names (the interpolation used to be recorded but never passed to the resize)."""
    from torchvision import transforms as T

    img = Image.open(foolbox_cifar10()[0][0]).convert("RGB")
    out = {}
    for mode in ("bilinear", "bicubic"):
        for train in (False, True):
            tf = image_transforms((3, 24, 24), (0.0,) * 3, (1.0,) * 3, train, "basic", interpolation=mode)
            assert _resize_modes(tf) == [mode]
        out[mode] = image_transforms((3, 24, 24), (0.0,) * 3, (1.0,) * 3, False, "none", interpolation=mode)(img)
        want = T.ToTensor()(img.resize((24, 24), getattr(Image.Resampling, mode.upper())))
        assert torch.allclose(out[mode], want, atol=1 / 255 + 1e-6)
    assert (out["bilinear"] - out["bicubic"]).abs().max() > 0.02
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        image_transforms((3, 24, 24), (0.0,) * 3, (1.0,) * 3, False, "none", interpolation="cubic")
    dm = ImageFolderDataModule(str(image_folder), input_size=[3, 24, 24], augment="timm", num_workers=0)
    dm.setup("fit")
    pre = dm.zoo_metadata()["preprocessing"]
    assert _resize_modes(dm.val_set.transform) == [pre["interpolation"]] == ["bicubic"]


def test_basic_augmentation_validates_on_the_full_frame(image_folder):
    """`augment="basic"` trains on the whole image, so validation must not zoom and crop its borders (the old
    0.875 default cost the shipped Fashion-MNIST weights 7 points)."""
    dm = ImageFolderDataModule(str(image_folder), input_size=[1, 28, 28], augment="basic", num_workers=0)
    assert (dm.crop_pct, dm.interpolation) == (1.0, "bilinear")
    dm.setup("fit")
    x = dm.val_set[0][0]
    img = Image.open(dm.val_set.samples[0][0]).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    want = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255) - 0.286) / 0.353
    assert torch.allclose(x[0], want, atol=2 / 255 / 0.353)
    with pytest.raises(ValueError, match="crop_pct=1.5"):
        ImageFolderDataModule(str(image_folder), crop_pct=1.5)


def test_preprocessing_from_the_weights(image_folder):
    """`preprocessing_from` takes mean/std, interpolation and crop from the weights' config; grey statistics are
    repeated on RGB channels (not ImageNet's); explicit settings win."""
    grey = ImageFolderDataModule(str(image_folder), input_size=[1, 28, 28], augment="timm",
                                 preprocessing_from="gated_swinrmt_swat_tiny.fmnist")
    assert (grey.mean, grey.std, grey.interpolation, grey.crop_pct) == ((0.286,), (0.353,), "bilinear", 1.0)
    rgb = ImageFolderDataModule(str(image_folder), input_size=[3, 28, 28], augment="basic",
                                preprocessing_from="gated_swinrmt_swat_tiny.fmnist")
    assert rgb.mean == (0.286,) * 3 and rgb.std == (0.353,) * 3
    own = ImageFolderDataModule(str(image_folder), input_size=[3, 28, 28], mean=[0.5] * 3, crop_pct=0.9,
                                preprocessing_from="gated_swinrmt_swat_tiny.fmnist")
    assert own.mean == (0.5,) * 3 and own.std == (0.353,) * 3 and own.crop_pct == 0.9
    assert ImageFolderDataModule(str(image_folder), input_size=[3, 28, 28]).mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="no image preprocessing"):
        ImageFolderDataModule(str(image_folder), preprocessing_from="tchnet.nslkdd_binary")


def test_truncated_jpeg_and_stray_files(tmp_path):
    """A JPEG cut short (an interrupted download) is named up front, not mid-epoch; `skip_unreadable=True` leaves it
    and a stray non-image file out."""
    root = tmp_path / "jpg"
    for p, y in foolbox_cifar10()[:12]:
        d = root / ("a" if y % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(d / f"{p.stem}.jpg", quality=95)
    data = next((root / "a").glob("*.jpg")).read_bytes()
    # cut halfway through the compressed scan (after the SOS marker): the headers, all Image.open and verify() read,
    # stay intact, as in a download interrupted mid-file
    sos = data.index(b"\xff\xda")
    (root / "a" / "trunc.jpg").write_bytes(data[: sos + (len(data) - sos) // 2])
    with Image.open(root / "a" / "trunc.jpg") as im:
        im.verify()  # passes: the check must decode
    with pytest.raises(ValueError, match=r"1 file\(s\) are not readable images: .*trunc\.jpg"):
        ImageFolderDataModule(str(root)).setup("fit")
    (root / "b" / "notes.txt").write_text("labels were checked by hand")
    dm = ImageFolderDataModule(str(root), input_size=[3, 32, 32], skip_unreadable=True, num_workers=0, batch_size=12,
                               val_fraction=0.25)
    with pytest.warns(UserWarning, match=r"2 file\(s\).*trunc\.jpg.*notes\.txt|2 file\(s\).*notes\.txt.*trunc"):
        dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 12
    x, _ = next(iter(dm.train_dataloader()))  # every kept file decodes
    assert x.shape == (9, 3, 32, 32)
    with pytest.raises(ValueError, match="notes.txt"):
        ImageFolderDataModule(str(root)).setup("fit")
