"""The methods of the comparison report, each reduced to a :class:`MethodRun`: test-split scores,
val-chosen thresholds and what the method cost.

Three kinds: trained here (the logistic probe and the Keras MLP, on the cache's train split),
read from a predictions file (a fine-tune run elsewhere, or any external method), and zero-shot
MedSigLIP scored from the images.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.types import EmbeddingSet
from woundscore.classify.thresholds import choose_thresholds
from woundscore.compare.predictions import META_KEYS, read_predictions, read_predictions_meta

PROBE, MLP, ZERO_SHOT, FINETUNE = "probe", "mlp", "zero-shot", "finetune"
#: Cost keys a predictions sidecar or a zero-shot run may report.
_COST_KEYS = tuple(k for k in META_KEYS if k not in ("method", "notes"))
#: The heads trained here, as the report describes them.
TRAINED = {PROBE: "logistic regression per label on standardised embeddings (scikit-learn)",
           MLP: "Keras MLP 512-256 on frozen embeddings, masked class-weighted BCE"}


class ReportError(WoundscoreError):
    """The comparison cannot run as asked (no test rows, bad predictions, clashing names, ...)."""


@dataclass
class MethodRun:
    """One method's test-split scores and what it cost.

    P_test: (n_test, 6) probabilities aligned with the cache's test rows.
    thresholds: label -> {operating point name: threshold}, chosen on validation ({} when none).
    """

    description: str
    origin: str
    P_test: np.ndarray
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_rule: str = "0.5 only"
    cost: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    notice: str | None = None


def _rss() -> int | None:
    """Resident memory of this process in bytes (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PeakRSS:
    """How much this process's resident memory rose while a block ran, in MiB (sampled every 5 ms).

    The increase over the RSS at entry: what training added, not what Python, torch and Keras
    already held. (``embed.runtime.peak_memory`` reports the whole process's high-water mark, a
    different quantity.) ``increase_mb`` is None where /proc is unavailable.
    """

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss() or 0)

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.base is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss() or 0)

    @property
    def increase_mb(self) -> float | None:
        return None if self.base is None else round((self.peak - self.base) / 2**20, 1)


def _count_params(est: Any) -> int | None:
    """Trainable parameters of a fitted estimator: its Keras ``model_``, or its coefficients."""
    weights = getattr(getattr(est, "model_", None), "trainable_weights", None)
    if weights is not None:
        return int(sum(int(np.prod(w.shape)) for w in weights))
    parts = [np.asarray(v) for v in (getattr(est, "coef_", None), getattr(est, "intercept_", None)) if v is not None]
    return int(sum(v.size for v in parts)) if parts else None


def keras_device() -> str:
    """Where Keras (torch backend) trains: 'cpu', or 'cuda:0 (GPU name)'."""
    import torch  # heavy; already loaded by Keras when this runs

    from woundscore.embed.runtime import resolve_device

    device = resolve_device("auto")
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else device


def _val_thresholds(
    val: EmbeddingSet, ids: Sequence[str], P: np.ndarray, label_names: Sequence[str], where: str, otherwise: str,
) -> tuple[dict[str, dict[str, float]], str]:
    """Thresholds chosen on the val rows of ``P`` (n, 6), whose rows ``ids`` names, as (label ->
    {rule: threshold}, summary of the rules); ({}, ``otherwise``) when some val image has no score.

    Per label, the threshold that ``predict`` applies, named by its rule (e.g. ``youden``,
    ``sensitivity>=0.90``; ``0.5`` when validation had one class).
    """
    index = {str(i): k for k, i in enumerate(ids)}
    val_ids = [str(i) for i in val.ids]
    if not val_ids or not all(i in index for i in val_ids):
        return {}, otherwise
    chosen = choose_thresholds(val.Y, P[[index[i] for i in val_ids]], label_names=label_names)["labels"]
    rules: dict[str, list[str]] = {}
    for label in label_names:
        rules.setdefault(chosen[label]["applied"], []).append(label)
    summary = "; ".join(f"{r} for {', '.join(labs)}" for r, labs in rules.items())
    thresholds = {lab: {chosen[lab]["applied"]: chosen[lab]["value"]} for lab in label_names}
    return thresholds, f"chosen on {len(val_ids)} val rows{where}: {summary}"


def _make_head(name: str, seed: int, params: Mapping[str, Any] | None) -> Any:
    """The untrained probe or MLP. Its heavy imports happen here, before the training clock starts:
    a method's train time is training, its import time is reported apart."""
    if name == PROBE:
        import sklearn.linear_model  # noqa: F401

    from woundscore.classify.models import KerasMLPClassifier, LogisticProbe

    return (LogisticProbe if name == PROBE else KerasMLPClassifier)(**{"seed": seed, **(params or {})})


