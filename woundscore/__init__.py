"""woundscore: a phone photo of a surgical wound -> six calibrated clinical scores.

The four stage folders at the repository root install under this package (``pyproject.toml`` maps them):
``woundscore.cache`` <- ``woundscore.embed`` <- ``woundscore.classify`` <- ``woundscore.compare``.

Public names::

    from woundscore import WoundScorer, read_cache, MaskedBCE, EmbeddingSet, LABEL_NAMES

Importing the package registers the masked loss with Keras (``woundscore>MaskedBCE``), so
``keras.saving.load_model("model.keras")`` works after ``import woundscore`` with no
``custom_objects``. That import is what makes ``import woundscore`` take a few seconds: Keras with
its torch backend is the package's heaviest dependency, and registering needs it loaded.
"""

from importlib.metadata import PackageNotFoundError, version

from woundscore.cache import LABEL_NAMES, EmbeddingSet, read_cache
from woundscore.classify.loss import MaskedBCE, masked_bce
from woundscore.classify.scorer import WoundScorer
from woundscore.cache.errors import WoundscoreError

try:
    __version__ = version("woundscore")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["LABEL_NAMES", "EmbeddingSet", "MaskedBCE", "WoundScorer", "WoundscoreError", "masked_bce",
           "read_cache", "__version__"]
