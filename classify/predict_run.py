"""The body of ``wound-classify predict``: inputs (classify.inputs) -> batches -> the contract,
streamed to stdout or to ``--out`` (JSON Lines, CSV or the prompt block) as each batch is done.

An ``--out`` file is written beside its final name and renamed into place at the end, so a run
that dies leaves no half file under that name (``<out>.partial`` shows how far it got).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.inputs import CacheInput, ImageInput, batches, count

#: CSV columns: per label its score, flag and threshold after the image, error and OOD columns.
CSV_COLUMNS = (["image", "error", "in_distribution", "ood_distance"]
               + [f"{n}_{k}" for n in LABEL_NAMES for k in ("score", "flag", "threshold")])
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A text cell a spreadsheet would execute (leading = + - @, tab, CR) gets a leading ``'``
    (OWASP's CSV-injection advice); every other cell, leading/trailing spaces included, is kept."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def csv_row(r: dict[str, Any]) -> list[Any]:
    """One contract object -> its CSV_COLUMNS cells (text cells made spreadsheet-safe)."""
    row: dict[str, Any] = {"image": spreadsheet_safe(str(r["image"])), "error": spreadsheet_safe(r.get("error", ""))}
    if "error" not in r:
        row["in_distribution"] = "" if r["in_distribution"] is None else str(r["in_distribution"]).lower()
        row["ood_distance"] = "" if r["ood"] is None or r["ood"]["distance"] is None else r["ood"]["distance"]
        for n in LABEL_NAMES:
            row[f"{n}_score"] = "" if r["scores"][n] is None else r["scores"][n]
            row[f"{n}_flag"] = str(r["flags"][n]).lower()
            row[f"{n}_threshold"] = r["thresholds"][n]["value"]
    return [row.get(c, "") for c in CSV_COLUMNS]


class Sink:
    """Where results go: ``fmt`` "json" (JSON Lines), "csv" or "prompt"; ``out`` a file or None (stdout)."""

    def __init__(self, fmt: str, out: str | None) -> None:
        self.fmt, self.out = fmt, out
        self._tmp = Path(f"{out}.partial") if out else None
        self._f: TextIO = open(self._tmp, "w", encoding="utf-8", newline="") if self._tmp else sys.stdout
        self._csv = csv.writer(self._f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(CSV_COLUMNS)

    def write(self, results: Iterable[dict[str, Any]]) -> None:
        from woundscore.classify.prompt import printable, render_prompt

        for r in results:
            if self._csv is not None:
                self._csv.writerow(csv_row(r))
            elif self.fmt == "prompt":
                self._f.write(f"# {printable(r['image'])}\n{render_prompt(r)}\n\n")
            else:
                self._f.write(json.dumps(r, allow_nan=False) + "\n")
        self._f.flush()  # streamed: each batch is visible as soon as it is scored

    def close(self, ok: bool) -> None:
        if self._tmp is None:
            return
        self._f.close()
        if ok:
            os.replace(self._tmp, self.out)  # type: ignore[arg-type]


class Progress:
    """``[ 12/100] 12 %  3.4 images/s`` on stderr, redrawn in place; only on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.enabled = enabled and sys.stderr.isatty()

    def add(self, k: int) -> None:
        self.done += k
        if self.enabled:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            pct = 100 * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{self.done:>{len(str(self.total))}}/{self.total}] {pct:3d} %  {rate:.1f} images/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _image_batch(scorer: Any, batch: Sequence[ImageInput]) -> list[dict[str, Any]]:
    from woundscore.cache.errors import WoundscoreError

    loaded: list[Any] = []
    for x in batch:
        try:
            loaded.append(x.load())
        except WoundscoreError as exc:  # ImageReadError of a release/labels.csv image
            loaded.append(exc)
    ok = [i for i, v in enumerate(loaded) if not isinstance(v, Exception)]
    scored = scorer.score_batch([loaded[i] for i in ok], names=[batch[i].name for i in ok])
    out: list[dict[str, Any]] = [{"image": x.name, "error": str(v)} if isinstance(v, Exception) else {}
                                 for x, v in zip(batch, loaded)]
    for i, r in zip(ok, scored):
        out[i] = r
    return out


def run_predict(scorer: Any, inputs: Sequence[ImageInput | CacheInput], sink: Sink, *, batch_size: int,
                progress: bool = True) -> tuple[int, int]:
    """Score every input, one encoder forward per ``batch_size`` images, writing each batch to
    ``sink`` as soon as it is done. Returns (images, failed)."""
    bar = Progress(count(inputs), progress)
    n = failed = 0
    ok = False
    try:
        for b in batches(inputs, batch_size):
            if isinstance(b, CacheInput):
                results = scorer.results_for_embeddings(b.X, [str(i) for i in b.ids], b.provenance)
            else:
                results = _image_batch(scorer, b)
            sink.write(results)
            n += len(results)
            failed += sum("error" in r for r in results)
            bar.add(len(results))
        ok = True
    finally:
        bar.close()
        sink.close(ok)
    return n, failed


