"""The HDF5 embedding cache and the one label schema (lowest layer: imports no other stage).

Modules: ``layout`` (file format, provenance), ``writer`` (CacheWriter, lock), ``parts`` (batch
files), ``guarded`` (atomic, disk-full-safe writes), ``read`` (read/info/verify), ``merge``.
"""

from woundscore.cache.schema import LABEL_NAMES, MISSING, SCHEMA, LabelSchema
from woundscore.cache.types import (
    CacheError, CacheLockedError, CacheMismatchError, CacheValueError, CacheWriteError, EmbeddingSet,
)
from woundscore.cache.layout import IDENTITY_KEYS, LAYOUT_VERSION, identity_differences, parts_dir
from woundscore.cache.read import (
    cache_info, format_info, read_cache, read_failures, read_provenance, read_runs, verify_cache,
)
from woundscore.cache.writer import CacheWriter, consolidate_cache, lock_path, writer_active
from woundscore.cache.merge import merge_caches
