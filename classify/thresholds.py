"""Decision thresholds per label, chosen on the validation split only, saved with the model.

A label is flagged when its probability ``p >= threshold``. Per label three rules are stored:

- ``"0.5"``: the plain cut-off.
- ``"youden"``: the validation score that maximises Youden's J = sensitivity + specificity - 1
  (ties: the highest such threshold, i.e. fewer false alarms at equal J).
- ``"sensitivity>=0.90"`` (safety-critical labels only, default ``urgency`` and
  ``infection_risk``; the target is configurable and named in the rule): the HIGHEST threshold
  whose validation sensitivity is still >= the target, i.e. the fewest false alarms that miss at
  most 10 % of the validation positives.

``applied`` says which one ``predict`` uses: the sensitivity rule for the safety-critical labels,
Youden for the rest. A label whose validation rows have one class (or none) cannot support
either data-driven rule: it falls back to 0.5 and ``note`` says so.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING
from woundscore.classify.metrics import sens_spec

SAFETY_LABELS: tuple[str, ...] = ("infection_risk", "urgency")
DEFAULT_TARGET_SENSITIVITY = 0.90
RULE_HALF = "0.5"
RULE_YOUDEN = "youden"


class ThresholdError(WoundscoreError, ValueError):
    """Bad arguments to threshold selection (shapes, target outside (0, 1])."""


def sensitivity_rule(target: float) -> str:
    """The rule's name as stored and printed, e.g. ``"sensitivity>=0.90"``."""
    return f"sensitivity>={target:.2f}"


def youden_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(threshold, J) maximising sensitivity + specificity - 1 over the distinct scores.

    ``y`` (n,) in {0, 1} with both classes present, ``p`` (n,) scores. Ties: highest threshold.
    """
    from sklearn.metrics import roc_curve  # heavy (scipy); only when thresholds are chosen

    fpr, tpr, t = roc_curve(y, p, drop_intermediate=False)
    j = (tpr - fpr)[1:]  # [0] is sklearn's "flag nothing" point at +inf
    k = int(np.argmax(j))  # first maximum in descending-threshold order = highest threshold
    return float(t[1:][k]), float(j[k])


def sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest threshold t with mean(p[y == 1] >= t) >= target (``y`` has positives)."""
    pos = np.sort(np.asarray(p, dtype=np.float64)[y == 1])[::-1]
    # k positives at or above t are needed; a tiny slack keeps 0.9 * 10 from becoming 10
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def choose_thresholds(Y_val: np.ndarray, P_val: np.ndarray, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
                      *, safety_labels: Sequence[str] = SAFETY_LABELS,
                      label_names: Sequence[str] = LABEL_NAMES) -> dict[str, Any]:
    """Choose per-label thresholds on validation predictions.

    Args:
        Y_val: (n, L) int 1 / 0 / -1 validation labels (-1 rows are left out per label).
        P_val: (n, L) validation probabilities of the model being saved.
        target_sensitivity: minimum validation sensitivity of the safety rule, in (0, 1].
        safety_labels: labels that get (and apply) the sensitivity rule.

    Returns:
        JSON-ready dict: ``{"target_sensitivity", "safety_labels", "labels": {name: {"n",
        "positives", "rules": {rule: value or None}, "applied": rule, "value": float,
        "sensitivity", "specificity", "note"}}}`` where ``value`` is the applied threshold and
        sensitivity/specificity are its validation values (None where undefined).
    """
    Y_val = np.asarray(Y_val)
    P_val = np.asarray(P_val, dtype=np.float64)
    if Y_val.shape != P_val.shape or Y_val.ndim != 2 or Y_val.shape[1] != len(label_names):
        raise ThresholdError(f"Y_val {Y_val.shape} and P_val {P_val.shape} must both be (n, {len(label_names)})")
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise ThresholdError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
    unknown = sorted(set(safety_labels) - set(label_names))
    if unknown:
        raise ThresholdError(f"unknown safety label(s) {unknown}; labels are {list(label_names)}")
    sens_rule = sensitivity_rule(target_sensitivity)
    out: dict[str, Any] = {
        "target_sensitivity": float(target_sensitivity),
        "safety_labels": [n for n in label_names if n in safety_labels],
        "labels": {},
    }
    for j, name in enumerate(label_names):
        m = Y_val[:, j] != MISSING
        y, p = Y_val[m, j].astype(np.int64), P_val[m, j]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        safety = name in safety_labels
        rules: dict[str, float | None] = {RULE_HALF: 0.5, RULE_YOUDEN: None}
        if safety:
            rules[sens_rule] = None
        note = ""
        if n_pos == 0 or n_neg == 0:
            applied = RULE_HALF
            note = (f"validation split has {n_pos} positive and {n_neg} negative rows for {name}: "
                    "no data-driven threshold, using 0.5")
        else:
            rules[RULE_YOUDEN], _ = youden_threshold(y, p)
            if safety:
                rules[sens_rule] = sensitivity_threshold(y, p, target_sensitivity)
            applied = sens_rule if safety else RULE_YOUDEN
        value = float(rules[applied])  # type: ignore[arg-type]
        sens, spec = sens_spec(y, p, value)
        out["labels"][name] = {"n": int(m.sum()), "positives": n_pos, "rules": rules, "applied": applied,
                               "value": value, "sensitivity": sens, "specificity": spec, "note": note}
    return out


def applied_thresholds(thresholds: dict[str, Any], label_names: Sequence[str] = LABEL_NAMES) -> np.ndarray:
    """(L,) float64 applied threshold per label, in ``label_names`` order."""
    return np.array([thresholds["labels"][n]["value"] for n in label_names], dtype=np.float64)

