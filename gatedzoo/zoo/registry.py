"""Model and pretrained-weight registries: ``register_model``, ``list_models``, ``model_info``.

An *architecture* is a function that builds a model from keyword arguments (registered with
:func:`register_model`, timm style: the function's name is the architecture's name). A *pretrained tag* names one
set of weights for it: ``arch.tag``. Shipped tags come from ``gatedzoo/zoo/weights/manifest.json``; others may point
to a URL with a sha256.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


@dataclass
class ArchInfo:
    """What a user needs to choose an architecture (shown by ``gatedzoo info``)."""

    name: str
    fn: Callable
    family: str = ""
    task: str = ""
    paper: str = ""
    license: str = "Apache-2.0"
    description: str = ""


@dataclass
class PretrainedTag:
    """One set of weights: shipped in the package (``path``) or downloadable (``url`` + ``sha256``)."""

    name: str
    arch: str
    tag: str
    path: Path | None = None
    url: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    recipe: str = ""
    data: str = ""
    metrics: dict = field(default_factory=dict)
    license: str = ""


_ARCHS: dict[str, ArchInfo] = {}
_TAGS: dict[str, PretrainedTag] = {}
_manifest_loaded = False


def register_model(fn: Callable | None = None, **info):
    """Register an architecture; use as ``@register_model`` or ``@register_model(family=..., task=..., paper=...)``."""

    def wrap(f):
        if f.__name__ in _ARCHS and _ARCHS[f.__name__].fn is not f:
            raise ValueError(f"register_model: architecture {f.__name__!r} is registered twice.")
        _ARCHS[f.__name__] = ArchInfo(name=f.__name__, fn=f, description=(f.__doc__ or "").strip(), **info)
        return f

    return wrap(fn) if fn is not None else wrap


def register_pretrained(entry: PretrainedTag) -> None:
    """Add a pretrained tag (shipped ones are read from the manifest automatically)."""
    _TAGS[entry.name] = entry


def _load_manifest() -> None:
    global _manifest_loaded
    if _manifest_loaded:
        return
    _manifest_loaded = True
    if not MANIFEST.exists():
        return
    for name, e in json.loads(MANIFEST.read_text()).items():
        arch, _, tag = name.partition(".")
        register_pretrained(PretrainedTag(
            name=name, arch=arch, tag=tag, path=WEIGHTS_DIR / e["folder"] if e.get("folder") else None,
            url=e.get("url"), sha256=e.get("sha256", {}), size_bytes=e.get("size_bytes", 0), recipe=e.get("recipe", ""),
            data=e.get("data", ""), metrics=e.get("metrics", {}), license=e.get("license", ""),
        ))


def get_arch(name: str) -> ArchInfo:
    """The :class:`ArchInfo` of ``name``; the error lists close matches."""
    if name not in _ARCHS:
        close = [a for a in _ARCHS if name.split("_")[0] in a][:8]
        hint = f" Close matches: {', '.join(close)}." if close else " See `gatedzoo list`."
        raise KeyError(f"unknown architecture {name!r}.{hint}")
    return _ARCHS[name]


def get_pretrained(name: str) -> PretrainedTag:
    """Resolve ``arch.tag`` (or ``arch``: its first tag) to a :class:`PretrainedTag`."""
    _load_manifest()
    if name in _TAGS:
        return _TAGS[name]
    tags = sorted(t for t, e in _TAGS.items() if e.arch == name)
    if tags:
        return _TAGS[tags[0]]
    arch = name.partition(".")[0]
    get_arch(arch)
    have = sorted(t for t, e in _TAGS.items() if e.arch == arch)
    raise KeyError(
        f"no pretrained weights named {name!r}. " + (f"Available: {', '.join(have)}." if have else
                                                     f"{arch!r} has no pretrained weights yet; use pretrained=False.")
    )


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture names matching ``pattern`` (fnmatch), or ``arch.tag`` names when ``pretrained=True``."""
    if pretrained:
        _load_manifest()
        return sorted(n for n in _TAGS if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(_TAGS[n].arch, pattern))
    return sorted(n for n in _ARCHS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict:
    """Task, data, metrics, size, licence and paper of an architecture or pretrained tag, as a dict."""
    _load_manifest()
    arch = name.partition(".")[0]
    a = get_arch(arch)
    info = {"name": name, "architecture": arch, "family": a.family, "task": a.task, "paper": a.paper,
            "license": a.license, "description": a.description.splitlines()[0] if a.description else ""}
    if "." in name or name in _TAGS:
        t = get_pretrained(name)
        info.update(weights=t.name, data=t.data, metrics=t.metrics, recipe=t.recipe, size_bytes=t.size_bytes,
                    sha256=t.sha256, license=t.license or a.license, source=str(t.path or t.url))
    else:
        info["pretrained"] = list_models(arch, pretrained=True)
    return info
