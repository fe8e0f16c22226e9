"""Reading a cache: rows, provenance, failures, run history, a summary, and a soundness check.

Readers take no lock. They see the main file plus every complete part file of an unfinished run
(one row per image id, a later batch's row replacing an earlier one; sorted by ``order``); if a writer consolidates meanwhile, the read
starts over, so a concurrent writer's batches appear whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from woundscore.cache.guarded import reason
from woundscore.cache.leakage import audit_leakage, format_leakage
from woundscore.cache.layout import (
    LAYOUT_VERSION, REQUIRED_ATTRS, ROW_DATASETS, ROW_SPLITS, Rows, check_layout, concat, provenance_from_attrs,
    read_strs, real_path, sorted_unique,
)
from woundscore.cache.parts import Part, list_parts, read_part
from woundscore.cache.schema import LABEL_NAMES, LabelSchema, label_counts
from woundscore.cache.types import CacheError, EmbeddingSet

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Loaded:
    """The logical content of a cache: main file + complete parts, one row per id, sorted."""

    provenance: dict[str, Any]
    attrs: dict[str, Any]
    rows: Rows
    failures: list[dict]
    runs: list[dict]
    parts: list[Part]
    bad_parts: list[str]

    @property
    def last_seq(self) -> int:
        return max([int(self.attrs.get("parts_merged_upto", 0))] + [p.seq for p in self.parts])


class _Retry(Exception):
    """The main file was replaced (a writer consolidated) while it was read."""


def load(path: str | os.PathLike, *, with_x: bool = True) -> Loaded:
    """Read main file + complete parts (``rows.X`` None unless ``with_x``); retries while a writer
    consolidates. Damaged parts are skipped and listed in ``bad_parts``."""
    path = real_path(path)  # a link's parts folder is beside the real file
    for _ in range(20):
        try:
            return _load_once(path, with_x=with_x)
        except _Retry:
            continue
    raise CacheError(f"{path}: the cache kept changing while it was read; try again")


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:  # never while a writer replaces it (os.replace is atomic)
        raise CacheError(f"{path}: no such cache") from None


def _read_parts(path: Path, after: int) -> tuple[list[Part], list[str]]:
    parts, bad = [], []
    for _, p in list_parts(path, after):
        try:
            parts.append(read_part(p))
        except FileNotFoundError:
            raise _Retry() from None  # consolidated meanwhile
        except CacheError as exc:
            bad.append(str(exc))
    return parts, bad


def _open(path: Path) -> h5py.File:
    """``path`` opened for reading; CacheError if it is missing or not HDF5."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise CacheError(f"{path}: no such cache") from None
    except OSError as exc:
        raise CacheError(f"{path}: cannot open as an HDF5 embedding cache ({reason(exc)})") from None


def _load_once(path: Path, *, with_x: bool) -> Loaded:
    ino = _inode(path)  # before opening: a file replaced meanwhile is noticed below
    with _open(path) as f:
        check_layout(f, path)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        parts, bad = _read_parts(path, int(attrs.get("parts_merged_upto", 0)))
        if _inode(path) != ino:
            raise _Retry()  # main replaced while we listed parts: start over
        emb = f["embeddings"]
        n_main = int(emb.shape[0])
        dim = int(emb.shape[1]) if emb.ndim == 2 else int(attrs.get("embedding_dim", 0))
        X = None
        if with_x:  # one preallocated array: main rows read straight into it, then the parts'
            X = np.empty((n_main + sum(p.rows.n for p in parts), dim), dtype=np.float32)
            if n_main:
                emb.read_direct(X, np.s_[0:n_main], np.s_[0:n_main])
            np.concatenate([p.rows.X for p in parts if p.rows.n] or [X[:0]], out=X[n_main:])
        extras = {k: read_strs(ds) for k, ds in f["extras"].items()} if "extras" in f else {}
        main = Rows(read_strs(f["image_id"]), read_strs(f["sha256"]), read_strs(f["split"]),
                    f["labels"][()].astype(np.int8, copy=False), f["order"][()].astype(np.int64, copy=False),
                    None, extras)
        failures = []
        if "failures" in f:
            pairs = zip(read_strs(f["failures/image_id"]).tolist(), read_strs(f["failures/reason"]).tolist())
            failures = [{"image_id": i, "reason": r} for i, r in pairs]
        runs = [json.loads(r) for r in read_strs(f["runs"])] if "runs" in f else []
    rows = sorted_unique(concat([main] + [p.rows for p in parts], X), first_new=n_main)
    failures = clean_failures(failures + [x for p in parts for x in p.failures], rows)
    return Loaded(provenance_from_attrs(attrs), attrs, rows, failures, _with_part_runs(runs, parts), parts, bad)


def _with_part_runs(runs: list[dict], parts: list[Part]) -> list[dict]:
    """Add the runs known only from parts (an unfinished or killed run), with their row counts."""
    known = {r.get("run_id") for r in runs}
    pending: dict[str, dict] = {}
    for p in parts:
        rid = p.run.get("run_id")
        if rid is not None and rid not in known:
            pending.setdefault(rid, {**p.run, "rows_added": 0, "status": "unfinished"})["rows_added"] += p.rows.n
    return runs + list(pending.values())


