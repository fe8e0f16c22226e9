"""classify._keras.import_keras: Keras without torch._dynamo, matplotlib and sklearn, and those
still import normally (the real modules) afterwards, in the same process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys
from woundscore.classify._keras import import_keras
keras = import_keras()
assert keras.backend.backend() == "torch"
for name in ("torch._dynamo", "matplotlib", "sklearn", "scipy"):
    assert name not in sys.modules, name
import torch
# Keras's seeded dropout goes through the stand-in dynamo.disable (dynamo never loaded)
keras.utils.set_random_seed(0)
a = keras.random.dropout(torch.ones(1000), 0.5, seed=keras.random.SeedGenerator(1))
assert "torch._dynamo" not in sys.modules
# later imports get the real modules
import torch._dynamo, matplotlib.pyplot, sklearn.base
assert not getattr(torch._dynamo, "_woundscore_standin", False)
assert sys.modules["torch._dynamo"] is torch._dynamo and hasattr(torch._dynamo, "optimize")
assert torch.compile is not None and hasattr(sklearn.base, "BaseEstimator")
keras.utils.set_random_seed(0)
b = keras.random.dropout(torch.ones(1000), 0.5, seed=keras.random.SeedGenerator(1))
assert torch.equal(a, b)  # same numbers, now through the real torch._dynamo.disable
print("ok")
"""


def test_keras_imports_without_the_heavy_optional_modules_and_they_still_work_after() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.slow  # a plain `import keras` costs ~8 s of CPU
def test_plain_import_switch() -> None:
    code = ("import os, sys; os.environ['WOUNDSCORE_PLAIN_KERAS_IMPORT'] = '1'\n"
            "from classify._keras import import_keras; import_keras()\n"
            "print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"
