"""Typed exceptions for everything a user can get wrong or a disk can break.

Every message names the file (or id) involved and what to do next, so the CLI can show it
as-is. Asserts are kept for internal invariants only.
"""
from __future__ import annotations


class VStoreError(Exception):
    """Base class: a problem the user can act on (bad input, damaged files, conflicts)."""


class StoreNotFoundError(VStoreError):
    """The path is not a vstore store."""


class StoreCorruptError(VStoreError):
    """A store file is damaged; ``path`` names it."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class StoreWriteError(VStoreError):
    """Writing to the store failed (disk full, permissions...); committed data is intact."""


class StoreLockedError(VStoreError):
    """Another process holds the store's write lock."""


class IncompatibleEncoderError(VStoreError):
    """Vectors from a different encoder or dimension would be mixed into one store."""


class IncompatibleSamplingError(VStoreError):
    """Videos sampled another way (frame count, mode, or imported) would be mixed into one store."""


class UnknownVideoError(VStoreError, KeyError):
    """A video id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LabelsError(VStoreError):
    """A labels file that cannot be read or understood."""


class SplitError(VStoreError):
    """A split that is missing or cannot be made."""


class VectorIndexError(VStoreError):
    """A problem with a store's search index (``STORE/index/``)."""


class IndexNotFoundError(VectorIndexError):
    """The store has no search index yet."""


class StaleIndexError(VectorIndexError):
    """The index covers an older state of the store than the one being searched."""


class IndexDamagedError(VectorIndexError):
    """An index file is missing, truncated or fails its checksum; ``path`` names it."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class IndexBuildError(VectorIndexError):
    """An index that cannot be built with the settings given (bad factory string, too few vectors)."""


class QueryError(VStoreError):
    """A search query that cannot be used (wrong dimension, unreadable file, unknown frame)."""


class DedupError(VStoreError):
    """A duplicate search that cannot run as asked, or a dedup output folder that cannot be read."""
