"""The self-describing HDF5 embedding cache: write (crash-safe, one writer), read, verify, merge.

File layout (``LAYOUT_VERSION`` 1). Row ``i`` of every root dataset describes the same image.

=====================  ==============  ===================================================
path                   shape, dtype    content
=====================  ==============  ===================================================
``/embeddings``        (n, d) float32  pooled image features; chunked (~1 MiB chunks of
                                       whole rows), ``maxshape=(None, d)``, uncompressed
``/image_id``          (n,) utf-8 str  image name as in the source, e.g. ``"76.jpg"``
``/sha256``            (n,) utf-8 str  hex digest of the image bytes (resume key)
``/split``             (n,) utf-8 str  ``"train"`` / ``"val"`` / ``"test"`` / ``""``
``/labels``            (n, 6) int8     1 / 0 / -1 (missing); columns in attr ``columns``
``/order``             (n,) int64      row's position in the source listing (sort key)
``/extras/<name>``     (n,) utf-8 str  raw annotations, one per ``cache.schema.EXTRA_NAMES``
                                       ("" when unsure or absent)
``/failures/image_id`` (m,) utf-8 str  images that could not be embedded ...
``/failures/reason``   (m,) utf-8 str  ... and why (file and reason)
``/runs``              (k,) utf-8 str  one JSON object per writer run (pid, host, command,
                                       dtype, device, versions, rows added, status)
=====================  ==============  ===================================================

The per-row string columns are fixed-length UTF-8 (length = the longest value, NUL padded; they
read far faster than variable-length strings); ``failures`` and ``runs`` are variable-length.
``Dataset.asstr()`` decodes both.

File attributes: ``layout_version`` (int), ``encoder_id``, ``encoder_revision`` ("" when
unknown), ``embedding_dim`` (int), ``preprocessing`` (JSON), ``compute_dtype``, ``device``,
``label_schema`` (``SCHEMA.to_json()``), ``versions`` (JSON of package versions), ``created``,
``updated`` (ISO 8601 UTC), ``order_kind`` (``"source"`` when every row's ``order`` came from the
caller, else ``"append"``), ``parts_merged_upto`` (int, see below), ``provenance_extra`` (JSON of
any other provenance keys) and, optionally, ``notice`` (e.g. a demo banner). Rows of a
consolidated file are sorted by ``order`` (ties keep append order).

Reading it without this package::

    import h5py, json
    with h5py.File("embeddings.h5", "r") as f:
        X = f["embeddings"][()]                        # (n, 1152) float32
        ids = f["image_id"].asstr()[()]                # (n,) object array of str
        Y = f["labels"][()]                            # (n, 6) int8, -1 = missing
        names = list(f["labels"].attrs["columns"])     # the six label names, in order
        split = f["split"].asstr()[()]
        location = f["extras/location"].asstr()[()]
        prep = json.loads(f.attrs["preprocessing"])    # resize / mean / std of the encoder
        print(f.attrs["encoder_id"], f.attrs["encoder_revision"], X.shape, prep)

Crash safety. h5py gives no crash consistency, so the main file is never modified in place:

* ``CacheWriter.append`` writes each batch to its own part file ``<cache>.parts/<seq>.part``
  (magic, a JSON header with the strings, then raw little-endian X / labels / order), under a
  temporary name that is then ``os.replace``-d into place. Rename is atomic, so a part either
  exists whole or not at all: a ``kill -9`` at any moment loses nothing that ``append`` returned
  for (pass ``fsync=True`` to also survive a power cut, at a few ms per batch).
* Readers see the main file plus every complete part (rows deduplicated by sha256, sorted by
  ``order``), so an unfinished run's batches are readable at once and a rerun skips them.
* ``close`` (or, after a kill, the next writer's ``close``) writes main + parts into a NEW file under a
  temporary name, fsyncs it and ``os.replace``-s it over the main file; only then are the parts
  deleted. The new file records ``parts_merged_upto`` = the last part it contains, so leftover
  parts from a kill between replace and delete are ignored by readers and removed by the next
  consolidation. Temporary files of a killed writer are removed by the next writer.
* A failed write (disk full, unwritable folder) removes its temporary file and raises
  :class:`CacheWriteError`; the main file and the completed parts are untouched.

Locking. One writer at a time: ``fcntl.flock`` on ``<cache>.lock``, which holds a JSON line naming
the holder (pid, host, command, since). The kernel releases a flock when its process dies, so a
lock left by a killed writer is taken over (and noted in the run history); a live holder makes a
second writer fail with :class:`cache.types.CacheLockedError` naming it. Readers take no lock.
(flock is per machine: do not share one cache between writers on several hosts over NFS.)

Part files are an internal, transient format: use ``read_cache`` (or let a writer consolidate,
e.g. ``consolidate_cache``) before reading a cache of an interrupted run with plain h5py.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import io
import json
import os
import platform
import re
import socket
import struct
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES, SCHEMA, LabelSchema
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, EmbeddingSet

LAYOUT_VERSION = 1
#: Provenance keys that must be equal for rows to share one cache.
IDENTITY_KEYS: tuple[str, ...] = (
    "encoder_id",
    "encoder_revision",
    "embedding_dim",
    "preprocessing",
    "label_schema",
)
#: File attributes every cache has (checked by ``verify_cache``).
REQUIRED_ATTRS: tuple[str, ...] = (
    "layout_version",
    "encoder_id",
    "encoder_revision",
    "embedding_dim",
    "preprocessing",
    "compute_dtype",
    "device",
    "label_schema",
    "versions",
    "created",
    "updated",
    "order_kind",
    "parts_merged_upto",
)
ROW_DATASETS: tuple[str, ...] = ("embeddings", "image_id", "sha256", "split", "labels", "order")
SPLITS: tuple[str, ...] = ("train", "val", "test", "")

_STR = h5py.string_dtype("utf-8")
_CHUNK_BYTES = 1 << 20  # 1 MiB chunks of whole rows: fit h5py's default chunk cache, full reads stay fast
_PART_MAGIC = b"WSPART1\n"
_PART_RE = re.compile(r"^(\d{9})\.part$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


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


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def parts_dir(path: str | os.PathLike) -> Path:
    """Folder of the not yet consolidated batches of ``path``."""
    return Path(str(path) + ".parts")


def lock_path(path: str | os.PathLike) -> Path:
    """The writer lock file of ``path``."""
    return Path(str(path) + ".lock")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} [errno {errno.errorcode.get(exc.errno, exc.errno)}]"
    return f"{type(exc).__name__}: {exc}"


def _canon(value: Any) -> Any:
    """JSON round trip: tuples become lists, keys sorted, so equal specs compare equal."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.loads(json.dumps(value, sort_keys=True))


