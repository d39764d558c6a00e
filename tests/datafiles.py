"""Benchmark files from the data directory, for tests (imported as `datafiles`, like `toy`)."""

from pathlib import Path

import pytest

from gatedzoo.data import DatasetFile, data_dir, fetch


def need(f: DatasetFile) -> Path:
    """The verified local path of ``f``; the test is skipped, saying why, when the data directory lacks the file."""
    if not f.path().exists():
        pytest.skip(f"{f.relpath} is not under GATEDZOO_DATA={data_dir()}: point GATEDZOO_DATA at a folder that holds "
                    "it (CI uses ../shared/data)")
    return fetch(f)
