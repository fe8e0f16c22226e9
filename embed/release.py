"""The Hugging Face release ``xuxuxuxuxu/SurgWound``, read streaming.

A release folder holds ``{train,val,test}_question.json`` (and ``*_report.json``); each file is one
JSON array whose records repeat the image's base64 in every record. :func:`iter_json_array` reads
it one record at a time, so memory holds the current record plus each image's decoded bytes once,
never the file. Record numbers in messages are 0-based array indices (``jq '.[12]' file``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from woundscore.cache.schema import (LABEL_NAMES, SPLITS, LabelValueError, canonical_field, encode_annotations,
                                     encode_value)
from woundscore.embed.samples import Sample, SourceError, SourceLabelError, label_errors_are_source_errors

RELEASE_KINDS: tuple[str, ...] = ("question", "report")
REPORT_FIELD = "medical report"

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARS = frozenset("0123456789.eE+-")
_DECODER = json.JSONDecoder()


class _Buffer:
    """A sliding text window over an open file: ``text[pos:]`` is not consumed yet. What is
    consumed is dropped at the next read, so the window never holds the file."""

    def __init__(self, f: IO[str], path: Path, chunk_chars: int, max_record_chars: int) -> None:
        self.f, self.path, self.chunk, self.max_record = f, path, chunk_chars, max_record_chars
        self.text, self.pos, self.eof = "", 0, False

    def fill(self, want: int) -> None:
        chunk = self.f.read(want)
        self.eof = not chunk
        self.text = self.text[self.pos:] + chunk
        self.pos = 0

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), not consumed."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos] if self.pos < len(self.text) else ""
            self.fill(self.chunk)

    def value(self, index: int) -> Any:
        """Parse and consume the element at ``pos``. One that does not parse yet is retried with a
        window twice as large (no quadratic re-parsing), up to ``max_record`` characters."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if self.eof:
                    raise SourceError(f"{self.path}: record {index}: invalid JSON: {e.msg}") from None
                value, end = None, -1
            except RecursionError:  # e.g. 100000 nested '[': no release record is nested like that
                raise SourceError(f"{self.path}: record {index}: JSON nested too deeply to read "
                                  "(not a SurgWound record)") from None
            except ValueError as e:  # the parser's other refusals (e.g. an integer too long to convert)
                raise SourceError(f"{self.path}: record {index}: unreadable JSON value: {e}") from None
            if end != -1 and (self.eof or _complete(self.text, self.pos, end)):
                self.pos = end
                return value
            # Incomplete element (or one ending exactly at the window's end): read more.
            if len(self.text) - self.pos > self.max_record:
                raise SourceError(
                    f"{self.path}: record {index}: larger than {self.max_record} characters or malformed JSON")
            self.fill(max(self.chunk, len(self.text) - self.pos))


