"""classify.calibration pinned by hand: the JSON's every key, each refusal's exact message, the
fallback note, the fitted maps against a direct scipy minimisation (TESTING.md, `make mutants`,
group classify_calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.calibration import (
    RULE,
    Calibration,
    CalibrationError,
    LabelCalibration,
    brier,
    ece,
    fit_calibration,
    fit_label,
    logit,
    n_bins_for,
)


def _good() -> dict:
    return Calibration.identity().to_json() | {"format": "woundscore.calibration"}


def test_to_json_every_key_and_round_trip() -> None:
    c = Calibration({n: LabelCalibration("platt", 2.0, -0.5, 10, 4, {"platt": 1.5}, "hi") for n in LABEL_NAMES},
                    fitted_on="val of x")
    d = c.to_json()
    assert {k: d[k] for k in ("format", "format_version", "rule", "fitted_on", "form")} == {
        "format": "woundscore.calibration", "format_version": 1, "rule": RULE, "fitted_on": "val of x",
        "form": "sigmoid(a * logit(p) + b)"}
    assert d["labels"]["edema"] == {"method": "platt", "a": 2.0, "b": -0.5, "n": 10, "positives": 4,
                                    "aic": {"platt": 1.5}, "note": "hi"}
    back = Calibration.from_json(d)
    assert back.labels["edema"] == c.labels["edema"] and back.fitted_on == "val of x" and back.rule == RULE
    # optional keys default
    minimal = {"format": "woundscore.calibration",
               "labels": {n: {"method": "identity", "a": 1, "b": 0} for n in LABEL_NAMES}}
    m = Calibration.from_json(minimal)
    assert m.labels["urgency"] == LabelCalibration("identity", 1.0, 0.0, 0, 0, {}, "")
    assert (m.rule, m.fitted_on) == (RULE, "") and m.is_identity
    assert isinstance(m.labels["urgency"].a, float)


@pytest.mark.parametrize("doc, message", [
    ([], "F: not a woundscore calibration file (format 'woundscore.calibration' expected)"),
    ({"format": "other"}, "F: not a woundscore calibration file (format 'woundscore.calibration' expected)"),
    ({"format": "woundscore.calibration", "labels": []}, "F: key 'labels' is missing or not an object"),
    ({"format": "woundscore.calibration"}, "F: key 'labels' is missing or not an object"),
    ({"format": "woundscore.calibration", "labels": {}}, "F: labels.healing_status is missing"),
])
def test_from_json_refusals_exact(doc, message: str) -> None:
    with pytest.raises(CalibrationError) as e:
        Calibration.from_json(doc, origin="F")
    assert str(e.value) == message


@pytest.mark.parametrize("entry, message", [
    ({"method": "isotonic", "a": 1, "b": 0},
     "F: labels.edema.method 'isotonic' is not one of ['identity', 'prior_shift', 'temperature', 'platt']"),
    ({"method": "platt", "a": True, "b": 0}, "F: labels.edema.a is True, not a finite number"),
    ({"method": "platt", "a": 1, "b": float("inf")}, "F: labels.edema.b is inf, not a finite number"),
    ({"method": "platt", "a": 1}, "F: labels.edema.b is None, not a finite number"),
    ({"method": "platt", "a": 0, "b": 0}, "F: labels.edema.a is 0; must be > 0 (a monotone map)"),
])
def test_from_json_entry_refusals_exact(entry: dict, message: str) -> None:
    d = _good()
    d["labels"]["edema"] = entry
    with pytest.raises(CalibrationError) as e:
        Calibration.from_json(d, origin="F")
    assert str(e.value) == message
    d["labels"]["edema"] = {"method": "platt", "a": 1e-9, "b": -3}  # tiny but positive is accepted
    assert Calibration.from_json(d).labels["edema"].a == 1e-9


def test_identity_folder_and_apply_edges() -> None:
    ident = Calibration.identity(("a", "b"))
    assert ident.label_names == ("a", "b") and ident.rule == "none" and ident.fitted_on == ""
    assert ident.labels["a"].note == "no calibration.json: scores are the head's own"
    assert ident.apply(np.zeros((0, 2))).shape == (0, 2)
    with pytest.raises(CalibrationError) as e:
        ident.apply(np.zeros(2))
    assert str(e.value) == "expected (n, 2) probabilities, got shape (2,)"
    P = np.array([[0.2, 0.7]], dtype=np.float32)
    out = ident.apply(P)
    assert out.dtype == np.float64 and out is not P and out.tolist() == [[np.float32(0.2), np.float32(0.7)]]
    # a "platt" entry with a=1, b=0 is the identity too; a=2 doubles the logit
    p = np.array([0.2, 0.5, 0.9])
    np.testing.assert_array_equal(LabelCalibration("platt", 1.0, 0.0).apply(p), p)
    np.testing.assert_allclose(LabelCalibration("platt", 2.0, 0.0).apply(p), [1 / 17, 0.5, 81 / 82])
    np.testing.assert_allclose(LabelCalibration("platt", 1.0, math.log(3)).apply(p), [0.75 / 1.75, 0.75, 27 / 28])
    assert not Calibration({"a": LabelCalibration("platt")}, label_names=("a",)).is_identity


def test_logit_clips_and_fallback_note_exact() -> None:
    assert logit(np.array([0.5]))[0] == 0.0
    np.testing.assert_allclose(logit(np.array([0.0, 1.0])), [math.log(1e-7 / (1 - 1e-7)), math.log((1 - 1e-7) / 1e-7)])
    y = np.array([1, 1, 0, 0, 0])
    c = fit_label(y, np.full(5, 0.4), 4.0)
    assert (c.method, c.a, c.n, c.positives, c.aic) == ("prior_shift", 1.0, 5, 2, {})
    assert c.b == pytest.approx(-math.log(4.0))
    assert c.note == "2 positive and 3 negative rows (fewer than 3 of a class): nothing fitted, prior_shift"
    for w in (None, 0.0, -1.0, float("nan"), float("inf")):
        c = fit_label(y, np.full(5, 0.4), w)
        assert (c.method, c.b) == ("identity", 0.0), w
        assert c.note.endswith("nothing fitted, identity")
    y3 = np.array([1, 1, 1, 0, 0, 0])
    assert fit_label(y3, np.array([.6, .7, .8, .3, .2, .4]), None).note == ""  # 3 of each: fitted


def test_temperature_and_platt_equal_a_direct_minimisation() -> None:
    rng = np.random.default_rng(3)
    z_true = rng.normal(0, 2, 300)
    y = (rng.random(300) < expit(z_true)).astype(float)
    w = 3.0
    p = expit(0.4 * z_true + math.log(w))  # overconfident-shrunk and shifted by log(w)
    c = fit_label(y, p, w)
    z = logit(p)

    def nll(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0, s) - y * s))

    a_t = minimize_scalar(lambda a: nll(a, -a * math.log(w)), bounds=(1e-3, 100), method="bounded").x
    assert c.aic["temperature"] == pytest.approx(2 * nll(a_t, -a_t * math.log(w)) + 2, abs=1e-3)
    assert c.aic["prior_shift"] == pytest.approx(2 * nll(1.0, -math.log(w)), abs=1e-5)
    assert c.aic["identity"] == pytest.approx(2 * nll(1.0, 0.0), abs=1e-5)
    assert c.method == min(c.aic, key=c.aic.get) and c.method in ("temperature", "platt")
    assert c.a == pytest.approx(2.5, rel=0.25)  # undoes the 0.4 shrink
    assert (c.n, c.positives, c.note) == (300, int(y.sum()), "")


def test_fit_calibration_per_label_rows_and_pos_weight_order() -> None:
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 6)) < 0.4).astype(np.int8)
    Y[:10, 2] = -1
    P = np.clip(0.3 * Y + 0.7 * rng.random((60, 6)), 0.01, 0.99)
    w = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    cal = fit_calibration(Y, P, pos_weight=w, fitted_on="here")
    assert cal.fitted_on == "here" and list(cal.labels) == list(LABEL_NAMES)
    for j, n in enumerate(LABEL_NAMES):
        m = Y[:, j] != -1
        ref = fit_label(Y[m, j], P[m, j], w[j])
        assert cal.labels[n] == ref, n
    assert cal.labels["edema"].n == 50
    with pytest.raises(CalibrationError) as e:
        fit_calibration(np.zeros((3, 5)), np.zeros((3, 5)))
    assert str(e.value) == "Y_val (3, 5) and P_val (3, 5) must both be (n, 6)"
    with pytest.raises(CalibrationError):
        fit_calibration(np.zeros(6), np.zeros(6))


def test_brier_ece_and_bins_by_hand() -> None:
    assert brier(np.array([]), np.array([])) is None and ece(np.array([]), np.array([])) is None
    assert brier([1, 0], [0.5, 0.5]) == 0.25
    assert [n_bins_for(n) for n in (0, 29, 30, 45, 150, 151, 10_000)] == [2, 2, 2, 3, 10, 10, 10]
    # 30 rows -> 2 bins of 15; p sorted: first bin all 0.1 with y 0, second all 0.9 with y 1 except 3
    y = np.array([0] * 15 + [1] * 12 + [0] * 3)
    p = np.array([0.1] * 15 + [0.9] * 15)
    assert ece(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * abs(0.9 - 0.8))
    assert ece(y.reshape(-1, 1), p.reshape(-1, 1), n_bins=1) == pytest.approx(abs(0.5 - 0.4))
    # bins follow the sorted p, not the row order
    perm = np.random.default_rng(1).permutation(30)
    assert ece(y[perm], p[perm]) == pytest.approx(ece(y, p))


def test_platt_equals_a_direct_two_parameter_minimisation_and_bounds_hold() -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(5)
    z_true = rng.normal(0, 2, 400)
    y = (rng.random(400) < expit(z_true)).astype(float)
    p = expit(0.4 * z_true + 1.5)  # shrunk and shifted: only platt (b free) undoes both
    c = fit_label(y, p, None)
    z = logit(p)

    def nll(v) -> float:
        s = v[0] * z + v[1]
        return float(np.sum(np.logaddexp(0, s) - y * s))

    best = min((minimize(nll, x0=np.array(x0), method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10})
                for x0 in ([1.0, 0.0], [2.5, -3.0])), key=lambda r: r.fun)
    assert c.method == "platt"
    assert (c.a, c.b) == pytest.approx(tuple(best.x), abs=2e-3)
    assert c.aic["platt"] == pytest.approx(2 * best.fun + 4, abs=1e-3)


def test_fallback_edges_and_defaults() -> None:
    c = fit_label(np.array([1, 1, 1, 1, 1, 0, 0]), np.full(7, 0.6), None)  # 2 negatives: too few
    assert c.method == "identity" and c.note.startswith("5 positive and 2 negative rows")
    half = fit_label(np.array([1, 0, 0]), np.full(3, 0.4), 0.5)  # a weight below 1 still shifts
    assert half.method == "prior_shift" and half.b == pytest.approx(math.log(2.0))
    Y = np.zeros((4, 6), dtype=np.int8)
    assert fit_calibration(Y, np.full((4, 6), 0.5)).fitted_on == "validation split"
    d = Calibration.identity().to_json() | {"format": "woundscore.calibration", "rule": "my rule"}
    d["labels"]["edema"] = {"method": "identity", "a": 2.0, "b": 1.0}  # identity means unchanged
    cal = Calibration.from_json(d)
    assert cal.rule == "my rule"
    P = np.full((2, 6), 0.3)
    assert cal.apply(P)[:, 2].tolist() == [0.3, 0.3]
    bad = dict(d, labels={})
    with pytest.raises(CalibrationError, match=r"^calibration\.json: labels\.healing_status is missing$"):
        Calibration.from_json(bad)


def test_fit_bounds_hold_at_both_ends() -> None:
    """a in [1e-3, 100] and |b| <= 30 (module docstring): data whose unbounded optimum lies outside
    (anti-ranked scores want a < 0; perfectly separated ones want a -> inf; a boundary at logit -0.4
    wants b ~ 40). Mutants: bounds dropped, b's lower bound +30."""
    from woundscore.classify.calibration import _fit_ab

    y = np.array([1, 1, 1, 0, 0, 0], dtype=np.float64)
    anti = logit(np.array([.2, .3, .4, .6, .7, .8]))
    assert _fit_ab(y, anti, shift=0.0, free_b=False) == pytest.approx((1e-3, 0.0), abs=1e-9)
    assert _fit_ab(y, anti, shift=0.0, free_b=True) == pytest.approx((1e-3, 0.0), abs=1e-6)
    a, b = _fit_ab(y, anti, shift=math.log(3), free_b=False)  # temperature keeps b = -a * shift
    assert a == pytest.approx(1e-3) and b == pytest.approx(-1e-3 * math.log(3))
    sep = logit(np.array([.501, .502, .503, .497, .498, .499]))
    assert _fit_ab(y, sep, shift=0.0, free_b=False)[0] == pytest.approx(100.0)
    assert _fit_ab(y, sep, shift=0.0, free_b=True)[0] == pytest.approx(100.0)
    a, b = _fit_ab(y, logit(np.array([.402, .403, .404, .398, .399, .400])), shift=0.0, free_b=True)
    assert b == pytest.approx(30.0) and 1e-3 <= a <= 100.0


