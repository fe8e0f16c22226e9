"""compare.metrics: the vectorised bootstrap equals scikit-learn, intervals behave, one-class labels
are "not estimable" (never 0 or NaN), missing labels are masked, paired differences are paired."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from woundscore.compare import metrics as M

LABELS = ("a", "b", "c")


@st.composite
def scored_labels(draw):
    n = draw(st.integers(2, 40))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    y[0], y[1] = 1, 0  # both classes present
    # few distinct values so that ties are common
    p = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.9, 1.0]), min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**31))
    return y, p, seed


@settings(max_examples=30, deadline=None)
@given(scored_labels())
def test_weighted_metrics_equal_sklearn_with_sample_weight(data):
    y, p, seed = data
    W = M.stratified_bootstrap_counts(y, 4, np.random.default_rng(seed))
    auc = M.weighted_auc(y, p, W)
    ap = M.weighted_average_precision(y, p, W)
    brier = M.weighted_brier(y, p, W)
    for b in range(W.shape[0]):
        assert auc[b] == pytest.approx(roc_auc_score(y, p, sample_weight=W[b]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y, p, sample_weight=W[b]), abs=1e-12)
        assert brier[b] == pytest.approx(brier_score_loss(y, p, sample_weight=W[b]), abs=1e-12)
    # unweighted (W=None) is the plain metric
    assert M.weighted_auc(y, p)[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_stratified_counts_keep_class_sizes_and_plain_counts_keep_n():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    W = M.stratified_bootstrap_counts(y, 500, np.random.default_rng(0))
    assert W.shape == (500, 10)
    assert np.all(W[:, y == 1].sum(axis=1) == 3)
    assert np.all(W[:, y == 0].sum(axis=1) == 7)
    assert np.all(M.weighted_auc(y, np.linspace(0, 1, 10), W) >= 0)  # never NaN: both classes kept
    Wi = M.bootstrap_counts(10, 300, np.random.default_rng(0))
    assert np.all(Wi.sum(axis=1) == 10)
    assert (Wi == 0).any()  # it really resamples


def test_auc_weight_rows_without_a_class_are_nan_not_zero():
    y = np.array([1, 0, 0])
    W = np.array([[0, 2, 1], [1, 1, 1]])
    out = M.weighted_auc(y, np.array([0.9, 0.1, 0.2]), W)
    assert math.isnan(out[0]) and out[1] == 1.0


def test_ece_by_hand():
    # two equal-count bins by rank: p=0.05,0.05 y=0,1 -> |1-0.10|/4 ; p=0.95,1.0 y=1,1 -> |2-1.95|/4
    from woundscore.compare.calibration_report import equal_count_bins

    y = np.array([1, 0, 1, 1])
    p = np.array([0.95, 0.05, 0.05, 1.0])
    expected = (abs(1 - 0.10) + abs(2 - 1.95)) / 4
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)
    assert M.expected_calibration_error(y, p) == pytest.approx(expected)  # n_bins_for(4) = 2
    mean_p, frac, count = equal_count_bins(y, p, 2)
    assert count.tolist() == [2, 2] and frac.tolist() == [0.5, 1.0]
    assert mean_p == pytest.approx([0.05, 0.975])


def test_wilson_interval_known_values():
    lo, hi = M.wilson_interval(0, 10)
    z2 = 1.959963984540054**2
    assert lo == 0.0 and hi == pytest.approx(z2 / (10 + z2))  # closed form at k = 0
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_sensitivity_specificity_at_threshold_mask_missing():
    y = np.array([1, 1, 0, 0, -1])
    p = np.array([0.7, 0.4, 0.6, 0.1, 0.99])
    r = M.sensitivity_specificity(y, p, 0.5)
    assert r["sensitivity"].value == 0.5 and r["sensitivity"].n == 2 and r["sensitivity"].ci == "wilson"
    assert r["specificity"].value == 0.5 and r["specificity"].n == 2
    none = M.sensitivity_specificity(np.array([0, 0]), np.array([0.2, 0.7]), 0.5)["sensitivity"]
    assert none.value is None and "no positives" in none.reason


def _planted(n=137, seed=0, strength=(2.0, 1.5, 0.0)):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 3)) < 0.3).astype(np.int8)
    Y[rng.random((n, 3)) < 0.1] = -1
    logits = rng.normal(size=(n, 3)) + np.asarray(strength) * (Y == 1)
    return Y, 1 / (1 + np.exp(-logits)), rng


def test_one_class_label_is_not_estimable_and_json_has_no_nan():
    Y, P, _ = _planted()
    Y[:, 2] = np.where(Y[:, 2] == -1, -1, 0)  # label c: negatives only
    r = M.evaluate(Y, {"m": P, "k": P[::-1].copy()}, label_names=LABELS, comparisons=[("m", "k")], n_boot=200)
    auc = r["per_label"]["c"]["m"]["auc"]
    assert auc["value"] is None and auc["low"] is None
    assert auc["reason"].startswith("not estimable: test split has only negatives")
    assert r["per_label"]["c"]["m"]["ap"]["value"] is None
    assert r["per_label"]["c"]["m"]["brier"]["value"] is not None  # still defined with one class
    assert r["macro_auc"]["m"]["labels"] == ["a", "b"]
    assert r["comparisons"][0]["per_label"]["c"]["value"] is None
    json.dumps(r, allow_nan=False)  # raises on NaN/inf anywhere


def test_missing_entries_change_nothing():
    Y, P, rng = _planted()
    P2 = P.copy()
    P2[Y == -1] = rng.random(int((Y == -1).sum()))
    r1 = M.evaluate(Y, {"m": P}, label_names=LABELS, n_boot=200)
    r2 = M.evaluate(Y, {"m": P2}, label_names=LABELS, n_boot=200)
    assert r1["per_label"] == r2["per_label"]
    assert r1["per_label"]["a"]["m"]["n"] == int((Y[:, 0] != -1).sum())
    # macro resamples whole images, so the -1 rows still take part in it: only per-label must match
    assert r1["macro_auc"]["m"]["value"] == r2["macro_auc"]["m"]["value"]


def test_intervals_are_seeded_contain_the_point_and_ignore_other_methods():
    Y, P, rng = _planted()
    other = rng.random(P.shape)
    r1 = M.evaluate(Y, {"m": P}, label_names=LABELS, n_boot=300, seed=3)
    r2 = M.evaluate(Y, {"m": P, "x": other}, label_names=LABELS, n_boot=300, seed=3)
    r3 = M.evaluate(Y, {"m": P}, label_names=LABELS, n_boot=300, seed=4)
    a1, a2, a3 = (r["per_label"]["a"]["m"]["auc"] for r in (r1, r2, r3))
    assert a1 == a2
    assert (a1["low"], a1["high"]) != (a3["low"], a3["high"])
    for label in LABELS:
        for key in ("auc", "ap", "brier"):  # not ECE: biased upward under resampling
            e = r1["per_label"][label]["m"][key]
            assert e["low"] <= e["value"] + 1e-9 and e["value"] <= e["high"] + 1e-9, (label, key, e)
    m = r1["macro_auc"]["m"]
    assert m["low"] < m["value"] < m["high"] and m["n_resamples"] > 250
    per = [r1["per_label"][lab]["m"]["auc"]["value"] for lab in LABELS]
    assert m["value"] == pytest.approx(np.mean(per))


def test_interval_width_shrinks_with_more_positives():
    widths = []
    for n in (60, 1200):
        Y, P, _ = _planted(n=n, seed=1)
        e = M.evaluate(Y, {"m": P}, label_names=LABELS, n_boot=400)["per_label"]["a"]["m"]["auc"]
        widths.append(e["high"] - e["low"])
    assert widths[1] < widths[0] / 2


def test_paired_delta_identical_methods_is_exactly_zero_and_better_method_is_detected():
    Y, P, rng = _planted(n=300, strength=(2.5, 2.5, 2.5))
    noise = rng.random(P.shape)
    r = M.evaluate(
        Y, {"good": P, "same": P.copy(), "noise": noise}, label_names=LABELS,
        comparisons=[("good", "same"), ("good", "noise")], n_boot=400,
    )
    same, vs_noise = r["comparisons"]
    for label in LABELS:
        d = same["per_label"][label]
        assert (d["value"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
    assert same["macro"]["value"] == 0.0 and same["macro"]["high"] == 0.0
    assert vs_noise["macro"]["low"] > 0 and vs_noise["macro"]["p_a_better"] == 1.0
    assert vs_noise["per_label"]["a"]["low"] > 0
    assert vs_noise["per_label"]["a"]["n"] == int((Y[:, 0] != -1).sum())


def test_shape_errors_name_the_method():
    Y, P, _ = _planted()
    with pytest.raises(ValueError, match="bad: probabilities have shape"):
        M.evaluate(Y, {"bad": P[:10]}, label_names=LABELS)
    with pytest.raises(ValueError, match="unknown method"):
        M.evaluate(Y, {"m": P}, label_names=LABELS, comparisons=[("m", "zz")])


def test_point_estimates_come_from_classify_metrics():
    """One place for point AUC / macro AUC / sensitivity-specificity: compare reports classify's numbers."""
    from woundscore.classify.metrics import macro_auc, roc_auc, sens_spec

    Y, P, _ = _planted()
    r = M.evaluate(Y, {"m": P}, label_names=LABELS, thresholds={"m": {"a": {"youden": 0.4}}}, n_boot=100)
    m = Y[:, 0] != -1
    assert r["per_label"]["a"]["m"]["auc"]["value"] == roc_auc(Y[m, 0], P[m, 0])
    assert r["macro_auc"]["m"]["value"] == macro_auc(Y, P)
    op = r["per_label"]["a"]["m"]["operating_points"]["youden"]
    assert (op["sensitivity"]["value"], op["specificity"]["value"]) == pytest.approx(sens_spec(Y[m, 0], P[m, 0], 0.4))
