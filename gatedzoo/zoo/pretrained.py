"""``create_model``, ``save_pretrained`` and loading weights from every source the zoo accepts.

A saved model is a folder with ``model.safetensors`` and ``config.json``; the config carries the architecture, its
arguments and everything needed to use the weights correctly (preprocessing, label names, training data, metrics,
licence, paper). Sources: ``arch`` / ``arch.tag`` (shipped or downloaded with sha256 check into an atomic cache),
``hf-hub:org/repo``, ``local-dir:/path``, or a path to such a folder or to its ``model.safetensors``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gatedzoo.io import ChecksumError, atomic_path, download, offline, sha256sum, write_json

from .registry import PretrainedTag, get_arch, get_pretrained

log = logging.getLogger("gatedzoo")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def cache_dir() -> Path:
    """Where downloaded weights are cached: ``$GATEDZOO_CACHE`` or ``~/.cache/gatedzoo/hub``."""
    return Path(os.environ.get("GATEDZOO_CACHE", Path.home() / ".cache" / "gatedzoo" / "hub")).expanduser()


def zoo_config(model: nn.Module) -> dict:
    """The model's ``zoo_config`` dict (architecture, model_args, preprocessing, ...), created if missing."""
    cfg = getattr(model, "zoo_config", None)
    if cfg is None:
        cfg = {}
        model.zoo_config = cfg
    return cfg


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, state_dict: dict | None = None,
                    **extra) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (atomically, file by file).

    ``state_dict`` replaces ``model.state_dict()`` (the full weights gathered from a sharded, e.g. FSDP, run).
    ``extra`` entries (e.g. ``metrics=...``) are merged into the config. ``weights_dtype`` is the floating dtype of
    the tensors written, and a model with ``timm_pretrained_cfg(config)`` (the timm-registered image models) also
    gets the ``pretrained_cfg`` entry timm's ``local-dir:`` / ``hf-hub:`` loaders read. Returns the folder.
    """
    directory = Path(directory)
    cfg = {**zoo_config(model), **extra, "format_version": FORMAT_VERSION}
    if hasattr(model, "zoo_init_args"):
        cfg["init_args"] = model.zoo_init_args
    if "architecture" not in cfg:
        raise ValueError("save_pretrained: the model has no zoo_config['architecture']; build it with create_model().")
    outputs = classifier_outputs(model)
    names = cfg.get("label_names")
    if outputs is not None and names is not None and len(names) != outputs:
        raise ValueError(
            f"save_pretrained: the classifier has {outputs} outputs but zoo_config['label_names'] lists {len(names)} "
            f"names ({list(names)[:5]}...), which would name the classes wrongly; pass label_names=[...] with one name "
            "per output (e.g. the image folder's class names) or drop the entry from model.zoo_config."
        )
    own = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().contiguous().cpu() for k, v in own.items()}
    # the dtype of the file written now, not of the weights the model was loaded from (float16 shipped weights load
    # into a float32 model and are saved as float32)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    cfg.pop("weights_dtype", None)
    if len(dtypes) == 1:
        cfg["weights_dtype"] = dtypes[0]
    timm_cfg = getattr(model, "timm_pretrained_cfg", None)
    if timm_cfg is not None:
        # timm-registered models also describe the weights in timm's layout, which timm's local-dir: / hf-hub:
        # loaders read (they take the whole config.json as a pretrained_cfg when this entry is missing, and fail)
        cfg["pretrained_cfg"] = timm_cfg(cfg)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"architecture": cfg["architecture"]})
    write_json(directory / CONFIG_NAME, cfg)
    return directory


def _fetch_tag(entry: PretrainedTag) -> Path:
    """Folder holding the tag's files: the shipped folder, or the verified download cache."""
    if entry.path is not None:
        for fname, digest in entry.sha256.items():
            if sha256sum(entry.path / fname) != digest:
                raise ChecksumError(f"shipped weights {entry.path / fname} do not match the manifest's sha256; "
                                    "reinstall gatedzoo.")
        return entry.path
    if not entry.url:
        raise FileNotFoundError(f"pretrained tag {entry.name} has neither a shipped folder nor a URL.")
    folder = cache_dir() / entry.name
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        dest = folder / fname
        digest = entry.sha256.get(fname)
        if dest.exists() and (digest is None or sha256sum(dest) == digest):
            continue
        download(entry.url.rstrip("/") + "/" + fname, dest, digest)
    return folder


