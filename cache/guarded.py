"""Guarded IO: write a whole cache file atomically, surviving a full disk without harm.

h5py gives no crash consistency, so a cache file is never modified in place: ``write_main``
writes a NEW file under a temporary name, fsyncs it and ``os.replace``-s it over the old one. A
failed write (disk full, unwritable folder) removes the temporary file and raises
:class:`CacheWriteError`; the old file is untouched, byte for byte.
"""

from __future__ import annotations

import errno
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from woundscore.cache.layout import Rows, encode_strs
from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.types import CacheWriteError

_STR = h5py.string_dtype("utf-8")
_CHUNK_BYTES = 1 << 20  # 1 MiB chunks of whole rows: fit h5py's default chunk cache, full reads stay fast


def reason(exc: BaseException) -> str:
    """Short text of an error, e.g. ``No space left on device [errno ENOSPC]``."""
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} [errno {errno.errorcode.get(exc.errno, exc.errno)}]"
    return f"{type(exc).__name__}: {exc}"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GuardedFile(io.RawIOBase):
    """The file object HDF5 writes a cache through.

    HDF5 (2.0) does not recover from a failed write: the library keeps the half-written file
    open and crashes at interpreter exit. So a failed write (ENOSPC, EFBIG, EIO) is recorded in
    ``error`` and the rest of the file is discarded in "ghost" mode; HDF5 sees success, and
    ``write_main`` raises CacheWriteError after HDF5 has closed the file cleanly.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.fh = open(path, "w+b", buffering=0)
        self.error: OSError | None = None
        self.pos = self.size = 0

    def readable(self) -> bool:
        return True

    writable = seekable = readable

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
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

    def _guard(self, op, *args) -> None:
        if self.error is None:
            try:
                op(*args)
            except OSError as exc:
                self.error = exc

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        self._guard(self.fh.write, data)
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        self._guard(self.fh.truncate, size)
        self.size = size
        return size

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.fh.close()


def _fill(f: h5py.File, rows: Rows, attrs: Mapping[str, Any], failures: list[dict], runs: list[dict]) -> None:
    """Write every dataset and attribute of the layout (see ``cache.layout``) into ``f``."""
    n, dim = rows.n, int(attrs["embedding_dim"])
    row_chunk = max(1, min(max(n, 1), _CHUNK_BYTES // (4 * max(dim, 1))))
    chunk = max(1, min(max(n, 1), 1 << 16))

    def put_strs(group: h5py.Group, name: str, values: np.ndarray) -> None:
        raw, dtype = encode_strs(values)
        group.create_dataset(name, data=raw, dtype=dtype, maxshape=(None,), chunks=(chunk,))

    for key, value in attrs.items():
        f.attrs[key] = value
    f.create_dataset("embeddings", data=np.ascontiguousarray(rows.X, dtype=np.float32).reshape(n, dim),
                     maxshape=(None, dim), chunks=(row_chunk, dim))
    for name in ("image_id", "sha256", "split"):
        put_strs(f, name, getattr(rows, name))
    k = len(LABEL_NAMES)
    lab = f.create_dataset("labels", data=rows.labels.astype(np.int8), maxshape=(None, k), chunks=(chunk, k))
    lab.attrs["columns"] = np.array(LABEL_NAMES, dtype=_STR)
    f.create_dataset("order", data=rows.order.astype(np.int64), maxshape=(None,), chunks=(chunk,))
    extras = f.create_group("extras")
    for name, values in rows.extras.items():
        put_strs(extras, name, values)
    fg = f.create_group("failures")
    for key in ("image_id", "reason"):
        fg.create_dataset(key, data=[x[key] for x in failures], dtype=_STR)
    f.create_dataset("runs", data=[json.dumps(r, sort_keys=True) for r in runs], dtype=_STR)


def write_main(path: Path, rows: Rows, attrs: Mapping[str, Any], failures: list[dict], runs: list[dict]) -> None:
    """Write a whole cache to a temp file, fsync, os.replace over ``path``. CacheWriteError on failure.

    ``rows.X`` is (n, d) float32 with d = ``attrs["embedding_dim"]``.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    guard = None
    try:
        guard = GuardedFile(tmp)
        with h5py.File(guard, "w") as f:
            _fill(f, rows, attrs, failures, runs)
        if guard.error is not None:
            raise guard.error
        os.fsync(guard.fh.fileno())
        guard.close()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if guard is not None:
            guard.close()
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:  # else an HDF5 bug: show it as is
            raise CacheWriteError(path, reason(exc)) from None
        raise
