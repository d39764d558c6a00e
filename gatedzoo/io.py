"""Atomic file writes and checksum-verified downloads, shared by the zoo (weights) and the data layer (datasets).

Nothing is ever left half-written: every write goes to a temporary file in the destination folder and is moved
into place with :func:`os.replace` only once it is complete and verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
TRUE = ("1", "true", "yes", "on")


class ChecksumError(RuntimeError):
    """A downloaded or local file does not have the expected sha256."""


class IncompleteDownloadError(RuntimeError):
    """The server closed the connection before the announced number of bytes arrived."""


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``GATEDZOO_OFFLINE`` is set to a true value: no network access is tried."""
    return any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "GATEDZOO_OFFLINE"))


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success move it onto ``dest``, on any error delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def download(url: str, dest: str | os.PathLike, sha256: str | None, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``sha256`` (hex) when given.

    Raises:
        ConnectionError: offline mode is on (``HF_HUB_OFFLINE=1``) — nothing is fetched.
        IncompleteDownloadError: the transfer stopped early; no partial file is left.
        ChecksumError: the bytes do not match ``sha256``; nothing is kept.
    """
    dest = Path(dest)
    if offline():
        raise ConnectionError(
            f"{dest.name} is not cached and offline mode is on (HF_HUB_OFFLINE/GATEDZOO_OFFLINE); unset it to download "
            f"from {url}, or put the file at {dest}."
        )
    with atomic_path(dest) as tmp:
        h = hashlib.sha256()
        received = 0
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            expected = resp.headers.get("Content-Length")
            while True:
                try:
                    block = resp.read(CHUNK)
                except Exception as err:  # http.client.IncompleteRead and socket resets end the same way
                    raise IncompleteDownloadError(f"download of {url} broke off after {received} bytes: {err}") from err
                if not block:
                    break
                received += len(block)
                h.update(block)
                out.write(block)
        if expected is not None and received != int(expected):
            raise IncompleteDownloadError(
                f"download of {url} stopped after {received} of {expected} bytes; nothing was kept, try again."
            )
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ChecksumError(
                f"{url} has sha256 {h.hexdigest()}, expected {sha256}; the file was not kept. The source changed or "
                "the transfer was corrupted."
            )
    return dest
