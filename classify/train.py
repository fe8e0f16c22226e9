"""Train a classifier on a cache's train split, choose thresholds on its val split, save it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from woundscore.cache import EmbeddingSet, read_cache
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, SCHEMA, SPLITS
from woundscore.cache.layout import now
from woundscore.cache.util import canonical, package_versions
from woundscore.classify.artifacts import check_writable, encoder_identity, save_model_dir
from woundscore.classify.calibration import Calibration, brier, ece, fit_calibration
from woundscore.classify.metrics import evaluate
from woundscore.classify.ood import OODModel, fit_ood
from woundscore.classify.thresholds import DEFAULT_TARGET_SENSITIVITY, applied_thresholds, choose_thresholds

MODEL_KINDS = ("mlp", "logreg")


class TrainDataError(WoundscoreError, ValueError):
    """The cache cannot train a model (no train or val rows, no labels observed ...)."""


@dataclass
class PostHoc:
    """What is fitted after the head, on the validation rows: ``calibration``, ``thresholds``
    (choose_thresholds' dict, chosen on the CALIBRATED scores), ``ood`` (None without embeddings),
    ``validation`` (classify.metrics.evaluate on calibrated val at the applied thresholds) and
    ``calibration_figures`` (:func:`calibration_figures` on the same rows)."""

    calibration: Calibration
    thresholds: dict[str, Any]
    ood: OODModel | None
    validation: dict[str, Any]
    calibration_figures: dict[str, Any]


def calibration_figures(Y: np.ndarray, P_raw: np.ndarray, P_cal: np.ndarray) -> dict[str, Any]:
    """Per label ``{"n", "positives", "method"?, "brier_before", "brier_after", "ece_before",
    "ece_after", "ece_bins"}`` of (n, 6) raw and calibrated scores against (n, 6) labels (point
    values on these rows; None where a label has no rows)."""
    out: dict[str, Any] = {}
    for j, name in enumerate(LABEL_NAMES):
        m = Y[:, j] != -1
        y = Y[m, j]
        out[name] = {"n": int(m.sum()), "positives": int((y == 1).sum()),
                     "brier_before": brier(y, P_raw[m, j]), "brier_after": brier(y, P_cal[m, j]),
                     "ece_before": ece(y, P_raw[m, j]), "ece_after": ece(y, P_cal[m, j])}
    return out


def post_hoc(Y_val: np.ndarray, P_val_raw: np.ndarray, X_train: np.ndarray | None, X_val: np.ndarray | None, *,
             pos_weight: Any = None, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
             fitted_on: str = "validation split") -> PostHoc:
    """Calibrate on (n, 6) ``Y_val`` / ``P_val_raw``, then choose thresholds on the calibrated
    scores; fit the OOD description on (n_train, d) ``X_train`` with its cut-off from (n, d)
    ``X_val`` (skipped when either is None). ``pos_weight`` (6,): the head's training weights."""
    Y_val = np.asarray(Y_val)
    P_val_raw = np.asarray(P_val_raw, dtype=np.float64)
    cal = fit_calibration(Y_val, P_val_raw, pos_weight=pos_weight, fitted_on=fitted_on)
    P_cal = cal.apply(P_val_raw)
    thresholds = choose_thresholds(Y_val, P_cal, target_sensitivity)
    validation = evaluate(Y_val, P_cal, dict(zip(LABEL_NAMES, applied_thresholds(thresholds).tolist())))
    ood = None if X_train is None or X_val is None else fit_ood(X_train, X_val)
    figures = calibration_figures(Y_val, P_val_raw, P_cal)
    for name, f in figures.items():
        f["method"] = cal.labels[name].method
    return PostHoc(cal, thresholds, ood, validation, figures)


@dataclass
class TrainResult:
    """What :func:`train_from_cache` did. ``validation`` is :func:`classify.metrics.evaluate`'s
    result on the val split at the applied thresholds."""

    model_dir: Path
    model_type: str
    validation: dict[str, Any]
    thresholds: dict[str, Any]
    provenance: dict[str, Any]
    estimator: Any = field(repr=False, default=None)
    seconds: float = 0.0


def train_on_set(es: EmbeddingSet, out_dir: str | os.PathLike, *, model: str = "mlp", seed: int = 0,
                 target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY, overwrite: bool = False,
                 source: str = "<EmbeddingSet>", **params: Any) -> TrainResult:
    """Fit on ``es``'s "train" rows, early-stop and choose thresholds on its "val" rows, save.

    Args:
        es: embeddings with labels and splits (``woundscore.cache.read_cache``'s result).
        out_dir: the model folder to write (see classify.artifacts).
        model: "mlp" or "logreg". seed: seeds weights, dropout and shuffling.
        target_sensitivity: of the safety rule for urgency and infection_risk.
        source: where ``es`` came from, for messages and provenance.
        params: estimator arguments (e.g. the MLP's ``max_epochs``, ``patience``, ``on_epoch``,
            ``n_threads``); a None value keeps the estimator's default.
    """
    from woundscore.classify.models import KerasMLPClassifier, LogisticProbe  # Keras, scikit-learn: when used

    t0 = time.perf_counter()
    if model not in MODEL_KINDS:
        raise TrainDataError(f"unknown model {model!r}; choose one of {', '.join(MODEL_KINDS)}")
    prov_schema = es.provenance.get("label_schema")
    if es.schema != SCHEMA or (prov_schema and canonical(prov_schema) != canonical(SCHEMA.to_json())):
        raise TrainDataError(f"{source}: labels {list(es.label_names)} were encoded with another label schema "
                             "than this woundscore's; re-embed with the current version")
    train, val = es.subset("train"), es.subset("val")
    sizes = {s: int((es.split == s).sum()) for s in SPLITS}
    if len(train) == 0 or len(val) == 0:
        raise TrainDataError(
            f"{source}: needs rows in both the train and val splits (has train={sizes['train']}, "
            f"val={sizes['val']}, test={sizes['test']}); val chooses the epoch and the thresholds")
    if not (train.Y != -1).any():
        raise TrainDataError(f"{source}: no label is observed in the train split (all -1)")

    check_writable(out_dir, overwrite=overwrite)  # before the work, not after it
    est = (KerasMLPClassifier if model == "mlp" else LogisticProbe)(
        seed=seed, **{k: v for k, v in params.items() if v is not None})
    est.fit(train.X, train.Y, val.X, val.Y)
    ph = post_hoc(val.Y, est.predict_proba(val.X), train.X, val.X, pos_weight=est.pos_weight_,
                  target_sensitivity=target_sensitivity, fitted_on=f"val split of {source} ({len(val)} rows)")
    provenance = _provenance(es, est, source, sizes, seed=seed, target_sensitivity=target_sensitivity,
                             validation=ph.validation)
    provenance["calibration"] = calibration_provenance(ph)
    out = save_model_dir(out_dir, est, ph.thresholds, provenance, overwrite=overwrite,
                         calibration=ph.calibration, ood=ph.ood)
    return TrainResult(model_dir=out, model_type=model, validation=ph.validation, thresholds=ph.thresholds,
                       provenance=provenance, estimator=est, seconds=time.perf_counter() - t0)


def calibration_provenance(ph: PostHoc) -> dict[str, Any]:
    """provenance.json's "calibration" entry: methods, rule, rows and before/after figures, and
    the OOD description's method and cut-off."""
    cal = ph.calibration
    return {"fitted_on": cal.fitted_on, "rule": cal.rule, "methods": cal.methods,
            "figures": ph.calibration_figures,
            "ood": None if ph.ood is None else {"method": ph.ood.method, "cutoff": ph.ood.cutoff,
                                                "quantile": ph.ood.quantile, "n_val": int(ph.ood.val_distances.size),
                                                "n_train": ph.ood.n_train}}


def _provenance(es: EmbeddingSet, est: Any, source: str, sizes: dict[str, int], *, seed: int,
                target_sensitivity: float, validation: dict[str, Any]) -> dict[str, Any]:
    """provenance.json of a model trained by :func:`train_on_set` (see classify.artifacts)."""
    prov_in = dict(es.provenance)
    if hasattr(est, "history_"):  # the MLP
        training: dict[str, Any] = {
            "epochs_run": len(est.history_),
            "best_epoch": int(est.best_epoch_),
            "monitor": est.monitor_,
            "best_score": None if not np.isfinite(est.best_score_) else float(est.best_score_),
            "fit_seconds": round(float(est.fit_seconds_), 3),
            "epoch_seconds_mean": round(float(np.mean([h["seconds"] for h in est.history_])), 5),
            "optimizer": "keras.optimizers.Adam (beta 0.9/0.999, eps 1e-7)",
        }
    else:
        training = {"C": [None if not np.isfinite(c) else float(c) for c in est.C_], "notes": est.notes_}
    return {
        "created": now(),
        "encoder": {**encoder_identity(prov_in), "compute_dtype": prov_in.get("compute_dtype")},
        "training_cache": {"path": source, "rows": len(es), "created": prov_in.get("created"),
                           "updated": prov_in.get("updated")},
        "split_sizes": sizes,
        "pos_weight": dict(zip(LABEL_NAMES, [float(w) for w in est.pos_weight_])),
        # on_epoch is a progress hook, not a hyperparameter (and not JSON)
        "hyperparameters": {k: v for k, v in est.get_params().items() if k != "on_epoch"},
        "seed": int(seed),
        "target_sensitivity": float(target_sensitivity),
        "validation": validation,
        "versions": package_versions(),
        "cache_versions": prov_in.get("versions") or {},
        "notice": prov_in.get("notice") or None,
        "training": training,
    }


def train_from_cache(cache: str | os.PathLike, out_dir: str | os.PathLike, model: str = "mlp", seed: int = 0,
                     **kwargs: Any) -> TrainResult:
    """Read ``cache`` (woundscore.cache.read_cache) and :func:`train_on_set` on it; see there."""
    es = read_cache(cache)
    return train_on_set(es, out_dir, model=model, seed=seed, source=str(cache), **kwargs)

