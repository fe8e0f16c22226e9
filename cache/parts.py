"""Part files: one appended batch each, in ``<cache>.parts/<seq>.part`` until consolidation.

Format (internal and transient): magic, an 8-byte little-endian header length, a JSON header
(seq, n, dim, the string columns, failures, the run record), then raw little-endian X (n, dim)
float32, labels (n, 6) int8 and order (n,) int64. Never pickled. A part is written under a
temporary name and ``os.replace``-d into place, so it exists whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from woundscore.cache.guarded import fsync_dir
from woundscore.cache.layout import Rows, parts_dir, strs
from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.types import CacheError

_MAGIC = b"WSPART1\n"
_NAME_RE = re.compile(r"^(\d{9})\.part$")


@dataclass
class Part:
    seq: int
    rows: Rows
    failures: list[dict]
    run: dict


def write_part(folder: Path, seq: int, rows: Rows, failures: list[dict], run: dict, *, fsync: bool) -> Path:
    """One batch, atomically: temp name -> (fsync) -> os.replace."""
    header = json.dumps({
        "seq": seq, "n": rows.n, "dim": 0 if rows.X is None else int(rows.X.shape[1]),
        "image_id": rows.image_id.tolist(), "sha256": rows.sha256.tolist(), "split": rows.split.tolist(),
        "extras": {k: v.tolist() for k, v in rows.extras.items()}, "failures": failures, "run": run,
    }).encode("utf-8")
    final = folder / f"{seq:09d}.part"
    tmp = folder / f"{seq:09d}.part.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            if rows.n:
                for col, dt in ((rows.X, "<f4"), (rows.labels, "i1"), (rows.order, "<i8")):
                    fh.write(memoryview(np.ascontiguousarray(col, dtype=dt)).cast("B"))
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if fsync:
            fsync_dir(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read_part(p: Path) -> Part:
    """Parse one part file; CacheError if it is not a whole part."""
    data = p.read_bytes()
    head = len(_MAGIC) + 8
    if len(data) < head or not data.startswith(_MAGIC):
        raise CacheError(f"{p}: not a cache part file (bad magic)")
    (hlen,) = struct.unpack("<Q", data[len(_MAGIC) : head])
    try:
        h = json.loads(data[head : head + hlen].decode("utf-8"))
        n, dim = int(h["n"]), int(h["dim"])
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CacheError(f"{p}: damaged part header ({exc})") from None
    k = len(LABEL_NAMES)
    at = head + hlen
    if len(data) != at + n * (4 * dim + k + 8):
        raise CacheError(f"{p}: truncated part ({len(data)} bytes, expected {at + n * (4 * dim + k + 8)})")
    X = np.frombuffer(data, dtype="<f4", count=n * dim, offset=at).reshape(n, dim)  # read-only view
    labels = np.frombuffer(data, dtype="i1", count=n * k, offset=at + 4 * n * dim).reshape(n, k)
    order = np.frombuffer(data, dtype="<i8", count=n, offset=at + n * (4 * dim + k))
    rows = Rows(strs(h["image_id"]), strs(h["sha256"]), strs(h["split"]), labels.astype(np.int8),
                order.astype(np.int64), X, {name: strs(v) for name, v in h["extras"].items()})
    return Part(int(h["seq"]), rows, list(h.get("failures", [])), dict(h.get("run", {})))


def list_parts(path: Path, after: int = 0) -> list[tuple[int, Path]]:
    """``(seq, file)`` of ``path``'s part files with seq > ``after``, in seq order."""
    folder = parts_dir(path)
    try:
        names = [p for p in folder.iterdir()] if folder.is_dir() else []
    except FileNotFoundError:  # a writer consolidated and removed the folder meanwhile; a reader
        return []  # notices the replaced main file and reads again
    found = ((_NAME_RE.match(p.name), p) for p in names)
    return sorted((int(m.group(1)), p) for m, p in found if m and int(m.group(1)) > after)


def remove_parts(path: Path, upto: int) -> None:
    """Delete the parts with seq <= ``upto`` and every temporary file; the folder too if empty."""
    folder = parts_dir(path)
    for p in [p for seq, p in list_parts(path) if seq <= upto] + list(folder.glob("*.tmp")):
        p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or not empty (corrupt parts kept for inspection)
