"""Writing a cache: one writer at a time, crash-safe at every moment (README, "The cache file").

``append`` writes each batch to its own part file (``cache.parts``), so a ``kill -9`` loses nothing
``append`` returned for (``fsync=True`` also survives a power cut, at a few ms per batch).
``close`` (or, after a kill, the next writer) writes main + parts into a NEW file that replaces
the main one (``cache.guarded``), then deletes the parts. That file records ``parts_merged_upto``
(its last part), so parts left by a kill between replace and delete are ignored by readers and
removed by the next writer, like a killed writer's temporary files.

The lock is an ``fcntl.flock`` on ``<cache>.lock`` (per machine: not for NFS), whose content
names the holder. The kernel drops a dead process's flock: its lock is taken over (noted in the
run history); a live holder makes a second writer fail with :class:`CacheLockedError`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.guarded import reason, write_main
from woundscore.cache.layout import (
    LAYOUT_VERSION, ROW_SPLITS, Rows, complete_provenance, identity_differences, now, parts_dir,
    provenance_attrs, real_path, strs, this_process,
)
from woundscore.cache.parts import list_parts, remove_parts, write_part
from woundscore.cache.read import SHA_RE, clean_failures, load
from woundscore.cache.reconcile import SourceView, apply_source, reconcile_counts
from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, CacheValueError, CacheWriteError

_EXTRA_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def lock_path(path: str | os.PathLike) -> Path:
    """The writer lock file of ``path``."""
    return Path(str(path) + ".lock")


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``pid 12 on host since ... (command)`` of a lock holder."""
    if not holder:
        return "an unknown process"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')} "
            f"({holder.get('command', '?')})")


