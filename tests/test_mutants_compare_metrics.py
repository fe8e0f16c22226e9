"""compare.metrics.evaluate pinned field by field on a tiny hand-made split, against independent
references (scikit-learn with the resample counts as sample weights, the Wilson formula written out,
numpy percentiles), so mutants of the report's number-making functions fail (TESTING.md,
`make mutants`, group compare_metrics). n_boot is small: the whole file runs in about a second."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from woundscore.compare import metrics as M

NAMES = ("a", "b", "c")
NB, SEED = 40, 5
# label a: both classes, one missing row; b: negatives only (one missing); c: nothing observed
Y = np.array([[1, 0, -1], [0, 0, -1], [1, -1, -1], [0, 0, -1], [1, 0, -1], [0, 0, -1], [-1, 0, -1], [0, 0, -1]])
PM = np.array([[.9, .2, .5], [.3, .7, .5], [.6, .1, .5], [.65, .3, .5], [.8, .2, .5], [.1, .1, .5], [.5, .9, .5],
               [.2, .05, .5]])
PK = PM[::-1].copy()


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    c = (k / n + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def _ece(y: np.ndarray, p: np.ndarray) -> float:
    # by hand: rows ordered by p, cut into max(2, min(10, n // 15)) runs of near-equal size
    k = max(2, min(10, len(y) // 15))
    runs = np.array_split(np.argsort(p, kind="stable"), k)
    return sum(abs(float(np.sum(y[r] - p[r]))) for r in runs) / len(y)


def _q(v) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(v, dtype=float), [0.025, 0.975])
    return float(lo), float(hi)


@pytest.fixture  # per test, not per module: mutmut maps a function to the tests that ran it
def result() -> dict:
    return M.evaluate(Y, {"m": PM, "k": PK}, label_names=NAMES, thresholds={"m": {"a": {"youden": 0.6}}},
                      comparisons=[("m", "k")], n_boot=NB, seed=SEED)


def _label_a_resamples() -> tuple[np.ndarray, np.ndarray]:
    m = Y[:, 0] != -1
    y = Y[m, 0]
    W = M.stratified_bootstrap_counts(y, NB, np.random.default_rng([SEED, 0]))  # label a is column 0
    return y, W


def test_per_label_estimable_every_field(result: dict) -> None:
    y, W = _label_a_resamples()
    m = Y[:, 0] != -1
    for name, P in (("m", PM), ("k", PK)):
        p = P[m, 0]
        r = result["per_label"]["a"][name]
        assert (r["n"], r["positives"], r["negatives"]) == (7, 3, 4)
        auc_b = [roc_auc_score(y, p, sample_weight=w) for w in W]
        assert r["auc"] == {"value": pytest.approx(roc_auc_score(y, p)), "low": pytest.approx(_q(auc_b)[0]),
                            "high": pytest.approx(_q(auc_b)[1]), "n": 7, "ci": "bootstrap", "reason": None}
        ap_b = [average_precision_score(y, p, sample_weight=w) for w in W]
        assert (r["ap"]["value"], r["ap"]["low"], r["ap"]["high"]) == pytest.approx(
            (average_precision_score(y, p), *_q(ap_b)))
        br_b = [brier_score_loss(y, p, sample_weight=w) for w in W]
        assert (r["brier"]["value"], r["brier"]["low"], r["brier"]["high"], r["brier"]["n"]) == pytest.approx(
            (brier_score_loss(y, p), *_q(br_b), 7))
        assert r["ece"]["value"] == pytest.approx(_ece(y, p)) and r["ece"]["ci"] == "bootstrap"
    ops = result["per_label"]["a"]["m"]["operating_points"]
    assert list(ops) == ["0.5", "youden"] and ops["youden"]["threshold"] == 0.6
    # m at 0.6 on label a: positives .9 .6 .8 all flagged (3/3); negatives .3 .65 .1 .2 -> .65 flagged (3/4)
    sens, spec = ops["youden"]["sensitivity"], ops["youden"]["specificity"]
    assert sens == {"value": 1.0, "low": pytest.approx(_wilson(3, 3)[0]), "high": pytest.approx(_wilson(3, 3)[1]),
                    "n": 3, "ci": "wilson", "reason": None}
    assert (spec["value"], spec["low"], spec["high"], spec["n"]) == pytest.approx((0.75, *_wilson(3, 4), 4))
    # at 0.5: positives all flagged; negatives .65 flagged -> the same counts
    assert ops["0.5"]["threshold"] == 0.5 and ops["0.5"]["specificity"]["value"] == 0.75
    assert list(result["per_label"]["a"]["k"]["operating_points"]) == ["0.5"]


def test_one_class_and_empty_labels_say_why(result: dict) -> None:
    b = result["per_label"]["b"]["m"]
    assert (b["n"], b["positives"], b["negatives"]) == (7, 0, 7)
    why = "not estimable: test split has only negatives (0 positives of n=7)"
    assert b["auc"] == b["ap"] == {"value": None, "low": None, "high": None, "n": 7, "ci": "bootstrap", "reason": why}
    assert b["brier"]["value"] == pytest.approx(brier_score_loss(Y[Y[:, 1] != -1, 1], PM[Y[:, 1] != -1, 1]))
    sens = b["operating_points"]["0.5"]["sensitivity"]
    assert sens == {"value": None, "low": None, "high": None, "n": 0, "ci": "wilson",
                    "reason": "not estimable: no positives in the test split"}
    c = result["per_label"]["c"]["m"]
    nothing = "not estimable: no observed labels in the test split"
    assert (c["n"], c["positives"], c["negatives"]) == (0, 0, 0)
    for key in ("auc", "ap", "brier", "ece"):
        assert c[key] == {"value": None, "low": None, "high": None, "n": 0, "ci": "bootstrap", "reason": nothing}
    assert c["operating_points"]["0.5"]["specificity"]["reason"] == "not estimable: no negatives in the test split"
    json.dumps(result, allow_nan=False)


def test_macro_and_comparison_every_field(result: dict) -> None:
    Wimg = M.bootstrap_counts(len(Y), NB, np.random.default_rng([SEED, 10_000]))
    m = Y[:, 0] != -1
    y = Y[m, 0]
    boot = {}
    for name, P in (("m", PM), ("k", PK)):
        vals = []
        for w in Wimg[:, m]:
            ok = w[y == 1].sum() > 0 and w[y == 0].sum() > 0
            vals.append(roc_auc_score(y, P[m, 0], sample_weight=w) if ok else np.nan)
        boot[name] = np.array(vals)
        mac = result["macro_auc"][name]
        fin = boot[name][np.isfinite(boot[name])]
        assert mac["labels"] == ["a"] and mac["n"] == 8 and mac["n_resamples"] == fin.size
        assert (mac["value"], mac["low"], mac["high"]) == pytest.approx((roc_auc_score(y, P[m, 0]), *_q(fin)))
    comp = result["comparisons"][0]
    assert (comp["a"], comp["b"]) == ("m", "k")
    _, W = _label_a_resamples()
    d = np.array([roc_auc_score(y, PM[m, 0], sample_weight=w) - roc_auc_score(y, PK[m, 0], sample_weight=w)
                  for w in W])
    pa = comp["per_label"]["a"]
    assert (pa["value"], pa["low"], pa["high"]) == pytest.approx(
        (roc_auc_score(y, PM[m, 0]) - roc_auc_score(y, PK[m, 0]), *_q(d)))
    assert pa["p_a_better"] == pytest.approx(np.mean(d > 0)) and pa["n_resamples"] == NB and pa["n"] == 7
    assert pa["ci"] == "bootstrap"
    assert comp["per_label"]["b"]["value"] is None and comp["per_label"]["b"]["n"] == 7
    assert comp["per_label"]["b"]["reason"].startswith("not estimable: test split has only negatives")
    dm = boot["m"] - boot["k"]
    dm = dm[np.isfinite(dm)]
    mac = comp["macro"]
    assert (mac["value"], mac["low"], mac["high"]) == pytest.approx(
        (result["macro_auc"]["m"]["value"] - result["macro_auc"]["k"]["value"], *_q(dm)))
    assert mac["labels"] == ["a"] and mac["n"] == 8 and mac["n_resamples"] == dm.size
    assert mac["p_a_better"] == pytest.approx(np.mean(dm > 0))
    s = result["bootstrap"]
    assert (s["n_resamples"], s["seed"], s["ece_bins"], s["level"]) == (NB, SEED, M.ECE_BINS, 0.95)


def test_no_estimable_label_macro_and_comparison_say_why() -> None:
    Yn = np.where(Y == 1, 0, Y)
    r = M.evaluate(Yn, {"m": PM, "k": PK}, label_names=NAMES, comparisons=[("m", "k")], n_boot=10)
    why = "not estimable: no label has both classes in the test split"
    assert r["macro_auc"]["m"] == {"value": None, "low": None, "high": None, "n": 8, "ci": "bootstrap",
                                   "reason": why, "labels": [], "n_resamples": 0}
    assert r["comparisons"][0]["macro"] == {"value": None, "low": None, "high": None, "n": 8, "ci": "bootstrap",
                                            "reason": why}


def test_small_helpers_by_hand() -> None:
    assert M.one_class_reason(3, 3) == "not estimable: test split has only positives (0 negatives of n=3)"
    assert M.one_class_reason(3, 1) is None and M.one_class_reason(1, 0).endswith("(0 positives of n=1)")
    with pytest.raises(ValueError, match="needs n > 0"):
        M.wilson_interval(0, 0)
    assert M.wilson_interval(3, 4) == pytest.approx(_wilson(3, 4))
    with pytest.raises(ValueError, match=r"labels have shape \(2,\), probabilities \(3,\)"):
        M.sensitivity_specificity(np.array([1, 0]), np.array([0.1, 0.2, 0.3]), 0.5)
    e = M._estimate(0.5, np.array([np.nan, 1.0, 2.0, 3.0, np.inf]), 4)
    assert (e.value, e.low, e.high, e.n, e.ci) == (0.5, pytest.approx(1.05), pytest.approx(2.95), 4, "bootstrap")
    e = M._estimate(0.5, np.array([np.nan]), 4)
    assert (e.low, e.high) == (None, None)
    d = M.paired_delta(0.7, 0.6, np.array([0.7, 0.6, np.nan, 0.5]), np.array([0.6, 0.6, 0.5, 0.6]), 9)
    assert d["p_a_better"] == pytest.approx(1 / 3) and d["n_resamples"] == 3 and d["value"] == pytest.approx(0.1)
    assert M.paired_delta(0.1, 0.1, np.array([np.nan]), np.array([0.1]), 1)["p_a_better"] is None
    ne = M.not_estimable(5, "why", ci="wilson")
    assert ne.to_dict() == {"value": None, "low": None, "high": None, "n": 5, "ci": "wilson", "reason": "why"}
    W = M.stratified_bootstrap_counts(np.array([1, 0, 0, 1, 0]), 6, np.random.default_rng(0))
    assert W.shape == (6, 5) and (W[:, [0, 3]].sum(axis=1) == 2).all() and (W[:, [1, 2, 4]].sum(axis=1) == 3).all()


def test_positives_only_label_with_missing_rows_stays_out_of_the_macro() -> None:
    """A label observed as positives only (with missing rows, so that its n differs from the
    number of -1 and of non-1 entries) is not averaged into the macro AUC."""
    Yp = Y.copy()
    Yp[:, 2] = [1, 1, -1, 1, -1, -1, 1, 1]
    r = M.evaluate(Yp, {"m": PM, "k": PK}, label_names=NAMES, n_boot=10, seed=SEED)
    assert r["macro_auc"]["m"]["labels"] == ["a"] and r["macro_auc"]["k"]["labels"] == ["a"]
    assert r["macro_auc"]["m"]["n_resamples"] > 0
    assert r["per_label"]["c"]["m"]["auc"]["reason"] == \
        "not estimable: test split has only positives (0 negatives of n=5)"


def test_every_method_is_reported_when_no_label_is_estimable() -> None:
    Yn = np.where(Y == 1, 0, Y)
    r = M.evaluate(Yn, {"m": PM, "k": PK}, label_names=NAMES, n_boot=10)
    assert set(r["macro_auc"]) == {"m", "k"} and r["macro_auc"]["k"]["n_resamples"] == 0


def test_ece_uses_the_bins_asked_for_in_the_point_and_the_interval() -> None:
    # 3 rank bins (the default for these 7 rows would be 2), fixed on the sample, reweighted per resample
    r = M.evaluate(Y, {"m": PM}, label_names=NAMES, n_boot=NB, seed=SEED, n_bins=3)
    y, W = _label_a_resamples()
    p = PM[Y[:, 0] != -1, 0]
    runs = np.array_split(np.argsort(p, kind="stable"), 3)

    def ece3(w):
        return sum(abs(float(np.sum(w[b] * (y[b] - p[b])))) for b in runs) / w.sum()

    e = r["per_label"]["a"]["m"]["ece"]
    assert (e["value"], e["low"], e["high"]) == pytest.approx((ece3(np.ones(len(y))), *_q([ece3(w) for w in W])))
    assert e["value"] != pytest.approx(_ece(y, p))  # 3 bins really differ from the default 2 here
    assert r["bootstrap"]["ece_bins"] == "3 equal-count bins"
