"""The data directory: every dataset resolves under ``$GATEDZOO_DATA`` (default ``~/.cache/gatedzoo/data``).

The layout is fixed (``ett/ETTh1.csv``, ``nsl_kdd/KDDTest+.txt``, ``pbmc_stim/pbmc_stim.h5ad``, ...), so pointing
``GATEDZOO_DATA`` at a folder of the same layout just works. A missing file is downloaded (sha256 verified) when a
source URL is known and the machine is online; otherwise the error says exactly which file to put where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gatedzoo.io import ChecksumError, download, offline, sha256sum

_verified: set[Path] = set()


def data_dir() -> Path:
    """The data directory: ``$GATEDZOO_DATA`` or ``~/.cache/gatedzoo/data``."""
    return Path(os.environ.get("GATEDZOO_DATA", Path.home() / ".cache" / "gatedzoo" / "data")).expanduser()


@dataclass(frozen=True)
class DatasetFile:
    """One file of a dataset.

    Args:
        relpath (str): path under the data directory, e.g. ``"ett/ETTh1.csv"``.
        sha256 (str, Optional): expected hex digest; checked once per process.
        url (str, Optional): where to download it from when it is missing.
        license (str): the data's licence, shown to users.
        source (str): human-readable origin (paper, repository).
    """

    relpath: str
    sha256: str | None = None
    url: str | None = None
    license: str = ""
    source: str = ""

    def path(self, root: str | os.PathLike | None = None) -> Path:
        return Path(root).expanduser() / self.relpath if root else data_dir() / self.relpath


def fetch(f: DatasetFile, root: str | os.PathLike | None = None) -> Path:
    """Return the local path of ``f``, downloading it if it is missing and a URL is known.

    Raises:
        FileNotFoundError: missing and not downloadable here; the message names the exact path to fill.
        ChecksumError: the local file is not the expected one.
    """
    path = f.path(root)
    if not path.exists():
        where = f"GATEDZOO_DATA={path.parent.parent}" if root is None else f"the folder {root}"
        if f.url is None or offline():
            raise FileNotFoundError(
                f"dataset file {f.relpath} is missing: put it at {path} ({f.source or 'see data/README.md'}) or point "
                f"GATEDZOO_DATA at a folder that holds {f.relpath}" + ("" if f.url is None else
                                                                       f"; online, it is fetched from {f.url}") + "."
            )
        try:
            download(f.url, path, f.sha256)
        except OSError as err:
            raise FileNotFoundError(
                f"dataset file {f.relpath} is missing under {where} and could not be downloaded from {f.url} ({err}); "
                f"put the file at {path}."
            ) from err
    if f.sha256 and path not in _verified:
        digest = sha256sum(path)
        if digest != f.sha256:
            raise ChecksumError(
                f"{path} has sha256 {digest}, expected {f.sha256} ({f.source}); replace it with the official file."
            )
        _verified.add(path)
    return path
