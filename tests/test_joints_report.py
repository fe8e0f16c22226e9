"""The report's row matching, checked against scikit-learn on the id-matched rows (issue 16, item 1).

Every method's scores reach the report as rows; the report must pair each row with the cache's
label of the SAME image. Here the cache's splits are interleaved (test rows are not a contiguous
block), the predictions file / zero-shot result come in a shuffled order with val, test and extra
rows mixed, and every reported per-label AUC, Brier score, threshold, sensitivity and specificity
is recomputed independently (``sklearn.metrics``, plain numpy) from a dict image id -> scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.types import EmbeddingSet
from woundscore.classify.thresholds import choose_thresholds
from woundscore.compare.predictions import write_predictions
from woundscore.compare.report import run_comparison
from tests.test_report import make_set, sigmoid


def interleaved_set(seed: int = 11) -> tuple[EmbeddingSet, np.ndarray]:
    """make_set's rows permuted so that train, val and test rows alternate; (set, latent z (n, 6))."""
    es, z = make_set(n_train=90, n_val=40, n_test=60, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(es))
    es, z = es.select(perm), z[perm]
    # the test rows are really scattered: not one block at either end
    where = np.flatnonzero(es.split == "test")
    assert where[0] < 10 and where[-1] > len(es) - 10 and np.diff(where).max() > 1
    return es, z


def scores_by_id(es: EmbeddingSet, z: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """A noisy but informative score (6,) for every image id of the set (so that AUCs differ from 0.5)."""
    rng = np.random.default_rng(seed)
    P = sigmoid(z + 0.8 * rng.normal(size=z.shape))
    return {str(i): P[k] for k, i in enumerate(es.ids)}


def calibrated_reference(es: EmbeddingSet, by_id: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """The report's documented rule applied by hand on the id-matched rows: calibration fitted on
    the val rows' raw scores, thresholds chosen on the calibrated val scores. Returns (image id ->
    calibrated scores (6,), label -> {rule: threshold})."""
    from woundscore.classify.calibration import fit_calibration

    val = es.subset("val")
    P_val = np.stack([by_id[str(i)] for i in val.ids])
    cal = fit_calibration(val.Y, P_val, pos_weight=None)
    ids = list(by_id)
    P_cal = cal.apply(np.stack([by_id[i] for i in ids]))
    chosen = choose_thresholds(val.Y, cal.apply(P_val), label_names=LABEL_NAMES)["labels"]
    return dict(zip(ids, P_cal)), {lab: {chosen[lab]["applied"]: chosen[lab]["value"]} for lab in LABEL_NAMES}


def assert_report_matches_ids(metrics: dict, es: EmbeddingSet, method: str, by_id: dict[str, np.ndarray],
                              thresholds: dict) -> int:
    """Every per-label number of ``method`` equals the independent reference on the id-matched test
    rows (``by_id``: image id -> the scores the report must use (6,)); the method's thresholds equal
    ``thresholds``. Returns how many labels matched."""
    test = es.subset("test")
    P_test = np.stack([by_id[str(i)] for i in test.ids])
    checked = 0
    for j, label in enumerate(LABEL_NAMES):
        got = metrics["metrics"]["per_label"][label][method]
        obs = test.Y[:, j] != -1
        y, p = test.Y[obs, j], P_test[obs, j]
        assert got["n"] == int(obs.sum()) and got["positives"] == int((y == 1).sum()), label
        assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12), label
        assert got["brier"]["value"] == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12), label
        checked += 1
        for point in got["operating_points"].values():
            t = point["threshold"]
            assert point["sensitivity"]["value"] == pytest.approx(float(np.mean(p[y == 1] >= t)), abs=1e-12)
            assert point["specificity"]["value"] == pytest.approx(float(np.mean(p[y == 0] < t)), abs=1e-12)
    assert metrics["methods"][method]["thresholds"] == thresholds
    return checked


