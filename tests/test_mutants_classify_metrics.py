"""classify.metrics pinned to hand-computed values, so mutants of roc_auc / macro_auc / sens_spec /
evaluate fail (TESTING.md, `make mutants`, group classify_metrics). Each value is counted by hand in
the comment beside it; nothing is compared with the code under test."""

from __future__ import annotations

import numpy as np
import pytest

from woundscore.classify.metrics import evaluate, macro_auc, roc_auc, sens_spec


def test_auc_by_hand_with_a_tie_and_list_input() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4) (0.8>0.1) (0.4=0.4 -> 1/2) (0.4>0.1) = 3.5/4
    assert roc_auc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == 0.875
    assert roc_auc(np.array([[1], [0], [1], [0]]), np.array([[0.8], [0.4], [0.4], [0.1]])) == 0.875  # 2-D ravelled
    assert roc_auc([0, 0], [0.1, 0.2]) is None and roc_auc([1, 1], [0.1, 0.2]) is None


def test_auc_weight_zero_rows_do_not_make_a_class_present() -> None:
    y, s = np.array([1, 0, 0]), np.array([0.9, 0.1, 0.5])
    assert roc_auc(y, s, sample_weight=np.array([1, 0, 0])) is None  # the only weighted row is positive
    assert roc_auc(y, s, sample_weight=np.array([0, 1, 1])) is None
    assert roc_auc(y, s, sample_weight=np.array([1, 1, 0])) == 1.0


def test_macro_auc_by_hand_ignores_missing_and_one_class_labels() -> None:
    Y = np.array([[1, 1, -1], [0, 1, 0], [1, -1, 0], [0, 1, 1]])
    P = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6], [0.1, 0.9, 0.3], [0.3, 0.3, 0.5]])
    # label 0: positives 0.9, 0.1 vs negatives 0.2, 0.3 -> 2/4; label 1: one class; label 2: 0.5 vs
    # 0.6, 0.3 -> 1/2; macro = mean(0.5, 0.5)
    assert macro_auc(Y, P) == 0.5
    Y2 = Y.copy()
    Y2[:, 2] = [-1, 0, 0, 1]  # label 2 without row 0 (P 0.0): 0.5 vs 0.6, 0.3 -> 1/2
    P2 = P.copy()
    P2[0, 2] = 0.99  # row 0 is missing for label 2, so its score must not count
    assert macro_auc(Y2, P2) == 0.5
    P2[:, 0] = [0.9, 0.2, 0.8, 0.3]  # label 0 now 4/4: macro (1 + 0.5) / 2
    assert macro_auc(Y2, P2) == 0.75
    assert macro_auc(np.ones((3, 2), int), np.zeros((3, 2))) is None


def test_sens_spec_by_hand_at_the_boundary() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0])
    # rule s >= 0.5: TP 2 of 3 positives; negatives flagged: 0.5 only -> TN 3 of 4
    assert sens_spec(y, s, 0.5) == (2 / 3, 0.75)
    assert sens_spec(y, s, 0.51) == (1 / 3, 1.0)
    assert sens_spec(y.reshape(-1, 1), s.reshape(-1, 1), 0.5) == (2 / 3, 0.75)
    assert sens_spec(np.array([1, 1]), np.array([0.9, 0.1]), 0.5) == (0.5, None)
    assert sens_spec(np.array([0, 0, 0]), np.array([0.9, 0.1, 0.2]), 0.5) == (None, pytest.approx(2 / 3))
    assert sens_spec(np.array([0, 0]), np.array([0.9, 0.1]), 0.5) == (None, 0.5)  # tn == fp
    assert sens_spec(np.array([], dtype=int), np.array([]), 0.5) == (None, None)


def test_evaluate_every_field_by_hand() -> None:
    names = ("a", "b")
    Y = np.array([[1, -1], [0, 0], [1, 0], [0, -1], [-1, 0]])
    P = np.array([[0.7, 0.9], [0.6, 0.2], [0.4, 0.8], [0.1, 0.3], [0.99, 0.4]])
    r = evaluate(Y, P, {"a": 0.5}, label_names=names)
    assert r["n_rows"] == 5
    a, b = r["labels"]["a"], r["labels"]["b"]
    # a: rows 0-3; positives 0.7, 0.4 vs negatives 0.6, 0.1 -> 3/4; at 0.5: sens 1/2, spec 1/2
    assert a == {"n": 4, "positives": 2, "auc": 0.75, "threshold": 0.5, "sensitivity": 0.5, "specificity": 0.5}
    # b: rows 1, 2, 4 all negative; default threshold 0.5 flags 0.8 -> spec 2/3
    assert b["n"] == 3 and b["positives"] == 0 and b["auc"] is None and b["threshold"] == 0.5
    assert b["sensitivity"] is None and b["specificity"] == pytest.approx(2 / 3)
    assert r["macro_auc"] == 0.75
    assert evaluate(Y, P, {"a": 0.65, "b": 0.85}, label_names=names)["labels"]["b"]["specificity"] == 1.0
    assert evaluate(np.full((2, 2), -1), np.zeros((2, 2)), label_names=names)["macro_auc"] is None


@pytest.mark.parametrize("Y, P", [
    (np.zeros((3, 2)), np.zeros((3, 3))),  # shapes differ
    (np.zeros(2), np.zeros(2)),  # not 2-D
    (np.zeros((3, 3)), np.zeros((3, 3))),  # not one column per label
])
def test_evaluate_refuses_bad_shapes(Y: np.ndarray, P: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"must both be \(n, 2\)"):
        evaluate(Y, P, label_names=("a", "b"))