def _default_versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }
    try:
        from importlib.metadata import version

        versions["woundscore"] = version("woundscore")
    except Exception:  # not installed (running from a checkout)
        pass
    return versions


def _strs(values: Sequence[Any]) -> np.ndarray:
    """(n,) numpy unicode array."""
    if not len(values):
        return np.zeros(0, dtype="<U1")
    return np.asarray(values, dtype=str)


def _encode_strs(values: np.ndarray) -> tuple[np.ndarray, Any]:
    """Unicode array -> fixed-length utf-8 bytes + the h5py dtype that labels them utf-8.

    Fixed-length strings read ~50x faster than variable-length ones with h5py, and
    ``Dataset.asstr()`` decodes both the same way for plain-h5py readers.
    """
    values = np.asarray(values, dtype=str)
    try:
        raw = values.astype("S")  # vectorised; ASCII only (ids, hashes, splits nearly always are)
    except UnicodeEncodeError:
        raw = np.char.encode(values, "utf-8")
    dtype = h5py.string_dtype("utf-8", max(1, raw.dtype.itemsize))
    return raw.astype(dtype), dtype  # the array must carry h5py's utf-8 tag, or HDF5 2 cannot convert


def _to_str_array(values: np.ndarray) -> np.ndarray:
    """Object array of str -> numpy unicode array (what EmbeddingSet hands on)."""
    return np.asarray(values, dtype=str) if len(values) else np.zeros(0, dtype="<U1")


# --------------------------------------------------------------------------- rows


@dataclass
class _Rows:
    """Column arrays of some rows; strings are numpy unicode arrays."""

    image_id: np.ndarray
    sha256: np.ndarray
    split: np.ndarray
    labels: np.ndarray  # (n, 6) int8
    order: np.ndarray  # (n,) int64
    X: np.ndarray | None  # (n, d) float32, None when embeddings were not read
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.image_id)

    @staticmethod
    def empty(dim: int) -> "_Rows":
        return _Rows(
            _strs([]), _strs([]), _strs([]), np.zeros((0, len(LABEL_NAMES)), np.int8),
            np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
            {name: _strs([]) for name in EXTRA_NAMES},
        )

    def take(self, idx: np.ndarray) -> "_Rows":
        return _Rows(
            self.image_id[idx], self.sha256[idx], self.split[idx], self.labels[idx],
            self.order[idx], None if self.X is None else self.X[idx],
            {k: v[idx] for k, v in self.extras.items()},
        )


def _concat(chunks: list[_Rows], dim: int, *, X: np.ndarray | None = None) -> _Rows:
    """Concatenate rows; extras missing from a chunk are filled with ''. ``X`` may be preallocated."""
    if not chunks:
        return _Rows.empty(dim)
    names = list(EXTRA_NAMES) + sorted({k for c in chunks for k in c.extras} - set(EXTRA_NAMES))
    extras = {
        k: np.concatenate([c.extras.get(k, np.full(c.n, "", dtype="<U1")) for c in chunks])
        for k in names
    }
    if X is None and all(c.X is not None for c in chunks):
        X = np.concatenate([c.X for c in chunks]) if len(chunks) > 1 else chunks[0].X
    return _Rows(
        np.concatenate([c.image_id for c in chunks]),
        np.concatenate([c.sha256 for c in chunks]),
        np.concatenate([c.split for c in chunks]),
        np.concatenate([c.labels for c in chunks]),
        np.concatenate([c.order for c in chunks]),
        X,
        extras,
    )


def _sorted_unique(rows: _Rows, *, first_new: int = 0) -> _Rows:
    """Drop rows (from index ``first_new`` on) whose sha256 occurred before; stable-sort by order."""
    if first_new < rows.n:
        shas = rows.sha256.tolist()
        if len(set(shas)) < len(shas):  # rare: only then find which rows repeat an earlier hash
            seen = set(shas[:first_new])
            keep = np.ones(rows.n, bool)
            for i in range(first_new, rows.n):
                if shas[i] in seen:
                    keep[i] = False
                seen.add(shas[i])
            if not keep.all():
                rows = rows.take(np.flatnonzero(keep))
    if rows.n > 1 and np.any(np.diff(rows.order) < 0):
        rows = rows.take(np.argsort(rows.order, kind="stable"))
    return rows


# --------------------------------------------------------------------------- part files


@dataclass
class _Part:
    seq: int
    rows: _Rows
    failures: list[dict]
    run: dict


def _write_part(folder: Path, seq: int, rows: _Rows, failures: list[dict], run: dict, *, fsync: bool) -> Path:
    """One batch, atomically: temp name -> (fsync) -> os.replace."""
    dim = 0 if rows.X is None else int(rows.X.shape[1])
    header = json.dumps(
        {
            "seq": seq,
            "n": rows.n,
            "dim": dim,
            "image_id": rows.image_id.tolist(),
            "sha256": rows.sha256.tolist(),
            "split": rows.split.tolist(),
            "extras": {k: v.tolist() for k, v in rows.extras.items()},
            "failures": failures,
            "run": run,
        }
    ).encode("utf-8")
    final = folder / f"{seq:09d}.part"
    tmp = folder / f"{seq:09d}.part.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(_PART_MAGIC)
            fh.write(struct.pack("<Q", len(header)))
            fh.write(header)
            if rows.n:  # raw little-endian columns after the header: X, labels, order
                for col, dt in ((rows.X, "<f4"), (rows.labels, "i1"), (rows.order, "<i8")):
                    fh.write(memoryview(np.ascontiguousarray(col, dtype=dt)).cast("B"))
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _read_part(p: Path) -> _Part:
    """Parse one part file; CacheError if it is not a whole part (never pickled, plain JSON + floats)."""
    data = p.read_bytes()
    head = len(_PART_MAGIC) + 8
    if len(data) < head or not data.startswith(_PART_MAGIC):
        raise CacheError(f"{p}: not a cache part file (bad magic)")
    (hlen,) = struct.unpack("<Q", data[len(_PART_MAGIC) : head])
    try:
        h = json.loads(data[head : head + hlen].decode("utf-8"))
        n, dim = int(h["n"]), int(h["dim"])
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CacheError(f"{p}: damaged part header ({exc})") from None
    k = len(LABEL_NAMES)
    expected = head + hlen + n * (4 * dim + k + 8)
    if len(data) != expected:
        raise CacheError(f"{p}: truncated part ({len(data)} bytes, expected {expected})")
    at = head + hlen
    X = np.frombuffer(data, dtype="<f4", count=n * dim, offset=at).reshape(n, dim)
    labels = np.frombuffer(data, dtype="i1", count=n * k, offset=at + 4 * n * dim).reshape(n, k)
    order = np.frombuffer(data, dtype="<i8", count=n, offset=at + n * (4 * dim + k))
    rows = _Rows(
        _strs(h["image_id"]), _strs(h["sha256"]), _strs(h["split"]),
        labels.astype(np.int8), order.astype(np.int64), X,  # X: read-only view, copied by the reader
        {name: _strs(v) for name, v in h["extras"].items()},
    )
    return _Part(int(h["seq"]), rows, list(h.get("failures", [])), dict(h.get("run", {})))


