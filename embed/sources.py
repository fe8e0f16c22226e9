"""Dataset readers: every source becomes a list of :class:`Sample` (image bytes + labels + split).

:func:`open_source` recognises four layouts: the Hugging Face release ``xuxuxuxuxu/SurgWound``
(``hf_release``, read streaming by :mod:`embed.release`), a folder with ``labels.csv`` and
``images/`` (``labels_csv``, :mod:`embed.tables`), a plain folder of images (``image_folder``: split
``""``, labels all -1, id = relative path) and one image file (``image_file``). Label problems raise
before :meth:`Source.samples` returns, so nothing is embedded from a source whose labels are wrong;
a problem with one image is deferred to :meth:`Sample.read_bytes` (see :mod:`embed.samples`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from woundscore.cache.schema import LABEL_NAMES, MISSING, SPLITS, encode_annotations, label_counts, pos_weight
from woundscore.embed.release import RELEASE_KINDS, read_release
from woundscore.embed.samples import NOTICE_FILE, Sample, SourceError, label_errors_are_source_errors
from woundscore.embed.tables import read_annotation_sheet, read_labels_folder

#: File suffixes treated as images in a plain folder (compared lower-case).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
EXPECTED_LAYOUTS = ("a SurgWound release folder ({train,val,test}_{question,report}.json), "
                    "a folder with labels.csv and images/, a folder of images, or one image file")


class Source:
    """A dataset on disk. ``samples()`` reads and validates it once, then returns the same list."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._samples: list[Sample] | None = None

    def samples(self) -> list[Sample]:
        """All samples, labels validated (raises LabelError / SourceError before returning)."""
        if self._samples is None:
            read = {"hf_release": read_release, "labels_csv": read_labels_folder, "image_folder": read_image_folder,
                    "image_file": lambda p: [_unlabelled(p.name, p, None)]}[self.kind]
            self._samples = read(self.path)
        return self._samples

    @property
    def notice(self) -> str | None:
        """The folder's ``NOTICE_FILE`` text (generated data marks itself so), or None."""
        f = (self.path if self.path.is_dir() else self.path.parent) / NOTICE_FILE
        try:
            return f.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def __repr__(self) -> str:
        return f"Source(kind={self.kind!r}, path={str(self.path)!r})"


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
    if any((p / f"{s}_{k}.json").is_file() for s in SPLITS for k in RELEASE_KINDS):
        missing = [f"{s}_question.json" for s in SPLITS if not (p / f"{s}_question.json").is_file()]
        if missing:
            raise SourceError(f"{p}: incomplete SurgWound release: missing {', '.join(missing)} "
                              "(expected {train,val,test}_{question,report}.json)")
        return Source("hf_release", p)
    if (p / "labels.csv").is_file():
        if not (p / "images").is_dir():
            raise SourceError(f"{p}: has labels.csv but no images/ folder (expected labels.csv and images/)")
        return Source("labels_csv", p)
    if any(_iter_image_files(p)):
        return Source("image_folder", p)
    raise SourceError(f"{p}: no recognised dataset layout (expected {EXPECTED_LAYOUTS})")


def _iter_image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root``, sorted, hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


def _unlabelled(image_id: str, path: Path, root: Path | None) -> Sample:
    _, extras = encode_annotations({})
    return Sample(image_id, "", np.full(len(LABEL_NAMES), MISSING, dtype=np.int8), extras, str(path), path=path,
                  root=root)


@label_errors_are_source_errors
def read_image_folder(path: str | os.PathLike) -> list[Sample]:
    """Every image under ``path`` (recursive, sorted), unlabelled; id = relative posix path."""
    root = Path(path)
    return [_unlabelled(p.relative_to(root).as_posix(), p, root) for p in _iter_image_files(root)]


def split_stats(samples: list[Sample], *, unsplit_name: str = "unlabelled") -> dict[str, dict]:
    """Per split: ``n_images`` and per label pos / neg / missing / pos_weight (neg/pos, None if no pos).

    Splits appear in the order train, val, test, then ``unsplit_name`` for samples with split "".
    """
    out: dict[str, dict] = {}
    for split in list(SPLITS) + sorted({s.split for s in samples} - set(SPLITS)):
        rows = [s.labels for s in samples if s.split == split]
        if rows:
            Y = np.stack(rows).astype(np.int8)
            labels = {name: {**c, "pos_weight": None if math.isnan(w) else round(float(w), 3)}
                      for (name, c), w in zip(label_counts(Y).items(), pos_weight(Y))}
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
    return split_stats(read_release(p, load_images=False) if source.kind == "hf_release" else source.samples())


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