def clean_failures(failures: list[dict], rows: Rows) -> list[dict]:
    """Last reason per image; drop images that have since been embedded (a rerun succeeded)."""
    if not failures:
        return []
    done = set(rows.image_id.tolist())
    latest: dict[str, str] = {}
    for item in failures:
        latest.pop(item["image_id"], None)  # re-insert: keep the latest position
        latest[item["image_id"]] = item["reason"]
    return [{"image_id": i, "reason": r} for i, r in latest.items() if i not in done]


def read_cache(path: str | os.PathLike) -> EmbeddingSet:
    """Read a cache (including the completed batches of an unfinished run) into an EmbeddingSet.

    Returns rows sorted by ``order``: ids/split/sha256 (n,) str, X (n, d) float32,
    Y (n, 6) int8, extras name -> (n,) str, schema, provenance (preprocessing as a dict).
    """
    loaded = load(path, with_x=True)
    for msg in loaded.bad_parts:
        warnings.warn(f"ignoring damaged batch file: {msg}")
    r, prov = loaded.rows, loaded.provenance
    try:
        schema = LabelSchema.from_json(prov["label_schema"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{path}: unreadable label_schema attribute ({exc})") from None
    return EmbeddingSet(ids=r.image_id, X=r.X, Y=r.labels, split=r.split, sha256=r.sha256, extras=r.extras,
                        schema=schema, provenance=prov)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The cache's provenance dict (no rows read)."""
    path = Path(path)
    with _open(path) as f:
        check_layout(f, path)
        return provenance_from_attrs(dict(f.attrs))


def read_failures(path: str | os.PathLike) -> list[dict]:
    """Images that could not be embedded: ``[{"image_id": ..., "reason": ...}]``."""
    return load(path, with_x=False).failures


def read_runs(path: str | os.PathLike) -> list[dict]:
    """The run history: one dict per writer run (pid, host, command, dtype, device, rows_added ...)."""
    return load(path, with_x=False).runs


def cache_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for ``wound-cache info``: rows and labels per split, provenance, failures, runs.

    Returns a JSON-able dict: ``{"path", "rows", "embedding_dim", "pending_batches",
    "splits": {split: {"rows": n, "labels": {name: {"pos", "neg", "missing"}}}},
    "provenance": {...}, "failures": {"count": m, "items": [...]}, "runs": [...],
    "leakage": LeakageAudit.to_json()}`` (duplicate images across splits, see ``cache.leakage``).
    """
    loaded = load(path, with_x=True)
    r = loaded.rows
    present = set(r.split.tolist())  # the known splits in report order ("" last), then any others
    names = [s for s in ROW_SPLITS if s in present] + sorted(present - set(ROW_SPLITS))
    splits = {s: {"rows": int((r.split == s).sum()), "labels": label_counts(r.labels[r.split == s])} for s in names}
    return {"path": str(path), "rows": int(r.n), "embedding_dim": int(loaded.provenance["embedding_dim"]),
            "pending_batches": len(loaded.parts), "splits": splits, "provenance": loaded.provenance,
            "failures": {"count": len(loaded.failures), "items": loaded.failures}, "runs": loaded.runs,
            "leakage": audit_leakage(_embedding_set(loaded)).to_json()}


def _embedding_set(loaded: Loaded) -> EmbeddingSet:
    r = loaded.rows
    return EmbeddingSet(ids=r.image_id, X=r.X, Y=r.labels, split=r.split, sha256=r.sha256, extras=r.extras,
                        provenance=loaded.provenance)


def format_info(info: Mapping[str, Any], *, max_failures: int = 20) -> str:
    """Human-readable text of a ``cache_info`` dict (what ``wound-cache info`` prints)."""
    prov = info["provenance"]
    rows = f"rows: {info['rows']} (embedding dim {info['embedding_dim']})"
    if info.get("pending_batches", 0):
        rows += f"; {info['pending_batches']} batch(es) of an unfinished run not yet consolidated"
    lines = [f"cache: {info['path']}", rows]
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
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted((prov.get("versions") or {}).items())))
    for split, d in info["splits"].items():
        lines += ["", f"split {split or '(unlabelled)'}: {d['rows']} rows", f"  {'label':<16}{'pos':>7}{'neg':>7}{'missing':>9}"]
        lines += [f"  {name:<16}{c['pos']:>7}{c['neg']:>7}{c['missing']:>9}" for name, c in d["labels"].items()]
    fails = info["failures"]
    lines += ["", f"failures: {fails['count']}"]
    lines += [f"  {item['image_id']}: {item['reason']}" for item in fails["items"][:max_failures]]
    if fails["count"] > max_failures:
        lines.append(f"  ... {fails['count'] - max_failures} more (use --json)")
    if "leakage" in info:
        lines += ["", *format_leakage(info["leakage"]), ""]
    lines.append(f"runs: {len(info['runs'])}")
    lines += [
        f"  {r.get('started', '?')} {r.get('status', '?')}: {r.get('rows_added', 0)} rows, "
        f"{r.get('compute_dtype') or '-'} on {r.get('device') or '-'} (pid {r.get('pid', '?')} on {r.get('host', '?')})"
        for r in info["runs"]
    ]
    return "\n".join(lines)


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Check a cache (what ``wound-cache verify`` lists); returns the problems, [] when it is sound.

    Also checks sha256 look like hex digests, splits are known and pending batch files are whole.
    """
    path = Path(path)
    if not path.exists():
        return [f"{path}: no such file"]
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [f"{path}: cannot open as HDF5 ({reason(exc)})"]
    with f:
        problems = _file_problems(f)
    if not problems:
        try:
            problems = _row_problems(load(path, with_x=True))
        except CacheError as exc:
            return [str(exc)]
    return [p if p.startswith(str(path)) else f"{path}: {p}" for p in problems]


def _file_problems(f: h5py.File) -> list[str]:
    """Attributes, datasets, dtypes, shapes and row counts of the main file."""
    problems = [f"attribute {name!r} is missing" for name in REQUIRED_ATTRS if name not in f.attrs]
    if "layout_version" in f.attrs and int(f.attrs["layout_version"]) != LAYOUT_VERSION:
        problems.append(f"layout_version is {int(f.attrs['layout_version'])}, expected {LAYOUT_VERSION}")
    counts = {}
    for name, (dtype, ndim) in ROW_DATASETS.items():
        if name not in f or not isinstance(f[name], h5py.Dataset):
            problems.append(f"dataset {name!r} is missing")
            continue
        ds = f[name]
        counts[name] = ds.shape[0] if ds.ndim else -1
        if ds.ndim != ndim:
            problems.append(f"dataset {name!r} has shape {ds.shape}, expected {ndim} dimension(s)")
        if dtype is None and h5py.check_string_dtype(ds.dtype) is None:
            problems.append(f"dataset {name!r} has dtype {ds.dtype}, expected strings")
        elif dtype is not None and ds.dtype != dtype:
            problems.append(f"dataset {name!r} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
    counts.update({f"extras/{name}": ds.shape[0] for name, ds in f["extras"].items()} if "extras" in f else {})
    if len(set(counts.values())) > 1:
        problems.append("row counts differ: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    emb, dim = f.get("embeddings"), f.attrs.get("embedding_dim")
    if isinstance(emb, h5py.Dataset) and emb.ndim == 2 and dim is not None and emb.shape[1] != int(dim):
        problems.append(f"embeddings have {emb.shape[1]} columns, attribute embedding_dim is {int(dim)}")
    lab = f.get("labels")
    if isinstance(lab, h5py.Dataset) and lab.ndim == 2 and lab.shape[1] != len(LABEL_NAMES):
        problems.append(f"labels have {lab.shape[1]} columns, expected {len(LABEL_NAMES)}")
    if "label_schema" in f.attrs:
        try:
            schema = LabelSchema.from_json(f.attrs["label_schema"])
            if len(schema.labels) != len(LABEL_NAMES):
                problems.append(f"label_schema lists {len(schema.labels)} labels, expected {len(LABEL_NAMES)}")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"label_schema attribute is not a valid schema ({exc})")
    for key in ("preprocessing", "versions"):
        try:
            json.loads(f.attrs.get(key, "{}"))
        except (ValueError, TypeError):
            problems.append(f"attribute {key!r} is not JSON")
    return problems


def _row_problems(loaded: Loaded) -> list[str]:
    """NaN/inf embeddings, labels, duplicates, hashes and splits of every row (parts included)."""
    problems = list(loaded.bad_parts)
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
        bad, (i, j) = np.flatnonzero(badlab.any(axis=1)), np.argwhere(badlab)[0]
        problems.append(f"{len(bad)} row(s) have labels outside {{-1, 0, 1}}: {_first(ids, bad)} "
                        f"(e.g. {ids[i]} {LABEL_NAMES[j]}={int(r.labels[i, j])})")
    seen: set[str] = set()  # repeated ids, in the order of their first repeat (identical bytes
    dups = list(dict.fromkeys(v for v in ids if v in seen or seen.add(v)))  # under two ids are fine)
    if dups:
        problems.append(f"{len(dups)} duplicate image id(s): {', '.join(dups[:5])}{' ...' if len(dups) > 5 else ''}")
    bad_sha = [i for i, s in enumerate(r.sha256.tolist()) if not SHA_RE.match(s)]
    if bad_sha:
        problems.append(f"{len(bad_sha)} sha256 value(s) are not hex digests: {_first(ids, bad_sha)}")
    bad_split = sorted(set(r.split.tolist()) - set(ROW_SPLITS))
    if bad_split:
        problems.append(f"unknown split value(s): {', '.join(map(repr, bad_split))}")
    return problems


def _first(ids: list[str], idx, k: int = 5) -> str:
    idx = list(idx)
    return ", ".join(str(ids[i]) for i in idx[:k]) + (" ..." if len(idx) > k else "")
