"""Run every shell and Python block of README.md and docs/**/*.md, so the documentation cannot rot.

Blocks fenced as ``bash``, ``sh``, ``shell``, ``console`` or ``python`` are run; other fences (``yaml``, ``text``,
no language) are shown to readers only. One test per block, with the id ``page:line``; the blocks of one page run
in order in one temporary working copy of the repository (tracked and untracked-but-not-ignored files, i.e. what a
fresh clone plus the current edits holds), so a block can use what an earlier block of its page wrote, and no
block writes into the checkout.

- ``bash`` / ``sh`` / ``shell``: run with ``bash -euo pipefail`` in the working copy's root, the virtual
  environment's ``bin`` first on ``PATH`` (so ``gatedzoo``, ``python`` and ``make`` targets use it).
- ``console``: the lines starting with ``$ `` (with their ``\\`` continuation lines) are the commands, run the
  same way; the other lines are the output shown to readers.
- ``python``: run by a fresh interpreter of the virtual environment.

Markers, on the lines right before the opening fence (HTML comments, invisible on GitHub and on the site):

- ``<!-- docs-test: skip: <reason> -->``: the block is not run; the reason is the skip message. A marker without a
  reason fails the test.
- ``<!-- docs-test: data: ett/ETTh1.csv nsl_kdd/KDDTest+.txt -->``: the block reads these files of the data
  directory; it is skipped, saying which file is missing, when ``$GATEDZOO_DATA`` lacks one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datafiles
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "console", "python": "python"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?::(?P<arg>.*?))?\s*-->\s*$")
MARKER_START = re.compile(r"^\s*<!--\s*docs-test\b")
# folders a working copy links to instead of copying (blocks only read them)
SHARED_READ_ONLY = ("gatedzoo/zoo/weights/",)
# seconds per block before it counts as hung; the zoo tour behind `make demo` is the longest (<= 5 min budgeted)
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    """One fenced block of a Markdown page."""

    page: str  # repository-relative path of the page
    line: int  # 1-based line of the opening fence
    lang: str  # the fence's language tag, lower case
    code: str
    skip: str | None = None  # the reason given by a skip marker
    data: list[str] = field(default_factory=list)  # data-directory files the block reads
    error: str | None = None  # a malformed marker: the test fails with this message

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_markers(lines: list[str]) -> tuple[str | None, list[str], str | None]:
    """Read the ``docs-test`` markers on ``lines`` (those right above a fence, top to bottom).

    Returns:
        tuple: ``(skip_reason or None, data files, error message or None)``.
    """
    skip, data, error = None, [], None
    for text in lines:
        m = MARKER.match(text)
        if m is None:
            error = f"unreadable docs-test marker {text.strip()!r}; write <!-- docs-test: skip: <reason> -->"
            continue
        kind, arg = m.group("kind"), (m.group("arg") or "").strip()
        if kind == "skip":
            if not arg:
                error = f"skip marker without a reason: {text.strip()!r}; write <!-- docs-test: skip: <reason> -->"
            skip = arg or None
        elif kind == "data":
            if not arg:
                error = f"data marker without files: {text.strip()!r}; list the data-directory paths it reads"
            data += arg.split()
        else:
            error = f"unknown docs-test marker kind {kind!r} in {text.strip()!r}; use 'skip' or 'data'"
    return skip, data, error


def extract_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of ``text`` whose language is run (see the module docstring), in page order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang, start = m.group("fence"), m.group("lang").lower(), i
        i += 1
        body = []
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(m.group("indent")):] if lines[i].startswith(m.group("indent")) else lines[i])
            i += 1
        i += 1
        marker_lines, j = [], start - 1
        while j >= 0 and MARKER_START.match(lines[j]):
            marker_lines.insert(0, lines[j])
            j -= 1
        if lang not in RUN_LANGS:
            if marker_lines:
                blocks.append(Block(page, start + 1, lang, "", error=f"docs-test marker above a {lang or 'plain'!r} "
                                    "fence, which is never run; remove the marker"))
            continue
        skip, data, error = parse_markers(marker_lines)
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", skip, data, error))
    return blocks


def console_commands(code: str) -> str:
    """The shell commands of a ``console`` block: ``$ `` lines and their ``\\`` continuations; output dropped."""
    out, continuing = [], False
    for line in code.splitlines():
        if continuing:
            out.append(line)
        elif line.startswith("$ "):
            out.append(line[2:])
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def doc_pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def collect() -> list[Block]:
    blocks = []
    for path in doc_pages():
        blocks += extract_blocks(path.read_text(), path.relative_to(ROOT).as_posix())
    return blocks


def working_copy(dest: Path) -> Path:
    """Copy the checkout's files (as a fresh clone plus current edits would hold them) into ``dest``.

    The shipped weights (read, never written, by any block) are linked rather than copied, 20 MB less per page.
    The virtual environment is not copied: ``dest/.venv`` is a small folder whose ``bin``/``lib`` link to the
    running one, with its own ``.installed`` stamp, so ``make demo`` in the copy uses the installed environment
    instead of rebuilding it (and never re-points the editable install at the copy).
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.startswith(SHARED_READ_ONLY):
                (dest / rel).symlink_to(src)
            else:
                shutil.copy2(src, dest / rel)
    venv = VENV_BIN.parent
    (dest / ".venv").mkdir()
    for name in ("bin", "lib", "lib64", "include"):
        if (venv / name).exists():
            (dest / ".venv" / name).symlink_to(venv / name)
    if (venv / "pyvenv.cfg").exists():
        shutil.copy2(venv / "pyvenv.cfg", dest / ".venv" / "pyvenv.cfg")
    (dest / ".venv" / ".installed").touch()
    return dest


