"""The ``gatedzoo`` command.

``fit | validate | test | predict -c RECIPE.yaml`` run a recipe through LightningCLI (``--print_config``, dotted
overrides such as ``--trainer.max_epochs 3``); ``list``, ``info`` and ``eval`` work on the zoo; ``ship`` adds trained
weights to the package's manifest (for maintainers).
"""

from __future__ import annotations

import argparse
import json
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


def cmd_list(args) -> int:
    from gatedzoo.zoo import get_arch, list_models, model_info

    names = list_models(args.pattern, pretrained=args.pretrained)
    if args.pretrained:
        rows = []
        for n in names:
            i = model_info(n)
            metric = ", ".join(f"{k}={v:.4g}" for k, v in list(i["metrics"].items())[:2])
            rows.append((n, i["task"], i["data"], metric, f"{i['size_bytes'] / 1e6:.1f} MB"))
        print(_table(rows, ("weights", "task", "data", "metrics", "size")) if rows else "no pretrained weights match")
    else:
        rows = [(n, get_arch(n).family, get_arch(n).task) for n in names]
        print(_table(rows, ("architecture", "family", "task")) if rows else "no architectures match")
    return 0


def cmd_info(args) -> int:
    from gatedzoo.zoo import create_model, model_info

    info = model_info(args.name)
    arch = info["architecture"]
    info["parameters"] = sum(p.numel() for p in create_model(arch).parameters())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print("\n".join(f"{k:>12}: {v}" for k, v in info.items()))
    return 0


def cmd_eval(args) -> int:
    import gatedzoo.tasks as tasks
    from gatedzoo.zoo import create_model

    model = create_model(args.name, pretrained=True)
    task = model.zoo_config.get("task", "")
    if task not in tasks.EVALUATORS:
        print(f"gatedzoo eval: no evaluator for task {task!r} (model {args.name}); known: {sorted(tasks.EVALUATORS)}",
              file=sys.stderr)
        return 2
    metrics = tasks.EVALUATORS[task](model, data=args.data, split=args.split)
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
    s = sub.add_parser("info", help="task, data, metrics, size, licence and paper of a model")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("eval", help="evaluate zoo weights on their dataset or on your file")
    s.add_argument("name", help="arch.tag, local-dir:/path, hf-hub:org/repo or a folder")
    s.add_argument("--data", default=None, help="a file in the dataset's format (default: the weights' own data)")
    s.add_argument("--split", default="test")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("ship", help="(maintainers) copy trained zoo weights into the package and the manifest")
    s.add_argument("folder", help="folder written by save_pretrained / SaveZooWeights")
    s.add_argument("name", help="arch.tag")
    s.add_argument("--recipe", default="")
    s.add_argument("--data", default="")
    s.add_argument("--license", default="Apache-2.0")
    s.set_defaults(fn=cmd_ship)
    return p


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(argv if explicit else sys.argv[1:])
    if argv and argv[0] in LIGHTNING_COMMANDS:
        # from the console script LightningCLI reads sys.argv itself (passing it again only draws a warning)
        run_lightning(argv if explicit else None)
        return 0
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
