"""What ``wound-classify predict`` accepts, resolved into a list of inputs before anything is scored.

Each argument is one of:

- an image file (any name: a file given explicitly is tried, and a bad one gets its error line);
- a cache (``.h5`` / ``.hdf5``, or any file starting with the HDF5 signature): its rows' vectors
  are scored directly, no encoder needed; ``image`` is the row's id;
- a folder: a SurgWound release folder or a folder with ``labels.csv`` + ``images/`` (read with
  ``embed.sources.open_source``; ``image`` is the image id), otherwise every image under it,
  recursively (images only: IMAGE_SUFFIXES, hidden files skipped; ``image`` is the file's path);
- a glob pattern (``photos/**/*.jpg``; quoted so the shell leaves it alone): the image files it
  matches;
- anything else (e.g. a missing file): kept as a path, so its line says "cannot read file".
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CACHE_SUFFIXES = (".h5", ".hdf5")
_GLOB_CHARS = frozenset("*?[")


class PredictInputError(WoundscoreError):
    """An argument of predict that names nothing usable (an empty folder, a glob with no match)."""


@dataclass(frozen=True)
class ImageInput:
    """One image to encode: ``name`` is the contract's ``image``; ``load()`` -> a path or bytes
    (may raise embed.samples.ImageReadError, which predict reports on the image's line)."""

    name: str
    load: Callable[[], Any]


@dataclass(frozen=True)
class CacheInput:
    """Rows of a cache: (n,) ids, (n, d) vectors and the cache's provenance (checked by the model)."""

    path: str
    ids: np.ndarray
    X: np.ndarray
    provenance: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def is_cache_file(p: Path) -> bool:
    """A woundscore cache (HDF5) rather than an image."""
    if p.suffix.lower() in CACHE_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def _path_input(p: str) -> ImageInput:
    return ImageInput(p, lambda: p)


def _folder_inputs(folder: Path) -> list[ImageInput]:
    from woundscore.embed.sources import open_source, read_image_folder

    try:
        source = open_source(folder)
    except WoundscoreError:  # no recognised layout: an empty folder, or one without images
        if (folder / "labels.csv").exists() or any(folder.glob("*_question.json")):
            raise  # a dataset folder that is broken: say why, do not fall back to loose images
        source = None
    if source is not None and source.kind in ("hf_release", "labels_csv"):
        return [ImageInput(s.image_id, s.read_bytes) for s in source.samples()]
    files = [str(s.path) for s in read_image_folder(folder)]
    if not files:
        raise PredictInputError(f"{folder}: a folder without images (looked recursively for "
                                f"{', '.join(sorted(_suffixes()))})")
    return [_path_input(f) for f in files]


def _suffixes() -> frozenset[str]:
    from woundscore.embed.sources import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _glob_inputs(pattern: str) -> list[ImageInput]:
    hits = sorted(h for h in glob.glob(pattern, recursive=True)
                  if os.path.isfile(h) and Path(h).suffix.lower() in _suffixes())
    if not hits:
        raise PredictInputError(f"{pattern}: the pattern matches no image file")
    return [_path_input(h) for h in hits]


def resolve_inputs(args: Sequence[str]) -> list[ImageInput | CacheInput]:
    """Each argument -> its inputs, in argument order (see the module docstring).

    Raises PredictInputError (empty folder, glob without match), SourceError / LabelError (a
    release or labels.csv folder that cannot be read), CacheError (an unreadable cache).
    """
    out: list[ImageInput | CacheInput] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out.extend(_folder_inputs(p))
        elif p.is_file() and is_cache_file(p):
            from woundscore.cache import read_cache

            es = read_cache(p)
            out.append(CacheInput(a, np.asarray(es.ids), np.asarray(es.X, dtype=np.float32), dict(es.provenance)))
        elif not p.exists() and _GLOB_CHARS & set(a):
            out.extend(_glob_inputs(a))
        else:
            out.append(_path_input(a))
    return out


def count(inputs: Sequence[ImageInput | CacheInput]) -> int:
    """Number of images (cache rows count one each)."""
    return sum(len(x) if isinstance(x, CacheInput) else 1 for x in inputs)


def batches(inputs: Sequence[ImageInput | CacheInput], batch_size: int,
            cache_batch: int = 4096) -> Iterator[list[ImageInput] | CacheInput]:
    """Consecutive image inputs in lists of ``batch_size``; cache rows in slices of ``cache_batch``."""
    pending: list[ImageInput] = []
    for x in inputs:
        if isinstance(x, CacheInput):
            if pending:
                yield pending
                pending = []
            for s in range(0, len(x), cache_batch):
                sl = slice(s, s + cache_batch)
                yield CacheInput(x.path, x.ids[sl], x.X[sl], x.provenance)
        else:
            pending.append(x)
            if len(pending) == batch_size:
                yield pending
                pending = []
    if pending:
        yield pending