def test_float32_input_gives_float64_output_on_every_path() -> None:
    """Calibration.apply's docstring: float64 out, also for an empty batch and for identity labels
    (mutants: dtype=np.float64 dropped in Calibration.apply / LabelCalibration.apply)."""
    p32 = np.array([0.2, 0.7], dtype=np.float32)
    assert LabelCalibration("identity").apply(p32).dtype == np.float64
    assert LabelCalibration("platt", 1.0, 0.0).apply(p32).dtype == np.float64
    assert Calibration.identity().apply(np.zeros((0, 6), dtype=np.float32)).dtype == np.float64
    assert Calibration.from_json(_good()).apply(np.full((1, 6), 0.5, dtype=np.float32)).dtype == np.float64


def test_float32_saturated_scores_stay_finite_and_temperature_has_no_shift_without_pos_weight() -> None:
    """A float32 head saturates at 1.0: logit must clip in float64 (1 - 1e-7 is 1.0 in float32).
    Without pos_weight the temperature candidate is a pure scale (b = 0); AIC values are rounded to
    6 decimals (mutants: logit's dtype dropped, shift 1.0 instead of 0.0, round(..., 7))."""
    z32 = logit(np.array([0.0, 1.0], dtype=np.float32))
    np.testing.assert_array_equal(z32, logit(np.array([0.0, 1.0])))
    assert np.isfinite(z32).all()
    rng = np.random.default_rng(11)
    z_true = rng.normal(0, 1.5, 400)
    y = (rng.random(400) < expit(z_true)).astype(float)
    c = fit_label(y, expit(2.5 * z_true), None)  # over-confident, centred: a scale fixes it
    assert c.method == "temperature" and c.b == 0.0 and c.a == pytest.approx(0.4, abs=0.2)
    assert all(v == round(v, 6) for v in c.aic.values())