class WriterLock:
    """flock on ``<cache>.lock``; the file's content names the holder (one JSON line).

    ``stale`` is the holder a dead process left behind (empty when the last release was clean).
    """

    def __init__(self, cache: Path) -> None:
        self.cache, self.path = cache, lock_path(cache)
        self.fd: int | None = None
        self.stale: dict = {}

    def acquire(self) -> None:
        """Take the lock, creating the cache's folder if needed."""
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheWriteError(self.cache, reason(exc)) from exc
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheWriteError(self.cache, f"cannot create lock file {self.path}: {reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            err = CacheLockedError(
                f"{self.cache}: another writer holds the cache: {describe_holder(holder)}. "
                "Wait for it to finish (reading is safe meanwhile); a lock left by a killed "
                "process is taken over automatically."
            )
            err.holder = holder  # type: ignore[attr-defined]
            raise err from None
        self.stale = _read_holder(fd)  # a clean release empties the file: content means a dead holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({**this_process(), "since": now()}) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def writer_active(path: str | os.PathLike) -> dict | None:
    """The holder of ``path``'s writer lock if a live process holds it, else None.

    Probes with a non-blocking shared lock; a writer starting in that instant may be refused.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd) or {"pid": "?"}
    finally:
        os.close(fd)  # closing also drops the probe's shared lock
    return None


def write_new_cache(path: Path, prov: Mapping[str, Any], rows: Rows, *, order_kind: str,
                    failures: list[dict] = (), runs: list[dict] = (), upto: int | None = None) -> None:
    """Replace ``path`` (lock held) by a cache of ``rows``, then remove the part files it holds.

    ``upto`` is the last part ``rows`` include; by default every part there is superseded (a new
    cache), so its ``parts_merged_upto`` hides them from readers even before they are removed.
    """
    if upto is None:
        upto = max([s for s, _ in list_parts(path)], default=0)
    attrs = {**provenance_attrs(prov), "layout_version": LAYOUT_VERSION, "order_kind": order_kind,
             "parts_merged_upto": upto}
    write_main(path, rows, attrs, list(failures), list(runs))
    remove_parts(path, upto)


class CacheWriter:
    """Append embeddings to a cache, crash-safely, as its only writer.

    Use as a context manager; ``close`` consolidates the batches into the one ``.h5`` file::

        with CacheWriter("emb.h5", encoder.provenance()) as w:
            w.reconcile(SourceView(ids, split, labels, extras, order))  # optional: follow the source
            todo = [s for s in samples if w.known_ids().get(s.image_id) != sha(s)]
            for batch in batches(todo):
                w.append(ids, sha256, split, labels, extras, embeddings, order=order, replace_changed=True)

    Identity is the image id: one row per id (identical bytes under two ids are two rows).
    A cache reached through a symlink is locked and written at its real path.

    Args:
        path: the cache file (``.h5``). Its parent folder is created if needed.
        provenance: encoder_id, encoder_revision, embedding_dim, preprocessing (dict), compute_dtype,
            device, versions, optional notice; label_schema defaults to ``SCHEMA.to_json()``.
        overwrite: start a new cache even if one exists (otherwise rows are appended, after checking
            that the identity keys match).
        fsync: fsync every batch (survives power loss, not only kill -9; costs a few ms per batch).

    Raises:
        CacheLockedError: another live process writes this cache (message names it).
        CacheMismatchError: the existing cache was made with another encoder, revision,
            preprocessing, embedding dim or label schema (both sides shown).
        CacheWriteError: the folder or file cannot be written.
        CacheError: ``path`` exists but is not a cache.
    """

    def __init__(self, path: str | os.PathLike, provenance: Mapping[str, Any], *, overwrite: bool = False,
                 fsync: bool = False) -> None:
        self.path = real_path(path)  # lock and replace the real file, never the link
        self.fsync = fsync
        self._prov = complete_provenance(provenance)
        self.dim = int(self._prov["embedding_dim"])
        self._closed = True
        self._lock = WriterLock(self.path)
        self._lock.acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    def _open(self, overwrite: bool) -> None:
        started = now()
        self._run = {"run_id": uuid.uuid4().hex[:12], "started": started, **this_process(),
                     "compute_dtype": str(self._prov.get("compute_dtype") or ""),
                     "device": str(self._prov.get("device") or ""), "versions": self._prov["versions"]}
        if self._lock.stale:
            self._run["took_over_stale_lock_from"] = self._lock.stale
        self._pending_failures: list[dict] = []
        self._rows_added = self._n_failures = 0
        self._source: SourceView | None = None
        self._drop: set[str] = set()  # cached ids whose current bytes failed: their old row goes
        # Temporary files of a killed writer are never complete: drop them.
        for p in [*parts_dir(self.path).glob("*.tmp"), *self.path.parent.glob(f".{self.path.name}.*.tmp")]:
            p.unlink(missing_ok=True)
        if overwrite or not self.path.exists():
            if not self.path.exists() and list_parts(self.path):
                raise CacheError(
                    f"{self.path}: the cache file is missing but {parts_dir(self.path)} holds batches; "
                    "restore the file or pass overwrite=True (--overwrite) to start again"
                )
            # A new cache: an empty, valid main file first, so that the cache opens from now on.
            prov = {**self._prov, "created": started, "updated": started}
            write_new_cache(self.path, prov, Rows.empty(self.dim), order_kind="source")
        self._resume()

    def _resume(self) -> None:
        """State from the cache on disk; refuses rows from another setup."""
        loaded = load(self.path, with_x=False)
        diff = identity_differences(loaded.provenance, self._prov)
        if diff:
            raise CacheMismatchError(str(self.path), diff)
        for msg in loaded.bad_parts:  # only after a power cut without fsync
            warnings.warn(f"ignoring damaged batch file: {msg}; its rows will be embedded again")
        # Parts a killed writer left between replacing the main file and deleting them are
        # superseded (readers skip them): delete them now, even if this writer adds nothing.
        remove_parts(self.path, int(loaded.attrs.get("parts_merged_upto", 0)))
        rows = loaded.rows
        self._cached = rows  # without X: what reconcile compares with
        self._known = set(rows.sha256.tolist())
        self._id_sha = dict(zip(rows.image_id.tolist(), rows.sha256.tolist()))
        self._next_order = int(rows.order.max()) + 1 if rows.n else 0
        self._seq = loaded.last_seq
        self._dirty = bool(loaded.parts or loaded.bad_parts)
        self._changes: dict[str, int] = {}
        self._order_kind = str(loaded.attrs.get("order_kind", "source")) if rows.n else "source"
        for key in ("compute_dtype", "device"):
            if str(loaded.provenance.get(key) or "") != self._run[key]:
                self._run[f"{key}_differs_from_cache"] = loaded.provenance.get(key)

    def known_hashes(self) -> set[str]:
        """sha256 hex digests already in the cache (including completed batches of a killed run)."""
        return set(self._known)

    def known_ids(self) -> dict[str, str]:
        """image id -> sha256 of every row in the cache (including completed batches of a killed run)."""
        return dict(self._id_sha)

    def reconcile(self, view: SourceView) -> dict[str, int]:
        """Make the cache follow ``view`` (the source, or this rank's share of it) when it is closed:
        rows take the view's split, labels, annotations and order; ids it does not list are removed.

        Returns what that changes in the rows already cached: ``{"relabelled", "moved",
        "annotations", "removed"}`` (rows appended later already agree with the source).
        """
        self._check_open()
        self._source = view
        self._changes = reconcile_counts(self._cached, view)
        return dict(self._changes)

    def append(self, ids: Sequence[str], sha256: Sequence[str], split: Sequence[str], labels: np.ndarray,
               extras: Mapping[str, Sequence[str]], embeddings: np.ndarray,
               order: np.ndarray | Sequence[int] | None = None, *, replace_changed: bool = False) -> int:
        """Append one batch of ``b`` rows; durable (survives kill -9) when it returns.

        Args:
            ids, sha256, split: (b,) str. split in "train"/"val"/"test"/"".
            labels: (b, 6) int8 with 1 / 0 / -1.
            extras: name -> (b,) str raw annotations (missing names are stored as "").
            embeddings: (b, d) float32, finite.
            order: (b,) int64 positions in the source listing (rows are kept sorted by it);
                default: after every row already in the cache, in call order.

            replace_changed: an id already cached with other bytes gets the new row (its image was
                re-embedded); without it such a row raises CacheValueError.

        Returns:
            rows written; rows whose id is already cached with the same sha256 are skipped. Two
            ids with identical bytes are two rows; one id twice in a batch is a CacheValueError.
        """
        self._check_open()
        rows = self._validate(ids, sha256, split, labels, extras, embeddings, order)
        keep, seen = [], set()
        for i, (img, sha) in enumerate(zip(rows.image_id.tolist(), rows.sha256.tolist())):
            if img in seen:
                raise CacheValueError(f"{self.path}: image id {img!r} appears twice in one batch")
            seen.add(img)
            other = self._id_sha.get(img)
            if other == sha:
                continue
            if other is not None and not replace_changed:
                raise CacheValueError(
                    f"{self.path}: image id {img!r} is already in the cache with sha256 {other}, "
                    f"new bytes have {sha} (was the file changed? remove it or use --overwrite)"
                )
            keep.append(i)
        if len(keep) < rows.n:
            rows = rows.take(np.asarray(keep, dtype=np.int64))
        if rows.n == 0 and not self._pending_failures:
            return 0
        if order is None:
            rows.order = self._next_order + np.arange(rows.n, dtype=np.int64)
            if rows.n:
                self._order_kind = "append"
        self._write_batch(rows)
        self._known.update(rows.sha256.tolist())
        self._id_sha.update(zip(rows.image_id.tolist(), rows.sha256.tolist()))
        if rows.n:
            self._next_order = max(self._next_order, int(rows.order.max()) + 1)
        self._rows_added += rows.n
        return rows.n

    def record_failure(self, image_id: str, reason: str) -> None:
        """Note an image that could not be embedded (stored with the next batch or at close)."""
        self._check_open()
        self._pending_failures.append({"image_id": str(image_id), "reason": str(reason)})
        self._n_failures += 1
        if self._id_sha.pop(str(image_id), None) is not None:  # its bytes changed and now fail:
            self._drop.add(str(image_id))  # the old row no longer describes the image

    def close(self) -> None:
        """Consolidate all batches into the single ``.h5`` file (atomically) and release the lock.

        Raises CacheWriteError if that fails; the batches then stay in ``<cache>.parts`` and the
        next writer (or ``consolidate_cache``) consolidates them.
        """
        if self._closed:
            return
        try:
            if self._dirty or self._pending_failures or self._rows_added or self._drop or any(self._changes.values()):
                self._run.update(finished=now(), status="completed", rows_added=self._rows_added,
                                 failures=self._n_failures)
                self._consolidate(self._run)
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the lock without consolidating (the batches stay readable in the parts folder)."""
        if not self._closed:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception as close_exc:  # e.g. the disk is still full
            if exc_type is None:
                raise
            # an error is propagating: never hide it behind this one
            warnings.warn(f"{self.path}: batches kept in {parts_dir(self.path)}: {close_exc}")

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"{self.path}: writer is closed")

    def _validate(self, ids, sha256, split, labels, extras, embeddings, order) -> Rows:
        where = str(self.path)
        # Python lists first, numpy once: this runs per batch and must stay well under a ms.
        ids_l, sha_l, split_l = [str(v) for v in ids], [str(v).lower() for v in sha256], [str(v) for v in split]
        b = len(ids_l)
        for name, arr in (("sha256", sha_l), ("split", split_l)):
            if len(arr) != b:
                raise CacheValueError(f"{where}: append got {b} ids but {len(arr)} {name} values")
        for i, (img, sha, sp) in enumerate(zip(ids_l, sha_l, split_l)):
            if not img:
                raise CacheValueError(f"{where}: row {i}: empty image id")
            if not SHA_RE.match(sha):
                raise CacheValueError(f"{where}: {img}: sha256 {sha!r} is not a 64-digit hex digest")
            if sp not in ROW_SPLITS:
                raise CacheValueError(f"{where}: {img}: split {sp!r} is not one of train/val/test/''")
        Y, X = np.asarray(labels), np.asarray(embeddings)
        if Y.shape != (b, len(LABEL_NAMES)):
            raise CacheValueError(f"{where}: labels must be ({b}, {len(LABEL_NAMES)}), got {Y.shape}")
        ok = (Y == -1) | (Y == 0) | (Y == 1)
        if not ok.all():
            i, j = np.argwhere(~ok)[0]
            raise CacheValueError(f"{where}: {ids_l[i]}: label {LABEL_NAMES[j]} has value {Y[i, j].item()!r}; expected 1, 0 or -1")
        if X.shape != (b, self.dim):
            raise CacheValueError(f"{where}: embeddings must be ({b}, {self.dim}), got {X.shape}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            raise CacheValueError(f"{where}: {ids_l[int(np.flatnonzero(~finite)[0])]}: embedding has NaN or inf values")
        ex = {name: np.full(b, "", dtype="<U1") for name in EXTRA_NAMES}
        for name, values in (extras or {}).items():
            if not _EXTRA_NAME_RE.match(str(name)):
                raise CacheValueError(f"{where}: extra name {name!r} must be letters, digits or _")
            ex[str(name)] = strs(["" if v is None else str(v) for v in values])
            if len(ex[str(name)]) != b:
                raise CacheValueError(f"{where}: extra {name!r} has {len(ex[str(name)])} values for {b} rows")
        order_a = np.zeros(b, np.int64) if order is None else np.asarray(order)
        if order_a.shape != (b,) or not np.issubdtype(order_a.dtype, np.integer):
            raise CacheValueError(f"{where}: order must be ({b},) integers, got {order_a.dtype} {order_a.shape}")
        return Rows(strs(ids_l), strs(sha_l), strs(split_l), Y.astype(np.int8), order_a.astype(np.int64), X, ex)

    def _write_batch(self, rows: Rows) -> None:
        folder = parts_dir(self.path)
        try:
            folder.mkdir(exist_ok=True)
            write_part(folder, self._seq + 1, rows, self._pending_failures, self._run, fsync=self.fsync)
        except OSError as exc:
            raise CacheWriteError(self.path, reason(exc)) from exc
        self._seq += 1
        self._pending_failures = []
        self._dirty = True

    def _consolidate(self, run: dict | None) -> None:
        loaded = load(self.path, with_x=True)
        rows = loaded.rows
        if self._source is not None:  # the source decides labels, splits and which ids stay
            rows = apply_source(rows, self._source, self._drop)
        elif self._drop:
            rows = rows.take(np.flatnonzero(~np.isin(rows.image_id, sorted(self._drop))))
        runs = [r for r in loaded.runs if r.get("run_id") != (run or {}).get("run_id")] + ([dict(run)] if run else [])
        write_new_cache(self.path, {**loaded.provenance, "updated": now()}, rows,
                        order_kind=self._order_kind if rows.n else "source", runs=runs, upto=loaded.last_seq,
                        failures=clean_failures(loaded.failures + self._pending_failures, rows))
        self._pending_failures = []
        self._dirty = False


def consolidate_cache(path: str | os.PathLike) -> None:
    """Fold the batches of an interrupted run into the main file (takes the writer lock)."""
    w = CacheWriter(path, load(path, with_x=False).provenance)
    try:
        if w._dirty:
            w._consolidate(None)
    finally:
        w.abort()
