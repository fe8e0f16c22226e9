"""The HDF5 embedding cache and the one label schema (lowest layer: imports no other stage)."""

from cache.schema import LABEL_NAMES, MISSING, SCHEMA, LabelSchema
from cache.types import CacheError, CacheLockedError, CacheMismatchError, EmbeddingSet

__all__ = [
    "LABEL_NAMES",
    "MISSING",
    "SCHEMA",
    "LabelSchema",
    "CacheError",
    "CacheLockedError",
    "CacheMismatchError",
    "EmbeddingSet",
]
