"""Merging per-rank shards into one cache (``wound-cache merge``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from woundscore.cache.layout import concat, identity_differences, now, sorted_unique, this_process
from woundscore.cache.read import Loaded, clean_failures, load
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, CacheValueError
from woundscore.cache.writer import WriterLock, describe_holder, write_new_cache, writer_active


def _load_shards(paths: list[Path], out: Path) -> list[Loaded]:
    """Every shard read whole; CacheError if one is ``out``, still being written or from another setup."""
    for p in paths:
        if p.resolve() == out.resolve():
            raise CacheError(f"{out}: the output is also one of the shards")
        holder = writer_active(p)
        if holder is not None:
            raise CacheLockedError(f"{p}: shard is still being written by {describe_holder(holder)}")
    loaded = [load(p, with_x=True) for p in paths]
    for p, ld in zip(paths[1:], loaded[1:]):
        diff = identity_differences(loaded[0].provenance, ld.provenance)
        if diff:
            raise CacheMismatchError(f"{p} (compared with {paths[0]})", diff)
    return loaded


def merge_caches(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, int]:
    """Join per-rank shards into one cache ``out`` (written atomically); see ``wound-cache merge --help``.

    Shards with different identity keys raise CacheMismatchError. If every shard's rows carry
    source positions (``order_kind == "source"``), rows are sorted by ``order`` (ties: shard order,
    then row order), so a sharded run merged equals a single-process run; otherwise shards are
    concatenated. Failures and run histories are joined, plus one "merged" run record.

    Returns ``{"shards", "rows", "duplicates"}``.
    """
    paths, out = [Path(p) for p in parts], Path(out)
    if not paths:
        raise CacheError("merge needs at least one shard")
    loaded = _load_shards(paths, out)
    if out.exists() and not overwrite:
        raise CacheError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    by_source = all(ld.attrs.get("order_kind", "source") == "source" for ld in loaded)
    rows = concat([ld.rows for ld in loaded], np.concatenate([ld.rows.X for ld in loaded]))
    if by_source:
        rows = rows.take(np.argsort(rows.order, kind="stable"))
    else:  # concatenation order, renumbered so that the file stays sorted by order
        rows.order = np.arange(rows.n, dtype=np.int64)
    rows = sorted_unique(rows, first_new=0)
    id_sha: dict[str, str] = {}
    for img, sha in zip(rows.image_id.tolist(), rows.sha256.tolist()):
        if id_sha.setdefault(img, sha) != sha:
            raise CacheValueError(f"image id {img!r} has different sha256 in two shards ({id_sha[img]} vs {sha})")
    t = now()
    runs = [{**r, "shard": str(p)} for p, ld in zip(paths, loaded) for r in ld.runs]
    runs.append({"run_id": uuid.uuid4().hex[:12], "status": "merged", "started": t, "finished": t,
                 **this_process(), "shards": [str(p) for p in paths], "rows_added": int(rows.n)})
    prov = {**loaded[0].provenance, "created": min(str(ld.provenance.get("created") or t) for ld in loaded),
            "updated": t}
    lock = WriterLock(out)
    lock.acquire()
    try:
        write_new_cache(out, prov, rows, order_kind="source" if by_source else "append",
                        failures=clean_failures([x for ld in loaded for x in ld.failures], rows), runs=runs)
    finally:
        lock.release()
    return {"shards": len(paths), "rows": int(rows.n), "duplicates": sum(ld.rows.n for ld in loaded) - rows.n}
