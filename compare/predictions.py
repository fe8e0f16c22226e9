"""The predictions file: how a fine-tune (or any external method) hands its scores to the report.

Format: UTF-8 CSV with the header ``image_id,healing_status,erythema,edema,infection_risk,urgency,
exudate`` (the six labels in ``LABEL_NAMES`` order) and one row per image; probabilities in [0, 1].
Columns may come in another order; every label column must be present and no column may be unknown.

Image ids are kept verbatim (spaces included). An id that a spreadsheet would run as a formula
(leading ``=``, ``+``, ``-``, ``@``, tab or CR) is written with a leading apostrophe, which
:func:`read_predictions` removes (:func:`neutralise`).

Optional sidecar: ``predictions.json`` next to ``predictions.csv`` (same stem, ``.json``) holding
what the method cost, under the keys of ``META_KEYS``. The report reads it when present and prints
"not reported" for anything missing. No pickle: plain CSV and JSON only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.util import atomic_write_text

HEADER: tuple[str, ...] = ("image_id",) + LABEL_NAMES

#: Sidecar keys the report understands (all optional).
META_KEYS: dict[str, str] = {
    "method": "short description, e.g. 'SigLIP fine-tune, last 4 blocks, mean pooling'",
    "train_seconds": "wall time to train, seconds",
    "peak_memory_mb": "peak memory while training, MiB (say which memory in 'memory_kind')",
    "memory_kind": "e.g. 'GPU max_memory_allocated' or 'process RSS'",
    "trainable_params": "number of trainable parameters",
    "total_params": "number of parameters in the model",
    "device": "e.g. 'cuda (Tesla T4)' or 'cpu'",
    "inference_ms_per_image": "inference time per image, milliseconds",
    "notes": "free text shown beside the method in the report",
}


class PredictionsError(WoundscoreError, ValueError):
    """A predictions file (or its sidecar) is unusable. The message names the file, row and field."""


#: A cell starting with one of these is a formula to a spreadsheet (=, +, -, @; tab and CR too,
#: OWASP's list); the writer prefixes it with an apostrophe, which the reader removes again.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def neutralise(cell: str) -> str:
    """A CSV text cell that no spreadsheet executes: ``'`` before a formula start (and before a
    leading ``'``, so :func:`unneutralise` is exact for every string)."""
    return _QUOTE + cell if cell.startswith(_FORMULA_START + (_QUOTE,)) else cell


def unneutralise(cell: str) -> str:
    """The inverse of :func:`neutralise` (a hand-written cell without the prefix is kept as is)."""
    return cell[1:] if cell.startswith(_QUOTE) and cell[1:].startswith(_FORMULA_START + (_QUOTE,)) else cell


def check_writable_file(path: str | os.PathLike) -> Path:
    """Before any compute: ``path`` can be written (its folder exists or can be made, accepts a new
    file, and ``path`` is not a folder); PredictionsError otherwise."""
    import tempfile

    p = Path(path)
    if p.is_dir():
        raise PredictionsError(f"{p}: is a folder; give a file name for the predictions CSV")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.probe-"):
            pass
    except OSError as e:
        raise PredictionsError(f"{p}: cannot write there ({e.strerror or e})") from None
    return p


def _check_header(path: Path, header: list[str] | None) -> list[int]:
    """The column index of each of ``HEADER`` in the file's header row; PredictionsError if unusable."""
    if header is None:
        raise PredictionsError(f"{path}: empty file; expected the header {','.join(HEADER)}")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in HEADER]
    missing = [h for h in HEADER if h not in header]
    duplicate = len(set(header)) != len(header)
    if unknown or missing or duplicate:
        parts = [f"missing column(s) {', '.join(missing)}"] if missing else []
        parts += [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
        parts += ["duplicate column(s)"] if duplicate else []
        raise PredictionsError(f"{path}: line 1: bad header ({'; '.join(parts)}); expected {','.join(HEADER)}")
    return [header.index(h) for h in HEADER]


def _parse_row(path: Path, line_no: int, row: list[str], col: list[int], n_fields: int) -> tuple[str, list[float]]:
    """(image id, six probabilities) of one data row; PredictionsError naming line and field."""
    if len(row) != n_fields:
        raise PredictionsError(f"{path}: line {line_no}: {len(row)} fields, header has {n_fields}")
    # ids are kept verbatim (leading/trailing spaces are part of an id), minus the writer's quote
    image_id = unneutralise(row[col[0]])
    if not image_id.strip():
        raise PredictionsError(f"{path}: line {line_no}: empty image_id")
    values = []
    for name, c in zip(LABEL_NAMES, col[1:]):
        text = row[c].strip()
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (0.0 <= v <= 1.0):  # also catches NaN
            raise PredictionsError(
                f"{path}: line {line_no}: image {image_id!r}: {name}={text!r} is not a probability in [0, 1]"
            )
        values.append(v)
    return image_id, values


def read_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a predictions CSV.

    Returns:
        ids: (n,) str image ids, in file order.
        P: (n, 6) float64 probabilities in ``LABEL_NAMES`` order.

    Raises:
        PredictionsError: missing file, bad header, duplicate id, or a value that is not a
            probability; the message names the file, the line and the column.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise PredictionsError(f"{path}: cannot read predictions file: {e.strerror or e}") from e
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        col = _check_header(path, header)
        seen: dict[str, int] = {}
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue  # tolerate blank lines (e.g. a trailing newline)
            image_id, values = _parse_row(path, line_no, row, col, len(header))
            if image_id in seen:
                first = seen[image_id]
                raise PredictionsError(f"{path}: line {line_no}: image_id {image_id!r} already on line {first}")
            seen[image_id] = line_no
            rows.append(values)
    if not seen:
        raise PredictionsError(f"{path}: no prediction rows after the header")
    return np.asarray(list(seen), dtype=str), np.asarray(rows, dtype=np.float64).reshape(-1, len(LABEL_NAMES))


def write_predictions(
    path: str | os.PathLike,
    ids: Sequence[str] | np.ndarray,
    P: np.ndarray,
    *,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a predictions CSV atomically (temp file + rename), and the sidecar when ``meta`` is given.

    Args:
        ids: (n,) image ids, unique.
        P: (n, 6) probabilities in ``LABEL_NAMES`` order, in [0, 1].
        meta: optional cost information under the keys of ``META_KEYS`` (others are kept too).

    Returns the CSV path.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape != (len(ids), len(LABEL_NAMES)):
        raise PredictionsError(
            f"{path}: probabilities must have shape ({len(ids)}, {len(LABEL_NAMES)}), got {P.shape}"
        )
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PredictionsError(f"{path}: duplicate image ids {dup[:5]}")
    bad = ~((P >= 0.0) & (P <= 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PredictionsError(
            f"{path}: image {ids[r]!r}: {LABEL_NAMES[c]}={float(P[r, c])!r} is not a probability in [0, 1]"
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    # repr-precision floats: a read-back gives the identical array; ids neutralised for spreadsheets
    w.writerows([neutralise(i)] + [repr(float(v)) for v in row] for i, row in zip(ids, P))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    if meta is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_predictions_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar JSON of a predictions CSV as a dict, or None when there is none."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PredictionsError(f"{side}: unreadable sidecar JSON: {e}") from e
    if not isinstance(meta, dict):
        raise PredictionsError(f"{side}: sidecar must be a JSON object, got {type(meta).__name__}")
    return meta

