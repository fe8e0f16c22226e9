"""Leakage audit: the same photo (or a re-saved / resized copy of it) in two splits.

SurgWound is crowd-sourced: one wound photographed twice, or one photo saved under two names, can
sit in train and in test, and then a test score measures memory, not skill. The audit lists

* ``exact``: pairs of rows in different splits whose image bytes are identical (same sha256);
* ``near``: pairs in different splits whose embeddings have cosine >= ``near_cutoff`` (and whose
  bytes differ: a re-encoded JPEG, a resized or slightly cropped copy);
* ``conflicts``: pairs in the SAME split that are exact or near duplicates but whose labels
  disagree (a label annotated on both rows with different values).

Pairs are ``(id_a, split_a, id_b, split_b, cosine)``; across splits the earlier split of
train < val < test comes first, so the test id of a leaked pair is always ``id_b``. Only rows of
the dataset's splits take part (unlabelled rows with split "" cannot leak into a metric).

Cost: cosines are computed block by block (each block's similarity matrix is at most
``_BLOCK_FLOATS`` floats, 64 MB), so memory stays bounded; time is O(n^2 d), about a second for
686 x 1152 and minutes for 100 000 rows on a CPU.

The cut-off ``NEAR_DUPLICATE_COSINE`` (0.98) was set on the tiny random test encoder only, see
the README ("Leakage audit"): it must be re-checked on real MedSigLIP embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from woundscore.cache.schema import SPLITS
from woundscore.cache.types import EmbeddingSet

#: Embedding cosine at or above which two different files count as the same photo.
NEAR_DUPLICATE_COSINE = 0.98
#: Pairs kept per list (the counts and ``leaked_test_ids`` always cover every pair).
MAX_PAIRS = 10_000
_BLOCK_FLOATS = 1 << 24

Pair = tuple[str, str, str, str, float]


@dataclass
class LeakageAudit:
    """Duplicate pairs of a cache; see the module docstring. ``n_*`` count every pair found even
    when a list was cut at ``MAX_PAIRS``; ``test_rows`` is the number of test rows audited."""

    near_cutoff: float
    exact: list[Pair] = field(default_factory=list)
    near: list[Pair] = field(default_factory=list)
    conflicts: list[Pair] = field(default_factory=list)
    n_exact: int = 0
    n_near: int = 0
    n_conflicts: int = 0
    test_rows: int = 0
    _leaked: set[str] = field(default_factory=set)

    def leaked_test_ids(self) -> set[str]:
        """Test ids with an exact or near duplicate in train or val."""
        return set(self._leaked)

    @property
    def clean(self) -> bool:
        return not (self.n_exact or self.n_near or self.n_conflicts)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict: cut-off, counts, the pair lists (as dicts) and the leaked test ids."""
        def rows(pairs: list[Pair]) -> list[dict[str, Any]]:
            return [{"id_a": a, "split_a": sa, "id_b": b, "split_b": sb, "cosine": round(float(c), 6)}
                    for a, sa, b, sb, c in pairs]

        return {"near_cutoff": self.near_cutoff,
                "counts": {"exact": self.n_exact, "near": self.n_near, "conflicts": self.n_conflicts,
                           "leaked_test": len(self._leaked), "test_rows": self.test_rows},
                "exact": rows(self.exact), "near": rows(self.near), "conflicts": rows(self.conflicts),
                "leaked_test_ids": sorted(self._leaked)}

    def summary_lines(self, max_pairs: int = 20) -> list[str]:
        """Human-readable lines: counts, then up to ``max_pairs`` pairs of each kind."""
        return format_leakage(self.to_json(), max_pairs=max_pairs)


