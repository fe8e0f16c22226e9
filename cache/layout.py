"""The cache's HDF5 layout (``LAYOUT_VERSION`` 1): rows in memory, strings, provenance attributes.

Datasets and attributes: see README, section "The cache file". Beyond it: per-row strings are
fixed-length UTF-8 (they read far faster than variable-length ones); rows are sorted by ``order``
(ties keep append order); ``order_kind`` is ``"source"`` when every row's ``order`` came from the
caller, else ``"append"``; ``parts_merged_upto`` is explained in ``cache.writer``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES, SCHEMA, SPLITS
from woundscore.cache.types import CacheError, CacheValueError
from woundscore.cache.util import canonical, package_versions

LAYOUT_VERSION = 1
#: Provenance keys that must be equal for rows to share one cache.
IDENTITY_KEYS: tuple[str, ...] = ("encoder_id", "encoder_revision", "embedding_dim", "preprocessing", "label_schema")
#: Provenance attributes, in order, and how each is stored (JSON ones hold dicts).
PROVENANCE_ATTRS: dict[str, type | str] = {
    "encoder_id": str, "encoder_revision": str, "embedding_dim": int, "preprocessing": "json",
    "compute_dtype": str, "device": str, "label_schema": str, "versions": "json", "created": str, "updated": str,
}
#: File attributes every cache has (checked by ``verify_cache``).
REQUIRED_ATTRS: tuple[str, ...] = ("layout_version", *PROVENANCE_ATTRS, "order_kind", "parts_merged_upto")
#: Row datasets: name -> (dtype, None for strings; ndim).
ROW_DATASETS: dict[str, tuple[Any, int]] = {
    "embeddings": (np.float32, 2), "image_id": (None, 1), "sha256": (None, 1), "split": (None, 1),
    "labels": (np.int8, 2), "order": (np.int64, 1),
}
#: Splits a row may have: the dataset's, or "" for a row without one.
ROW_SPLITS: tuple[str, ...] = (*SPLITS, "")


def now() -> str:
    """The time as ISO 8601 UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def this_process() -> dict[str, Any]:
    """pid, host and command line of this process (recorded in locks and run records)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]}


def parts_dir(path: str | os.PathLike) -> Path:
    """Folder of the not yet consolidated batches of ``path``."""
    return Path(str(path) + ".parts")


def strs(values: Sequence[Any]) -> np.ndarray:
    """(n,) numpy unicode array."""
    return np.asarray(values, dtype=str) if len(values) else np.zeros(0, dtype="<U1")


@dataclass
class Rows:
    """Column arrays of some rows; strings are (n,) numpy unicode arrays."""

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
    def empty(dim: int) -> "Rows":
        return Rows(strs([]), strs([]), strs([]), np.zeros((0, len(LABEL_NAMES)), np.int8),
                    np.zeros(0, np.int64), np.zeros((0, dim), np.float32), {name: strs([]) for name in EXTRA_NAMES})

    def take(self, idx: np.ndarray) -> "Rows":
        return Rows(self.image_id[idx], self.sha256[idx], self.split[idx], self.labels[idx], self.order[idx],
                    None if self.X is None else self.X[idx], {k: v[idx] for k, v in self.extras.items()})


def concat(chunks: list[Rows], X: np.ndarray | None) -> Rows:
    """Concatenate ``chunks`` (at least one) with embeddings ``X``; missing extras become ''."""
    names = list(EXTRA_NAMES) + sorted({k for c in chunks for k in c.extras} - set(EXTRA_NAMES))
    extras = {k: np.concatenate([c.extras.get(k, np.full(c.n, "", dtype="<U1")) for c in chunks]) for k in names}
    cols = [np.concatenate([getattr(c, name) for c in chunks]) for name in ("image_id", "sha256", "split", "labels", "order")]
    return Rows(*cols, X, extras)


def sorted_unique(rows: Rows, *, first_new: int = 0) -> Rows:
    """Rows from index ``first_new`` on (newer batches) replace every earlier row of their image id
    (a re-embedded or relabelled image); then a stable sort by order. Repeats before ``first_new``
    (a damaged main file) are left for ``verify`` to report. Identical bytes under two ids stay
    two rows."""
    ids = rows.image_id.tolist()
    if first_new < rows.n and len(set(ids)) < len(ids):  # rare: only then find the replaced rows
        last = {img: i for i, img in enumerate(ids) if i >= first_new}
        keep = [i for i, img in enumerate(ids) if last.get(img, i) == i]
        rows = rows.take(np.asarray(keep, dtype=np.int64))
    if rows.n > 1 and np.any(np.diff(rows.order) < 0):
        rows = rows.take(np.argsort(rows.order, kind="stable"))
    return rows


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with a symlink as its last component followed: a cache reached through a link is
    locked, written and read at its real place (the link stays a link)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def encode_strs(values: np.ndarray) -> tuple[np.ndarray, Any]:
    """Unicode array -> fixed-length utf-8 bytes (read ~50x faster than variable-length) + their h5py dtype."""
    values = np.asarray(values, dtype=str)
    try:
        raw = values.astype("S")  # vectorised; ASCII only (ids, hashes, splits nearly always are)
    except UnicodeEncodeError:
        raw = np.char.encode(values, "utf-8")
    dtype = h5py.string_dtype("utf-8", max(1, raw.dtype.itemsize))
    return raw.astype(dtype), dtype  # the array must carry h5py's utf-8 tag, or HDF5 2 cannot convert


def read_strs(ds: h5py.Dataset) -> np.ndarray:
    """A string dataset as an (n,) numpy unicode array."""
    if not ds.shape[0]:
        return strs([])
    info = h5py.check_string_dtype(ds.dtype)
    if info is not None and info.length is not None:  # fixed length: fast path
        raw = ds[()]
        try:
            return raw.astype(str)  # vectorised ASCII fast path
        except UnicodeDecodeError:
            return np.char.decode(raw, "utf-8")
    return strs(ds.asstr()[()].tolist())


def check_layout(f: h5py.File, path: Path) -> None:
    """CacheError unless ``f`` is a cache of this layout version with every row dataset."""
    version = f.attrs.get("layout_version")
    if version is None:
        raise CacheError(f"{path}: not a woundscore embedding cache (no 'layout_version' attribute)")
    if int(version) != LAYOUT_VERSION:
        raise CacheError(f"{path}: cache layout version {int(version)}; this version reads {LAYOUT_VERSION}")
    missing = [name for name in ROW_DATASETS if name not in f]
    if missing:
        raise CacheError(f"{path}: damaged cache, missing dataset(s): {', '.join(missing)}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def provenance_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """File attributes -> provenance dict (JSON attributes parsed, "" revision as None)."""
    prov: dict[str, Any] = {}
    for key, kind in PROVENANCE_ATTRS.items():
        value = attrs.get(key, 0 if kind is int else "")
        prov[key] = int(value) if kind is int else canonical(_text(value) or "{}") if kind == "json" else _text(value)
    prov["encoder_revision"] = prov["encoder_revision"] or None
    if "notice" in attrs:
        prov["notice"] = _text(attrs["notice"])
    for k, v in json.loads(_text(attrs.get("provenance_extra", "{}"))).items():
        prov.setdefault(k, v)
    return prov


def provenance_attrs(prov: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance dict -> file attributes; keys the layout does not name go to ``provenance_extra``."""
    attrs: dict[str, Any] = {}
    for key, kind in PROVENANCE_ATTRS.items():
        value = prov.get(key)
        attrs[key] = (int(value) if kind is int else json.dumps(canonical(value or {}), sort_keys=True)
                      if kind == "json" else str(value or ""))
    attrs["created"] = attrs["created"] or now()
    attrs["updated"] = attrs["updated"] or now()
    if prov.get("notice"):
        attrs["notice"] = str(prov["notice"])
    extra = {k: v for k, v in prov.items() if k not in PROVENANCE_ATTRS and k != "notice"}
    if extra:
        attrs["provenance_extra"] = json.dumps(extra, sort_keys=True, default=str)
    return attrs


