"""Import Keras (torch backend) without the optional modules that classify never uses.

``import keras`` costs about 8 s on a 2-core laptop, and most of it is not Keras:

- ``torch._dynamo`` (with sympy and triton, ~2.4 s): ``keras.src.backend.torch.random`` and
  ``.image`` import it only to decorate two helpers with ``@torch._dynamo.disable()``, which
  matters only while ``torch.compile`` traces them. classify never compiles.
- ``matplotlib.pyplot`` (~1.3 s): ``keras.visualization`` imports it eagerly.
- ``sklearn`` with scipy (~2 s): ``keras.wrappers`` imports it eagerly for its
  SKLearnClassifier/Regressor, which classify does not use.

:func:`import_keras` imports Keras with those three deferred, which is what makes "train the MLP
in well under 10 s including imports" reachable. What it does, and why each part is safe:

- ``torch._dynamo``: while Keras imports, a stand-in module sits in ``sys.modules``. Its
  ``disable()`` decorates a function with a wrapper that calls the function directly while the
  real dynamo has never been imported (nothing can be compiling then: ``torch.compile`` imports
  dynamo), and delegates to the real ``torch._dynamo.disable`` once anything has imported it. Any
  other attribute loads the real dynamo. The stand-in is removed right after, so a later
  ``import torch._dynamo`` (the fine-tune, ``torch.compile``) gets the real module.
- ``matplotlib`` and ``sklearn``: hidden (``None`` in ``sys.modules``) while Keras imports, then
  un-hidden; importing them later works normally. Only ``keras.visualization`` and
  ``keras.wrappers`` stay without them in this process (classify uses neither).
- A module already imported before Keras is never hidden or replaced, and a process that already
  imported Keras is left alone. If the deferred import fails (another Keras version needing more
  of dynamo), Keras is imported the plain way, with a warning.

Set ``WOUNDSCORE_PLAIN_KERAS_IMPORT=1`` to import Keras the ordinary way.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any, Callable

from woundscore.classify import _backend  # noqa: F401  (backend before keras)

PLAIN_IMPORT_ENV = "WOUNDSCORE_PLAIN_KERAS_IMPORT"
_DYNAMO = "torch._dynamo"
_HIDDEN = ("matplotlib", "sklearn")


def _real_dynamo() -> types.ModuleType | None:
    mod = sys.modules.get(_DYNAMO)
    return None if mod is None or getattr(mod, "_woundscore_standin", False) else mod


def _load_real_dynamo() -> types.ModuleType:
    mod = sys.modules.get(_DYNAMO)
    if mod is not None and getattr(mod, "_woundscore_standin", False):
        del sys.modules[_DYNAMO]
    import importlib

    return importlib.import_module(_DYNAMO)


def _disable(fn: Callable | None = None, recursive: bool = True, **kwargs: Any) -> Callable:
    """Stand-in for ``torch._dynamo.disable``: the real one once dynamo is loaded, else a no-op."""

    def decorate(f: Callable) -> Callable:
        real_wrapped: list[Callable] = []

        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            if not real_wrapped:
                real = _real_dynamo()
                if real is None:  # dynamo never imported, so nothing is being compiled
                    return f(*args, **kw)
                real_wrapped.append(real.disable(f, recursive=recursive, **kwargs))
            return real_wrapped[0](*args, **kw)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _make_standin() -> types.ModuleType:
    mod = types.ModuleType(_DYNAMO, "woundscore stand-in for torch._dynamo while keras imports")
    mod._woundscore_standin = True  # type: ignore[attr-defined]
    mod.disable = _disable  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:  # anything else: the real module
        return getattr(_load_real_dynamo(), name)

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def import_keras() -> types.ModuleType:
    """Return the ``keras`` module (torch backend), importing it without the deferred modules."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    if os.environ.get(PLAIN_IMPORT_ENV, "") not in ("", "0"):
        import keras

        return keras
    import torch

    placed: list[str] = []
    if _DYNAMO not in sys.modules:
        sys.modules[_DYNAMO] = _make_standin()
        placed.append(_DYNAMO)
    for name in _HIDDEN:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
            placed.append(name)
    try:
        import keras
    except ImportError as exc:  # a Keras/torch version that needs more of dynamo: the plain way
        for name in [m for m in sys.modules if m == "keras" or m.startswith("keras.")]:
            del sys.modules[name]
        fallback: Exception | None = exc
    else:
        fallback = None
    finally:
        for name in placed:
            mod = sys.modules.get(name)
            if mod is None or getattr(mod, "_woundscore_standin", False):
                sys.modules.pop(name, None)
        # `import torch._dynamo as d` may have cached the stand-in on the torch package;
        # drop it so torch's lazy __getattr__ imports the real module on next use.
        if getattr(torch.__dict__.get("_dynamo"), "_woundscore_standin", False):
            del torch._dynamo
    if fallback is not None:
        import warnings

        warnings.warn(f"deferred keras import failed ({fallback}); importing keras the plain way")
        import keras
    return keras
