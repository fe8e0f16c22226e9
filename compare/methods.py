"""The methods of the comparison report, each reduced to a :class:`MethodRun`: test-split scores,
val-chosen thresholds and what the method cost.

Three kinds: trained here (the logistic probe and the Keras MLP, on the cache's train split),
read from a predictions file (a fine-tune run elsewhere, or any external method), and zero-shot
MedSigLIP scored from the images.
"""

from __future__ import annotations

import json
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

    P_test: (n_test, 6) CALIBRATED probabilities aligned with the cache's test rows (the raw
    scores where no calibration could be fitted); P_test_raw: (n_test, 6) before calibration.
    thresholds: label -> {operating point name: threshold}, chosen on the calibrated validation
    scores ({} when none). calibration: the fitted Calibration's to_json() (None: not calibrated,
    ``calibration_note`` says why). model_dir: the saved model folder (trained heads only).
    member_P_test: (m, n_test, 6) raw scores of a seed ensemble's members, when the head is one.
    """

    description: str
    origin: str
    P_test: np.ndarray
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_rule: str = "0.5 only"
    cost: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    notice: str | None = None
    P_test_raw: np.ndarray | None = None
    calibration: dict[str, Any] | None = None
    calibration_note: str = ""
    model_dir: Path | None = None
    member_P_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.P_test_raw is None:
            self.P_test_raw = self.P_test


def _rss() -> int | None:
    """Resident memory of this process in bytes (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


#: The one memory measure of the cost table, for every method measured here.
MEMORY_KIND = "peak RSS of the work (MiB above the process RSS when the work began, sampled every 5 ms)"


class PeakRSS:
    """Peak RSS of the work: how much this process's resident memory rose while a block ran, in
    MiB (sampled every 5 ms), i.e. :data:`MEMORY_KIND`.

    The increase over the RSS at entry: what the work added, not what Python, torch and Keras
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


def _rule_summary(chosen: Mapping[str, Mapping[str, Any]], label_names: Sequence[str]) -> str:
    """'youden for a, b; sensitivity>=0.90 for c' from choose_thresholds' per-label dicts."""
    rules: dict[str, list[str]] = {}
    for label in label_names:
        rules.setdefault(chosen[label]["applied"], []).append(label)
    return "; ".join(f"{r} for {', '.join(labs)}" for r, labs in rules.items())


def _val_rows(val: EmbeddingSet, ids: Sequence[str]) -> list[int] | None:
    """Row numbers (in ``ids``) of the val split's images; None when some val image has no row."""
    index = {str(i): k for k, i in enumerate(ids)}
    val_ids = [str(i) for i in val.ids]
    if not val_ids or not all(i in index for i in val_ids):
        return None
    return [index[i] for i in val_ids]


def _calibrate_and_threshold(
    val: EmbeddingSet, ids: Sequence[str], P: np.ndarray, label_names: Sequence[str], where: str, otherwise: str,
    pos_weight: Any = None,
) -> tuple[np.ndarray, dict[str, Any] | None, str, dict[str, dict[str, float]], str]:
    """Calibrate ``P`` (n, 6) (rows named by ``ids``) on its val rows, then choose thresholds on the
    CALIBRATED val scores. Returns (P calibrated (n, 6), calibration JSON | None, calibration note,
    label -> {rule: threshold}, summary of the rules); without a score for every val image:
    (P unchanged, None, why, {}, ``otherwise``).

    The threshold per label is the one ``predict`` applies, named by its rule (e.g. ``youden``,
    ``sensitivity>=0.90``; ``0.5`` when validation had one class).
    """
    from woundscore.classify.calibration import fit_calibration

    rows = _val_rows(val, ids)
    if rows is None:
        return P, None, "not calibrated: " + otherwise.split("(", 1)[-1].rstrip(")"), {}, otherwise
    cal = fit_calibration(val.Y, P[rows], pos_weight=pos_weight, fitted_on=f"{len(rows)} val rows{where}")
    P_cal = np.asarray(cal.apply(P), dtype=np.float64)
    chosen = choose_thresholds(val.Y, P_cal[rows], label_names=label_names)["labels"]
    thresholds = {lab: {chosen[lab]["applied"]: chosen[lab]["value"]} for lab in label_names}
    note = f"fitted on {len(rows)} val rows{where}: " + ", ".join(f"{k} {v}" for k, v in cal.methods.items())
    rule = f"chosen on {len(rows)} val rows{where} (calibrated scores): {_rule_summary(chosen, label_names)}"
    return P_cal, cal.to_json(), note, thresholds, rule


def _make_head(name: str) -> None:
    """Import the probe's or the MLP's heavy libraries before the training clock starts: a
    method's train time is training, its import time is reported apart."""
    if name == PROBE:
        import sklearn.linear_model  # noqa: F401
    else:
        import keras  # noqa: F401

    import woundscore.classify.models  # noqa: F401


def trained_method(
    name: str, data: EmbeddingSet, seed: int, params: Mapping[str, Any] | None, model_dir: Path, source: str,
) -> MethodRun:
    """Train the probe or the MLP (``name``) with ``classify.train.train_on_set`` (train split;
    early stopping, calibration and thresholds on val) into the model folder ``model_dir`` (what
    ``wound-serve`` deploys), then score the test split. ``params``: extra estimator arguments."""
    from woundscore.classify.artifacts import CALIBRATION_FILE
    from woundscore.classify.calibration import Calibration
    from woundscore.classify.train import train_on_set

    train, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    t0 = time.perf_counter()
    _make_head(name)
    import_s = time.perf_counter() - t0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        res = train_on_set(data, model_dir, model="logreg" if name == PROBE else "mlp", seed=seed, source=source,
                           **dict(params or {}))
        train_s = time.perf_counter() - t0
    est = res.estimator
    t0 = time.perf_counter()
    P_raw = np.asarray(est.predict_proba(test.X), dtype=np.float64)
    infer_s = time.perf_counter() - t0
    cal_json = json.loads((Path(model_dir) / CALIBRATION_FILE).read_text(encoding="utf-8"))
    cal = Calibration.from_json(cal_json, origin=str(Path(model_dir) / CALIBRATION_FILE))
    chosen = res.thresholds["labels"]
    cost = {
        "train_seconds": round(train_s, 3),  # fit, calibration, thresholds, OOD description, saving
        "import_seconds": round(import_s, 3),  # one-time library import, not in train_seconds
        "peak_memory_mb": mem.increase_mb,
        "memory_kind": MEMORY_KIND,
        "trainable_params": _count_params(est),
        "device": "cpu (scikit-learn)" if name == PROBE else keras_device(),
        "inference_ms_per_image": round(1000.0 * infer_s / max(len(test), 1), 4),
    }
    members = getattr(est, "member_proba", None)
    member_P = None if members is None else np.asarray(members(test.X), dtype=np.float64)
    if member_P is not None and len(member_P) < 2:
        member_P = None  # one member: no spread to show
    return MethodRun(
        description=TRAINED[name],
        origin=f"trained here: {len(train)} train rows, early stopping / calibration / thresholds on {len(val)} val rows",
        P_test=np.asarray(cal.apply(P_raw), dtype=np.float64), P_test_raw=P_raw,
        thresholds={lab: {chosen[lab]["applied"]: chosen[lab]["value"]} for lab in data.label_names},
        threshold_rule=f"chosen on {len(val)} val rows (calibrated scores): {_rule_summary(chosen, data.label_names)}",
        cost=cost, calibration=cal_json,
        calibration_note=f"fitted on {len(val)} val rows: " + ", ".join(f"{k} {v}" for k, v in cal.methods.items()),
        model_dir=Path(model_dir),
        member_P_test=member_P,
    )


def seed_members(data: EmbeddingSet, seed: int, params: Mapping[str, Any] | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The MLP's seed spread, measured: a k-member seed ensemble (one Keras fit, each member with its
    own seed and early stopping on val) -> (val (k, n_val, 6), test (k, n_test, 6)) member scores."""
    from woundscore.classify.models import KerasMLPClassifier

    train, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    est = KerasMLPClassifier(**{"seed": seed, **dict(params or {}), "n_members": int(k)})
    est.fit(train.X, train.Y, X_val=val.X, Y_val=val.Y)
    return (np.asarray(est.member_proba(val.X), dtype=np.float64),
            np.asarray(est.member_proba(test.X), dtype=np.float64))


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
    P_cal, cal, cal_note, thresholds, rule = _calibrate_and_threshold(
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
        P_test=P_cal[[index[i] for i in test_ids]], P_test_raw=P[[index[i] for i in test_ids]],
        thresholds=thresholds, threshold_rule=rule, calibration=cal, calibration_note=cal_note,
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
    P_cal, cal, cal_note, thresholds, rule = _calibrate_and_threshold(
        val, res.ids, res.P, data.label_names, "", "0.5 only (some val images could not be scored)")
    meta = dict(res.meta)
    cost = {k: meta.get(k) for k in _COST_KEYS}
    cost.update(peak_memory_mb=mem.increase_mb, memory_kind=MEMORY_KIND)
    return MethodRun(
        description=str(meta.get("method") or "zero-shot MedSigLIP"),
        origin=f"{model} on images of {source}", P_test=P_cal[[index[i] for i in map(str, test.ids)]],
        P_test_raw=res.P[[index[i] for i in map(str, test.ids)]], calibration=cal, calibration_note=cal_note,
        thresholds=thresholds, threshold_rule=rule, cost=cost,
        notes=[str(meta["notes"])] if meta.get("notes") else [], notice=meta.get("notice") or None,
    )

