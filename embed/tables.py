"""Label tables: a folder with ``labels.csv`` and ``images/``, and the surgeons' annotation sheet.

labels.csv columns: ``image`` (also ``image_name`` / ``file_name``), ``split``, the six labels,
optional ``location`` / ``closure_method`` and ``medical_report``; names go through the schema's
aliases. Row numbers in messages count the header as row 1, like a spreadsheet.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from woundscore.cache.schema import LABEL_NAMES, SPLITS, canonical_field, encode_annotations
from woundscore.embed.samples import Sample, SourceLabelError, label_errors_are_source_errors

#: Column names accepted for the image path in a labels.csv (after lower-casing, spaces -> "_").
IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_name", "file_name")


@dataclass
class _Row:
    number: int  # spreadsheet row (header = 1)
    image: str
    split: str
    raw: dict[str, str]
    report: str


def _read_csv(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise SourceLabelError(f"{csv_path}: empty file (no header row)") from None
            return header, list(reader)
    except UnicodeDecodeError as e:
        raise SourceLabelError(f"{csv_path}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise SourceLabelError(f"{csv_path}: malformed CSV: {e}") from None


def _columns(csv_path: Path, header: list[str], with_split: bool) -> tuple[int, int | None, int | None, dict[str, int]]:
    """(image column, split column, report column, canonical key -> column). Raises SourceLabelError."""
    norm = [h.strip().lower().replace(" ", "_") for h in header]
    image_cols = [i for i, h in enumerate(norm) if h in IMAGE_COLUMNS]
    if not image_cols:
        raise SourceLabelError(
            f"{csv_path}: missing required column 'image' (also accepted: 'image_name', 'file_name'); "
            f"columns are {', '.join(repr(h) for h in header)}")
    if len(image_cols) > 1:
        raise SourceLabelError(f"{csv_path}: more than one image column: {', '.join(repr(header[i]) for i in image_cols)}")
    split_col = norm.index("split") if "split" in norm else None
    if with_split and split_col is None:
        raise SourceLabelError(f"{csv_path}: missing required column 'split'")
    report_col = norm.index("medical_report") if "medical_report" in norm else None
    key_cols: dict[str, int] = {}
    for i, h in enumerate(header):
        key = canonical_field(h) or canonical_field(norm[i])
        if key is None:
            continue
        if key in key_cols:
            raise SourceLabelError(f"{csv_path}: columns {header[key_cols[key]]!r} and {h!r} both give field {key!r}")
        key_cols[key] = i
    missing = [k for k in LABEL_NAMES if k not in key_cols]
    if missing:
        shown = ["urgency_level" if k == "urgency" else "exudate_type" if k == "exudate" else k for k in missing]
        raise SourceLabelError(
            f"{csv_path}: missing required column{'s' if len(shown) > 1 else ''} {', '.join(repr(s) for s in shown)}")
    return image_cols[0], split_col, report_col, key_cols


def _read_label_table(csv_path: Path, *, with_split: bool) -> list[_Row]:
    """Rows of a labels table, columns mapped through the schema's aliases. Raises SourceLabelError."""
    header, rows = _read_csv(csv_path)
    image_col, split_col, report_col, key_cols = _columns(csv_path, header, with_split)
    out = []
    for n, cells in enumerate(rows, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):  # short rows too: a lost cell would shift into "missing"
            raise SourceLabelError(f"{csv_path}: row {n}: {len(cells)} cells but the header has {len(header)} columns")
        image = cells[image_col].strip()
        if not image:
            raise SourceLabelError(f"{csv_path}: row {n}: field {header[image_col]!r} is empty")
        split = cells[split_col].strip().lower() if with_split else ""
        if with_split and split not in SPLITS:
            what = "is empty" if not split else f"has unknown value {cells[split_col]!r}"
            raise SourceLabelError(
                f"{csv_path}: row {n} (image {image!r}): field 'split' {what} (expected train, val or test)")
        report = cells[report_col] if report_col is not None else ""
        out.append(_Row(n, image, split, {key: cells[i] for key, i in key_cols.items()}, report))
    if not out:
        raise SourceLabelError(f"{csv_path}: no data rows")
    return out


def _encode_rows(csv_path: Path, rows: list[_Row]) -> list[tuple[_Row, str, np.ndarray, dict[str, str]]]:
    """Encode every row (raises LabelValueError naming file, row, field, value); dedupe ids."""
    out = []
    seen: dict[str, tuple[_Row, np.ndarray, dict[str, str]]] = {}
    for row in rows:
        image_id = row.image if _escapes(row.image) else posixpath.normpath(row.image.replace("\\", "/"))
        labels, extras = encode_annotations(row.raw, source=str(csv_path), item=f"row {row.number} (image {row.image!r})")
        prev = seen.get(image_id)
        if prev is None:
            seen[image_id] = (row, labels, extras)
            out.append((row, image_id, labels, extras))
            continue
        prow, plabels, pextras = prev
        if prow.split != row.split or not np.array_equal(plabels, labels) or pextras != extras:
            diffs = [f"{k}: {prow.raw.get(k, '')!r} vs {row.raw.get(k, '')!r}" for k in row.raw
                     if prow.raw.get(k, "").strip().casefold() != row.raw.get(k, "").strip().casefold()]
            if prow.split != row.split:
                diffs.insert(0, f"split: {prow.split!r} vs {row.split!r}")
            raise SourceLabelError(f"{csv_path}: row {row.number}: duplicate image {image_id!r} (also row "
                                   f"{prow.number}) with different labels ({'; '.join(diffs)})")
        # else an exact duplicate row: keep the first
    return out


def _escapes(image: str) -> bool:
    """An absolute path or one climbing out with '..' (such ids are kept as written)."""
    text = image.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return True
    norm = posixpath.normpath(text)
    return norm == ".." or norm.startswith("../")


@label_errors_are_source_errors
def read_labels_folder(path: str | os.PathLike) -> list[Sample]:
    """Read a folder with ``labels.csv`` and ``images/`` (id = normalised path under images/).

    An image path that escapes ``images/`` (absolute, ``..``, a symlink pointing out) is not an
    error here: that sample's ``read_bytes`` raises ImageReadError so the run records it and goes on.
    """
    root = Path(path)
    csv_path, images_dir = root / "labels.csv", root / "images"
    samples = []
    for row, image_id, labels, extras in _encode_rows(csv_path, _read_label_table(csv_path, with_split=True)):
        origin = f"{csv_path}: row {row.number} (image {row.image!r})"
        # symlinks pointing out of images/ are caught when the bytes are read
        where = ({"error": f"image path escapes {images_dir}: {row.image!r}"} if _escapes(row.image)
                 else {"path": images_dir / image_id, "root": images_dir})
        samples.append(Sample(image_id, row.split, labels, extras, origin, report=row.report, **where))
    return samples


@label_errors_are_source_errors
def read_annotation_sheet(path: str | os.PathLike) -> list[Sample]:
    """Read the surgeons' annotation sheet (``records_processed.csv``: one row per image, old field
    names, ``Uncertain``, no split, no images). Samples have split "" and no image data."""
    csv_path = Path(path)
    rows = _read_label_table(csv_path, with_split=False)
    return [Sample(image_id, "", labels, extras, f"{csv_path}: row {row.number} (image {row.image!r})",
                   report=row.report, error="the annotation sheet holds no images")
            for row, image_id, labels, extras in _encode_rows(csv_path, rows)]
