"""Stage two: Keras MLP and logistic probe on cached embeddings; thresholds; scoring API."""

from woundscore.classify import _backend  # noqa: F401  (must run before any keras import)
