"""The ``gatedzoo`` command.

``fit | validate | test | predict -c RECIPE.yaml`` run a recipe through LightningCLI (``--print_config``, dotted
overrides such as ``--trainer.max_epochs 3``); ``list``, ``info`` and ``eval`` work on the zoo; ``tour`` runs the zoo
tour (:mod:`gatedzoo.tour`); ``ship`` adds trained weights to the package's manifest (for maintainers).

Bad input to a recipe command (a ``ValueError`` or ``FileNotFoundError``, whose message names the fix) ends it with
that message on stderr and exit status 2, as ``eval``, ``info`` and ``tour`` do; ``GATEDZOO_TRACEBACK=1`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: list[str] | None, run: bool = True):
    """Build a LightningCLI over :class:`~gatedzoo.tasks.ZooTask` subclasses and any LightningDataModule.

    ``argv=None`` reads ``sys.argv`` (the console script). With ``run=False`` the recipe is only parsed and its
    trainer, model and data module instantiated (tests).
    """
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    import gatedzoo.tasks  # noqa: F401  (registers the task classes)
    from gatedzoo.tasks import ZooTask

    if not run and argv and argv[0] in LIGHTNING_COMMANDS:
        argv = argv[1:]  # without running, LightningCLI takes no subcommand: it only instantiates
    return LightningCLI(
        ZooTask, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv, run=run,
        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "gatedzoo"} if run else None,
    )


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


#: metric names shown first for shipped weights (the test metrics each family documents), in order of preference
HEADLINE_METRICS = ("eval/top1_test", "eval/top5_test", "test/mse", "test/mae", "test_accuracy_multiclass",
                    "test_macro_f1_multiclass", "test_accuracy", "test_mcc", "val_masked_loss")


def headline_metrics(metrics: dict, n: int = 2) -> dict:
    """The ``n`` metrics a user compares weights by: documented test metrics first, else the first numeric ones."""
    keys = [k for k in HEADLINE_METRICS if k in metrics][:n]
    keys += [k for k, v in metrics.items() if k not in keys and k != "seed" and isinstance(v, (int, float))]
    return {k: metrics[k] for k in keys[:n]}


def _short(text: str, seps: tuple[str, ...] = (" (", ";", ": ")) -> str:
    for sep in seps:
        text = text.split(sep)[0]
    return text.strip()


def _arxiv(paper: str) -> str:
    import re

    ids = re.findall(r"arXiv[: ]?(\d{4}\.\d{4,5})", paper)
    return f"arXiv {ids[0]}" if ids else _short(paper, (",",))


def _model_size(name: str) -> tuple[int, float, dict]:
    """``(parameters, MB of weight files, zoo config)`` of ``arch.tag`` (built with its own config) or of a bare
    ``arch``."""
    from gatedzoo.zoo import create_model, get_pretrained

    if "." in name:
        model = create_model(name, pretrained=True)
        return sum(p.numel() for p in model.parameters()), get_pretrained(name).size_bytes / 1e6, model.zoo_config
    model = create_model(name)
    return sum(p.numel() for p in model.parameters()), 0.0, model.zoo_config


def _weights_folder(name: str) -> Path | None:
    """The folder of ``local-dir:PATH``, of a folder path or of its ``model.safetensors``; `None` for zoo names."""
    path = Path(name.removeprefix("local-dir:"))
    if name.startswith("local-dir:") or path.is_dir() or path.suffix == ".safetensors":
        return path if path.is_dir() else path.parent
    return None


def _folder_info(folder: Path) -> dict:
    """What ``gatedzoo info`` shows for weights in a folder (written by ``save_pretrained`` / ``SaveZooWeights``):
    the architecture's card entries and the folder's own config (metrics, data, provenance)."""
    from gatedzoo.zoo import create_model, get_arch

    model = create_model(str(folder))
    cfg = model.zoo_config
    a = get_arch(cfg["architecture"])
    info = {"name": str(folder), "architecture": cfg["architecture"], "family": a.family, "task": cfg.get("task"),
            "paper": a.paper, "license": cfg.get("license", a.license), "weights": str(folder),
            "data": cfg.get("training_data", "-"), "metrics": cfg.get("metrics", {}), "recipe": cfg.get("recipe", "-")}
    info.update({k: cfg[k] for k in ("fine_tuned_from", "adapted_from") if k in cfg})
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
    info["_size"] = (sum(p.numel() for p in model.parameters()), size, cfg)
    return info


def cmd_list(args) -> int:
    from gatedzoo.zoo import get_arch, list_models, model_info

    names = list_models(args.pattern, pretrained=args.pretrained)
    if args.pretrained:
        rows = []
        for n in names:
            i = model_info(n)
            metric = ", ".join(f"{k}={v:.4g}" for k, v in headline_metrics(i["metrics"]).items())
            params, mb, _ = _model_size(n)
            rows.append((n, i["task"], _short(i["data"]), metric, f"{params / 1e6:.2f} M", f"{mb:.1f} MB",
                         _short(i["license"]), _arxiv(i["paper"])))
        print(_table(rows, ("weights", "task", "data", "test metrics", "params", "size", "licence", "paper"))
              if rows else f"no pretrained weights match {args.pattern!r}; see `gatedzoo list --pretrained`")
    else:
        rows = [(n, get_arch(n).family, get_arch(n).task, _arxiv(get_arch(n).paper)) for n in names]
        print(_table(rows, ("architecture", "family", "task", "paper")) if rows else
              f"no architectures match {args.pattern!r}; see `gatedzoo list`")
    return 0


def cmd_info(args) -> int:
    from gatedzoo.zoo import model_info

    folder = _weights_folder(args.name)
    try:
        info = _folder_info(folder) if folder is not None else model_info(args.name)
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"gatedzoo info: {err.args[0]}", file=sys.stderr)
        return 2
    if folder is not None:
        params, mb, cfg = info.pop("_size")
    else:
        params, mb, cfg = _model_size(info["weights"] if "weights" in info else info["architecture"])
    info["parameters"] = params
    if "weights" in info:
        info["size_mb"] = round(mb, 2)
        info["metrics"] = {**headline_metrics(info["metrics"]), **info["metrics"]}  # what `list` shows comes first
        info["usage"] = [f"gatedzoo eval {info['weights']} --json",
                         f"gatedzoo.create_model({info['weights']!r}, pretrained=True)"]
        rule = cfg.get("novelty_rule")
        if rule:  # flow weights with a validated novelty rule: how to use it and what it scored
            info["novelty_rule"] = {k: rule[k] for k in ("score", "k", "false_alarm_rate") if k in rule}
            info["novelty_rule"].update({f"test_{k}": v for k, v in rule.get("test_metrics", {}).items()
                                         if k in ("accuracy", "mcc", "false_alarms")})
            info["usage"].append(f"gatedzoo eval {info['weights']} --novelty --json")
    else:
        info["usage"] = [f"gatedzoo.create_model({info['architecture']!r})"] + [
            f"gatedzoo info {t}" for t in info.get("pretrained", [])]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            v = "\n".join(f"{'':>14}{a}: {b}" for a, b in v.items()).lstrip() if v else "-"
        elif isinstance(v, list):
            v = "\n".join(f"{'':>14}{x}" for x in v).lstrip() if v else "-"
        elif k == "parameters":
            v = f"{v:,} ({v / 1e6:.2f} M)"
        print(f"{k:>12}: {v}")
    return 0


def cmd_tour(args) -> int:
    from gatedzoo.tour import main as tour_main

    try:
        return tour_main(args.families, out=args.out)
    except (ValueError, FileExistsError) as err:  # bad --families / --out, refused before any work
        print(f"gatedzoo tour: {err}", file=sys.stderr)
        return 2


def cmd_eval(args) -> int:
    import gatedzoo.tasks as tasks
    from gatedzoo.zoo import create_model

    try:
        return _eval(args, tasks, create_model)
    except (ValueError, FileNotFoundError) as e:  # bad input: its message says what to fix; no traceback
        print(f"gatedzoo eval: {e}", file=sys.stderr)
        return 2


def _eval(args, tasks, create_model) -> int:
    model = create_model(args.name, pretrained=True)
    task = model.zoo_config.get("task", "")
    if task not in tasks.EVALUATORS:
        print(f"gatedzoo eval: no evaluator for task {task!r} (model {args.name}); known: {sorted(tasks.EVALUATORS)}",
              file=sys.stderr)
        return 2
    extra = {}
    if args.novelty:
        if task != "flow_classification":
            print(f"gatedzoo eval: --novelty applies to flow models; {args.name} is a {task!r} model.", file=sys.stderr)
            return 2
        extra["novelty"] = True
    metrics = tasks.EVALUATORS[task](model, data=args.data, split=args.split, **extra)
    if args.json:
        print(json.dumps({"model": args.name, "split": args.split, "data": args.data, "metrics": metrics}, indent=2))
    else:
        print(_table([(k, f"{v:.6g}" if isinstance(v, float) else v) for k, v in metrics.items()], ("metric", "value")))
    return 0


def cmd_ship(args) -> int:
    from gatedzoo.io import sha256sum, write_json
    from gatedzoo.zoo.pretrained import CONFIG_NAME, WEIGHTS_NAME
    from gatedzoo.zoo.registry import MANIFEST, WEIGHTS_DIR

    src = Path(args.folder)
    dest = WEIGHTS_DIR / args.name
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / CONFIG_NAME).read_text())
    cfg.update({k: v for k, v in (("recipe", args.recipe), ("training_data", args.data)) if v})
    write_json(dest / CONFIG_NAME, cfg)
    shutil.copyfile(src / WEIGHTS_NAME, dest / WEIGHTS_NAME)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    files = (CONFIG_NAME, WEIGHTS_NAME)
    manifest[args.name] = {
        "folder": args.name, "sha256": {f: sha256sum(dest / f) for f in files},
        "size_bytes": sum((dest / f).stat().st_size for f in files), "recipe": args.recipe, "data": args.data,
        "metrics": cfg.get("metrics", {}), "license": args.license,
    }
    write_json(MANIFEST, dict(sorted(manifest.items())))
    print(f"shipped {args.name}: {manifest[args.name]['size_bytes'] / 1e6:.2f} MB in {dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatedzoo", description="Gated and sigmoid-attention model zoo.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, add_help=False, help=f"{name} a recipe: gatedzoo {name} -c recipes/<family>/<r>.yaml")
    s = sub.add_parser("list", help="list architectures, or pretrained weights with --pretrained")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--pretrained", action="store_true")
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("info", help="task, data, metrics, size, licence, paper, recipe and sha256 of arch or arch.tag")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("tour", help="the zoo tour: train, evaluate, load the shipped weights and fine-tune each "
                                    "family on offline data, then print one summary table")
    s.add_argument("--families", nargs="+", default=None,
                   help="families to run (default: all): gateformer gated_swinrmt scfm tchnet (or comma-separated)")
    s.add_argument("--out", default="runs/tour", help="run folder (replaced on each tour). Default: runs/tour")
    s.set_defaults(fn=cmd_tour)
    s = sub.add_parser("eval", help="evaluate zoo weights on their dataset or on your file")
    s.add_argument("name", help="arch.tag, local-dir:/path, hf-hub:org/repo or a folder")
    s.add_argument("--data", default=None, help="a file in the dataset's format (default: the weights' own data)")
    s.add_argument("--split", default="test")
    s.add_argument("--json", action="store_true")
    s.add_argument("--novelty", action="store_true", help="flow models: add the novelty guard their config records "
                   "(its reference flows are re-read from the training data)")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("ship", help="(maintainers) copy trained zoo weights into the package and the manifest")
    s.add_argument("folder", help="folder written by save_pretrained / SaveZooWeights")
    s.add_argument("name", help="arch.tag")
    s.add_argument("--recipe", default="")
    s.add_argument("--data", default="")
    s.add_argument("--license", default="Apache-2.0")
    s.set_defaults(fn=cmd_ship)
    return p


def _user_message(err: BaseException) -> str:
    """The message of a bad-input error: for jsonargparse's "Does not validate against any of the Union subtypes"
    (which wraps an error raised while building a recipe's class and prints the whole namespace), the wrapped one."""
    while err.__cause__ is not None and str(err).startswith("Does not validate against any of the Union subtypes"):
        err = err.__cause__
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(argv if explicit else sys.argv[1:])
    if argv and argv[0] in LIGHTNING_COMMANDS:
        try:
            # from the console script LightningCLI reads sys.argv itself (passing it again only draws a warning)
            run_lightning(argv if explicit else None)
        except (ValueError, FileNotFoundError) as err:
            if os.environ.get("GATEDZOO_TRACEBACK"):
                raise
            print(f"gatedzoo {argv[0]}: {_user_message(err)}\n(GATEDZOO_TRACEBACK=1 shows the traceback)",
                  file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
