"""Calibration (classify.calibration, train.post_hoc): the rule, the JSON round trip and its
validation on load, and issue 13's done-when: on a cache with a planted signal and pos_weight ~7,
test ECE after calibration is at most half of before for every label whose val split has both
classes. Before calibration existed (predict_proba = the head's output) that test fails: the
probe's raw test ECE is 0.07-0.35 against 0.02-0.07 after."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import ArtifactError, load_model_dir
from woundscore.classify.calibration import (Calibration, CalibrationError, brier, ece, fit_calibration, logit,
                                             n_bins_for)
from woundscore.classify.synthetic import synthetic_embedding_set
from woundscore.classify.train import post_hoc, train_on_set


def _imbalanced_set(seed: int = 3, n_test: int = 2000):
    """Planted signal with ~12.5 % positives (pos_weight ~7), SurgWound's 480 / 69 split sizes."""
    es = synthetic_embedding_set(480, 69, n_test, dim=32, seed=seed)
    rng = np.random.default_rng(11)
    Y = (2.0 * es.X[:, :6] + rng.normal(size=(len(es), 6)) > 2.6).astype(np.int8)
    Y[rng.random(Y.shape) < 0.05] = -1
    return dataclasses.replace(es, Y=Y)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    es = _imbalanced_set()
    out = tmp_path_factory.mktemp("cal") / "probe"
    res = train_on_set(es, out, model="logreg", source="imbalanced.h5")
    return es, out, res


def test_done_when_test_ece_at_least_halved_for_every_label_with_both_classes(probe) -> None:
    es, out, res = probe
    pw = np.array(list(res.provenance["pos_weight"].values()))
    assert 5.5 < pw.mean() < 8.5  # the setting the issue names: pos_weight about 7
    lm = load_model_dir(out)
    val, te = es.subset("val"), es.subset("test")
    raw, cal = lm.predict_raw(te.X), lm.predict_proba(te.X)
    checked = 0
    for j, name in enumerate(LABEL_NAMES):
        yv = val.Y[:, j][val.Y[:, j] != -1]
        if not ((yv == 1).any() and (yv == 0).any()):
            continue
        m = te.Y[:, j] != -1
        before, after = ece(te.Y[m, j], raw[m, j]), ece(te.Y[m, j], cal[m, j])
        assert after <= before / 2, (name, before, after)
        assert brier(te.Y[m, j], cal[m, j]) < brier(te.Y[m, j], raw[m, j])
        checked += 1
    assert checked == 6


def test_ranking_and_auc_are_unchanged(probe) -> None:
    es, out, _ = probe
    from sklearn.metrics import roc_auc_score

    lm = load_model_dir(out)
    te = es.subset("test")
    raw, cal = lm.predict_raw(te.X), lm.predict_proba(te.X)
    for j in range(6):
        m = te.Y[:, j] != -1
        assert roc_auc_score(te.Y[m, j], cal[m, j]) == pytest.approx(roc_auc_score(te.Y[m, j], raw[m, j]), abs=1e-9)


def test_thresholds_are_chosen_on_the_calibrated_validation_scores(probe) -> None:
    es, out, res = probe
    lm = load_model_dir(out)
    val = es.subset("val")
    P_cal = lm.predict_proba(val.X)
    for j, name in enumerate(LABEL_NAMES):
        t = res.thresholds["labels"][name]
        if t["applied"] == "youden":  # Youden's threshold is one of the calibrated val scores
            m = val.Y[:, j] != -1
            assert np.isclose(P_cal[m, j], t["value"], rtol=0, atol=1e-12).any(), name
    prov = json.loads((out / "provenance.json").read_text())
    fig = prov["calibration"]["figures"]["healing_status"]
    assert fig["n"] == int((val.Y[:, 0] != -1).sum()) and fig["ece_after"] < fig["ece_before"]
    assert prov["calibration"]["methods"] == lm.calibration.methods
    assert prov["calibration"]["fitted_on"] == "val split of imbalanced.h5 (69 rows)"


def test_prior_shift_is_exact_for_a_head_biased_by_log_pos_weight() -> None:
    """A head whose logit is the true log-odds + log(w) is corrected exactly by b = -log(w)."""
    rng = np.random.default_rng(0)
    z_true = rng.normal(-2.0, 1.5, size=(400, 6))
    Y = (rng.random(z_true.shape) < expit(z_true)).astype(np.int8)
    w = np.array([7.0, 5.0, 9.0, 6.0, 7.0, 8.0])
    P_raw = expit(z_true + np.log(w))
    cal = fit_calibration(Y, P_raw, pos_weight=w)
    pr = Calibration.from_json(cal.to_json())
    pr.labels = {n: dataclasses.replace(c, method="prior_shift", a=1.0, b=-math.log(w[j]))
                 for j, (n, c) in enumerate(cal.labels.items())}
    np.testing.assert_allclose(pr.apply(P_raw), expit(z_true), rtol=1e-6)
    # the chosen fit (whichever the AIC rule picked) recovers the true probabilities closely
    assert np.abs(cal.apply(P_raw) - expit(z_true)).mean() < 0.03
    assert np.abs(P_raw - expit(z_true)).mean() > 0.15  # the bias it removed
    for n in LABEL_NAMES:
        c = cal.labels[n]
        assert c.aic[c.method] == min(c.aic.values()) and c.aic["prior_shift"] < c.aic["identity"]


