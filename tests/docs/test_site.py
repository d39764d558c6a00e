"""The documentation site builds with ``mkdocs build --strict`` and holds what it promises."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "gatedzoo" / "zoo" / "weights" / "manifest.json"


def load_hooks():
    spec = importlib.util.spec_from_file_location("gatedzoo_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strict_build_has_every_page(built_site: Path):
    pages = ["index.html", "getting-started.html", "attention.html", "zoo.html", "scaling.html",
             "kernels/index.html", "data/index.html", "benchmarks/attention.html",
             *(f"models/{m}.html" for m in ("gated_swinrmt", "scfm", "gateformer", "tchnet")),
             *(f"api/{m}.html" for m in ("kernels", "layers", "zoo", "forecast", "singlecell", "tasks", "data"))]
    missing = [p for p in pages if not (built_site / p).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    # the hook file lives in docs/ but must not be published
    assert not (built_site / "hooks.py").exists()


def test_zoo_table_lists_every_shipped_weight_with_its_checksum(built_site: Path):
    html = (built_site / "zoo.html").read_text()
    manifest = json.loads(MANIFEST.read_text())
    assert manifest, "the manifest lists no weights"
    for name, entry in manifest.items():
        assert f"<code>{name}</code>" in html, f"{name} is not in the zoo table"
        for digest in entry["sha256"].values():
            assert digest in html, f"sha256 {digest} of {name} is not in the zoo table"
    assert "<!-- zoo-table -->" not in html


def test_api_pages_are_generated_from_docstrings(built_site: Path):
    from gatedzoo.forecast import Forecaster
    from gatedzoo.kernels import attention

    kernels = (built_site / "api" / "kernels.html").read_text()
    assert attention.__doc__.splitlines()[0].split(",")[0] in kernels
    assert "seq_lens" in kernels and "cu_seqlens" in kernels
    forecast = (built_site / "api" / "forecast.html").read_text()
    assert Forecaster.__doc__.splitlines()[0][:40] in forecast


def test_cross_boundary_links_point_at_site_pages(built_site: Path):
    html = (built_site / "models" / "gateformer.html").read_text()
    assert 'href="../data/timeseries.html"' in html
    assert "../../data/timeseries.md" not in html


def test_zoo_table_refuses_a_tampered_weight(tmp_path: Path):
    hooks = load_hooks()
    manifest = json.loads(MANIFEST.read_text())
    name = sorted(manifest)[0]
    shutil.copytree(MANIFEST.parent / manifest[name]["folder"], tmp_path / manifest[name]["folder"])
    (tmp_path / "manifest.json").write_text(json.dumps({name: manifest[name]}))
    assert f"`{name}`" in hooks.zoo_table(tmp_path / "manifest.json")
    config = tmp_path / manifest[name]["folder"] / "config.json"
    config.write_text(config.read_text() + " ")
    with pytest.raises(PluginError, match="re-ship"):
        hooks.zoo_table(tmp_path / "manifest.json")


def test_rewrite_links_maps_repository_paths_to_site_paths():
    hooks = load_hooks()
    docs = ROOT / "docs"
    page = docs / "models" / "tchnet.md"
    text = "see [flows](../../data/flows.md#labels), [json](../benchmarks/x.json), ![p](p.png), [w](https://a.b/c)"
    out = hooks.rewrite_links(text, page, "models/tchnet.md", docs)
    assert out == ("see [flows](../data/flows.md#labels), [json](../benchmarks/x.json), ![p](p.png), "
                   "[w](https://a.b/c)")
    # a mirrored page linking back into docs/
    out = hooks.rewrite_links("[core](../docs/attention.md)", ROOT / "data" / "README.md", "data/README.md", docs)
    assert out == "[core](../attention.md)"
