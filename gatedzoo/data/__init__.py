"""LightningDataModules and readers, one file per domain; none of them depends on model code."""

from .paths import DatasetFile, data_dir, fetch

__all__ = ["DatasetFile", "data_dir", "fetch"]
