"""The report's blocks (:mod:`woundscore.compare.document`) rendered to Markdown and to one
self-contained HTML page. Every string from data is escaped here: Markdown specials are
backslash-escaped, HTML goes through a Jinja2 template with autoescaping."""

from __future__ import annotations

import base64
import os
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import jinja2

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#])")
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("woundscore.compare", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def _escape_char(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")


def printable(text: object) -> str:
    """Text for a human reader: control and format characters (ESC, NUL, DEL, C1, bidi overrides,
    zero-width marks) shown as ``\\xNN`` / ``\\uNNNN`` escapes, so an id or a notice cannot move the
    cursor, recolour a terminal or reorder what is shown. Ordinary spaces stay; tabs and line
    breaks are escaped too (one value, one line)."""
    return "".join(_escape_char(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(text))


def _md(text: object) -> str:
    """Plain text for Markdown: specials backslash-escaped (so '<script>' shows as text), one line."""
    return _MD_SPECIAL.sub(r"\\\1", printable(" ".join(str(text).split())))


def _clean(blk: tuple) -> tuple:
    """A block with every text field passed through :func:`printable` (image file names kept)."""
    kind = blk[0]
    if kind == "list":
        return (kind, [printable(x) for x in blk[1]])
    if kind == "table":
        return (kind, [printable(h) for h in blk[1]], [[printable(c) for c in row] for row in blk[2]])
    if kind == "image":
        return (kind, blk[1], printable(blk[2]))
    return (kind, printable(blk[1]), *blk[2:])


def _md_block(blk: tuple) -> str:
    kind = blk[0]
    if kind in ("h1", "h2"):
        return f"{'#' * int(kind[1])} {_md(blk[1])}"
    if kind == "banner":
        return f"> **{_md(blk[1])}**"
    if kind == "p":
        return _md(blk[1])
    if kind == "list":
        return "\n".join(f"- {_md(x)}" for x in blk[1])
    if kind == "table":
        header, rows = blk[1], blk[2]
        lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows])
    if kind == "image":
        return f"![{_md(blk[2])}]({blk[1]})"
    raise ValueError(f"unknown block {kind!r}")


def render_markdown(blocks: Sequence[tuple]) -> str:
    """Blocks -> Markdown (GitHub flavour)."""
    return "\n\n".join(_md_block(blk) for blk in blocks) + "\n"


def render_html(blocks: Sequence[tuple], *, base_dir: str | os.PathLike) -> str:
    """Blocks -> one self-contained HTML page (figures inlined as base64 PNG, no scripts).

    The template escapes every value; an image block's file (in ``base_dir``) is inlined, so the
    page is one file that fetches nothing.
    """
    blocks = [_clean(blk) for blk in blocks]
    title = next((str(blk[1]) for blk in blocks if blk[0] == "h1"), "woundscore report")
    blocks = [("image", base64.b64encode((Path(base_dir) / blk[1]).read_bytes()).decode("ascii"), blk[2])
              if blk[0] == "image" else blk for blk in blocks]
    return _ENV.get_template("report.html.j2").render(title=title, blocks=blocks) + "\n"