def trained_method(name: str, data: EmbeddingSet, seed: int, params: Mapping[str, Any] | None) -> MethodRun:
    """Fit the probe or the MLP (``name``) on the train split (early stopping on val), score val
    and test, time it. ``params``: extra constructor arguments."""
    train, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    t0 = time.perf_counter()
    est = _make_head(name, seed, params)
    import_s = time.perf_counter() - t0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        est.fit(train.X, train.Y, X_val=val.X, Y_val=val.Y)
        train_s = time.perf_counter() - t0
    P_val = np.asarray(est.predict_proba(val.X), dtype=np.float64)
    t0 = time.perf_counter()
    P_test = np.asarray(est.predict_proba(test.X), dtype=np.float64)
    infer_s = time.perf_counter() - t0
    thresholds, rule = _val_thresholds(val, val.ids, P_val, data.label_names, "", "0.5 only")
    cost = {
        "train_seconds": round(train_s, 3),
        "import_seconds": round(import_s, 3),  # one-time library import, not in train_seconds
        "peak_memory_mb": mem.increase_mb,
        "memory_kind": "process RSS increase while training (sampled)",
        "trainable_params": _count_params(est),
        "device": "cpu (scikit-learn)" if name == PROBE else keras_device(),
        "inference_ms_per_image": round(1000.0 * infer_s / max(len(test), 1), 4),
    }
    return MethodRun(
        description=TRAINED[name], origin=f"trained here: {len(train)} train rows, early stopping / thresholds on {len(val)} val rows",
        P_test=P_test, thresholds=thresholds, threshold_rule=rule, cost=cost,
    )


def external_method(name: str, path: Path, data: EmbeddingSet, description: str) -> MethodRun:
    """A predictions CSV (+ optional sidecar) matched to the cache's test (and val) rows by image id."""
    test, val = data.subset("test"), data.subset("val")
    ids, P = read_predictions(path)
    index = {str(i): k for k, i in enumerate(ids)}
    test_ids = [str(i) for i in test.ids]
    missing = [i for i in test_ids if i not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ReportError(
            f"{path}: predictions for method {name!r} lack {len(missing)} of the cache's "
            f"{len(test_ids)} test image id(s): {shown}"
        )
    meta = read_predictions_meta(path) or {}
    thresholds, rule = _val_thresholds(
        val, ids, P, data.label_names, " of the file",
        "0.5 only (the file has no predictions for the val split, so no val-chosen threshold)")
    notes = [str(meta["notes"])] if meta.get("notes") else []
    if not meta:
        notes.append(f"no sidecar {path.with_suffix('.json').name}: cost not reported")
    extra = len(ids) - len(test_ids) - (len(val) if thresholds else 0)
    if extra > 0:
        notes.append(f"{extra} row(s) of the file are not in the cache's test/val splits and were ignored")
    return MethodRun(
        description=str(meta.get("method") or description), origin=str(path),
        P_test=P[[index[i] for i in test_ids]], thresholds=thresholds, threshold_rule=rule,
        cost={k: meta.get(k) for k in _COST_KEYS}, notes=notes, notice=meta.get("notice") or None,
    )


def zero_shot_method(source: str | os.PathLike, model: str | os.PathLike, data: EmbeddingSet, quiet: bool) -> MethodRun:
    """Zero-shot MedSigLIP on the images of the cache's val and test rows (read from ``source``)."""
    from woundscore.compare.zeroshot import zero_shot_source  # loads torch/transformers

    test, val = data.subset("test"), data.subset("val")
    with PeakRSS() as mem:
        res = zero_shot_source(source, model, ids=[str(i) for i in (*val.ids, *test.ids)], quiet=quiet)
    index = {str(i): k for k, i in enumerate(res.ids)}
    missing = [i for i in map(str, test.ids) if i not in index]
    if missing:
        raise ReportError(
            f"{len(missing)} test image(s) could not be scored zero-shot, e.g. {missing[0]!r}: "
            + "; ".join(f"{s['image_id']}: {s['reason']}" for s in res.skipped[:3])
        )
    thresholds, rule = _val_thresholds(val, res.ids, res.P, data.label_names, "",
                                       "0.5 only (some val images could not be scored)")
    meta = dict(res.meta)
    cost = {k: meta.get(k) for k in _COST_KEYS}
    cost.update(peak_memory_mb=mem.increase_mb, memory_kind="process RSS increase while loading and scoring (sampled)")
    return MethodRun(
        description=str(meta.get("method") or "zero-shot MedSigLIP"),
        origin=f"{model} on images of {source}", P_test=res.P[[index[i] for i in map(str, test.ids)]],
        thresholds=thresholds, threshold_rule=rule, cost=cost,
        notes=[str(meta["notes"])] if meta.get("notes") else [], notice=meta.get("notice") or None,
    )

