"""Calibration in the report: each method calibrated on its own val scores only, thresholds on the
calibrated scores, Brier and ECE on test before and after (each with CI and n), reliability over
equal-count bins (fewer when n is small)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from woundscore.cache.types import EmbeddingSet
from woundscore.classify.calibration import n_bins_for
from woundscore.compare.calibration_report import equal_count_bins
from woundscore.compare.predictions import write_predictions
from woundscore.compare.report import run_comparison
from tests.test_report import assert_every_number_has_n_and_ci, md_tables


def rare_set(n_train=600, n_val=200, n_test=400, d=16, seed=0):
    """Planted signal, positives ~11% (training pos_weight about 7-8 for every label)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    z = rng.normal(size=(n, 6))
    Y = (z + 0.5 * rng.normal(size=(n, 6)) > 1.35).astype(np.int8)
    X = (z @ rng.normal(size=(6, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    es = EmbeddingSet(ids=np.array([f"r{i:05d}.jpg" for i in range(n)]), X=X, Y=Y, split=split,
                      sha256=np.array([f"{i:064x}" for i in range(n)]), extras={},
                      provenance={"encoder_id": "synthetic/test", "encoder_revision": "r1"})
    return es, z


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    es, z = rare_set()
    m = np.isin(es.split, ["val", "test"])
    over = 1.0 / (1.0 + np.exp(-(2.0 * z[m] + 1.0)))  # ranks well, far too high
    p = write_predictions(tmp / "over.csv", es.ids[m], over)
    res = run_comparison(es, tmp / "out", methods=("probe",), predictions={"over": p}, zero_shot=False,
                         n_boot=300, quiet=True)
    return res, es


def test_pos_weight_is_about_seven(calibrated):
    from woundscore.cache.schema import training_pos_weight

    _, es = calibrated
    pw = training_pos_weight(es.subset("train").Y)
    assert np.all((pw > 5) & (pw < 11)), pw


def test_test_ece_after_calibration_is_at_most_half_of_before(calibrated):
    res, es = calibrated
    cal = res.metrics["calibration"]["metrics"]
    val = es.subset("val").Y
    for j, label in enumerate(es.label_names):
        if len(set(val[:, j][val[:, j] != -1])) < 2:
            continue
        for method in ("probe", "over"):
            r = cal[label][method]
            before, after = r["ece_before"], r["ece_after"]
            assert r["n"] == int((es.subset("test").Y[:, j] != -1).sum())
            assert before["low"] is not None and after["low"] is not None and after["n"] == r["n"]
            assert after["value"] <= 0.5 * before["value"], (label, method, before["value"], after["value"])
            assert r["brier_after"]["value"] < r["brier_before"]["value"], (label, method)


def test_calibration_and_thresholds_are_the_saved_models(calibrated):
    res, es = calibrated
    folder = res.out_dir / "models" / "probe"
    meth = res.metrics["methods"]["probe"]
    assert meth["calibration"] == json.loads((folder / "calibration.json").read_text())
    saved = json.loads((folder / "thresholds.json").read_text())["labels"]
    assert meth["thresholds"] == {lab: {saved[lab]["applied"]: saved[lab]["value"]} for lab in es.label_names}
    assert "calibrated scores" in meth["threshold_rule"]
    # the external method is calibrated on its own val rows, never on test
    assert res.metrics["methods"]["over"]["calibration"] is not None
    assert "fitted on 200 val rows of the file" in res.metrics["methods"]["over"]["calibration_note"]


def test_metrics_use_the_calibrated_scores_and_keep_the_raw_ones(calibrated):
    from woundscore.classify.artifacts import load_model_dir

    res, es = calibrated
    model = load_model_dir(res.out_dir / "models" / "probe")
    test = es.subset("test")
    raw, cal = model.predict_raw(test.X), model.predict_proba(test.X)
    for j, label in enumerate(es.label_names):
        m = test.Y[:, j] != -1
        y = test.Y[m, j]
        r = res.metrics["calibration"]["metrics"][label]["probe"]
        assert r["brier_before"]["value"] == pytest.approx(np.mean((raw[m, j] - y) ** 2))
        assert r["brier_after"]["value"] == pytest.approx(np.mean((cal[m, j] - y) ** 2))
        assert res.metrics["metrics"]["per_label"][label]["probe"]["brier"]["value"] == pytest.approx(
            r["brier_after"]["value"])


def test_report_shows_before_and_after_with_ci_and_n(calibrated):
    res, _ = calibrated
    md = (res.out_dir / "report.md").read_text()
    header, rows = next((h, r) for h, r in md_tables(md) if "ECE after (95% CI)" in h)
    assert header == ["label", "method", "n", "positives", "Brier before (95% CI)", "Brier after (95% CI)",
                      "ECE before (95% CI)", "ECE after (95% CI)"]
    assert len(rows) == 12
    assert_every_number_has_n_and_ci(md)


def test_equal_count_bins_are_fewer_when_n_is_small():
    assert [n_bins_for(n) for n in (0, 5, 17, 20, 69, 137, 1000)] == [2, 2, 2, 2, 4, 9, 10]
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 20), rng.random(20)
    y[:3] = -1
    mean_p, frac, count = equal_count_bins(y, p)
    assert count.tolist() == [9, 8] and np.all(np.diff(mean_p) > 0)
    assert frac.tolist() == [np.mean(y[y != -1][np.argsort(p[y != -1])][:9]),
                             np.mean(y[y != -1][np.argsort(p[y != -1])][9:])]


def test_reliability_of_twenty_images_draws_two_points_per_line(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from tests.test_report import make_set, write_external

    lines, titles = [], []
    real_plot, real_title = Axes.plot, Axes.set_title

    def plot(self, x, *a, **k):
        if k.get("marker") == "o":
            lines.append(len(x))
        return real_plot(self, x, *a, **k)

    def title(self, t, *a, **k):
        titles.append(t)
        return real_title(self, t, *a, **k)

    monkeypatch.setattr(Axes, "plot", plot)
    monkeypatch.setattr(Axes, "set_title", title)
    es, z = make_set(n_test=20, seed=4)
    p = write_external(tmp_path / "e.csv", es, z, split=("val", "test"))
    run_comparison(es, tmp_path / "out", predictions={"e": p}, methods=(), zero_shot=False, n_boot=100, quiet=True)
    assert lines and max(lines) <= 2
    assert any("before calibration" in t and "bins of" in t for t in titles)
