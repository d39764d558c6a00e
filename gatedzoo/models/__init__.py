"""One file per model family; importing this package registers every architecture."""
