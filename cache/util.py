"""Small helpers every stage uses: canonical JSON, package versions, atomic text writes."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

#: Distributions whose versions a cache, a model folder or a report records.
VERSIONED = ("woundscore", "numpy", "h5py", "torch", "torchvision", "transformers", "keras", "scikit-learn",
             "pillow")


def canonical(value: Any) -> Any:
    """JSON round trip (tuples -> lists, keys sorted; a JSON string is parsed first) so that equal
    settings compare equal whatever container or order they came in."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def package_versions(names: Iterable[str] = VERSIONED) -> dict[str, str]:
    """Python's version and each installed distribution's, from package metadata (imports nothing)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # not installed here (e.g. keras on an embedding-only box)
            pass
    return out


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports and model files are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(staged: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``staged`` to ``out`` in two renames (same filesystem), so ``out`` is
    always either the old folder or the new one, never half of each; the old one is removed after."""
    import shutil  # only the folder writers need it

    staged, out = Path(staged), Path(out)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)
