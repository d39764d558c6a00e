"""MkDocs hooks of the gatedzoo site (registered in ``mkdocs.yml``).

- The zoo table: ``<!-- zoo-table -->`` in a page is replaced by a table generated from
  ``gatedzoo/zoo/weights/manifest.json`` at build time, after checking every shipped file against the manifest's
  sha256, so the published table cannot drift from the weights (a mismatch fails the build).
- Repository pages outside ``docs/`` that the docs link to (the dataset manifests ``data/*.md`` and the kernel
  maths ``kernels/README.md``) become site pages at the same relative path, and relative links that cross the
  ``docs/`` boundary are rewritten to them, so one Markdown source reads correctly on GitHub and on the site.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "gatedzoo" / "zoo" / "weights" / "manifest.json"
ZOO_MARKER = "<!-- zoo-table -->"
# a Markdown link or image target: ](target) with no spaces; absolute URLs and pure anchors are left alone
LINK = re.compile(r"\]\((?!https?:|mailto:|#|/)([^)\s]+)\)")


def mirrored_pages() -> list[str]:
    """Repository-relative paths of the Markdown files outside ``docs/`` that the site publishes."""
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "data").glob("*.md")) + ["kernels/README.md"]


def on_files(files, config):
    """Add the mirrored repository pages to the site."""
    for rel in mirrored_pages():
        if files.get_file_from_path(rel) is None:
            files.append(File.generated(config, rel, abs_src_path=str(ROOT / rel)))
    return files


def _site_uri(real: Path, docs_dir: Path) -> str | None:
    """Where the file at ``real`` lives in the site (its ``src_uri``), or None when the site does not publish it."""
    if real.is_relative_to(docs_dir):
        return real.relative_to(docs_dir).as_posix()
    if real.is_relative_to(ROOT) and real.relative_to(ROOT).as_posix() in mirrored_pages():
        return real.relative_to(ROOT).as_posix()
    return None


def rewrite_links(markdown: str, page_src: Path, page_uri: str, docs_dir: Path) -> str:
    """Rewrite relative links written against the repository layout into links between site pages.

    Args:
        markdown (str): the page source.
        page_src (Path): the page's file in the repository (a mirrored page's real path, not its site path).
        page_uri (str): the page's path inside the site (``src_uri``), which relative links are resolved against.
        docs_dir (Path): the absolute docs folder.

    Returns:
        str: the page with every link whose target the site publishes pointing at the site copy; links to files
        the site does not publish are left unchanged (the strict build then reports them).
    """

    def fix(match: re.Match) -> str:
        target, _, anchor = match.group(1).partition("#")
        if not target:
            return match.group(0)
        real = Path(os.path.normpath(page_src.parent / target))
        uri = _site_uri(real, docs_dir)
        if uri is None:
            return match.group(0)
        new = posixpath.relpath(uri, posixpath.dirname(page_uri) or ".")
        return f"]({new}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, markdown)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def zoo_table(manifest_path: Path = MANIFEST) -> str:
    """Markdown tables of every shipped weight: task, data, metrics, size, licence, recipe and sha256.

    Raises:
        PluginError: a file listed in the manifest is missing or its sha256 differs from the manifest's.
    """
    manifest = json.loads(manifest_path.read_text())
    weights_dir = manifest_path.parent
    rows = ["| weights | task | data | metrics (as shipped) | size | licence | recipe |", "|---" * 7 + "|"]
    sums = ["| weights | file | sha256 |", "|---|---|---|"]
    total = 0
    for name in sorted(manifest):
        entry = manifest[name]
        folder = weights_dir / entry["folder"]
        for fname, expected in sorted(entry["sha256"].items()):
            path = folder / fname
            if not path.is_file():
                raise PluginError(f"zoo table: {path} is listed in {manifest_path.name} but missing; re-ship {name}")
            actual = _sha256(path)
            if actual != expected:
                raise PluginError(
                    f"zoo table: sha256 of {path} is {actual}, the manifest says {expected}; "
                    f"re-ship {name} with `gatedzoo ship` so the manifest matches the file"
                )
            sums.append(f"| `{name}` | `{fname}` | `{expected}` |")
        config = json.loads((folder / "config.json").read_text())
        metrics = "<br>".join(f"`{k}` = {_fmt(v)}" for k, v in entry.get("metrics", {}).items())
        size = entry["size_bytes"]
        total += size
        rows.append(
            f"| `{name}` | {config.get('task', '?')} | {entry.get('data', '')} | {metrics} | {size / 1e6:.2f} MB "
            f"| {entry.get('license', '')} | `{entry.get('recipe', '')}` |"
        )
    summary = f"{len(manifest)} shipped weights, {total / 1e6:.2f} MB in all (generated from `{MANIFEST.name}`)."
    return "\n".join([summary, "", *rows, "", "### Checksums", "", *sums, ""])


def on_page_markdown(markdown, page, config, files):
    """Insert the zoo table and rewrite cross-boundary links."""
    if ZOO_MARKER in markdown:
        markdown = markdown.replace(ZOO_MARKER, zoo_table())
    docs_dir = Path(config["docs_dir"]).resolve()
    return rewrite_links(markdown, Path(page.file.abs_src_path), page.file.src_uri, docs_dir)