def test_rule_hand_checked_aic_and_tie_goes_to_the_simpler() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.45, 0.55])
    cal = fit_calibration(np.tile(y[:, None], (1, 6)), np.tile(p[:, None], (1, 6)), pos_weight=None)
    c = cal.labels["erythema"]
    nll = -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert c.aic["identity"] == pytest.approx(2 * nll, abs=1e-5)
    assert "prior_shift" not in c.aic  # no pos_weight, no prior-shift candidate
    assert c.aic[c.method] == min(c.aic.values())


def test_one_class_or_tiny_labels_fall_back_and_say_why() -> None:
    Y = np.zeros((20, 6), np.int8)
    Y[:2, 0] = 1  # two positives: fewer than MIN_PER_CLASS
    Y[:, 1] = -1  # no rows
    P = np.full((20, 6), 0.3)
    cal = fit_calibration(Y, P, pos_weight=np.full(6, 4.0))
    assert cal.labels["healing_status"].method == "prior_shift"
    assert cal.labels["healing_status"].b == pytest.approx(-math.log(4.0))
    assert "2 positive and 18 negative" in cal.labels["healing_status"].note
    assert cal.labels["erythema"].n == 0 and cal.labels["erythema"].method == "prior_shift"
    assert fit_calibration(Y, P, pos_weight=None).labels["edema"].method == "identity"
    np.testing.assert_allclose(cal.apply(P)[:, 0], expit(logit(0.3) - math.log(4.0)))


def test_identity_and_shapes() -> None:
    ident = Calibration.identity()
    P = np.random.default_rng(1).random((5, 6))
    np.testing.assert_array_equal(ident.apply(P), P)
    assert ident.methods == {n: "identity" for n in LABEL_NAMES}
    with pytest.raises(CalibrationError, match=r"expected \(n, 6\)"):
        ident.apply(P[:, :5])
    with pytest.raises(CalibrationError, match=r"must both be \(n, 6\)"):
        fit_calibration(np.zeros((3, 6)), np.zeros((4, 6)))


def test_ece_hand_computed() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # two equal-count bins: {0.1, 0.3} mean 0.2 vs 0 -> 0.2; {0.6, 0.8} mean 0.7 vs 1 -> 0.3
    assert ece(y, p, n_bins=2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.3)
    assert brier(y, p) == pytest.approx((0.01 + 0.09 + 0.16 + 0.04) / 4)
    assert (n_bins_for(20), n_bins_for(69), n_bins_for(2000)) == (2, 4, 10)


@pytest.mark.parametrize("key,value,match", [
    ("a", float("nan"), r"labels\.edema\.a is nan, not a finite number"),
    ("b", "1", r"labels\.edema\.b is '1', not a finite number"),
    ("a", -1.0, r"labels\.edema\.a is -1\.0; must be > 0"),
    ("method", "isotonic", r"labels\.edema\.method 'isotonic' is not one of"),
])
def test_bad_calibration_json_is_refused_naming_file_and_key(probe, tmp_path: Path, key, value, match) -> None:
    _, out, _ = probe
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    d = json.loads((bad / "calibration.json").read_text())
    d["labels"]["edema"][key] = value
    (bad / "calibration.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=r"calibration\.json: " + match):
        load_model_dir(bad)


def test_folder_without_calibration_json_loads_as_identity(probe, tmp_path: Path) -> None:
    es, out, _ = probe
    old = tmp_path / "old"
    old.mkdir()
    for f in out.iterdir():
        if f.name not in ("calibration.json", "ood.npz"):
            (old / f.name).write_bytes(f.read_bytes())
    lm = load_model_dir(old)
    assert lm.calibration.is_identity and lm.ood is None
    X = es.subset("test").X[:5]
    np.testing.assert_array_equal(lm.predict_proba(X), lm.predict_raw(X))


def test_post_hoc_without_embeddings_has_no_ood() -> None:
    es = _imbalanced_set(n_test=10)
    val = es.subset("val")
    P = np.clip(expit(2.0 * val.X[:, :6] - 1.0), 0, 1)
    ph = post_hoc(val.Y, P, None, None, pos_weight=np.full(6, 7.0), target_sensitivity=0.9)
    assert ph.ood is None and set(ph.thresholds["labels"]) == set(LABEL_NAMES)
    assert ph.validation["labels"]["edema"]["threshold"] == ph.thresholds["labels"]["edema"]["value"]
