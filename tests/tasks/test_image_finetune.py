"""Fine-tuning the shipped Gated-SwinRMT weights on an image folder of real Fashion-MNIST PNGs: the folder's classes,
the weights' preprocessing and the class count travel (or are checked) as they should."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import gatedzoo
from gatedzoo.data.images import ImageFolderDataModule, load_fashion_mnist
from gatedzoo.tasks import Classification, SaveZooWeights
from gatedzoo.tasks.images import evaluate_image_classification
from gatedzoo.zoo.registry import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "gated_swinrmt_swat_tiny.fmnist"
#: the quickstart's folder: Fashion-MNIST classes 9, 0, 1 under folder names (sorted: index 0, 1, 2)
CLASSES = {"Ankle boot": 9, "T-shirt-top": 0, "Trouser": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_images")
    x, y = load_fashion_mnist("test")
    for name, label in CLASSES.items():
        (root / name).mkdir()
        for i in np.flatnonzero(y == label)[:12]:
            Image.fromarray(x[i]).save(root / name / f"{i}.png")
    return root


def recipe_data(folder, **extra) -> ImageFolderDataModule:
    """The data module of recipes/gated_swinrmt/finetune_imagefolder_swat.yaml on ``folder``."""
    recipe = yaml.safe_load((ROOT / "recipes/gated_swinrmt/finetune_imagefolder_swat.yaml").read_text())
    args = {**recipe["data"]["init_args"], "root": str(folder), "num_workers": 0, "batch_size": 16, **extra}
    return ImageFolderDataModule(**args)


def trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kw)


def test_recipe_validates_with_the_weights_preprocessing(folder):
    """The fine-tune recipe's validation/eval transform is the shipped weights' (crop 1.0, bilinear, 0.286/0.353):
    on Fashion-MNIST images it gives the same inputs as the golden evaluation's direct normalisation."""
    shipped = json.loads((WEIGHTS_DIR / WEIGHTS / "config.json").read_text())["preprocessing"]
    dm = recipe_data(folder)
    assert dm.zoo_metadata()["preprocessing"] == shipped
    x, _ = load_fashion_mnist("test")
    tf = dm.transforms(False)
    got = torch.stack([tf(Image.fromarray(im)) for im in x[:64]])
    want = (torch.from_numpy(x[:64].astype(np.float32) / 255)[:, None] - 0.286) / 0.353
    torch.testing.assert_close(got, want)


def test_finetune_names_its_own_classes(folder, tmp_path):
    """The saved fine-tuned folder names the image folder's 3 classes, records the weights' preprocessing, not the
    shipped 10 names or scores; `gatedzoo eval --data` then maps the folders onto the right outputs."""
    torch.manual_seed(0)
    task = Classification(WEIGHTS, pretrained=True, model_args={"num_classes": 3})
    assert "label_names" not in task.model.zoo_config
    trainer(tmp_path, callbacks=[SaveZooWeights(dirpath=str(tmp_path / "zoo"))]).fit(task, recipe_data(folder))
    cfg = json.loads((tmp_path / "zoo" / "config.json").read_text())
    assert cfg["label_names"] == sorted(CLASSES) and cfg["model_args"]["num_classes"] == 3
    assert cfg["preprocessing"]["crop_pct"] == 1.0 and cfg["preprocessing"]["interpolation"] == "bilinear"
    assert "eval/top1_test" not in cfg["metrics"]
    model = gatedzoo.create_model(str(tmp_path / "zoo"))
    assert evaluate_image_classification(model, str(folder))["n"] == 36


def test_wrong_num_classes_is_refused_before_training(folder, tmp_path):
    """The recipe's default `num_classes: 2` on a 3-class folder: a clear error before any step (it used to fail
    mid-step with `IndexError: Target 2 is out of bounds`, or train a surplus head silently)."""
    for n in (2, 5):
        task = Classification(WEIGHTS, pretrained=True, model_args={"num_classes": n})
        head = task.model.head.weight.detach().clone()
        with pytest.raises(ValueError, match=rf"3 classes .* {n} outputs; set num_classes .*num_classes: 3"):
            trainer(tmp_path).fit(task, ImageFolderDataModule(str(folder), input_size=[1, 28, 28], augment="basic",
                                                              num_workers=0, batch_size=16))
        assert torch.equal(task.model.head.weight, head)


def test_rgb_finetuning_keeps_the_grey_statistics(folder, tmp_path):
    """RGB fine-tuning from the grey weights (`in_chans: 3`, `input_size [3, 28, 28]`) normalises with the weights'
    mean/std on every channel: the adapted stem then scores RGB copies of Fashion-MNIST as the grey model (ImageNet
    statistics, the old default, dropped it from 0.94 to 0.48)."""
    x, y = load_fashion_mnist("test")
    imgs, y = [Image.fromarray(im).convert("RGB") for im in x[:200]], torch.from_numpy(y[:200])
    rgb = gatedzoo.create_model(WEIGHTS, in_chans=3).eval()
    grey = gatedzoo.create_model(WEIGHTS).eval()
    tf = recipe_data(folder, input_size=[3, 28, 28]).transforms(False)
    with torch.no_grad():
        acc_rgb = (rgb(torch.stack([tf(im) for im in imgs])).argmax(-1) == y).float().mean()
        want = (torch.from_numpy(x[:200].astype(np.float32) / 255)[:, None] - 0.286) / 0.353
        acc_grey = (grey(want).argmax(-1) == y).float().mean()
    assert acc_grey > 0.9 and abs(float(acc_rgb - acc_grey)) <= 0.01
    # without preprocessing_from the module cannot know the weights: it says so instead of silently using ImageNet's
    task = Classification(WEIGHTS, pretrained=True, model_args={"num_classes": 3, "in_chans": 3})
    dm = ImageFolderDataModule(str(folder), input_size=[3, 28, 28], augment="basic", num_workers=0)
    with pytest.warns(UserWarning, match="pass preprocessing_from"):
        trainer(tmp_path).validate(task, dm, verbose=False)
