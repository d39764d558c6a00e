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
    # the folder it was fine-tuned on scores training images: said, not silent (the quickstart used to do this)
    with pytest.warns(UserWarning, match="is in the image folder these weights were trained on"):
        assert evaluate_image_classification(model, str(folder))["n"] == 36


def test_eval_warns_only_on_the_training_folder(folder, tmp_path, monkeypatch):
    """`gatedzoo eval <fine-tuned> --data X` warns when X is the recorded training folder (or inside it: a class
    folder, root/train, root/val), a relative recorded root taken from the working directory; a held-out folder
    evaluates silently."""
    import warnings

    from gatedzoo.tasks.images import warn_if_training_folder

    x, y = load_fashion_mnist("test")
    held_out = tmp_path / "my_images_test"
    for name, label in CLASSES.items():
        (held_out / name).mkdir(parents=True)
        for i in np.flatnonzero(y == label)[12:16]:
            Image.fromarray(x[i]).save(held_out / name / f"{i}.png")
    model = gatedzoo.create_model(WEIGHTS, num_classes=3)
    model.zoo_config.update(label_names=sorted(CLASSES), training_data=f"image_folder:{folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_image_classification(model, str(held_out))["n"] == 12
    monkeypatch.chdir(folder.parent)
    recorded = f"image_folder:{folder.name}"  # as `--data.init_args.root my_images` records it
    with pytest.warns(UserWarning, match="training images"):
        assert warn_if_training_folder(str(folder / "Trouser"), recorded)
    assert not warn_if_training_folder(str(held_out), recorded)
    assert not warn_if_training_folder(str(folder), "fashion_mnist/train")
    split = tmp_path / "split"
    for part in ("train", "val"):
        (split / part).mkdir(parents=True)
    with pytest.warns(UserWarning, match="the validation images, which chose the checkpoint"):
        assert warn_if_training_folder(str(split / "val"), f"image_folder:{split}")
    with pytest.warns(UserWarning, match="training images"):
        assert warn_if_training_folder(str(split / "train"), f"image_folder:{split}")


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


def test_recipe_reruns_keep_their_own_outputs(folder, tmp_path, monkeypatch):
    """The image recipes leave the checkpoint and zoo folders to Lightning's versioned log folder, so a rerun (or
    another `--trainer.default_root_dir`) never overwrites an earlier run's weights nor mixes its checkpoints in."""
    from gatedzoo.cli import run_lightning

    for recipe in sorted((ROOT / "recipes/gated_swinrmt").glob("*.yaml")):
        callbacks = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"]
        assert all("dirpath" not in (cb.get("init_args") or {}) for cb in callbacks), recipe.name
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        run_lightning(["fit", "-c", str(ROOT / "recipes/gated_swinrmt/finetune_imagefolder_swat.yaml"),
                       "--data.init_args.root", str(folder), "--model.init_args.model_args", "{num_classes: 3}",
                       "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                       "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    for version in ("version_0", "version_1"):
        out = tmp_path / "run" / "lightning_logs" / version
        assert json.loads((out / "zoo" / "config.json").read_text())["label_names"] == sorted(CLASSES)
        assert len(list((out / "checkpoints").glob("*.ckpt"))) == 1
    assert not (tmp_path / "runs").exists()  # nothing under the recipe's own default folder