def iter_json_array(path: str | os.PathLike, *, chunk_chars: int = 1 << 20,
                    max_record_chars: int = 256 << 20) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, value)`` for each element of the JSON array in ``path``, one at a time.

    Memory holds the current element plus about one chunk of look-ahead, so a 450 MB file reads
    in a few MB. The parser is the standard library's (``JSONDecoder.raw_decode`` on the window);
    an element larger than ``max_record_chars`` makes the file malformed rather than read whole.
    """
    p = Path(path)
    with open(p, encoding="utf-8-sig") as f:
        b = _Buffer(f, p, chunk_chars, max_record_chars)
        try:
            first = b.peek()
            if first != "[":
                found = repr(first) if first else "an empty file"
                hint = " (JSON Lines is not the release format)" if first == "{" else ""
                raise SourceError(f"{p}: expected a JSON array starting with '[', found {found}{hint}")
            b.pos += 1
            index, expect_value = 0, True  # right after '[' or ','
            while True:
                c = b.peek()
                if c == "":
                    after = f"after record {index - 1}" if index else "after '['"
                    raise SourceError(f"{p}: truncated JSON array {after}")
                if c == "]":
                    if expect_value and index > 0:
                        raise SourceError(f"{p}: trailing ',' after record {index - 1}")
                    b.pos += 1
                    break
                if not expect_value:
                    if c != ",":
                        raise SourceError(f"{p}: record {index - 1}: expected ',' or ']' after it, found {c!r}")
                    b.pos += 1
                    expect_value = True
                    continue
                yield index, b.value(index)
                index, expect_value = index + 1, False
            if b.peek() != "":
                raise SourceError(f"{p}: unexpected data after the JSON array's closing ']'")
        except UnicodeDecodeError as e:
            raise SourceError(f"{p}: not UTF-8 text ({e.reason})") from None


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


@label_errors_are_source_errors
def read_release(path: str | os.PathLike, *, load_images: bool = True) -> list[Sample]:
    """Read a SurgWound release folder into samples, one per ``image_name``, in order of first
    appearance (train, val, test; question file before report file).

    ``load_images=False`` keeps labels only (e.g. for stats); the base64 is still checked and
    compared across records.

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
                f"{root}: split {split!r} is empty: {split}_question.json has no records of new images")
    samples = []
    for img in images.values():
        # Values were checked record by record; this cannot fail, it builds labels and extras.
        labels, extras = encode_annotations({k: a for k, (a, _) in img.answers.items()}, source=str(root),
                                            item=img.name)
        samples.append(Sample(img.name, img.split, labels, extras, img.origin, report=img.report, data=img.data,
                              error=img.error))
    return samples


def _check_record(file: Path, index: int, rec: Any) -> tuple[str, str | None, str]:
    """(origin, canonical key or None for the report, answer) of a well-formed record."""
    if not isinstance(rec, dict):
        raise SourceError(f"{file}: record {index}: expected a JSON object, found {type(rec).__name__}")
    bits = [f"{k} {rec[n]!r}" for k, n in (("id", "id"), ("image", "image_name")) if isinstance(rec.get(n), str)]
    origin = f"{file}: record {index}" + (f" ({', '.join(bits)})" if bits else "")
    for key in ("image_name", "field", "image"):
        if key not in rec:
            raise SourceError(f"{origin}: missing key {key!r}")
        if not isinstance(rec[key], str):
            raise SourceError(f"{origin}: key {key!r} must be a string, found {type(rec[key]).__name__}")
    if not rec["image_name"].strip():
        raise SourceError(f"{origin}: empty 'image_name'")
    field_name = rec["field"]
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
    return origin, key, answer


def _add_record(images: dict[str, _ReleaseImage], file: Path, split: str, index: int, rec: Any,
                load_images: bool) -> None:
    origin, key, answer = _check_record(file, index, rec)
    name, b64 = rec["image_name"], rec["image"]
    digest = hashlib.blake2b(b64.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    img = images.get(name)
    if img is None:
        data, error = _decode_b64(b64)
        img = images[name] = _ReleaseImage(name, split, origin, digest, data if load_images else None, error)
    elif img.split != split:
        raise SourceLabelError(
            f"{origin}: image {name!r} is in split {split!r} but also in split {img.split!r} ({img.origin})")
    elif digest != img.digest and img.error is None:
        img.error = f"different image bytes in {origin} than in the first record of this image_name"
        img.data = None
    if key is None:
        img.report = answer
        return
    if key in LABEL_NAMES:
        encode_value(key, answer, source=str(file), item=_item(index, rec))  # raises LabelValueError
    seen = img.answers.get(key)
    if seen is None:
        img.answers[key] = (answer, origin)
    elif seen[0].strip().casefold() != answer.strip().casefold():
        raise SourceLabelError(f"{origin}: conflicting answers for image {name!r} field {key!r}: "
                               f"{answer!r} here, {seen[0]!r} in {seen[1]}")


def _item(index: int, rec: Mapping[str, Any]) -> str:
    rid = rec.get("id")
    return f"record {index} ({f'id {rid!r}, ' if isinstance(rid, str) else ''}image {rec.get('image_name')!r})"


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