def test_predictions_file_in_shuffled_order_is_matched_by_image_id(tmp_path):
    """Catches: compare/methods.py external_method taking the file's rows in file order (or
    ``P[:n_test]``) instead of ``P[index[id]]``, and _val_thresholds choosing on unmatched val rows."""
    es, z = interleaved_set()
    by_id = scores_by_id(es, z, seed=1)
    rng = np.random.default_rng(2)
    # val and test rows interleaved in a random order, plus 5 train rows the report must ignore
    rows = np.flatnonzero(es.split != "train").tolist() + np.flatnonzero(es.split == "train")[:5].tolist()
    rows = rng.permutation(rows)
    ids = [str(es.ids[k]) for k in rows]
    p = write_predictions(tmp_path / "shuffled.csv", ids, np.stack([by_id[i] for i in ids]))
    res = run_comparison(es, tmp_path / "out", predictions={"ext": p}, methods=(), zero_shot=False,
                         n_boot=100, quiet=True)
    assert assert_report_matches_ids(res.metrics, es, "ext", *calibrated_reference(es, by_id)) == 6
    assert "5 row(s) of the file are not in the cache's test/val splits and were ignored" in \
        res.metrics["methods"]["ext"]["notes"]


def test_zero_shot_rows_in_shuffled_order_are_matched_by_image_id(tmp_path, monkeypatch):
    """Catches: compare/methods.py zero_shot_method taking the zero-shot rows in their order
    (e.g. reversed, or ``res.P[-n_test:]``) instead of by image id. The scorer is a stand-in (a
    real tiny SigLIP scores near-constant noise); the row matching is the real code."""
    import woundscore.compare.zeroshot as zeroshot

    es, z = interleaved_set(seed=12)
    by_id = scores_by_id(es, z, seed=3)
    asked: list[list[str]] = []

    def fake_zero_shot_source(source, model, *, ids, quiet, **kw):
        asked.append(list(ids))
        order = np.random.default_rng(4).permutation(len(ids))
        kept = [ids[k] for k in order]
        return zeroshot.ZeroShotResult(ids=np.asarray(kept, dtype=str), P=np.stack([by_id[i] for i in kept]),
                                       skipped=[], meta={"method": "stand-in zero-shot", "train_seconds": 0.0})

    monkeypatch.setattr(zeroshot, "zero_shot_source", fake_zero_shot_source)
    res = run_comparison(es, tmp_path / "out", source="unused-source", model="unused-model", methods=(),
                         n_boot=100, quiet=True)
    assert res.metrics["skipped"] == {}
    # asked for exactly the cache's val and test images
    assert sorted(asked[0]) == sorted(map(str, es.ids[es.split != "train"]))
    assert assert_report_matches_ids(res.metrics, es, "zero-shot", *calibrated_reference(es, by_id)) == 6


def test_trained_method_scores_the_test_rows_of_an_interleaved_cache(tmp_path):
    """The real logistic probe end to end on a cache whose splits are interleaved: the report's
    numbers equal scikit-learn's on the SAVED model folder's (calibrated) scores of the test rows,
    looked up by id, and its thresholds are the folder's. Catches compare/methods.py trained_method
    scoring rows other than the cache's test rows (e.g. ``data.X[:n_test]`` or val.X)."""
    import json

    from woundscore.classify.artifacts import load_model_dir

    es, _ = interleaved_set(seed=13)
    res = run_comparison(es, tmp_path / "out", methods=("probe",), zero_shot=False, n_boot=100, quiet=True)
    folder = tmp_path / "out" / "models" / "probe"
    P = load_model_dir(folder).predict_proba(es.X)
    by_id = {str(i): P[k] for k, i in enumerate(es.ids)}
    saved = json.loads((folder / "thresholds.json").read_text())["labels"]
    thresholds = {lab: {saved[lab]["applied"]: saved[lab]["value"]} for lab in LABEL_NAMES}
    assert assert_report_matches_ids(res.metrics, es, "probe", by_id, thresholds) == 6
