"""Synthetic embeddings with a planted signal, for tests and benchmarks (no encoder needed).

Label ``j`` is positive when ``signal * X[:, j] + noise > 0.5``: a model that learns anything
reaches a high AUC, one that learns nothing stays near 0.5. Nothing here means anything clinically.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from woundscore.cache import CacheWriter, EmbeddingSet
from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES, SCHEMA

NOTICE = "synthetic embeddings with a planted signal; means nothing clinically"


def synthetic_provenance(dim: int, *, encoder_id: str = "synthetic/encoder", revision: str = "synthetic-1",
                         size: int = 448) -> dict[str, Any]:
    """A cache-style provenance dict for synthetic rows (what a CacheWriter takes)."""
    return {
        "encoder_id": encoder_id,
        "encoder_revision": revision,
        "embedding_dim": int(dim),
        "preprocessing": {"size": [size, size], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                          "resample": "bilinear", "pad_to_square": True},
        "compute_dtype": "float32",
        "device": "cpu",
        "label_schema": SCHEMA.to_json(),
        "notice": NOTICE,
    }


def synthetic_embedding_set(n_train: int = 240, n_val: int = 80, n_test: int = 80, dim: int = 32, *, seed: int = 0,
                            signal: float = 2.0, missing: float = 0.1, random_labels: bool = False,
                            **provenance_kw: Any) -> EmbeddingSet:
    """An EmbeddingSet of ``n_train + n_val + n_test`` rows of (dim,) float32 embeddings.

    Args:
        signal: strength of the planted signal (label j follows column j); needs dim >= 6.
        missing: fraction of label entries set to -1 (missing).
        random_labels: labels independent of X (AUC ~0.5; the benchmark's worst case for early
            stopping is the opposite, so both exist).
    """
    if dim < len(LABEL_NAMES):
        raise ValueError(f"dim must be >= {len(LABEL_NAMES)}, got {dim}")
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    X = rng.normal(size=(n, dim)).astype(np.float32)
    noise = rng.normal(size=(n, len(LABEL_NAMES)))
    if random_labels:
        Y = (rng.random((n, len(LABEL_NAMES))) < 0.35).astype(np.int8)
    else:
        Y = (signal * X[:, : len(LABEL_NAMES)] + noise > 0.5).astype(np.int8)
    Y[rng.random(Y.shape) < missing] = -1
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    ids = np.array([f"img{i:05d}.jpg" for i in range(n)])
    sha = np.array([hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)])
    extras = {k: np.array([""] * n) for k in EXTRA_NAMES}
    return EmbeddingSet(ids=ids, X=X, Y=Y, split=split, sha256=sha, extras=extras, schema=SCHEMA,
                        provenance=synthetic_provenance(dim, **provenance_kw))


def write_synthetic_cache(path: str | os.PathLike, es: EmbeddingSet, *, batch: int = 256) -> None:
    """Write ``es`` through woundscore.cache.CacheWriter (the real cache format)."""
    with CacheWriter(path, es.provenance, overwrite=True) as w:
        for s in range(0, len(es), batch):
            sl = slice(s, s + batch)
            w.append(es.ids[sl].tolist(), es.sha256[sl].tolist(), es.split[sl].tolist(), es.Y[sl],
                     {k: v[sl].tolist() for k, v in es.extras.items()}, es.X[sl])

