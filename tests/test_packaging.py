"""pyproject lists every package folder; kernels/ is importable as gatedzoo.kernels only."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"gatedzoo." + ".".join(p.parent.relative_to(ROOT / "gatedzoo").parts)
             for p in (ROOT / "gatedzoo").rglob("__init__.py")}
    # kernels/ is mapped in; zoo/weights holds data only (the shipped weights) and is listed so setuptools ships it
    found = {f.rstrip(".") for f in found} | {"gatedzoo.kernels", "gatedzoo.zoo.weights"}
    assert found == listed, f"add to / remove from pyproject [tool.setuptools] packages: {found ^ listed}"


def test_kernels_resolve_inside_gatedzoo():
    import gatedzoo.kernels

    assert Path(gatedzoo.kernels.__file__).parent == ROOT / "kernels"
