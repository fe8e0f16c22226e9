"""The HDF5 embedding cache and the one label schema (lowest layer: imports no other stage)."""

from woundscore.cache.schema import LABEL_NAMES, MISSING, SCHEMA, LabelSchema
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, EmbeddingSet
from woundscore.cache.store import (
    CacheValueError,
    CacheWriteError,
    CacheWriter,
    cache_info,
    consolidate_cache,
    merge_caches,
    read_cache,
    read_failures,
    read_provenance,
    read_runs,
    verify_cache,
)

__all__ = [
    "LABEL_NAMES",
    "MISSING",
    "SCHEMA",
    "LabelSchema",
    "CacheError",
    "CacheLockedError",
    "CacheMismatchError",
    "EmbeddingSet",
    "CacheValueError",
    "CacheWriteError",
    "CacheWriter",
    "cache_info",
    "consolidate_cache",
    "merge_caches",
    "read_cache",
    "read_failures",
    "read_provenance",
    "read_runs",
    "verify_cache",
]