def _fetch_hf(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    repo, _, revision = repo.partition("@")
    # huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT once at import; read them again so a later change counts
    kw = dict(revision=revision or None, local_files_only=offline(), endpoint=os.environ.get("HF_ENDPOINT"))
    path = hf_hub_download(repo, CONFIG_NAME, **kw)
    hf_hub_download(repo, WEIGHTS_NAME, **kw)
    return Path(path).parent


def resolve_source(name: str, pretrained: bool) -> tuple[str, Path | None]:
    """Map a model name to ``(architecture or '', folder with weights or None)``."""
    if name.startswith("hf-hub:"):
        return "", _fetch_hf(name[len("hf-hub:"):])
    if name.startswith("local-dir:"):
        return "", Path(name[len("local-dir:"):]).expanduser()
    p = Path(name).expanduser()
    if os.sep in name or p.suffix == ".safetensors" or p.is_dir():
        if not p.exists():
            raise FileNotFoundError(f"{name} does not exist; give a folder with {CONFIG_NAME} + {WEIGHTS_NAME}.")
        return "", p if p.is_dir() else p.parent
    arch = name.partition(".")[0]
    get_arch(arch)
    if "." in name or pretrained:
        # ``arch.tag`` names a set of weights, so it loads them whatever ``pretrained`` says, as a folder or a hub repo
        # does; silently building a random model from a name that says which weights to use would hide the mistake
        return arch, _fetch_tag(get_pretrained(name))
    return arch, None


def pretrained_config(name: str) -> dict:
    """The ``config.json`` of a weights source (``arch.tag``, ``arch`` = its default tag, ``hf-hub:``, ``local-dir:``,
    a folder or its ``model.safetensors``) as a dict, without building the model.

    Used to take the preprocessing (input size, mean/std, interpolation, crop) of the weights a data module feeds.
    """
    _, folder = resolve_source(name, pretrained=True)
    return _read_config(folder)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a zoo folder holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
    return json.loads(path.read_text())


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-layer conv weight ``[out, c, *k]`` to ``in_chans`` input channels, as timm does.

    Going to one channel sums the input channels (a grey image seen as equal R, G, B gives the same response);
    otherwise the channels are tiled and scaled by ``c / in_chans``, so that (exactly when ``in_chans`` is a multiple
    of ``c``) an image replicated over the new channels gives the same pre-activation as the original. Returns a new
    tensor of ``weight``'s dtype.
    """
    c = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :in_chans] * (c / in_chans)


def classifier_outputs(model: nn.Module) -> int | None:
    """Output count of the model's classifier (``get_classifier().out_features``), or `None` when it has none."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return getattr(head, "out_features", None)


#: entries of a source config that describe its head (class names) or the source model as a whole (its scores); they
#: do not hold for a model whose head was re-initialised or whose architecture arguments were changed
_HEAD_ENTRIES = ("label_names",)
_SCORE_ENTRIES = ("metrics",)
#: how the source weights were made (the run's recipe and hyper-parameters): an adapted model was not made by them
#: as a whole, and a fine-tune of it would otherwise save them as its own
_MAKING_ENTRIES = ("recipe", "hparams")
#: entries that describe the saved file rather than the model: recomputed by save_pretrained, not carried over
_FILE_ENTRIES = ("model_args", "format_version", "init_args", "weights_dtype", "pretrained_cfg")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Load ``state`` into ``model``; keys under ``model.zoo_adaptable`` prefixes whose shapes changed are skipped.

    First-layer conv weights named in ``model.zoo_input_convs`` adapt to a different number of input channels
    (:func:`adapt_input_conv`). Returns the skipped (re-initialised) keys. Any other missing, unexpected or mis-shaped
    key raises when ``strict``.
    """
    own = model.state_dict()
    adaptable = tuple(getattr(model, "zoo_adaptable", ()))
    input_convs = tuple(getattr(model, "zoo_input_convs", ()))
    skipped, kept = [], {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if k in input_convs and own[k].shape[:1] + own[k].shape[2:] == v.shape[:1] + v.shape[2:]:
                kept[k] = adapt_input_conv(v, own[k].shape[1])
                continue
            if k.startswith(adaptable):
                skipped.append(k)
                continue
            raise ValueError(
                f"weights do not fit: {k} is {list(v.shape)} in the checkpoint but {list(own[k].shape)} in the model. "
                "Only the head (and an image model's input channels) adapts to overrides; keep the other architecture "
                "arguments of the checkpoint."
            )
        kept[k] = v
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in skipped]
    if strict and (missing or unexpected):
        raise ValueError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return skipped


def create_model(name: str, pretrained: bool = False, *, strict: bool = True, **overrides) -> nn.Module:
    """Build a zoo model, optionally with pretrained weights (timm style).

    Args:
        name (str): ``arch``, ``arch.tag``, ``hf-hub:org/repo[@revision]``, ``local-dir:/path``, or a path to a folder
            (or its ``model.safetensors``) written by :func:`save_pretrained`.
        pretrained (bool): for a bare ``arch``, load its default (first) tag's weights; without it the model is
            randomly initialised with the architecture's defaults. Every other source names its weights and always
            loads them, whatever this flag says: ``create_model("arch.tag")`` equals
            ``create_model("arch.tag", pretrained=True)``. Default: `False`.
        strict (bool): refuse missing or unexpected keys. Default: `True`.
        **overrides: architecture arguments to change (``num_classes``, ``horizon``, ``in_chans``, ...). With
            weights, only the head (and an image model's input channels) adapts; the change is logged. The source's
            ``metrics``, ``recipe`` and ``hparams`` then describe another model and move to
            ``zoo_config["adapted_from"]["source_metrics"]`` (``source_recipe``, ``source_hparams``); a
            re-initialised head also drops the source's ``label_names`` (name the new classes before saving, as the
            training data modules do).

    Returns:
        The model (``nn.Module``) with ``model.zoo_config`` filled in.
    """
    arch, folder = resolve_source(name, pretrained)
    cfg: dict = {}
    if folder is not None:
        cfg = _read_config(folder)
        arch = cfg.get("architecture", arch)
    info = get_arch(arch)
    saved_args = dict(cfg.get("model_args", {}))
    args = {**saved_args, **overrides}
    model = info.fn(**args)
    before = {**cfg.get("init_args", {}), **saved_args}
    changed = {k: (before.get(k), v) for k, v in overrides.items() if k in before and before[k] != v}
    if folder is not None:
        state = load_file(str(folder / WEIGHTS_NAME))
        skipped = load_weights(model, state, strict=strict)
        if changed or skipped:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "nothing"
            log.warning("create_model(%s): adapted %s; re-initialised %s", name, what, skipped or "nothing")
    base = {k: v for k, v in cfg.items() if k not in _FILE_ENTRIES}
    adapted = folder is not None and bool(changed or skipped)
    if adapted:
        dropped = _SCORE_ENTRIES + _MAKING_ENTRIES + (_HEAD_ENTRIES if skipped else ())
        source = {f"source_{k}": base[k] for k in _SCORE_ENTRIES + _MAKING_ENTRIES if k in base}
        base = {k: v for k, v in base.items() if k not in dropped}
    model.zoo_config = {**base, **zoo_config(model), "architecture": arch, "model_args": args}
    model.zoo_config.setdefault("task", info.task)
    if adapted:
        model.zoo_config["adapted_from"] = {"source": name, "changed": {k: list(v) for k, v in changed.items()},
                                            "reinitialised": list(skipped)}
        model.zoo_config["adapted_from"].update(source)
    return model



class ZooMixin:
    """Mixed into every zoo model: ``save_pretrained`` and the head-adaptation contract.

    ``zoo_adaptable`` lists the state-dict prefixes (the head) that may be re-initialised when an override such as
    ``num_classes`` changes their shape while loading weights.
    """

    zoo_adaptable: tuple[str, ...] = ("head",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__
        sig = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            # the outermost constructor's full arguments (defaults included) travel in config.json as init_args,
            # so a later override can say what it changed ("num_classes 10 -> 5")
            if not hasattr(self, "_zoo_init_depth"):
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                args_ = {k: v for k, v in list(bound.arguments.items())[1:] if _jsonable(v)}
                object.__setattr__(self, "_zoo_init_depth", 0)
                init(self, *args, **kw)
                self.zoo_init_args = args_
            else:
                init(self, *args, **kw)

        cls.__init__ = recording_init

    def save_pretrained(self, directory: str | os.PathLike, *, state_dict: dict | None = None, **extra) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (see :func:`save_pretrained`)."""
        return save_pretrained(self, directory, state_dict=state_dict, **extra)
