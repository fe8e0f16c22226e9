"""Merging per-rank shards into one cache (``wound-cache merge``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from woundscore.cache.layout import Rows, concat, identity_differences, now, real_path, this_process
from woundscore.cache.read import Loaded, clean_failures, load
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, CacheValueError
from woundscore.cache.writer import WriterLock, describe_holder, write_new_cache, writer_active


def _load_shards(paths: list[Path], out: Path) -> list[Loaded]:
    """Every shard read whole; CacheError if one is ``out``, still being written or from another setup."""
    for p in paths:
        if p.resolve() == out.resolve():
            raise CacheError(f"{out}: the output is also one of the shards")
        holder = writer_active(real_path(p))
        if holder is not None:
            raise CacheLockedError(f"{p}: shard is still being written by {describe_holder(holder)}")
    loaded = [load(p, with_x=True) for p in paths]
    for p, ld in zip(paths[1:], loaded[1:]):
        diff = identity_differences(loaded[0].provenance, ld.provenance)
        if diff:
            raise CacheMismatchError(f"{p} (compared with {paths[0]})", diff)
    return loaded


def _one_row_per_id(rows: Rows, shard_of: np.ndarray, paths: list[Path]) -> Rows:
    """Keep one row per image id; CacheValueError naming every id whose shards disagree about the
    bytes, the split, the labels or the annotations. Agreeing copies may differ in the last bits of
    the vector (another batch): the copy kept is the one with the smallest vector bytes, so that
    the result does not depend on the order of the shards."""
    groups: dict[str, list[int]] = {}
    for i, img in enumerate(rows.image_id.tolist()):
        groups.setdefault(img, []).append(i)
    keep, bad = [], []
    for img, idx in groups.items():
        if len(idx) > 1:
            first = idx[0]
            what = [name for name, same in (
                ("sha256", all(rows.sha256[i] == rows.sha256[first] for i in idx)),
                ("split", all(rows.split[i] == rows.split[first] for i in idx)),
                ("labels", all(np.array_equal(rows.labels[i], rows.labels[first]) for i in idx)),
                ("annotations", all(rows.extras[k][i] == rows.extras[k][first] for k in rows.extras for i in idx)),
            ) if not same]
            if what:
                where = ", ".join(sorted({str(paths[shard_of[i]]) for i in idx}))
                bad.append(f"  {img}: {' and '.join(what)} differ ({where})")
                continue
        keep.append(min(idx, key=lambda i: (int(rows.order[i]), rows.X[i].tobytes())))
    if bad:
        raise CacheValueError("\n".join([f"shards disagree about {len(bad)} image id(s); "
                                          "re-embed them from one source:", *bad]))
    return rows.take(np.asarray(sorted(keep), dtype=np.int64))


def merge_caches(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, int]:
    """Join per-rank shards into one cache ``out`` (written atomically); see ``wound-cache merge --help``.

    Shards with different identity keys raise CacheMismatchError; shards that disagree about an
    image id (bytes, split, labels or annotations) raise CacheValueError naming the ids. The
    result never depends on the order of ``parts`` (they are taken sorted by path). If every
    shard's rows carry source positions (``order_kind == "source"``), rows are sorted by
    ``order`` (ties: image id), so a sharded run merged equals a single-process run; otherwise by
    image id. Failures and run histories are joined, plus one "merged" run record.

    Returns ``{"shards", "rows", "duplicates"}`` (duplicates: rows of an id another shard also had).
    """
    paths, out = sorted({real_path(p) for p in parts}, key=str), real_path(out)
    if not paths:
        raise CacheError("merge needs at least one shard")
    loaded = _load_shards(paths, out)
    if out.exists() and not overwrite:
        raise CacheError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    by_source = all(ld.attrs.get("order_kind", "source") == "source" for ld in loaded)
    rows = concat([ld.rows for ld in loaded], np.concatenate([ld.rows.X for ld in loaded]))
    shard_of = np.repeat(np.arange(len(loaded)), [ld.rows.n for ld in loaded])
    rows = _one_row_per_id(rows, shard_of, paths)
    key = np.lexsort((rows.image_id, rows.order)) if by_source else np.argsort(rows.image_id, kind="stable")
    rows = rows.take(key)
    if not by_source:  # renumbered so that the file stays sorted by order
        rows.order = np.arange(rows.n, dtype=np.int64)
    t = now()
    runs = sorted(({**r, "shard": str(p)} for p, ld in zip(paths, loaded) for r in ld.runs),
                  key=lambda r: (str(r.get("started", "")), str(r.get("run_id", ""))))
    runs.append({"run_id": uuid.uuid4().hex[:12], "status": "merged", "started": t, "finished": t,
                 **this_process(), "shards": [str(p) for p in paths], "rows_added": int(rows.n)})
    prov = {**loaded[0].provenance, "created": min(str(ld.provenance.get("created") or t) for ld in loaded),
            "updated": t}
    failures = sorted((x for ld in loaded for x in ld.failures), key=lambda x: (x["image_id"], x["reason"]))
    lock = WriterLock(out)
    lock.acquire()
    try:
        write_new_cache(out, prov, rows, order_kind="source" if by_source else "append",
                        failures=clean_failures(failures, rows), runs=runs)
    finally:
        lock.release()
    return {"shards": len(paths), "rows": int(rows.n), "duplicates": sum(ld.rows.n for ld in loaded) - rows.n}