def _list_parts(path: Path, after: int) -> list[tuple[int, Path]]:
    folder = parts_dir(path)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _PART_RE.match(p.name)
        if m and int(m.group(1)) > after:
            found.append((int(m.group(1)), p))
    return sorted(found)


# --------------------------------------------------------------------------- main file


def _provenance_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    def s(key: str) -> str:
        v = attrs.get(key, "")
        return v.decode() if isinstance(v, bytes) else str(v)

    prov: dict[str, Any] = {
        "encoder_id": s("encoder_id"),
        "encoder_revision": s("encoder_revision") or None,
        "embedding_dim": int(attrs.get("embedding_dim", 0)),
        "preprocessing": _canon(s("preprocessing") or "{}"),
        "compute_dtype": s("compute_dtype"),
        "device": s("device"),
        "label_schema": s("label_schema"),
        "versions": _canon(s("versions") or "{}"),
        "created": s("created"),
        "updated": s("updated"),
    }
    if "notice" in attrs:
        prov["notice"] = s("notice")
    if "provenance_extra" in attrs:
        for k, v in json.loads(s("provenance_extra")).items():
            prov.setdefault(k, v)
    return prov


def _provenance_attrs(prov: Mapping[str, Any]) -> dict[str, Any]:
    known = {
        "encoder_id", "encoder_revision", "embedding_dim", "preprocessing", "compute_dtype",
        "device", "label_schema", "versions", "created", "updated", "notice",
    }
    attrs: dict[str, Any] = {
        "encoder_id": str(prov["encoder_id"]),
        "encoder_revision": str(prov.get("encoder_revision") or ""),
        "embedding_dim": int(prov["embedding_dim"]),
        "preprocessing": json.dumps(_canon(prov["preprocessing"]), sort_keys=True),
        "compute_dtype": str(prov.get("compute_dtype") or ""),
        "device": str(prov.get("device") or ""),
        "label_schema": str(prov["label_schema"]),
        "versions": json.dumps(_canon(prov.get("versions") or {}), sort_keys=True),
        "created": str(prov.get("created") or _now()),
        "updated": str(prov.get("updated") or _now()),
    }
    if prov.get("notice"):
        attrs["notice"] = str(prov["notice"])
    extra = {k: v for k, v in prov.items() if k not in known}
    if extra:
        attrs["provenance_extra"] = json.dumps(extra, sort_keys=True, default=str)
    return attrs


@dataclass
class _Loaded:
    """The logical content of a cache: main file + complete parts, deduplicated and sorted."""

    provenance: dict[str, Any]
    attrs: dict[str, Any]
    rows: _Rows
    failures: list[dict]
    runs: list[dict]
    parts: list[_Part]
    bad_parts: list[str]
    n_main: int

    @property
    def last_seq(self) -> int:
        return max([int(self.attrs.get("parts_merged_upto", 0))] + [p.seq for p in self.parts])


def _read_strs(ds: h5py.Dataset) -> np.ndarray:
    if not ds.shape[0]:
        return _strs([])
    info = h5py.check_string_dtype(ds.dtype)
    if info is not None and info.length is not None:  # fixed length: fast path
        raw = ds[()]
        try:
            return raw.astype(str)  # vectorised ASCII fast path
        except UnicodeDecodeError:
            return np.char.decode(raw, "utf-8")
    return _strs(ds.asstr()[()].tolist())


def _open_error(path: Path, exc: BaseException) -> CacheError:
    return CacheError(f"{path}: cannot open as an HDF5 embedding cache ({_reason(exc)})")


def _check_layout(f: h5py.File, path: Path) -> None:
    version = f.attrs.get("layout_version")
    if version is None:
        raise CacheError(f"{path}: not a woundscore embedding cache (no 'layout_version' attribute)")
    if int(version) != LAYOUT_VERSION:
        raise CacheError(f"{path}: cache layout version {int(version)}; this version reads {LAYOUT_VERSION}")
    missing = [name for name in ROW_DATASETS if name not in f]
    if missing:
        raise CacheError(f"{path}: damaged cache, missing dataset(s): {', '.join(missing)}")


