"""Dataset readers: every source becomes a list of :class:`Sample` (image bytes + labels + split).

Four layouts are recognised by :func:`open_source`:

``hf_release``
    The Hugging Face release ``xuxuxuxuxu/SurgWound``: a folder with ``{train,val,test}_question.json``
    (and ``{train,val,test}_report.json``). Each file is one JSON array whose records repeat the
    image's base64 in every record. It is read *streaming* (:func:`iter_json_array`): memory holds
    one record at a time plus each image's decoded bytes once, never the file.
``labels_csv``
    A folder with ``labels.csv`` and ``images/`` (columns ``image``, ``split``, the six labels,
    optional ``location`` / ``closure_method``).
``image_folder``
    A plain folder of images (no labels: split ``""``, labels all -1, id = relative path).
``image_file``
    One image file.

Label problems (unknown value, missing column, conflicting answers, duplicate ids with different
labels, empty or unknown split) raise before :meth:`Source.samples` returns, so nothing is embedded
from a source whose labels are wrong. Problems with one image (bad base64, a path escaping
``images/``, a missing file, two different images under one name) are deferred to
:meth:`Sample.read_bytes`, which raises :class:`ImageReadError`; a run records it as a failure and
goes on with the rest.

Record numbers in messages are 0-based array indices (``jq '.[12]' train_question.json``); CSV row
numbers count the header as row 1, like a spreadsheet.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import hashlib
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import (
    LABEL_NAMES,
    MISSING,
    LabelError,
    LabelValueError,
    canonical_field,
    encode_annotations,
    encode_value,
    pos_weight,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
RELEASE_KINDS: tuple[str, ...] = ("question", "report")
#: File suffixes treated as images in a plain folder (compared lower-case).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
#: Column names accepted for the image path in a labels.csv (after lower-casing, spaces -> "_").
IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_name", "file_name")
REPORT_FIELD = "medical report"

_WS = re.compile(r"[ \t\n\r]*")


# ----------------------------------------------------------------------------------------------
# Errors


#: A file whose text every artifact made from this folder repeats (generated data marks itself).
NOTICE_FILE = "WOUNDSCORE_NOTICE.txt"

class SourceError(WoundscoreError):
    """A source cannot be read: unknown layout, malformed file, inconsistent records."""


class SourceLabelError(SourceError, LabelError):
    """A label problem found while reading a source (catchable as SourceError or LabelError)."""


class SourceLabelValueError(SourceLabelError, LabelValueError):
    """An annotation outside the vocabulary (cache.schema's LabelValueError, also a SourceError)."""


def _label_errors_are_source_errors(read: Callable[..., list["Sample"]]) -> Callable[..., list["Sample"]]:
    """Re-raise cache.schema's LabelValueError as SourceLabelValueError (same message), so that a
    caller catching SourceError or LabelError or LabelValueError catches every reader problem."""

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> list[Sample]:
        try:
            return read(*args, **kwargs)
        except LabelValueError as e:
            if isinstance(e, SourceError):
                raise
            raise SourceLabelValueError(e.source, e.item, e.field, e.value) from None

    return wrapper


class ImageReadError(SourceError):
    """One image cannot be read; a run records it as a failure and goes on."""

    def __init__(self, origin: str, reason: str) -> None:
        self.origin, self.reason = origin, reason
        super().__init__(f"{origin}: {reason}")


# ----------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its labels.

    Attributes:
        image_id: ``image_name`` of the release, the path under ``images/`` of a labels.csv, the
            path relative to a plain folder, or the file name of a single image.
        split: "train" / "val" / "test", or "" when unlabelled.
        labels: (6,) int8 in ``LABEL_NAMES`` order, 1 / 0 / -1 (missing).
        extras: ``EXTRA_NAMES`` -> raw annotation string ("" when unsure or absent).
        origin: file (+ record or row) for messages.
        report: the release's "Medical Report" text ("" when absent; not a label).
    """

    image_id: str
    split: str
    labels: np.ndarray
    extras: dict[str, str]
    origin: str
    report: str = ""
    # How to get the bytes: already decoded ``data``, a file ``path`` that must stay inside
    # ``root``, or a deferred ``error`` (bad base64, conflicting images ...).
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = field(default=None, repr=False)
    root: Path | None = field(default=None, repr=False)
    error: str | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        """The image file's bytes. Raises ImageReadError (missing file, escaping path, bad base64...)."""
        if self.error is not None:
            raise ImageReadError(self.origin, self.error)
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ImageReadError(self.origin, "no image data (labels only)")
        if self.root is not None and not _inside(self.path, self.root):
            raise ImageReadError(self.origin, f"image path escapes {self.root}: {self.path}")
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise ImageReadError(self.origin, f"image file not found: {self.path}") from None
        except IsADirectoryError:
            raise ImageReadError(self.origin, f"image path is a directory: {self.path}") from None
        except OSError as e:
            raise ImageReadError(self.origin, f"cannot read {self.path}: {e.strerror or e}") from None


def _inside(path: Path, root: Path) -> bool:
    """True if ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


class Source:
    """A dataset on disk. ``samples()`` reads and validates it once, then returns the same list."""

    kind: str
    path: Path

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._samples: list[Sample] | None = None

    def samples(self) -> list[Sample]:
        """All samples, labels validated (raises LabelError / SourceError before returning)."""
        if self._samples is None:
            self._samples = self._read()
        return self._samples

    def _read(self) -> list[Sample]:
        if self.kind == "hf_release":
            return read_release(self.path)
        if self.kind == "labels_csv":
            return read_labels_folder(self.path)
        if self.kind == "image_folder":
            return read_image_folder(self.path)
        if self.kind == "image_file":
            return [_unlabelled(self.path.name, self.path, None)]
        raise SourceError(f"{self.path}: unknown source kind {self.kind!r}")

    @property
    def notice(self) -> str | None:
        """The folder's ``NOTICE_FILE`` text (e.g. "generated images ..."), or None.

        Generated data carries this marker so that every artifact made from it can say so.
        """
        f = (self.path if self.path.is_dir() else self.path.parent) / NOTICE_FILE
        try:
            return f.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def __repr__(self) -> str:
        return f"Source(kind={self.kind!r}, path={str(self.path)!r})"


EXPECTED_LAYOUTS = (
    "a SurgWound release folder ({train,val,test}_{question,report}.json), "
    "a folder with labels.csv and images/, a folder of images, or one image file"
)


def open_source(path: str | os.PathLike) -> Source:
    """Detect the layout at ``path`` (see the module docstring) without reading the data yet."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or directory (expected {EXPECTED_LAYOUTS})")
    if p.is_file():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return Source("image_file", p)
        hint = ""
        if p.suffix.lower() == ".json":
            hint = "; for the SurgWound release pass the folder that holds the six JSON files"
        elif p.name.lower() == "labels.csv":
            hint = "; pass the folder that holds labels.csv and images/"
        raise SourceError(f"{p}: not an image file (expected {EXPECTED_LAYOUTS}){hint}")
    if not p.is_dir():
        raise SourceError(f"{p}: neither a file nor a folder (expected {EXPECTED_LAYOUTS})")
    release_files = [f"{s}_{k}.json" for s in SPLITS for k in RELEASE_KINDS]
    present = [name for name in release_files if (p / name).is_file()]
    if present:
        missing = [f"{s}_question.json" for s in SPLITS if not (p / f"{s}_question.json").is_file()]
        if missing:
            raise SourceError(
                f"{p}: incomplete SurgWound release: missing {', '.join(missing)} "
                "(expected {train,val,test}_{question,report}.json)"
            )
        return Source("hf_release", p)
    if (p / "labels.csv").is_file():
        if not (p / "images").is_dir():
            raise SourceError(f"{p}: has labels.csv but no images/ folder (expected labels.csv and images/)")
        return Source("labels_csv", p)
    if any(_iter_image_files(p)):
        return Source("image_folder", p)
    raise SourceError(f"{p}: no recognised dataset layout (expected {EXPECTED_LAYOUTS})")


