"""Thresholds chosen on validation: sensitivity rule really reaches the target and is the highest
such threshold; Youden equals brute force; one-class labels fall back to 0.5 and say so."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.thresholds import (
    ThresholdError,
    applied_thresholds,
    choose_thresholds,
    sensitivity_rule,
    sensitivity_threshold,
    youden_threshold,
)


def _brute_youden(y: np.ndarray, p: np.ndarray) -> float:
    return max(np.mean(p[y == 1] >= t) + np.mean(p[y == 0] < t) - 1 for t in np.unique(p))


def _val_set(seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 6)) < 0.3).astype(np.int8)
    Y[rng.random(Y.shape) < 0.1] = -1
    P = np.clip(0.3 * Y + rng.random((n, 6)) * 0.7, 0, 1).round(2)  # rounding makes ties
    return Y, P


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_safety_labels_reach_the_target_and_nothing_higher_does(seed: int, target: float) -> None:
    Y, P = _val_set(seed)
    th = choose_thresholds(Y, P, target)
    rule = sensitivity_rule(target)
    for name in ("urgency", "infection_risk"):
        j = LABEL_NAMES.index(name)
        m = Y[:, j] != -1
        y, p = Y[m, j], P[m, j]
        entry = th["labels"][name]
        t = entry["value"]
        assert entry["applied"] == rule == f"sensitivity>={target:.2f}"
        assert np.mean(p[y == 1] >= t) >= target
        assert entry["sensitivity"] == np.mean(p[y == 1] >= t)
        higher = np.unique(p)[np.unique(p) > t]
        assert all(np.mean(p[y == 1] >= h) < target for h in higher)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_youden_equals_brute_force_for_the_other_labels(seed: int) -> None:
    Y, P = _val_set(seed)
    th = choose_thresholds(Y, P)
    for j, name in enumerate(LABEL_NAMES):
        m = Y[:, j] != -1
        y, p = Y[m, j], P[m, j]
        t = th["labels"][name]["rules"]["youden"]
        j_at_t = np.mean(p[y == 1] >= t) + np.mean(p[y == 0] < t) - 1
        assert j_at_t == pytest.approx(_brute_youden(y, p), abs=1e-12)
        if name not in ("urgency", "infection_risk"):
            assert th["labels"][name]["applied"] == "youden" and th["labels"][name]["value"] == t


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=2, max_size=40),
       st.floats(0.05, 1.0))
def test_rules_hold_for_any_small_validation_set(rows: list[tuple[int, int]], target: float) -> None:
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] / 20 for r in rows])
    if len(set(y.tolist())) < 2:
        return
    t, j = youden_threshold(y, p)
    assert j == pytest.approx(_brute_youden(y, p), abs=1e-12)
    ts = sensitivity_threshold(y, p, target)
    assert np.mean(p[y == 1] >= ts) >= target - 1e-12
    assert all(np.mean(p[y == 1] >= h) < target - 1e-12 for h in np.unique(p) if h > ts)


def test_one_class_label_falls_back_to_half_and_says_so() -> None:
    Y, P = _val_set(0)
    Y[:, LABEL_NAMES.index("urgency")] = np.where(Y[:, LABEL_NAMES.index("urgency")] == -1, -1, 0)
    Y[:, LABEL_NAMES.index("edema")] = -1
    th = choose_thresholds(Y, P)
    u = th["labels"]["urgency"]
    assert u["applied"] == "0.5" and u["value"] == 0.5
    assert u["rules"]["youden"] is None and u["rules"]["sensitivity>=0.90"] is None
    assert u["note"].startswith("validation split has 0 positive and ") and u["note"].endswith("using 0.5")
    e = th["labels"]["edema"]
    assert e["note"] == "validation split has 0 positive and 0 negative rows for edema: no data-driven threshold, using 0.5"
    assert e["n"] == 0 and e["sensitivity"] is None and e["specificity"] is None
    assert applied_thresholds(th)[LABEL_NAMES.index("edema")] == 0.5


def test_bad_arguments_are_named_errors() -> None:
    Y, P = _val_set(0)
    with pytest.raises(ThresholdError, match=r"target_sensitivity must be in \(0, 1\], got 1.5"):
        choose_thresholds(Y, P, 1.5)
    with pytest.raises(ThresholdError, match=r"must both be \(n, 6\)"):
        choose_thresholds(Y[:, :5], P[:, :5])
    with pytest.raises(ThresholdError, match=r"unknown safety label\(s\) \['pain'\]"):
        choose_thresholds(Y, P, safety_labels=("pain",))


def test_thresholds_and_their_sensitivity_specificity_equal_hand_computed_values() -> None:
    """Issue 16 finding 4: against hand-worked numbers, not the code itself. Fails if sens_spec
    returns the false-positive rate for specificity, or if a rule returns a constant 0.5.

    Positives .95 .90 .85 .80 .75 .70 .65 .62 .58 .30; negatives .60 .45 .40 .35 .28 .25 .20 .15 .10 .05.
    Youden: J = .8 at t = .58 (sens 9/10, spec 9/10) and at t = .62 (sens 8/10, spec 10/10); the tie
    goes to the higher, .62. Sensitivity >= .90: 9 of 10 positives -> the 9th highest, .58, where
    one negative (.60) is flagged: sens .9, spec .9.
    """
    pos = [0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.62, 0.58, 0.30]
    neg = [0.60, 0.45, 0.40, 0.35, 0.28, 0.25, 0.20, 0.15, 0.10, 0.05]
    y = np.array([1] * 10 + [0] * 10, dtype=np.int8)
    Y = np.tile(y[:, None], (1, 6))
    P = np.tile(np.array(pos + neg)[:, None], (1, 6))
    th = choose_thresholds(Y, P, 0.9)
    hs = th["labels"]["healing_status"]
    assert (hs["applied"], hs["value"], hs["sensitivity"], hs["specificity"]) == ("youden", 0.62, 0.8, 1.0)
    assert hs["rules"] == {"0.5": 0.5, "youden": 0.62}
    u = th["labels"]["urgency"]
    assert (u["applied"], u["value"], u["sensitivity"], u["specificity"]) == ("sensitivity>=0.90", 0.58, 0.9, 0.9)
    assert u["rules"] == {"0.5": 0.5, "youden": 0.62, "sensitivity>=0.90": 0.58}
    assert youden_threshold(y, P[:, 0]) == (0.62, pytest.approx(0.8))
    assert sensitivity_threshold(y, P[:, 0], 0.7) == 0.65 and sensitivity_threshold(y, P[:, 0], 1.0) == 0.30
    np.testing.assert_array_equal(applied_thresholds(th), [0.62, 0.62, 0.62, 0.58, 0.58, 0.62])