def _load(path: str | os.PathLike, *, with_x: bool = True, strict_parts: bool = False) -> _Loaded:
    """Read main file + complete parts. Retries if a writer consolidates while we read."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: no such cache")
    for _ in range(20):
        try:
            return _load_once(path, with_x=with_x, strict_parts=strict_parts)
        except _Retry:
            continue
    raise CacheError(f"{path}: the cache kept changing while it was read; try again")


class _Retry(Exception):
    pass


def _load_once(path: Path, *, with_x: bool, strict_parts: bool) -> _Loaded:
    try:
        ino = os.stat(path).st_ino
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise _Retry() from None
    except OSError as exc:
        raise _open_error(path, exc) from None
    with f:
        _check_layout(f, path)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        upto = int(attrs.get("parts_merged_upto", 0))
        parts, bad = [], []
        for seq, p in _list_parts(path, upto):
            try:
                parts.append(_read_part(p))
            except FileNotFoundError:
                raise _Retry() from None  # consolidated meanwhile
            except CacheError as exc:
                if strict_parts:
                    raise
                bad.append(str(exc))
        try:
            if os.stat(path).st_ino != ino:
                raise _Retry()  # main replaced while we listed parts: start over
        except FileNotFoundError:
            raise _Retry() from None
        emb = f["embeddings"]
        n_main = int(emb.shape[0])
        dim = int(emb.shape[1]) if emb.ndim == 2 else int(attrs.get("embedding_dim", 0))
        n_total = n_main + sum(p.rows.n for p in parts)
        X = None
        if with_x:
            X = np.empty((n_total, dim), dtype=np.float32)
            if n_main:
                emb.read_direct(X, np.s_[0:n_main], np.s_[0:n_main])
            at = n_main
            for p in parts:
                X[at : at + p.rows.n] = p.rows.X
                at += p.rows.n
        extras = {}
        if "extras" in f:
            extras = {k: _read_strs(ds) for k, ds in f["extras"].items()}
        main = _Rows(
            _read_strs(f["image_id"]), _read_strs(f["sha256"]), _read_strs(f["split"]),
            f["labels"][()].astype(np.int8, copy=False), f["order"][()].astype(np.int64, copy=False),
            None, extras,
        )
        failures = []
        if "failures" in f:
            failures = [
                {"image_id": i, "reason": r}
                for i, r in zip(_read_strs(f["failures/image_id"]), _read_strs(f["failures/reason"]))
            ]
        runs = [json.loads(r) for r in _read_strs(f["runs"])] if "runs" in f else []
    chunks = [main] + [p.rows for p in parts]
    if not with_x:
        for c in chunks:
            c.X = None
    rows = _concat(chunks, dim, X=X)
    rows = _sorted_unique(rows, first_new=n_main)
    for p in parts:
        failures.extend(p.failures)
    runs = _merge_run_records(runs, parts)
    failures = _clean_failures(failures, rows)
    return _Loaded(_provenance_from_attrs(attrs), attrs, rows, failures, runs, parts, bad, n_main)


def _merge_run_records(runs: list[dict], parts: list[_Part]) -> list[dict]:
    """Add the runs known only from parts (an unfinished or killed run), with their row counts."""
    known = {r.get("run_id") for r in runs}
    pending: dict[str, dict] = {}
    for p in parts:
        rid = p.run.get("run_id")
        if rid is None or rid in known:
            continue
        rec = pending.setdefault(rid, {**p.run, "rows_added": 0, "status": "unfinished"})
        rec["rows_added"] += p.rows.n
    return runs + list(pending.values())


def _clean_failures(failures: list[dict], rows: _Rows) -> list[dict]:
    """Last reason per image; drop images that have since been embedded (a rerun succeeded)."""
    if not failures:
        return []
    done = set(rows.image_id.tolist())
    latest: dict[str, str] = {}
    for item in failures:
        latest.pop(item["image_id"], None)  # re-insert: keep the latest position
        latest[item["image_id"]] = item["reason"]
    return [{"image_id": i, "reason": r} for i, r in latest.items() if i not in done]


class _GuardedFile(io.RawIOBase):
    """The file object HDF5 writes the main file through.

    HDF5 (2.0) does not recover from a failed write: the library keeps the half-written file
    open and crashes at interpreter exit. So a failed write (ENOSPC, EFBIG, EIO) is recorded here
    and the rest of the file is discarded in memory-free "ghost" mode; HDF5 sees success, and
    ``_write_main`` raises CacheWriteError after HDF5 has closed the file cleanly.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.fh = open(path, "w+b", buffering=0)
        self.error: OSError | None = None
        self.pos = self.size = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + offset
        if self.error is None:
            self.fh.seek(self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        if self.error is None:
            n = self.fh.readinto(buf) or 0
        else:  # ghost mode: HDF5 rarely reads back; zeros keep it going to a clean close
            n = len(buf)
            buf[:n] = bytes(n)
        self.pos += n
        return n

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self.error is None:
            try:
                self.fh.write(data)
            except OSError as exc:
                self.error = exc
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                self.fh.truncate(size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        pass  # unbuffered; durability comes from the fsync in _write_main

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.fh.close()


def _vlen(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _create_strs(group: h5py.Group, name: str, values: np.ndarray, chunks: tuple[int]) -> None:
    raw, dtype = _encode_strs(values)
    group.create_dataset(name, data=raw, dtype=dtype, maxshape=(None,), chunks=chunks)


def _write_main(
    path: Path, rows: _Rows, attrs: Mapping[str, Any], failures: list[dict], runs: list[dict]
) -> None:
    """Write a whole cache to a temp file, fsync, os.replace over ``path``. CacheWriteError on failure."""
    assert rows.X is not None
    dim = int(attrs["embedding_dim"])
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    n = rows.n
    row_chunk = max(1, min(max(n, 1), _CHUNK_BYTES // (4 * max(dim, 1))))
    str_chunk = (max(1, min(max(n, 1), 1 << 16)),)
    guard = None
    try:
        guard = _GuardedFile(tmp)
        with h5py.File(guard, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.create_dataset(
                "embeddings", data=np.ascontiguousarray(rows.X, dtype=np.float32).reshape(n, dim),
                maxshape=(None, dim), chunks=(row_chunk, dim),
            )
            for name in ("image_id", "sha256", "split"):
                _create_strs(f, name, getattr(rows, name), str_chunk)
            lab = f.create_dataset(
                "labels", data=rows.labels.astype(np.int8), maxshape=(None, len(LABEL_NAMES)),
                chunks=(str_chunk[0], len(LABEL_NAMES)),
            )
            lab.attrs["columns"] = np.array(LABEL_NAMES, dtype=_STR)
            f.create_dataset("order", data=rows.order.astype(np.int64), maxshape=(None,), chunks=str_chunk)
            g = f.create_group("extras")
            for name, values in rows.extras.items():
                _create_strs(g, name, values, str_chunk)
            fg = f.create_group("failures")
            fg.create_dataset("image_id", data=_vlen([x["image_id"] for x in failures]), dtype=_STR)
            fg.create_dataset("reason", data=_vlen([x["reason"] for x in failures]), dtype=_STR)
            f.create_dataset("runs", data=_vlen([json.dumps(r, sort_keys=True) for r in runs]), dtype=_STR)
        if guard.error is not None:
            raise guard.error
        os.fsync(guard.fh.fileno())
        guard.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if guard is not None:
            guard.close()
        tmp.unlink(missing_ok=True)
        if exc.errno is None:  # an HDF5 error that is not about the disk: a bug, show it as is
            raise
        raise CacheWriteError(path, _reason(exc)) from None
    except BaseException:
        if guard is not None:
            guard.close()
        tmp.unlink(missing_ok=True)
        raise


def _remove_parts(path: Path, upto: int) -> None:
    folder = parts_dir(path)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        m = _PART_RE.match(p.name)
        if (m and int(m.group(1)) <= upto) or p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (corrupt parts kept for inspection)


# --------------------------------------------------------------------------- locking


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')} "
        f"({holder.get('command', '?')})"
    )


class _WriterLock:
    """flock on ``<cache>.lock``; the file's content names the holder (kept small, one JSON line)."""

    def __init__(self, cache: Path) -> None:
        self.cache, self.path = cache, lock_path(cache)
        self.fd: int | None = None
        self.stale: dict = {}

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheWriteError(self.cache, f"cannot create lock file {self.path}: {_reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            err = CacheLockedError(
                f"{self.cache}: another writer holds the cache: {_describe_holder(holder)}. "
                "Wait for it to finish (reading is safe meanwhile); a lock left by a killed "
                "process is taken over automatically."
            )
            err.holder = holder  # type: ignore[attr-defined]
            raise err from None
        # A clean release empties the file, so content here was left by a process that died.
        self.stale = _read_holder(fd)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "since": _now(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
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
    lp = lock_path(path)
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- identity


def identity_differences(
    have: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str] = IDENTITY_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Differences over ``keys`` of two provenances, as ``{key: (have, new)}``.

    Values are normalised first (JSON strings parsed, tuples as lists, "" revision as None), and
    dict-valued keys are compared per sub-key (shown as ``preprocessing.size``). The cache uses
    it to refuse mixing rows; classify uses it to refuse embeddings from another encoder.
    """
    diff: dict[str, tuple[Any, Any]] = {}
    for key in keys:
        a, b = have.get(key), new.get(key)
        if key == "encoder_revision":
            a, b = a or None, b or None
        elif key == "embedding_dim":
            a, b = int(a or 0), int(b or 0)
        else:
            a, b = _canon(a), _canon(b)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diff[f"{key}.{sub}"] = (a.get(sub), b.get(sub))
        else:
            diff[key] = (a, b)
    return diff


def _complete_provenance(provenance: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("encoder_id", "embedding_dim", "preprocessing") if provenance.get(k) in (None, "")]
    if missing:
        raise CacheValueError(f"provenance lacks {', '.join(missing)} (needed to tell caches apart)")
    prov = dict(provenance)
    prov.setdefault("label_schema", SCHEMA.to_json())
    if not prov.get("label_schema"):
        prov["label_schema"] = SCHEMA.to_json()
    prov["preprocessing"] = _canon(prov["preprocessing"])
    prov["embedding_dim"] = int(prov["embedding_dim"])
    prov["versions"] = {**_default_versions(), **dict(prov.get("versions") or {})}
    return prov


# --------------------------------------------------------------------------- writer


class CacheWriter:
    """Append embeddings to a cache, crash-safely, as its only writer.

    Use as a context manager; ``close`` consolidates the batches into the one ``.h5`` file::

        with CacheWriter("emb.h5", encoder.provenance()) as w:
            todo = [s for s in samples if sha(s) not in w.known_hashes()]
            for batch in batches(todo):
                w.append(ids, sha256, split, labels, extras, embeddings, order=order)

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

    def __init__(
        self,
        path: str | os.PathLike,
        provenance: Mapping[str, Any],
        *,
        overwrite: bool = False,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._prov = _complete_provenance(provenance)
        self.dim = int(self._prov["embedding_dim"])
        self._closed = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheWriteError(self.path, _reason(exc)) from exc
        self._lock = _WriterLock(self.path)
        self._lock.acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    # -- opening

    def _open(self, overwrite: bool) -> None:
        now = _now()
        self._run = {
            "run_id": uuid.uuid4().hex[:12],
            "started": now,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "compute_dtype": str(self._prov.get("compute_dtype") or ""),
            "device": str(self._prov.get("device") or ""),
            "versions": self._prov["versions"],
        }
        if self._lock.stale:
            self._run["took_over_stale_lock_from"] = self._lock.stale
        self._pending_failures: list[dict] = []
        self._rows_added = 0
        self._n_failures = 0
        folder = parts_dir(self.path)
        if folder.is_dir():  # temp files of a killed writer are never complete: drop them
            for p in folder.glob("*.tmp"):
                p.unlink(missing_ok=True)
        for p in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            p.unlink(missing_ok=True)

        if self.path.exists() and not overwrite:
            loaded = _load(self.path, with_x=False)
            diff = identity_differences(loaded.provenance, self._prov)
            if diff:
                raise CacheMismatchError(str(self.path), diff)
            for msg in loaded.bad_parts:  # only after a power cut without fsync
                warnings.warn(f"ignoring damaged batch file: {msg}; its rows will be embedded again")
            self._base_attrs = dict(loaded.attrs)
            self._known = set(loaded.rows.sha256.tolist())
            self._id_sha = dict(zip(loaded.rows.image_id.tolist(), loaded.rows.sha256.tolist()))
            self._next_order = int(loaded.rows.order.max()) + 1 if loaded.rows.n else 0
            self._seq = loaded.last_seq
            self._dirty = bool(loaded.parts) or bool(loaded.bad_parts)
            self._order_kind = str(loaded.attrs.get("order_kind", "source"))
            if loaded.rows.n == 0:
                self._order_kind = "source"
            prev = loaded.provenance
            for key in ("compute_dtype", "device"):
                if str(prev.get(key) or "") != self._run[key]:
                    self._run[f"{key}_differs_from_cache"] = prev.get(key)
            return

        if not self.path.exists() and _list_parts(self.path, 0):
            raise CacheError(
                f"{self.path}: the cache file is missing but {parts_dir(self.path)} holds batches; "
                "restore the file or pass overwrite=True (--overwrite) to start again"
            )
        # A new cache: an empty, valid main file first, so that the cache opens from now on.
        old_seq = max([s for s, _ in _list_parts(self.path, 0)], default=0)
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    old_seq = max(old_seq, int(f.attrs.get("parts_merged_upto", 0)))
            except OSError:
                pass
        attrs = {
            **_provenance_attrs({**self._prov, "created": now, "updated": now}),
            "layout_version": LAYOUT_VERSION,
            "order_kind": "source",
            "parts_merged_upto": old_seq,  # parts of an overwritten cache stay invisible
        }
        _write_main(self.path, _Rows.empty(self.dim), attrs, [], [])
        _remove_parts(self.path, old_seq)
        self._base_attrs = attrs
        self._known, self._id_sha = set(), {}
        self._next_order, self._seq, self._dirty = 0, old_seq, False
        self._order_kind = "source"

    # -- public API

    def known_hashes(self) -> set[str]:
        """sha256 hex digests already in the cache (including completed batches of a killed run)."""
        return set(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def append(
        self,
        ids: Sequence[str],
        sha256: Sequence[str],
        split: Sequence[str],
        labels: np.ndarray,
        extras: Mapping[str, Sequence[str]],
        embeddings: np.ndarray,
        order: np.ndarray | Sequence[int] | None = None,
    ) -> int:
        """Append one batch of ``b`` rows; durable (survives kill -9) when it returns.

        Args:
            ids, sha256, split: (b,) str. split in "train"/"val"/"test"/"".
            labels: (b, 6) int8 with 1 / 0 / -1.
            extras: name -> (b,) str raw annotations (missing names are stored as "").
            embeddings: (b, d) float32, finite.
            order: (b,) int64 positions in the source listing (rows are kept sorted by it);
                default: after every row already in the cache, in call order.

        Returns:
            rows written; rows whose sha256 is already in the cache (or earlier in the batch) are
            skipped.
        """
        self._check_open()
        rows = self._validate(ids, sha256, split, labels, extras, embeddings, order)
        keep, seen = [], set()
        for i, (img, sha) in enumerate(zip(rows.image_id.tolist(), rows.sha256.tolist())):
            if sha in self._known or sha in seen:
                continue
            other = self._id_sha.get(img)
            if other is not None and other != sha:
                raise CacheValueError(
                    f"{self.path}: image id {img!r} is already in the cache with sha256 {other}, "
                    f"new bytes have {sha} (was the file changed? remove it or use --overwrite)"
                )
            seen.add(sha)
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

    def close(self) -> None:
        """Consolidate all batches into the single ``.h5`` file (atomically) and release the lock.

        Raises CacheWriteError if that fails; the batches then stay in ``<cache>.parts`` and the
        next writer (or ``consolidate_cache``) consolidates them.
        """
        if self._closed:
            return
        try:
            if self._dirty or self._pending_failures or self._rows_added:
                self._run.update(
                    finished=_now(), status="completed", rows_added=self._rows_added,
                    failures=self._n_failures,
                )
                self._consolidate(self._run)
        finally:
            self._closed = True
            self._lock.release()

    def abort(self) -> None:
        """Release the lock without consolidating (the batches stay readable in the parts folder)."""
        if not self._closed:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # An error is propagating: consolidate if possible, but never hide the original error.
        try:
            self.close()
        except Exception as close_exc:  # e.g. the disk is still full
            warnings.warn(f"{self.path}: batches kept in {parts_dir(self.path)}: {close_exc}")

    # -- internals

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"{self.path}: writer is closed")

    def _validate(self, ids, sha256, split, labels, extras, embeddings, order) -> _Rows:
        where = str(self.path)
        # Python lists first, numpy once: this runs per batch and must stay well under a ms.
        ids_l = [str(v) for v in ids]
        sha_l = [str(v).lower() for v in sha256]
        split_l = [str(v) for v in split]
        b = len(ids_l)
        for name, arr in (("sha256", sha_l), ("split", split_l)):
            if len(arr) != b:
                raise CacheValueError(f"{where}: append got {b} ids but {len(arr)} {name} values")
        for i, (img, sha, sp) in enumerate(zip(ids_l, sha_l, split_l)):
            if not img:
                raise CacheValueError(f"{where}: row {i}: empty image id")
            if not _SHA_RE.match(sha):
                raise CacheValueError(f"{where}: {img}: sha256 {sha!r} is not a 64-digit hex digest")
            if sp not in SPLITS:
                raise CacheValueError(f"{where}: {img}: split {sp!r} is not one of train/val/test/''")
        ids_a, sha_a, split_a = _strs(ids_l), _strs(sha_l), _strs(split_l)
        Y = np.asarray(labels)
        if Y.shape != (b, len(LABEL_NAMES)):
            raise CacheValueError(f"{where}: labels must be ({b}, {len(LABEL_NAMES)}), got {Y.shape}")
        ok = (Y == -1) | (Y == 0) | (Y == 1)
        if not ok.all():
            i, j = np.argwhere(~ok)[0]
            raise CacheValueError(f"{where}: {ids_a[i]}: label {LABEL_NAMES[j]} has value {Y[i, j].item()!r}; expected 1, 0 or -1")
        X = np.asarray(embeddings)
        if X.shape != (b, self.dim):
            raise CacheValueError(f"{where}: embeddings must be ({b}, {self.dim}), got {X.shape}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise CacheValueError(f"{where}: {ids_a[i]}: embedding has NaN or inf values")
        ex: dict[str, np.ndarray] = {}
        for name, values in (extras or {}).items():
            if not _NAME_RE.match(str(name)):
                raise CacheValueError(f"{where}: extra name {name!r} must be letters, digits or _")
            arr = _strs(["" if v is None else str(v) for v in values])
            if len(arr) != b:
                raise CacheValueError(f"{where}: extra {name!r} has {len(arr)} values for {b} rows")
            ex[str(name)] = arr
        for name in EXTRA_NAMES:
            ex.setdefault(name, np.full(b, "", dtype="<U1"))
        if order is None:
            order_a = np.zeros(b, np.int64)
        else:
            order_a = np.asarray(order)
            if order_a.shape != (b,) or not np.issubdtype(order_a.dtype, np.integer):
                raise CacheValueError(f"{where}: order must be ({b},) integers, got {order_a.dtype} {order_a.shape}")
            order_a = order_a.astype(np.int64)
        return _Rows(ids_a, sha_a, split_a, Y.astype(np.int8), order_a, X, ex)

    def _write_batch(self, rows: _Rows) -> None:
        folder = parts_dir(self.path)
        try:
            folder.mkdir(exist_ok=True)
            _write_part(folder, self._seq + 1, rows, self._pending_failures, self._run, fsync=self.fsync)
        except OSError as exc:
            raise CacheWriteError(self.path, _reason(exc)) from exc
        self._seq += 1
        self._pending_failures = []
        self._dirty = True

    def _consolidate(self, run: dict | None) -> None:
        loaded = _load(self.path, with_x=True)
        failures = _clean_failures(loaded.failures + self._pending_failures, loaded.rows)
        runs = [r for r in loaded.runs if r.get("run_id") != (run or {}).get("run_id")]
        if run is not None:
            runs.append(dict(run))
        attrs = dict(self._base_attrs)
        attrs.update(
            updated=_now(),
            parts_merged_upto=loaded.last_seq,
            order_kind=self._order_kind if loaded.rows.n else "source",
            layout_version=LAYOUT_VERSION,
        )
        _write_main(self.path, loaded.rows, attrs, failures, runs)
        self._pending_failures = []
        _remove_parts(self.path, loaded.last_seq)
        self._dirty = False


def consolidate_cache(path: str | os.PathLike) -> None:
    """Fold the batches of an interrupted run into the main file (takes the writer lock)."""
    loaded = _load(path, with_x=False)
    w = CacheWriter(path, loaded.provenance)
    try:
        if w._dirty:
            w._consolidate(None)
    finally:
        w.abort()


# --------------------------------------------------------------------------- reading


def read_cache(path: str | os.PathLike) -> EmbeddingSet:
    """Read a cache (including the completed batches of an unfinished run) into an EmbeddingSet.

    Returns rows sorted by ``order``: ids/split/sha256 (n,) str, X (n, d) float32,
    Y (n, 6) int8, extras name -> (n,) str, schema, provenance (preprocessing as a dict).
    Takes no lock; a concurrent writer's batches appear whole or not at all.
    """
    loaded = _load(path, with_x=True)
    for msg in loaded.bad_parts:
        warnings.warn(f"ignoring damaged batch file: {msg}")
    r = loaded.rows
    prov = loaded.provenance
    try:
        schema = LabelSchema.from_json(prov["label_schema"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{path}: unreadable label_schema attribute ({exc})") from None
    return EmbeddingSet(
        ids=_to_str_array(r.image_id),
        X=r.X,
        Y=r.labels,
        split=_to_str_array(r.split),
        sha256=_to_str_array(r.sha256),
        extras={k: _to_str_array(v) for k, v in r.extras.items()},
        schema=schema,
        provenance=prov,
    )


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The cache's provenance dict (no rows read)."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: no such cache")
    try:
        with h5py.File(path, "r") as f:
            _check_layout(f, path)
            return _provenance_from_attrs(dict(f.attrs))
    except OSError as exc:
        raise _open_error(path, exc) from None


def read_failures(path: str | os.PathLike) -> list[dict]:
    """Images that could not be embedded: ``[{"image_id": ..., "reason": ...}]``."""
    return _load(path, with_x=False).failures


def read_runs(path: str | os.PathLike) -> list[dict]:
    """The run history: one dict per writer run (pid, host, command, dtype, device, rows_added ...)."""
    return _load(path, with_x=False).runs


def cache_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for ``wound-cache info``: rows and labels per split, provenance, failures, runs.

    Returns a JSON-able dict: ``{"path", "rows", "embedding_dim", "pending_batches",
    "splits": {split: {"rows": n, "labels": {name: {"pos", "neg", "missing"}}}},
    "provenance": {...}, "failures": {"count": m, "items": [...]}, "runs": [...]}``.
    """
    loaded = _load(path, with_x=False)
    r = loaded.rows
    splits: dict[str, Any] = {}
    for s in [s for s in SPLITS if s in set(r.split.tolist())] + sorted(set(r.split.tolist()) - set(SPLITS)):
        Y = r.labels[r.split == s]
        splits[s] = {
            "rows": int(len(Y)),
            "labels": {
                name: {
                    "pos": int((Y[:, j] == 1).sum()),
                    "neg": int((Y[:, j] == 0).sum()),
                    "missing": int((Y[:, j] == -1).sum()),
                }
                for j, name in enumerate(LABEL_NAMES)
            },
        }
    return {
        "path": str(path),
        "rows": int(r.n),
        "embedding_dim": int(loaded.provenance["embedding_dim"]),
        "pending_batches": len(loaded.parts),
        "splits": splits,
        "provenance": loaded.provenance,
        "failures": {"count": len(loaded.failures), "items": loaded.failures},
        "runs": loaded.runs,
    }


def format_info(info: Mapping[str, Any], *, max_failures: int = 20) -> str:
    """Human-readable text of a ``cache_info`` dict (what ``wound-cache info`` prints)."""
    prov = info["provenance"]
    lines = [f"cache: {info['path']}"]
    pending = info.get("pending_batches", 0)
    rows = f"rows: {info['rows']} (embedding dim {info['embedding_dim']})"
    if pending:
        rows += f"; {pending} batch(es) of an unfinished run not yet consolidated"
    lines.append(rows)
    if prov.get("notice"):
        lines.append(f"notice: {prov['notice']}")
    lines.append(f"encoder: {prov['encoder_id']} @ {prov.get('encoder_revision') or '(revision unknown)'}")
    lines.append(f"preprocessing: {json.dumps(prov['preprocessing'], sort_keys=True)}")
    lines.append(f"compute: {prov.get('compute_dtype') or '?'} on {prov.get('device') or '?'}")
    try:
        schema = json.loads(prov["label_schema"])
        lines.append(f"label schema: version {schema.get('version')}, labels {', '.join(schema.get('labels', []))}")
    except (ValueError, KeyError, TypeError):
        lines.append("label schema: (unreadable)")
    lines.append(f"created: {prov.get('created')}  updated: {prov.get('updated')}")
    versions = prov.get("versions") or {}
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    for split, d in info["splits"].items():
        lines.append("")
        lines.append(f"split {split or '(unlabelled)'}: {d['rows']} rows")
        lines.append(f"  {'label':<16}{'pos':>7}{'neg':>7}{'missing':>9}")
        for name, c in d["labels"].items():
            lines.append(f"  {name:<16}{c['pos']:>7}{c['neg']:>7}{c['missing']:>9}")
    fails = info["failures"]
    lines.append("")
    lines.append(f"failures: {fails['count']}")
    for item in fails["items"][:max_failures]:
        lines.append(f"  {item['image_id']}: {item['reason']}")
    if fails["count"] > max_failures:
        lines.append(f"  ... {fails['count'] - max_failures} more (use --json)")
    lines.append(f"runs: {len(info['runs'])}")
    for r in info["runs"]:
        lines.append(
            f"  {r.get('started', '?')} {r.get('status', '?')}: {r.get('rows_added', 0)} rows, "
            f"{r.get('compute_dtype') or '-'} on {r.get('device') or '-'} (pid {r.get('pid', '?')} on {r.get('host', '?')})"
        )
    return "\n".join(lines)


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Check a cache; returns a list of problems (empty when it is sound).

    Checks: the file opens; required attributes; datasets present with the right dtypes and
    matching row counts; embedding dim; label schema parses; no NaN/inf embeddings; labels in
    {-1, 0, 1}; no duplicate image ids or sha256; sha256 look like hex digests; known splits;
    batch files of an unfinished run readable.
    """
    path = Path(path)
    problems: list[str] = []
    if not path.exists():
        return [f"{path}: no such file"]
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [f"{path}: cannot open as HDF5 ({_reason(exc)})"]
    with f:
        for name in REQUIRED_ATTRS:
            if name not in f.attrs:
                problems.append(f"attribute {name!r} is missing")
        if "layout_version" in f.attrs and int(f.attrs["layout_version"]) != LAYOUT_VERSION:
            problems.append(f"layout_version is {int(f.attrs['layout_version'])}, expected {LAYOUT_VERSION}")
        expected = {
            "embeddings": (np.float32, 2), "image_id": (None, 1), "sha256": (None, 1), "split": (None, 1),
            "labels": (np.int8, 2), "order": (np.int64, 1),
        }
        counts = {}
        for name, (dtype, ndim) in expected.items():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                problems.append(f"dataset {name!r} is missing")
                continue
            ds = f[name]
            counts[name] = ds.shape[0] if ds.ndim else -1
            if ds.ndim != ndim:
                problems.append(f"dataset {name!r} has shape {ds.shape}, expected {ndim} dimension(s)")
            if dtype is None:
                if h5py.check_string_dtype(ds.dtype) is None:
                    problems.append(f"dataset {name!r} has dtype {ds.dtype}, expected strings")
            elif ds.dtype != dtype:
                problems.append(f"dataset {name!r} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if "extras" in f:
            for name, ds in f["extras"].items():
                counts[f"extras/{name}"] = ds.shape[0]
        if len(set(counts.values())) > 1:
            problems.append("row counts differ: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if "embeddings" in f and f["embeddings"].ndim == 2 and "embedding_dim" in f.attrs:
            if f["embeddings"].shape[1] != int(f.attrs["embedding_dim"]):
                problems.append(
                    f"embeddings have {f['embeddings'].shape[1]} columns, attribute embedding_dim is "
                    f"{int(f.attrs['embedding_dim'])}"
                )
        if "labels" in f and f["labels"].ndim == 2 and f["labels"].shape[1] != len(LABEL_NAMES):
            problems.append(f"labels have {f['labels'].shape[1]} columns, expected {len(LABEL_NAMES)}")
        if "label_schema" in f.attrs:
            try:
                schema = LabelSchema.from_json(f.attrs["label_schema"])
                if len(schema.labels) != len(LABEL_NAMES):
                    problems.append(f"label_schema lists {len(schema.labels)} labels, expected {len(LABEL_NAMES)}")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"label_schema attribute is not a valid schema ({exc})")
        for key in ("preprocessing", "versions"):
            if key in f.attrs:
                try:
                    json.loads(f.attrs[key])
                except (ValueError, TypeError):
                    problems.append(f"attribute {key!r} is not JSON")
    if problems:
        return [f"{path}: {p}" for p in problems]
    try:
        loaded = _load(path, with_x=True)
    except CacheError as exc:
        return [str(exc)]
    problems.extend(loaded.bad_parts)
    r = loaded.rows
    ids = r.image_id.tolist()
    finite = np.ones(r.n, bool)
    for start in range(0, r.n, 8192):  # bounded temporaries on big caches
        finite[start : start + 8192] = np.isfinite(r.X[start : start + 8192]).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        problems.append(f"{len(bad)} row(s) have NaN/inf embeddings: {_first(ids, bad)}")
    badlab = ~np.isin(r.labels, (-1, 0, 1))
    if badlab.any():
        rows_bad = np.flatnonzero(badlab.any(axis=1))
        i, j = np.argwhere(badlab)[0]
        problems.append(
            f"{len(rows_bad)} row(s) have labels outside {{-1, 0, 1}}: {_first(ids, rows_bad)} "
            f"(e.g. {ids[i]} {LABEL_NAMES[j]}={int(r.labels[i, j])})"
        )
    for name, values in (("image id", ids), ("sha256", r.sha256.tolist())):
        dups = _duplicates(values)
        if dups:
            problems.append(f"{len(dups)} duplicate {name}(s): {', '.join(dups[:5])}{' ...' if len(dups) > 5 else ''}")
    bad_sha = [i for i, s in enumerate(r.sha256.tolist()) if not _SHA_RE.match(s)]
    if bad_sha:
        problems.append(f"{len(bad_sha)} sha256 value(s) are not hex digests: {_first(ids, bad_sha)}")
    bad_split = sorted({s for s in r.split.tolist() if s not in SPLITS})
    if bad_split:
        problems.append(f"unknown split value(s): {', '.join(map(repr, bad_split))}")
    return [p if p.startswith(str(path)) else f"{path}: {p}" for p in problems]


def _first(ids: list[str], idx, k: int = 5) -> str:
    idx = list(idx)
    names = ", ".join(str(ids[i]) for i in idx[:k])
    return names + (" ..." if len(idx) > k else "")


def _duplicates(values: list[str]) -> list[str]:
    seen, dups = set(), []
    for v in values:
        if v in seen and v not in dups:
            dups.append(v)
        seen.add(v)
    return dups


# --------------------------------------------------------------------------- merging


def merge_caches(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, int]:
    """Join per-rank shards into one cache ``out``.

    All shards must have equal identity keys (encoder, revision, dim, preprocessing, label
    schema), else CacheMismatchError. Row order is deterministic: if every shard's rows carry
    source positions (``order_kind == "source"``, i.e. the embed run passed ``order``), rows are
    sorted by ``order`` (ties: shard order, then row order), so a sharded run merged equals a
    single-process run row for row; otherwise shards are concatenated in the order given.
    Duplicate sha256 keep their first row. Failures are joined (minus images some shard
    embedded); run histories are joined, plus one "merged" record. ``out`` is written atomically.

    Returns ``{"shards", "rows", "duplicates"}``.
    """
    paths = [Path(p) for p in parts]
    out = Path(out)
    if not paths:
        raise CacheError("merge needs at least one shard")
    for p in paths:
        if p.resolve() == out.resolve():
            raise CacheError(f"{out}: the output is also one of the shards")
        holder = writer_active(p)
        if holder is not None:
            raise CacheLockedError(f"{p}: shard is still being written by {_describe_holder(holder)}")
    loaded = [_load(p, with_x=True) for p in paths]
    first = loaded[0].provenance
    for p, ld in zip(paths[1:], loaded[1:]):
        diff = identity_differences(first, ld.provenance)
        if diff:
            raise CacheMismatchError(f"{p} (compared with {paths[0]})", diff)
    if out.exists() and not overwrite:
        raise CacheError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    dim = int(first["embedding_dim"])
    total = sum(ld.rows.n for ld in loaded)
    by_source = all(ld.attrs.get("order_kind", "source") == "source" for ld in loaded)
    rows = _concat([ld.rows for ld in loaded], dim)
    if by_source:
        rows = rows.take(np.argsort(rows.order, kind="stable"))
    else:  # concatenation order, renumbered so that the file stays sorted by order
        rows.order = np.arange(rows.n, dtype=np.int64)
    rows = _sorted_unique(rows, first_new=0)
    id_sha: dict[str, str] = {}
    for img, sha in zip(rows.image_id.tolist(), rows.sha256.tolist()):
        if id_sha.setdefault(img, sha) != sha:
            raise CacheValueError(f"image id {img!r} has different sha256 in two shards ({id_sha[img]} vs {sha})")
    failures = _clean_failures([x for ld in loaded for x in ld.failures], rows)
    runs = [{**r, "shard": str(p)} for p, ld in zip(paths, loaded) for r in ld.runs]
    now = _now()
    runs.append(
        {"run_id": uuid.uuid4().hex[:12], "status": "merged", "started": now, "finished": now,
         "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
         "shards": [str(p) for p in paths], "rows_added": int(rows.n)}
    )
    created = min(str(ld.provenance.get("created") or now) for ld in loaded)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheWriteError(out, _reason(exc)) from exc
    lock = _WriterLock(out)
    lock.acquire()
    try:
        old_seq = max([s for s, _ in _list_parts(out, 0)], default=0)
        attrs = {
            **_provenance_attrs({**first, "created": created, "updated": now}),
            "layout_version": LAYOUT_VERSION,
            "order_kind": "source" if by_source else "append",
            "parts_merged_upto": old_seq,
        }
        _write_main(out, rows, attrs, failures, runs)
        _remove_parts(out, old_seq)
    finally:
        lock.release()
    return {"shards": len(paths), "rows": int(rows.n), "duplicates": int(total - rows.n)}


__all__ = [
    "IDENTITY_KEYS",
    "LAYOUT_VERSION",
    "CacheWriteError",
    "CacheValueError",
    "CacheWriter",
    "cache_info",
    "consolidate_cache",
    "format_info",
    "lock_path",
    "merge_caches",
    "parts_dir",
    "read_cache",
    "read_failures",
    "read_provenance",
    "read_runs",
    "verify_cache",
    "writer_active",
]