def block_env() -> dict[str, str]:
    """The environment a reader's shell would have: the venv first on PATH, no test-only switches."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


BLOCKS = collect()
_copies: dict[str, Path] = {}


@pytest.fixture
def page_dir(request, tmp_path_factory):
    """The working copy shared by the blocks of one page (made on the page's first block)."""
    page = request.node.callspec.params["block"].page
    if page not in _copies:
        _copies[page] = working_copy(tmp_path_factory.mktemp(re.sub(r"\W", "_", page)))
    return _copies[page]


def _known_files() -> dict[str, object]:
    """The data-directory files gatedzoo knows (with their checksums), by relative path."""
    from gatedzoo.data import DatasetFile, flows, singlecell, timeseries

    known = [timeseries.ETTH1, timeseries.EXCHANGE, singlecell.PBMC_STIM, *flows.NSLKDD_FILES.values()]
    return {f.relpath: f for f in known if isinstance(f, DatasetFile)}


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, page_dir: Path):
    if block.error:
        pytest.fail(f"{block.id}: {block.error}")
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    if block.data:
        from gatedzoo.data import DatasetFile

        known = _known_files()
        for rel in block.data:
            datafiles.need(known.get(rel, DatasetFile(rel)))
    kind = RUN_LANGS[block.lang]
    script = page_dir / f".docs_block_{block.line}.{'py' if kind == 'python' else 'sh'}"
    if kind == "python":
        script.write_text(block.code)
        cmd = [str(VENV_BIN / "python"), script.name]
    else:
        code = console_commands(block.code) if kind == "console" else block.code
        if not code.strip():
            pytest.fail(f"{block.id}: a console block without `$ ` command lines; fence it as `text` instead")
        script.write_text(code)
        cmd = ["bash", "-euo", "pipefail", script.name]
    try:
        proc = subprocess.run(cmd, cwd=page_dir, env=block_env(), capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{block.id}: still running after {BLOCK_TIMEOUT_S} s:\n{(err.stdout or '')[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{block.id} ({block.lang}) exited with {proc.returncode}\n--- block ---\n{block.code}"
                    f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-5000:]}")


SAMPLE = """# page
```bash
echo one
```
<!-- docs-test: skip: needs a GPU -->
```python
print(2)
```
<!-- docs-test: skip -->
```sh
echo three
```
<!-- docs-test: data: ett/ETTh1.csv nsl_kdd/KDDTest+.txt -->
```console
$ gatedzoo eval x \\
    --json
{"out": 1}
$ echo done
```
```yaml
a: 1
```
"""


def test_extract_blocks_reads_languages_lines_and_markers():
    blocks = extract_blocks(SAMPLE, "page.md")
    assert [(b.line, b.lang) for b in blocks] == [(2, "bash"), (6, "python"), (10, "sh"), (14, "console")]
    assert blocks[0].code == "echo one\n" and blocks[0].skip is None and blocks[0].error is None
    assert blocks[1].skip == "needs a GPU"
    assert blocks[2].skip is None and "without a reason" in blocks[2].error
    assert blocks[3].data == ["ett/ETTh1.csv", "nsl_kdd/KDDTest+.txt"]
    assert console_commands(blocks[3].code) == "gatedzoo eval x \\\n    --json\necho done\n"


def test_markers_are_well_formed_everywhere():
    """Every marker in the docs parses and every skip gives its reason (listed here, before any block runs)."""
    bad = [f"{b.id}: {b.error}" for b in BLOCKS if b.error]
    assert not bad, "\n".join(bad)
