"""The one small dataclass that stages hand each other, and the cache's named errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LabelSchema, SCHEMA


class CacheError(WoundscoreError):
    """Base class of cache problems (bad file, wrong layout)."""


class CacheMismatchError(CacheError):
    """Rows from another encoder, revision, preprocessing or label schema would be mixed.

    ``differences`` maps each differing provenance key to ``(in_cache, offered)``.
    """

    def __init__(self, path: str, differences: dict[str, tuple[Any, Any]]) -> None:
        self.path, self.differences = path, differences
        lines = [f"  {key}: cache has {have!r}, new rows have {new!r}" for key, (have, new) in differences.items()]
        super().__init__("\n".join([f"{path}: refusing to mix rows from a different setup:", *lines]))


class CacheLockedError(CacheError):
    """Another live process holds the cache's writer lock."""


class CacheWriteError(CacheError):
    """The cache could not be written (disk full, unwritable folder ...). Nothing was changed."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(
            f"{path}: cannot write the cache ({reason}); the existing cache is unchanged. "
            "Free some space or choose another output, then rerun to resume."
        )


class CacheValueError(CacheError, ValueError):
    """Rows offered to ``append`` are malformed (shape, label value, hash, NaN ...)."""


@dataclass(frozen=True)
class EmbeddingSet:
    """Embeddings with their labels, as read from a cache (numpy in, numpy out).

    Attributes:
        ids: (n,) str image ids (e.g. ``"76.jpg"``).
        X: (n, d) float32 embeddings (unnormalised pooled image features).
        Y: (n, 6) int8 labels in ``LABEL_NAMES`` order; 1 / 0 / -1 (missing).
        split: (n,) str, "train" / "val" / "test" / "" (unlabelled).
        sha256: (n,) str hex digest of each image's bytes.
        extras: name -> (n,) str raw annotations (location, closure method, ...).
        schema: the label schema the rows were encoded with.
        provenance: encoder id and revision, preprocessing spec, dtype, device, versions, ...
    """

    ids: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    split: np.ndarray
    sha256: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    schema: LabelSchema = SCHEMA
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("X", "Y", "split", "sha256"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EmbeddingSet.{name} has {len(getattr(self, name))} rows, ids has {n}")
        if self.Y.ndim != 2 or self.Y.shape[1] != len(self.schema.labels):
            raise ValueError(f"EmbeddingSet.Y must be (n, {len(self.schema.labels)}), got {self.Y.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.schema.labels

    def select(self, mask: np.ndarray) -> "EmbeddingSet":
        """Rows where ``mask`` (bool (n,) or integer indices) holds."""
        return replace(self, ids=self.ids[mask], X=self.X[mask], Y=self.Y[mask], split=self.split[mask],
                       sha256=self.sha256[mask], extras={k: v[mask] for k, v in self.extras.items()})

    def subset(self, split: str) -> "EmbeddingSet":
        """The rows of one split ("train", "val" or "test")."""
        return self.select(self.split == split)

