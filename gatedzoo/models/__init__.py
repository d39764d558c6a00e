"""One file per model family; importing this package registers every architecture."""

from . import gated_swinrmt, gateformer, scfm, tchnet  # noqa: F401
