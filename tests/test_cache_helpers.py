"""Shared rows for the cache tests and their child processes (no tests here; kept free of pytest
so that a child process that kills itself starts fast)."""

from __future__ import annotations

import hashlib

import numpy as np

DIM = 8
PROV = {
    "encoder_id": "tiny-siglip",
    "encoder_revision": "abc123",
    "embedding_dim": DIM,
    "preprocessing": {"size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resample": "bilinear"},
    "compute_dtype": "float32",
    "device": "cpu",
}
SPLIT_OF = ("train", "train", "val", "test")


def make_rows(start: int, stop: int, dim: int = DIM) -> dict:
    """Deterministic rows for images start..stop-1 (a child process rebuilds the same ones)."""
    idx = range(start, stop)
    ids = [f"img {i:03d}.jpg" for i in idx]
    X = np.stack([np.random.default_rng(i).standard_normal(dim).astype(np.float32) for i in idx]) if len(idx) else np.zeros((0, dim), np.float32)
    labels = np.array([[(i + j) % 3 - 1 for j in range(6)] for i in idx], dtype=np.int8).reshape(-1, 6)
    return {
        "ids": ids,
        "sha256": [hashlib.sha256(f"bytes of {i}".encode()).hexdigest() for i in idx],
        "split": [SPLIT_OF[i % 4] for i in idx],
        "labels": labels,
        "extras": {"location": [f"site {i % 5}" for i in idx], "closure_method": ["suture"] * len(idx)},
        "embeddings": X,
    }


def rows_for(indices: list[int]) -> dict:
    """make_rows for arbitrary image indices, with their source positions as ``order``."""
    parts = [make_rows(i, i + 1) for i in indices]
    return {
        "ids": sum((r["ids"] for r in parts), []),
        "sha256": sum((r["sha256"] for r in parts), []),
        "split": sum((r["split"] for r in parts), []),
        "labels": np.concatenate([r["labels"] for r in parts]),
        "extras": {k: sum((r["extras"][k] for r in parts), []) for k in parts[0]["extras"]},
        "embeddings": np.concatenate([r["embeddings"] for r in parts]),
        "order": np.array(indices, dtype=np.int64),
    }


def resume(writer, stop: int, batch: int = 3, report=None) -> None:
    """What an embed run does: skip images already cached, append the rest in batches."""
    known = writer.known_hashes()
    todo = [i for i in range(stop) if make_rows(i, i + 1)["sha256"][0] not in known]
    for a in range(0, len(todo), batch):
        idx = todo[a : a + batch]
        writer.append(**rows_for(idx))
        if report is not None:
            report(idx)