def format_leakage(doc: dict[str, Any], *, max_pairs: int = 20) -> list[str]:
    """The lines of a ``LeakageAudit.to_json()`` dict (also what ``wound-cache info`` prints)."""
    counts, cut = doc["counts"], doc["near_cutoff"]
    if not (counts["exact"] or counts["near"] or counts["conflicts"]):
        return [f"leakage: no duplicate images across splits (same bytes, or embedding cosine >= {cut})"]
    lines = [f"leakage: {counts['exact']} exact-duplicate pair(s) and {counts['near']} near-duplicate pair(s) "
             f"(cosine >= {cut}) across splits; {counts['leaked_test']} of {counts['test_rows']} test images "
             "have a duplicate in train or val"]
    if counts["conflicts"]:
        lines.append(f"  {counts['conflicts']} duplicate pair(s) within one split have conflicting labels")
    for kind, sign in (("exact", "="), ("near", "~"), ("conflicts", "vs")):
        for p in doc[kind][:max_pairs]:
            lines.append(f"  {kind}: {p['id_a']} ({p['split_a']}) {sign} {p['id_b']} ({p['split_b']}), "
                         f"cosine {p['cosine']:.4f}")
        if counts[kind] > max_pairs:
            lines.append(f"  ... {counts[kind] - max_pairs} more {kind} pair(s) (use --json)")
    return lines


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """(n, d) float32 rows scaled to unit length (all-zero rows stay zero: cosine 0 with all)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _labels_conflict(Y: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(k,) bool: rows i[k] and j[k] carry a label annotated on both with different values."""
    a, b = Y[i], Y[j]
    return ((a >= 0) & (b >= 0) & (a != b)).any(axis=1)


def audit_leakage(es: EmbeddingSet, *, near_cutoff: float = NEAR_DUPLICATE_COSINE) -> LeakageAudit:
    """Exact and near duplicates across splits, and conflicting duplicates within a split.

    ``es.X`` (n, d) embeddings, ``es.sha256`` / ``es.split`` (n,) str, ``es.Y`` (n, 6) int8.
    Every pair (i < j) is visited once, by blocks of rows (bounded memory).
    """
    audit = LeakageAudit(near_cutoff=float(near_cutoff))
    rank = {s: k for k, s in enumerate(SPLITS)}
    keep = np.flatnonzero(np.isin(es.split, SPLITS))
    ids, split = es.ids[keep].astype(str), es.split[keep].astype(str)
    sha, Y = es.sha256[keep].astype(str), np.asarray(es.Y)[keep]
    split_rank = np.array([rank[s] for s in split.tolist()], dtype=np.int64)
    audit.test_rows = int((split == "test").sum())
    n = len(keep)
    if n < 2:
        return audit
    U = _unit_rows(es.X[keep])
    _, sha_code = np.unique(sha, return_inverse=True)
    block = max(1, _BLOCK_FLOATS // max(n, 1))
    for start in range(0, n - 1, block):
        stop = min(n - 1, start + block)
        S = U[start:stop] @ U[start + 1 :].T  # (b, n-start-1): row r vs rows after it
        rows_i = np.arange(start, stop)[:, None]
        cols_j = np.arange(start + 1, n)[None, :]
        upper = cols_j > rows_i
        same = sha_code[rows_i] == sha_code[cols_j]
        hit = upper & (same | (S >= near_cutoff))
        ii, jj = np.nonzero(hit)
        if not len(ii):
            continue
        i, j = ii + start, jj + start + 1
        cos = S[ii, jj]
        exact = sha_code[i] == sha_code[j]
        cross = split_rank[i] != split_rank[j]
        _collect(audit, ids, split, split_rank, i[cross], j[cross], cos[cross], exact[cross])
        within = ~cross & _labels_conflict(Y, i, j)
        for a, b, c in zip(i[within].tolist(), j[within].tolist(), cos[within].tolist()):
            audit.n_conflicts += 1
            if len(audit.conflicts) < MAX_PAIRS:
                audit.conflicts.append((str(ids[a]), str(split[a]), str(ids[b]), str(split[b]), float(c)))
    return audit


def _collect(audit: LeakageAudit, ids: np.ndarray, split: np.ndarray, split_rank: np.ndarray,
             i: np.ndarray, j: np.ndarray, cos: np.ndarray, exact: np.ndarray) -> None:
    """Add cross-split pairs (earlier split first) to ``audit``."""
    swap = split_rank[i] > split_rank[j]
    a, b = np.where(swap, j, i), np.where(swap, i, j)
    for x, y, c, ex in zip(a.tolist(), b.tolist(), cos.tolist(), exact.tolist()):
        pair = (str(ids[x]), str(split[x]), str(ids[y]), str(split[y]), float(c))
        if ex:
            audit.n_exact += 1
            if len(audit.exact) < MAX_PAIRS:
                audit.exact.append(pair)
        else:
            audit.n_near += 1
            if len(audit.near) < MAX_PAIRS:
                audit.near.append(pair)
        if split[y] == "test":
            audit._leaked.add(str(ids[y]))
