"""classify.metrics: ROC AUC as scikit-learn's (ties, weights, one class -> None); sensitivity and
specificity against hand-counted values; evaluate()."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from woundscore.classify.metrics import evaluate, format_table, macro_auc, roc_auc, sens_spec


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_equals_sklearn_with_ties(rows: list[tuple[int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=np.float64) / 6
    if len(set(y.tolist())) < 2:
        assert roc_auc(y, s) is None
    else:
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_on_continuous_scores_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.random(500) + 0.3 * y
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_with_sample_weight_equals_sklearn_and_weight_zero_rows_do_not_count() -> None:
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.3, 0.1, 0.5, 0.6])
    w = np.array([2, 1, 0, 3, 1, 1])
    assert roc_auc(y, s, sample_weight=w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert roc_auc(y, s, sample_weight=np.array([1, 0, 1, 0, 1, 0])) is None  # only positives weigh


def test_sensitivity_and_specificity_against_hand_counts() -> None:
    # positives 0.9, 0.8 | 0.2: 2 of 3 flagged at 0.5; negatives 0.7 flagged, 0.1 x3 not: 3 of 4 kept
    y = np.array([1, 1, 1, 0, 0, 0, 0, -1])
    s = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.1, 0.99])  # the -1 row is left out
    sens, spec = sens_spec(y, s, 0.5)
    assert sens == pytest.approx(2 / 3) and spec == pytest.approx(3 / 4)  # not the FPR (1/4)
    assert sens_spec(y, s, 0.8) == (pytest.approx(2 / 3), 1.0)  # >=: 0.8 itself is flagged
    assert sens_spec(np.array([1, 1]), np.array([0.1, 0.9]), 0.5) == (0.5, None)
    assert sens_spec(np.array([0, 0, 0]), np.array([0.1, 0.9, 0.6]), 0.5) == (None, pytest.approx(1 / 3))
    assert sens_spec(np.array([], dtype=int), np.array([]), 0.5) == (None, None)


def test_evaluate_per_label_and_macro() -> None:
    rng = np.random.default_rng(1)
    Y = rng.integers(0, 2, (50, 6)).astype(np.int8)
    Y[:5, 0] = -1
    Y[:, 5] = np.where(Y[:, 5] == -1, -1, 0)  # one class: not estimable
    P = np.clip(0.4 * Y + rng.random((50, 6)) * 0.6, 0, 1)
    r = evaluate(Y, P, {"erythema": 0.3})
    hs = r["labels"]["healing_status"]
    m = Y[:, 0] != -1
    assert hs["n"] == 45 and hs["positives"] == int((Y[m, 0] == 1).sum())
    assert hs["auc"] == pytest.approx(roc_auc_score(Y[m, 0], P[m, 0]))
    assert r["labels"]["erythema"]["threshold"] == 0.3
    assert (r["labels"]["erythema"]["sensitivity"], r["labels"]["erythema"]["specificity"]) == sens_spec(Y[:, 1], P[:, 1], 0.3)
    assert r["labels"]["exudate"]["auc"] is None
    assert r["macro_auc"] == pytest.approx(np.mean([r["labels"][n]["auc"] for n in list(r["labels"])[:5]]))
    assert r["macro_auc"] == pytest.approx(macro_auc(Y, P))
    table = format_table(r)
    assert "exudate" in table and "n/a" in table and "macro AUC" in table
