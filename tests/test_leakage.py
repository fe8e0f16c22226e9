"""The leakage audit (cache.leakage) against a brute-force pair loop written independently here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from woundscore.cache import leakage
from woundscore.cache.leakage import NEAR_DUPLICATE_COSINE, audit_leakage
from woundscore.cache.types import EmbeddingSet

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _reference(es: EmbeddingSet, cutoff: float):
    """Every pair i < j, one at a time, in plain Python."""
    exact, near, conflicts = set(), set(), set()
    n = len(es)
    for i in range(n):
        for j in range(i + 1, n):
            si, sj = str(es.split[i]), str(es.split[j])
            if si not in SPLIT_ORDER or sj not in SPLIT_ORDER:
                continue
            a, b = es.X[i].astype(float), es.X[j].astype(float)
            na, nb = math.sqrt(a @ a), math.sqrt(b @ b)
            cos = float(a @ b / (na * nb)) if na and nb else 0.0
            same = es.sha256[i] == es.sha256[j]
            if not same and cos < cutoff:
                continue
            if si != sj:
                x, y = (i, j) if SPLIT_ORDER[si] < SPLIT_ORDER[sj] else (j, i)
                (exact if same else near).add((str(es.ids[x]), str(es.ids[y])))
            elif any(es.Y[i, k] >= 0 and es.Y[j, k] >= 0 and es.Y[i, k] != es.Y[j, k] for k in range(6)):
                conflicts.add((str(es.ids[i]), str(es.ids[j])))
    return exact, near, conflicts


def _set(n: int = 120, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 16)).astype(np.float32)
    sha = np.array([f"{i:064x}" for i in range(n)])
    split = np.array(["train", "val", "test", ""])[rng.integers(0, 4, n)]
    Y = rng.integers(-1, 2, size=(n, 6)).astype(np.int8)
    for k in range(12):  # exact copies (same bytes, same vector)
        a, b = rng.choice(n, 2, replace=False)
        sha[b], X[b] = sha[a], X[a]
    for k in range(12):  # near copies: a little noise
        a, b = rng.choice(n, 2, replace=False)
        X[b] = X[a] + rng.normal(scale=0.02, size=16)
    X[3] = 0.0  # a zero vector must not crash nor match
    return EmbeddingSet(ids=np.array([f"img{i}.jpg" for i in range(n)]), X=X, Y=Y, split=split, sha256=sha)


@pytest.mark.parametrize("block", [1 << 24, 7])
def test_audit_equals_brute_force_pairs(monkeypatch, block) -> None:
    """Catches: a wrong block offset (pairs missed or doubled at block edges; run with 7-float
    blocks), exact pairs counted as near, same-split pairs reported as leaks, a wrong pair order."""
    monkeypatch.setattr(leakage, "_BLOCK_FLOATS", block)
    es = _set()
    audit = audit_leakage(es)
    exact, near, conflicts = _reference(es, NEAR_DUPLICATE_COSINE)
    assert exact and near and conflicts  # the fixture has each kind
    assert {(a, b) for a, _, b, _, _ in audit.exact} == exact
    assert {(a, b) for a, _, b, _, _ in audit.near} == near
    assert {(a, b) for a, _, b, _, _ in audit.conflicts} == conflicts
    assert (audit.n_exact, audit.n_near, audit.n_conflicts) == (len(exact), len(near), len(conflicts))
    test_ids = {str(i) for i, s in zip(es.ids, es.split) if s == "test"}
    want = {b for a, b in exact | near if b in test_ids}
    assert audit.leaked_test_ids() == want and want
    for a, sa, b, sb, _ in audit.exact + audit.near:
        assert SPLIT_ORDER[sa] < SPLIT_ORDER[sb]


def test_cutoff_is_honoured_and_json_is_strict() -> None:
    """Catches: the cut-off ignored (``>`` vs ``>=`` is pinned by a pair at exactly the cut-off)."""
    X = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)  # cos(0,1) = 0.6
    es = EmbeddingSet(ids=np.array(["a", "b", "c"]), X=X, Y=np.full((3, 6), -1, np.int8),
                      split=np.array(["train", "test", "test"]), sha256=np.array(["1" * 64, "2" * 64, "3" * 64]))
    assert [p[:4] for p in audit_leakage(es, near_cutoff=0.6).near] == [("a", "train", "b", "test"), ("a", "train", "c", "test")]
    assert [p[2] for p in audit_leakage(es, near_cutoff=0.61).near] == ["c"]
    doc = json.loads(json.dumps(audit_leakage(es).to_json(), allow_nan=False))
    assert doc["leaked_test_ids"] == ["c"] and doc["counts"]["near"] == 1
    assert any("c (test)" in line for line in audit_leakage(es).summary_lines())
