"""classify.thresholds: the output's every key, the (0, 1] bounds of the target, and the one-class
fallback at its edges, by hand (TESTING.md, `make mutants`, group classify_thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.thresholds import ThresholdError, applied_thresholds, choose_thresholds

NAMES = ("a", "b", "c")


def test_output_keys_bounds_and_fallback_edges() -> None:
    # a: 3 positives, 1 negative (one negative is enough for Youden); b: positives only; c: 2 + 2
    Y = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 1, 0]])
    P = np.array([[0.9, 0.8, 0.7], [0.8, 0.6, 0.4], [0.7, 0.9, 0.6], [0.2, 0.7, 0.3]])
    th = choose_thresholds(Y, P, 1.0, safety_labels=("c", "a"), label_names=NAMES)
    assert th["target_sensitivity"] == 1.0 and th["safety_labels"] == ["a", "c"]  # label order, not argument order
    a, b, c = (th["labels"][n] for n in NAMES)
    assert a == {"n": 4, "positives": 3, "rules": {"0.5": 0.5, "youden": 0.7, "sensitivity>=1.00": 0.7},
                 "applied": "sensitivity>=1.00", "value": 0.7, "sensitivity": 1.0, "specificity": 1.0, "note": ""}
    assert b["applied"] == "0.5" and b["value"] == 0.5 and b["positives"] == 4
    assert b["note"] == "validation split has 4 positive and 0 negative rows for b: no data-driven threshold, using 0.5"
    assert b["rules"] == {"0.5": 0.5, "youden": None}
    # c: positives .7 .6, negatives .4 .3 -> Youden J = 1 at .6; sensitivity 1.0 needs t <= .6
    assert (c["applied"], c["value"], c["note"]) == ("sensitivity>=1.00", 0.6, "")
    with pytest.raises(ThresholdError, match=r"target_sensitivity must be in \(0, 1\], got 0.0"):
        choose_thresholds(Y, P, 0.0, label_names=NAMES)


def test_shapes_must_agree_even_when_the_labels_have_six_columns() -> None:
    Y = np.zeros((5, 6), dtype=np.int8)
    with pytest.raises(ThresholdError, match=r"Y_val \(5, 6\) and P_val \(4, 6\) must both be \(n, 6\)"):
        choose_thresholds(Y, np.zeros((4, 6)))


def test_applied_thresholds_are_float64_even_from_integer_json() -> None:
    th = {"labels": {n: {"value": k % 2} for k, n in enumerate(LABEL_NAMES)}}  # ints, as JSON may hold
    got = applied_thresholds(th)
    assert got.dtype == np.float64 and got.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
