"""The one place that chooses the Keras backend: torch (no TensorFlow anywhere in the install).

Imported by ``classify/__init__.py`` before any woundscore module imports keras. Keras reads
KERAS_BACKEND at its first import, so keras already imported with another backend is an error.
"""

from __future__ import annotations

import os
import sys

from woundscore.cache.errors import WoundscoreError

BACKEND = "torch"


class KerasBackendError(WoundscoreError, RuntimeError):
    """Keras was set up with another backend than torch."""


def ensure_torch_backend() -> None:
    """Set KERAS_BACKEND=torch, or fail clearly if keras already runs on another backend."""
    wanted = os.environ.get("KERAS_BACKEND")
    if wanted and wanted != BACKEND:
        raise KerasBackendError(
            f"KERAS_BACKEND={wanted!r} is set, but woundscore runs Keras on {BACKEND!r}; unset it"
        )
    os.environ["KERAS_BACKEND"] = BACKEND
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != BACKEND:
            raise KerasBackendError(
                f"keras was imported with backend {keras.backend.backend()!r} before woundscore; "
                f"import woundscore first or set KERAS_BACKEND={BACKEND}"
            )


ensure_torch_backend()