# ----------------------------------------------------------------------------------------------
# Streaming JSON array reader


def iter_json_array(
    path: str | os.PathLike,
    *,
    chunk_chars: int = 1 << 20,
    max_record_chars: int = 256 << 20,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, value)`` for each element of the JSON array in ``path``, one at a time.

    Memory holds the current element plus at most about one chunk of look-ahead, so a 450 MB
    file reads in a few MB. The parser is the standard library's (``JSONDecoder.raw_decode`` on a
    sliding text buffer); an element that does not parse yet is retried with a buffer twice as
    large, up to ``max_record_chars`` (then the file is taken as malformed rather than read whole).
    """
    p = Path(path)
    decoder = json.JSONDecoder()
    with open(p, encoding="utf-8-sig") as f:
        buf, pos, eof = "", 0, False
        want = chunk_chars

        def fill() -> None:
            nonlocal buf, pos, eof
            chunk = f.read(want)
            if not chunk:
                eof = True
            buf = buf[pos:] + chunk  # drop what was consumed: the buffer never holds the file
            pos = 0

        def skip_ws() -> str:
            """Next non-whitespace character ('' at end of file), without consuming it."""
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                fill()

        try:
            first = skip_ws()
            if first != "[":
                found = repr(first) if first else "an empty file"
                hint = " (JSON Lines is not the release format)" if first == "{" else ""
                raise SourceError(f"{p}: expected a JSON array starting with '[', found {found}{hint}")
            pos += 1
            index = 0
            expect_value = True  # right after '[' or ','
            while True:
                c = skip_ws()
                if c == "":
                    after = f"after record {index - 1}" if index else "after '['"
                    raise SourceError(f"{p}: truncated JSON array {after}")
                if c == "]":
                    if expect_value and index > 0:
                        raise SourceError(f"{p}: trailing ',' after record {index - 1}")
                    pos += 1
                    break
                if not expect_value:
                    if c != ",":
                        raise SourceError(f"{p}: record {index - 1}: expected ',' or ']' after it, found {c!r}")
                    pos += 1
                    expect_value = True
                    continue
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as e:
                        if eof:
                            raise SourceError(f"{p}: record {index}: invalid JSON: {e.msg}") from None
                        value, end = None, -1
                    if end != -1 and (eof or _complete(buf, pos, end)):
                        break
                    # Incomplete element (or one ending exactly at the buffer's end): read more.
                    if len(buf) - pos > max_record_chars:
                        raise SourceError(
                            f"{p}: record {index}: larger than {max_record_chars} characters or malformed JSON"
                        )
                    want = max(chunk_chars, len(buf) - pos)  # doubles: no quadratic re-parsing
                    fill()
                want = chunk_chars
                yield index, value
                value = None
                pos = end
                index += 1
                expect_value = False
            if skip_ws() != "":
                raise SourceError(f"{p}: unexpected data after the JSON array's closing ']'")
        except UnicodeDecodeError as e:
            raise SourceError(f"{p}: not UTF-8 text ({e.reason})") from None


_NUMBER_CHARS = frozenset("0123456789.eE+-")


def _complete(buf: str, start: int, end: int) -> bool:
    """Whether the value parsed from ``buf[start:end]`` cannot continue past the buffer's end.

    Objects, arrays and strings end with their closing character, so they are complete once they
    parse. A number cut by the chunk boundary ("1." of "1.5") parses too, so it is complete only if
    a character that cannot continue it follows inside the buffer.
    """
    if buf[start] not in _NUMBER_CHARS:
        return True
    j = end
    while j < len(buf) and buf[j] in _NUMBER_CHARS:
        j += 1
    return j < len(buf)


# ----------------------------------------------------------------------------------------------
# The Hugging Face release


@dataclass
class _ReleaseImage:
    name: str
    split: str
    origin: str  # file + first record, for messages
    digest: bytes  # of the base64 text of the first record: later records are compared cheaply
    data: bytes | None
    error: str | None
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (answer, origin)
    report: str = ""


def _record_origin(file: Path, index: int, rec: Mapping[str, Any]) -> str:
    rid = rec.get("id")
    name = rec.get("image_name")
    bits = []
    if isinstance(rid, str):
        bits.append(f"id {rid!r}")
    if isinstance(name, str):
        bits.append(f"image {name!r}")
    return f"{file}: record {index}" + (f" ({', '.join(bits)})" if bits else "")


def _b64_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _decode_b64(text: str) -> tuple[bytes | None, str | None]:
    if not text:
        return None, "empty image (the 'image' value is an empty string)"
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        return None, f"bad base64 in 'image': {e}"
    if not data:
        return None, "empty image (base64 decodes to no bytes)"
    return data, None


@_label_errors_are_source_errors
def read_release(path: str | os.PathLike, *, load_images: bool = True) -> list[Sample]:
    """Read a SurgWound release folder into samples, one per ``image_name``.

    Args:
        path: folder with ``{train,val,test}_question.json`` and (optionally) ``*_report.json``.
        load_images: keep each image's decoded bytes (False: labels only, e.g. for stats; the
            base64 is still checked and compared across records).

    Returns:
        Samples in order of first appearance (train, val, test; question file before report file).

    Raises:
        SourceError: malformed JSON, a record without ``image_name`` / ``field`` / ``answer``, an
            unknown field, an image listed in two splits, a split without records.
        LabelError: an answer outside the vocabulary, two different answers for one image and field.
    """
    root = Path(path)
    images: dict[str, _ReleaseImage] = {}
    for split in SPLITS:
        n_before = len(images)
        for kind in RELEASE_KINDS:
            file = root / f"{split}_{kind}.json"
            if not file.is_file():
                if kind == "question":
                    raise SourceError(f"{root}: missing {file.name}")
                continue
            for index, rec in iter_json_array(file):
                _add_record(images, file, split, index, rec, load_images)
        if not any(img.split == split for img in list(images.values())[n_before:]):
            raise SourceLabelError(
                f"{root}: split {split!r} is empty: {split}_question.json has no records of new images"
            )
    samples = []
    for img in images.values():
        raw = {key: answer for key, (answer, _) in img.answers.items()}
        # Values were checked record by record; this cannot fail, it builds labels and extras.
        labels, extras = encode_annotations(raw, source=str(root), item=img.name)
        samples.append(
            Sample(
                image_id=img.name,
                split=img.split,
                labels=labels,
                extras=extras,
                origin=img.origin,
                report=img.report,
                data=img.data,
                error=img.error,
            )
        )
    return samples


def _add_record(
    images: dict[str, _ReleaseImage],
    file: Path,
    split: str,
    index: int,
    rec: Any,
    load_images: bool,
) -> None:
    if not isinstance(rec, dict):
        raise SourceError(f"{file}: record {index}: expected a JSON object, found {type(rec).__name__}")
    origin = _record_origin(file, index, rec)
    for key in ("image_name", "field", "image"):
        if key not in rec:
            raise SourceError(f"{origin}: missing key {key!r}")
        if not isinstance(rec[key], str):
            raise SourceError(f"{origin}: key {key!r} must be a string, found {type(rec[key]).__name__}")
    name, field_name, b64 = rec["image_name"], rec["field"], rec["image"]
    if not name.strip():
        raise SourceError(f"{origin}: empty 'image_name'")
    is_report = field_name.strip().lower() == REPORT_FIELD
    key = None if is_report else canonical_field(field_name)
    if not is_report and key is None:
        raise SourceError(f"{origin}: unknown field {field_name!r}")
    if "answer" not in rec:
        raise SourceError(f"{origin}: field {field_name!r} has no 'answer'")
    answer = rec["answer"]
    if not isinstance(answer, str):
        if key in LABEL_NAMES:
            raise LabelValueError(str(file), _item(index, rec), key, answer)
        raise SourceError(f"{origin}: 'answer' must be a string, found {type(answer).__name__}")

    img = images.get(name)
    digest = _b64_digest(b64)
    if img is None:
        data, error = _decode_b64(b64)
        img = _ReleaseImage(
            name=name,
            split=split,
            origin=origin,
            digest=digest,
            data=data if load_images else None,
            error=error,
        )
        images[name] = img
    else:
        if img.split != split:
            raise SourceLabelError(
                f"{origin}: image {name!r} is in split {split!r} but also in split {img.split!r} "
                f"({img.origin})"
            )
        if digest != img.digest and img.error is None:
            img.error = f"different image bytes in {origin} than in the first record of this image_name"
            img.data = None

    if is_report:
        img.report = answer
        return
    if key in LABEL_NAMES:
        encode_value(key, answer, source=str(file), item=_item(index, rec))  # raises LabelValueError
    seen = img.answers.get(key)
    if seen is None:
        img.answers[key] = (answer, origin)
    elif seen[0].strip().casefold() != answer.strip().casefold():
        raise SourceLabelError(
            f"{origin}: conflicting answers for image {name!r} field {key!r}: "
            f"{answer!r} here, {seen[0]!r} in {seen[1]}"
        )


def _item(index: int, rec: Mapping[str, Any]) -> str:
    rid = rec.get("id")
    return f"record {index} (id {rid!r}, image {rec.get('image_name')!r})" if isinstance(rid, str) else (
        f"record {index} (image {rec.get('image_name')!r})"
    )


# ----------------------------------------------------------------------------------------------
# labels.csv folders and the annotation sheet


def _norm_header(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


@dataclass
class _Row:
    number: int  # spreadsheet row (header = 1)
    image: str
    split: str
    raw: dict[str, str]
    report: str


def _read_label_table(csv_path: Path, *, with_split: bool) -> list[_Row]:
    """Rows of a labels table, columns mapped through the schema's aliases. Raises SourceLabelError."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise SourceLabelError(f"{csv_path}: empty file (no header row)") from None
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SourceLabelError(f"{csv_path}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise SourceLabelError(f"{csv_path}: malformed CSV: {e}") from None

    image_cols = [i for i, h in enumerate(header) if _norm_header(h) in IMAGE_COLUMNS]
    if not image_cols:
        raise SourceLabelError(
            f"{csv_path}: missing required column 'image' (also accepted: 'image_name', 'file_name'); "
            f"columns are {', '.join(repr(h) for h in header)}"
        )
    if len(image_cols) > 1:
        names = ", ".join(repr(header[i]) for i in image_cols)
        raise SourceLabelError(f"{csv_path}: more than one image column: {names}")
    split_col = next((i for i, h in enumerate(header) if _norm_header(h) == "split"), None)
    if with_split and split_col is None:
        raise SourceLabelError(f"{csv_path}: missing required column 'split'")
    report_col = next((i for i, h in enumerate(header) if _norm_header(h) == "medical_report"), None)
    key_cols: dict[str, int] = {}
    for i, h in enumerate(header):
        key = canonical_field(h) or canonical_field(_norm_header(h))
        if key is None:
            continue
        if key in key_cols:
            raise SourceLabelError(
                f"{csv_path}: columns {header[key_cols[key]]!r} and {h!r} both give field {key!r}"
            )
        key_cols[key] = i
    missing = [k for k in LABEL_NAMES if k not in key_cols]
    if missing:
        shown = ["urgency_level" if k == "urgency" else "exudate_type" if k == "exudate" else k for k in missing]
        raise SourceLabelError(
            f"{csv_path}: missing required column{'s' if len(shown) > 1 else ''} "
            f"{', '.join(repr(s) for s in shown)}"
        )

    out = []
    for n, cells in enumerate(rows, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) < len(header):
            cells = cells + [""] * (len(header) - len(cells))
        elif len(cells) > len(header):
            raise SourceLabelError(
                f"{csv_path}: row {n}: {len(cells)} cells but the header has {len(header)} columns"
            )
        image = cells[image_cols[0]].strip()
        if not image:
            raise SourceLabelError(f"{csv_path}: row {n}: field {header[image_cols[0]]!r} is empty")
        split = ""
        if with_split:
            value = cells[split_col]
            split = value.strip().lower()
            if split not in SPLITS:
                what = "is empty" if not split else f"has unknown value {value!r}"
                raise SourceLabelError(
                    f"{csv_path}: row {n} (image {image!r}): field 'split' {what} (expected train, val or test)"
                )
        raw = {key: cells[i] for key, i in key_cols.items()}
        report = cells[report_col] if report_col is not None else ""
        out.append(_Row(n, image, split, raw, report))
    if not out:
        raise SourceLabelError(f"{csv_path}: no data rows")
    return out


def _encode_rows(csv_path: Path, rows: list[_Row]) -> list[tuple[_Row, str, np.ndarray, dict[str, str]]]:
    """Encode every row (raises LabelValueError naming file, row, field, value); dedupe ids."""
    out = []
    seen: dict[str, tuple[_Row, np.ndarray, dict[str, str]]] = {}
    for row in rows:
        image_id = _normalise_id(row.image)
        labels, extras = encode_annotations(
            row.raw, source=str(csv_path), item=f"row {row.number} (image {row.image!r})"
        )
        prev = seen.get(image_id)
        if prev is not None:
            prow, plabels, pextras = prev
            if prow.split != row.split or not np.array_equal(plabels, labels) or pextras != extras:
                diffs = [
                    f"{k}: {prow.raw.get(k, '')!r} vs {row.raw.get(k, '')!r}"
                    for k in row.raw
                    if prow.raw.get(k, "").strip().casefold() != row.raw.get(k, "").strip().casefold()
                ]
                if prow.split != row.split:
                    diffs.insert(0, f"split: {prow.split!r} vs {row.split!r}")
                raise SourceLabelError(
                    f"{csv_path}: row {row.number}: duplicate image {image_id!r} (also row {prow.number}) "
                    f"with different labels ({'; '.join(diffs)})"
                )
            continue  # an exact duplicate row: keep the first
        seen[image_id] = (row, labels, extras)
        out.append((row, image_id, labels, extras))
    return out


def _normalise_id(image: str) -> str:
    """Relative posix path for an id; values that escape (absolute, '..') are kept as written."""
    text = image.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return image
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        return image
    return norm


@_label_errors_are_source_errors
def read_labels_folder(path: str | os.PathLike) -> list[Sample]:
    """Read a folder with ``labels.csv`` and ``images/`` (see the module docstring).

    An image path that escapes ``images/`` (absolute, ``..``, a symlink pointing out) is not an
    error here: that sample's ``read_bytes`` raises ImageReadError so the run records it and goes on.
    """
    root = Path(path)
    csv_path = root / "labels.csv"
    images_dir = root / "images"
    rows = _read_label_table(csv_path, with_split=True)
    samples = []
    for row, image_id, labels, extras in _encode_rows(csv_path, rows):
        origin = f"{csv_path}: row {row.number} (image {row.image!r})"
        if _escapes(row.image):
            # Refused per image (the run records it and goes on); symlinks pointing out of
            # images/ are caught the same way when the bytes are read.
            samples.append(
                Sample(image_id, row.split, labels, extras, origin, report=row.report,
                       error=f"image path escapes {images_dir}: {row.image!r}")
            )
            continue
        samples.append(
            Sample(image_id, row.split, labels, extras, origin, report=row.report,
                   path=images_dir / image_id, root=images_dir)
        )
    return samples


def _escapes(image: str) -> bool:
    text = image.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return True
    norm = posixpath.normpath(text)
    return norm == ".." or norm.startswith("../")


@_label_errors_are_source_errors
def read_annotation_sheet(path: str | os.PathLike) -> list[Sample]:
    """Read the surgeons' annotation sheet (``records_processed.csv``: one row per image, old field
    names, ``Uncertain``, no split, no images). Samples have split "" and no image data."""
    csv_path = Path(path)
    rows = _read_label_table(csv_path, with_split=False)
    return [
        Sample(image_id, "", labels, extras, f"{csv_path}: row {row.number} (image {row.image!r})",
               report=row.report, error="the annotation sheet holds no images")
        for row, image_id, labels, extras in _encode_rows(csv_path, rows)
    ]


# ----------------------------------------------------------------------------------------------
# Plain images


def _iter_image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root``, sorted, hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


def _unlabelled(image_id: str, path: Path, root: Path | None) -> Sample:
    labels = np.full(len(LABEL_NAMES), MISSING, dtype=np.int8)
    _, extras = encode_annotations({})
    return Sample(image_id, "", labels, extras, str(path), path=path, root=root)


@_label_errors_are_source_errors
def read_image_folder(path: str | os.PathLike) -> list[Sample]:
    """Every image under ``path`` (recursive, sorted), unlabelled; id = relative posix path."""
    root = Path(path)
    return [_unlabelled(p.relative_to(root).as_posix(), p, root) for p in _iter_image_files(root)]


# ----------------------------------------------------------------------------------------------
# Statistics


def split_stats(samples: list[Sample], *, unsplit_name: str = "unlabelled") -> dict[str, dict]:
    """Per split: ``n_images`` and per label pos / neg / missing / pos_weight (neg/pos, None if no pos).

    Splits appear in the order train, val, test, then ``unsplit_name`` for samples with split "".
    """
    order = list(SPLITS) + sorted({s.split for s in samples} - set(SPLITS))
    out: dict[str, dict] = {}
    for split in order:
        rows = [s.labels for s in samples if s.split == split]
        if not rows:
            continue
        Y = np.stack(rows).astype(np.int8)
        pw = pos_weight(Y)
        labels = {}
        for j, name in enumerate(LABEL_NAMES):
            w = float(pw[j])
            labels[name] = {
                "pos": int((Y[:, j] == 1).sum()),
                "neg": int((Y[:, j] == 0).sum()),
                "missing": int((Y[:, j] == MISSING).sum()),
                "pos_weight": None if math.isnan(w) else round(w, 3),
            }
        out[split or unsplit_name] = {"n_images": len(rows), "labels": labels}
    return out


def source_stats(path: str | os.PathLike) -> dict[str, dict]:
    """Label counts of the source at ``path`` (see :func:`split_stats`). A ``.csv`` file is read as
    the annotation sheet (labels only, reported as split "all"). Release images are not kept in
    memory; labels are validated as for a run."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".csv":
        return split_stats(read_annotation_sheet(p), unsplit_name="all")
    source = open_source(p)
    if source.kind == "hf_release":
        return split_stats(read_release(p, load_images=False))
    return split_stats(source.samples())


def format_stats(stats: dict[str, dict]) -> str:
    """A readable table of :func:`source_stats` output."""
    lines = []
    for split, s in stats.items():
        lines.append(f"{split}: {s['n_images']} images")
        lines.append(f"  {'label':<16}{'pos':>6}{'neg':>6}{'missing':>9}{'pos_weight':>12}")
        for name, c in s["labels"].items():
            pw = "-" if c["pos_weight"] is None else f"{c['pos_weight']:.2f}"
            lines.append(f"  {name:<16}{c['pos']:>6}{c['neg']:>6}{c['missing']:>9}{pw:>12}")
    return "\n".join(lines)
