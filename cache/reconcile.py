"""The cache follows its source: one row per image id, labels and splits as the source says.

A rerun of ``wound-embed run`` hands the writer a :class:`SourceView` (what the source says about
each image id: split, labels, annotations, position). When the writer consolidates, every row
takes its split, labels, annotations and position from the view (the vector depends only on the
pixels, so nothing is re-embedded for that), and rows whose id the source no longer lists are
removed. An id whose bytes changed is re-embedded by the run (its new row replaces the old one).

``source_differences`` is ``wound-cache verify --source``: every way a cache and a source
disagree (ids, bytes, labels, splits), one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from woundscore.cache.layout import Rows, strs
from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.types import CacheValueError


@dataclass(frozen=True)
class SourceView:
    """What a source says about its images, in source order.

    Attributes:
        ids: (n,) image ids (unique).
        split: (n,) "train" / "val" / "test" / "".
        labels: (n, 6) int8, 1 / 0 / -1.
        extras: name -> (n,) raw annotation strings.
        order: (n,) int64 positions in the source listing.
        sha256: (n,) hex digests of the bytes, or None when not read (a run hashes in its workers).
    """

    ids: Sequence[str]
    split: Sequence[str]
    labels: np.ndarray
    extras: Mapping[str, Sequence[str]] = field(default_factory=dict)
    order: np.ndarray | None = None
    sha256: Sequence[str] | None = None

    def __post_init__(self) -> None:
        ids = [str(i) for i in self.ids]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise CacheValueError(f"source lists image id {dup!r} more than once")
        if np.asarray(self.labels).shape != (len(ids), len(LABEL_NAMES)):
            raise CacheValueError(f"source labels must be ({len(ids)}, {len(LABEL_NAMES)}), got {np.shape(self.labels)}")

    def index(self) -> dict[str, int]:
        return {str(img): k for k, img in enumerate(self.ids)}


def _extras_at(rows: Rows, view: SourceView, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Every annotation column the cache or the source has, as the source says ("" if it has none)."""
    names = list(dict.fromkeys([*rows.extras, *view.extras]))
    out = {}
    for name in names:
        col = view.extras.get(name)
        out[name] = strs([str(col[k]) if col is not None else "" for k in pos.tolist()])
    return out


def apply_source(rows: Rows, view: SourceView, drop: set[str] = frozenset()) -> Rows:
    """``rows`` reduced to the ids ``view`` lists (minus ``drop``), with the view's split, labels,
    annotations and order; rows are then sorted by order. ``rows.X`` is kept as is."""
    where = view.index()
    keep = np.array([img in where and img not in drop for img in rows.image_id.tolist()], dtype=bool)
    rows = rows.take(np.flatnonzero(keep))
    pos = np.array([where[img] for img in rows.image_id.tolist()], dtype=np.int64)
    order = pos if view.order is None else np.asarray(view.order, dtype=np.int64)[pos]
    new = Rows(rows.image_id, rows.sha256, strs([str(view.split[k]) for k in pos.tolist()]),
               np.asarray(view.labels, dtype=np.int8)[pos].reshape(-1, len(LABEL_NAMES)), order, rows.X,
               _extras_at(rows, view, pos))
    if new.n > 1 and np.any(np.diff(new.order) < 0):
        new = new.take(np.argsort(new.order, kind="stable"))
    return new


def reconcile_counts(rows: Rows, view: SourceView) -> dict[str, int]:
    """What applying ``view`` to ``rows`` changes: ``{"relabelled", "moved", "annotations", "removed"}``
    (rows whose labels / split / raw annotations differ from the source; ids the source no longer has)."""
    where = view.index()
    counts = {"relabelled": 0, "moved": 0, "annotations": 0, "removed": 0}
    labels = np.asarray(view.labels)
    for i, img in enumerate(rows.image_id.tolist()):
        k = where.get(img)
        if k is None:
            counts["removed"] += 1
            continue
        counts["relabelled"] += int(not np.array_equal(rows.labels[i], labels[k]))
        counts["moved"] += int(str(rows.split[i]) != str(view.split[k]))
        counts["annotations"] += int(any(str(rows.extras[n][i]) != (str(col[k]) if (col := view.extras.get(n)) is not None else "")
                                         for n in set(rows.extras) | set(view.extras) if n in rows.extras))
    return counts


def source_differences(rows: Rows, view: SourceView, *, where: str = "cache",
                       failed: Mapping[str, str] | None = None) -> list[str]:
    """Every difference between a cache's rows and its source, one line each ([] when they agree).

    ``view.sha256`` must be given (the bytes are compared). Ids the source lists but the cache has
    no row for are differences too (``failed``: the cache's failure list, id -> reason, quoted)."""
    if view.sha256 is None:
        raise CacheValueError("source_differences needs the source's sha256 of every image")
    index = view.index()
    problems: list[str] = []
    have = set()
    for i, img in enumerate(rows.image_id.tolist()):
        have.add(img)
        k = index.get(img)
        if k is None:
            problems.append(f"{where}: {img}: not in the source (removed from it since it was embedded)")
            continue
        if str(rows.sha256[i]) != str(view.sha256[k]):
            problems.append(f"{where}: {img}: bytes differ (cache sha256 {rows.sha256[i]}, source {view.sha256[k]})")
        if str(rows.split[i]) != str(view.split[k]):
            problems.append(f"{where}: {img}: split differs (cache {str(rows.split[i])!r}, source {str(view.split[k])!r})")
        a, b = rows.labels[i], np.asarray(view.labels[k])
        for j in np.flatnonzero(a != b).tolist():
            problems.append(f"{where}: {img}: label {LABEL_NAMES[j]} differs (cache {int(a[j])}, source {int(b[j])})")
    for img in view.ids:
        if str(img) not in have:
            why = (failed or {}).get(str(img))
            problems.append(f"{where}: {img}: in the source but has no row in the cache"
                            + (f" (recorded as failed: {why})" if why else ""))
    return problems
