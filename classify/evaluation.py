"""Evaluate a saved model on one split of a cache (what `wound-classify evaluate` prints)."""

from __future__ import annotations

from typing import Any

from woundscore.cache import read_cache
from woundscore.cache.schema import LABEL_NAMES, SPLITS
from woundscore.classify.artifacts import load_model_dir
from woundscore.classify.metrics import evaluate
from woundscore.classify.thresholds import applied_thresholds
from woundscore.classify.train import TrainDataError


def evaluate_model_on_cache(model_dir: str, cache: str, split: str = "test") -> dict[str, Any]:
    """Library function behind `evaluate`: the model's metrics on one split of a cache.

    Returns :func:`classify.metrics.evaluate`'s dict (at the model's applied thresholds) plus
    "split", "cache", "model", "model_type", "rules" (label -> rule) and "notice".
    """
    lm = load_model_dir(model_dir)
    es = read_cache(cache)
    lm.check_compatible(es.provenance, offered=f"cache {cache}")
    part = es.subset(split)
    if len(part) == 0:
        counts = ", ".join(f"{s}={int((es.split == s).sum())}" for s in SPLITS)
        raise TrainDataError(f"{cache}: split {split!r} has no rows ({counts})")
    result = evaluate(part.Y, lm.predict_proba(part.X, es.provenance),
                      dict(zip(LABEL_NAMES, applied_thresholds(lm.thresholds).tolist())))
    result.update({
        "split": split, "cache": cache, "model": model_dir, "model_type": lm.kind,
        "rules": {n: lm.thresholds["labels"][n]["applied"] for n in LABEL_NAMES},
        "notice": lm.provenance.get("notice") or es.provenance.get("notice") or None,
    })
    return result