def complete_provenance(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A writer's provenance: required keys checked, label schema and package versions filled in."""
    missing = [k for k in ("encoder_id", "embedding_dim", "preprocessing") if provenance.get(k) in (None, "")]
    if missing:
        raise CacheValueError(f"provenance lacks {', '.join(missing)} (needed to tell caches apart)")
    prov = dict(provenance)
    prov["label_schema"] = prov.get("label_schema") or SCHEMA.to_json()
    prov["preprocessing"] = canonical(prov["preprocessing"])
    prov["embedding_dim"] = int(prov["embedding_dim"])
    # hdf5 is a library, not a distribution: its version comes from h5py.
    versions = {**package_versions(("woundscore", "numpy", "h5py")), "hdf5": h5py.version.hdf5_version}
    prov["versions"] = {**versions, **dict(prov.get("versions") or {})}
    return prov


def same_weights(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Both provenances come from local checkpoint folders with the same recorded revision
    ``local:<hash of config and weights>``: the same checkpoint, whatever folder it was copied to.
    (Hub ids are compared as they are: a hub commit hash is only unique within its repository.)"""
    ra, rb = str(a.get("encoder_revision") or ""), str(b.get("encoder_revision") or "")
    return ra.startswith("local:") and ra == rb


def identity_differences(
    have: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str] = IDENTITY_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Differences over ``keys`` of two provenances, as ``{key: (have, new)}``.

    ``encoder_id`` ("local/<folder name>") is not compared when both sides record the same local
    weights hash (:func:`same_weights`). Values are normalised first (JSON strings parsed, tuples as lists, "" revision as None), and
    dict-valued keys are compared per sub-key (shown as ``preprocessing.size``). The cache uses
    it to refuse mixing rows; classify uses it to refuse embeddings from another encoder.
    """
    diff: dict[str, tuple[Any, Any]] = {}
    for key in keys:
        if key == "encoder_id" and same_weights(have, new):
            continue  # the weights are the identity; "local/<folder>" only names where they were
        a, b = have.get(key), new.get(key)
        if key == "encoder_revision":
            a, b = a or None, b or None
        elif key == "embedding_dim":
            a, b = int(a or 0), int(b or 0)
        else:
            a, b = canonical(a), canonical(b)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diff[f"{key}.{sub}"] = (a.get(sub), b.get(sub))
        else:
            diff[key] = (a, b)
    return diff
