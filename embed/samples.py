"""What every reader returns: :class:`Sample` (one image's bytes, labels and split), and the
reader errors. A label problem raises while reading; a problem with one image is deferred to
:meth:`Sample.read_bytes` (``ImageReadError``), so a run records it as a failure and goes on."""

from __future__ import annotations

import errno
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LabelError, LabelValueError

#: A file whose text every artifact made from this folder repeats (generated data marks itself).
NOTICE_FILE = "WOUNDSCORE_NOTICE.txt"


class SourceError(WoundscoreError):
    """A source cannot be read: unknown layout, malformed file, inconsistent records."""


class SourceLabelError(SourceError, LabelError):
    """A label problem found while reading a source (catchable as SourceError or LabelError)."""


class SourceLabelValueError(SourceLabelError, LabelValueError):
    """An annotation outside the vocabulary (cache.schema's LabelValueError, also a SourceError)."""


class ImageReadError(SourceError):
    """One image cannot be read; a run records it as a failure and goes on."""

    def __init__(self, origin: str, reason: str) -> None:
        self.origin, self.reason = origin, reason
        super().__init__(f"{origin}: {reason}")


class NotRegularFileError(OSError):
    """A path that is a FIFO, device or socket, refused before any byte is read."""


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file *before* reading from it.

    The file is opened non-blocking (opening a FIFO for reading would otherwise wait for a writer
    for ever) and checked with ``fstat`` on the open descriptor (no race with a rename).
    Raises NotRegularFileError (FIFO, device, socket), IsADirectoryError, or OSError (missing, ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ENXIO:  # what open() says for a Unix socket
            raise NotRegularFileError(f"{path} is a socket or a device without a driver, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                    stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise NotRegularFileError(f"{path} is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def label_errors_are_source_errors(read: Callable[..., list["Sample"]]) -> Callable[..., list["Sample"]]:
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
            return read_regular_file(self.path)
        except NotRegularFileError as e:
            raise ImageReadError(self.origin, f"image path is not a regular file: {e}") from None
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
