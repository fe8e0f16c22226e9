"""Learning curves (compare.curve): nested stratified subsets, a curve that rises with n on a
planted signal (and not on random labels), not-estimable labels with their counts, the
fine-tune's point, and `wound-compare curve` writing its table, plot and JSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.synthetic import synthetic_embedding_set, write_synthetic_cache
from woundscore.compare.cli import cli
from woundscore.compare.curve import CurveError, learning_curve, nested_orders, stratum_key, subset_sizes
from woundscore.compare.curve_output import COLUMNS, curve_blocks, write_curve
from woundscore.compare.predictions import write_predictions

FAST_MLP = {"max_epochs": 8, "patience": 3}


def test_subsets_are_nested_stratified_and_differ_between_repeats() -> None:
    es = synthetic_embedding_set(200, 10, 10, dim=8, seed=0, signal=1.0)
    Y = es.subset("train").Y
    key = stratum_key(Y)
    orders = nested_orders(Y, 3, seed=5)
    assert orders.shape == (3, 200) and all(sorted(o) == list(range(200)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(nested_orders(Y, 3, seed=5), orders)  # seeded
    sizes = subset_sizes(200, (0.1, 0.25, 0.5, 1.0))
    assert sizes == [20, 50, 100, 200]
    for o in orders:
        subsets = [set(o[:n].tolist()) for n in sizes]
        assert all(a < b for a, b in zip(subsets, subsets[1:]))  # each size contains the smaller ones
        for n in sizes:
            for s in np.unique(key):
                share = (key == s).sum() * n / 200
                assert abs((key[o[:n]] == s).sum() - share) <= 1.0, (n, s)  # stratified, not by chance


def test_stratum_is_the_rarest_positive_label_missing_is_not_positive() -> None:
    Y = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, -1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0],
                  [-1, -1, -1, -1, -1, -1]], np.int8)
    # prevalence: label 0 3/4, label 1 1/3, label 5 1/5 -> rows take their rarest positive label
    assert stratum_key(Y).tolist() == [1, 0, 5, 6, 6]


def test_bad_fractions_and_methods_are_named_errors() -> None:
    es = synthetic_embedding_set(20, 10, 10, dim=8, seed=0)
    for bad in ((0.5, 0.1), (0.0, 1.0), (1.5,), ()):
        with pytest.raises(CurveError, match="fractions must be increasing"):
            learning_curve(es, fractions=bad)
    with pytest.raises(CurveError, match="methods among"):
        learning_curve(es, methods=("svm",))


def _probe_curve(random_labels: bool):
    es = synthetic_embedding_set(300, 60, 200, dim=40, seed=2, signal=1.0, random_labels=random_labels)
    return learning_curve(es, fractions=(0.08, 0.3, 1.0), repeats=3, methods=("probe",), n_boot=300)


def test_a_planted_signal_gives_a_rising_curve_random_labels_do_not() -> None:
    rising = [p["macro"]["mean"] for p in _probe_curve(False).points["probe"]]
    assert rising[0] + 0.05 < rising[1] < rising[2] - 0.01, rising  # more images, better test AUC
    flat = _probe_curve(True)
    assert all(abs(p["macro"]["mean"] - 0.5) < 0.08 for p in flat.points["probe"])
    assert flat.steps["probe"]["verdict"] != "rising"


def test_rare_label_is_not_estimable_at_small_sizes_with_its_count_and_mlp_repeats_run() -> None:
    es = synthetic_embedding_set(80, 30, 40, dim=8, seed=4, signal=2.0)
    j = LABEL_NAMES.index("urgency")
    tr = np.flatnonzero(es.split == "train")
    es.Y[tr, j] = 0
    es.Y[tr[:6], j] = 1  # 6 training positives: < 5 in a 25 % subset, enough at full size
    res = learning_curve(es, fractions=(0.25, 1.0), repeats=2, n_boot=200, mlp_params=FAST_MLP)
    for m in ("probe", "mlp"):
        small, full = res.points[m][0]["per_label"]["urgency"], res.points[m][1]["per_label"]["urgency"]
        assert small["mean"] is None and small["train_positives"] < 5
        assert small["reason"] == f"not estimable: {small['train_positives']} positives in the training subset (< 5)"
        assert full["mean"] is not None and full["train_positives"] == 6 and "reason" not in full
        assert len(res.points[m][1]["macro"]["values"]) == 2  # one AUC per repeat
    assert res.full_ci["mlp"]["macro"]["low"] <= res.full_ci["mlp"]["macro"]["value"] <= res.full_ci["mlp"]["macro"]["high"]
    text = " ".join(b[1] for b in curve_blocks(res) if b[0] == "p")
    assert "urgency at 20 images" in text and "positives" in text
    blocks = curve_blocks(res)
    assert {b[0] for b in blocks} <= {"h2", "p", "table", "image", "list"}
    image = next(b for b in blocks if b[0] == "image")
    assert image[1].endswith("curve.png") and os.path.isfile(image[1])  # drawn; the report copies it
    table = next(b for b in blocks if b[0] == "table")
    assert table[1] == COLUMNS and all(len(r) == len(COLUMNS) for r in table[2])


def test_finetune_point_from_predictions_and_missing_test_ids(tmp_path) -> None:
    es = synthetic_embedding_set(60, 20, 40, dim=8, seed=1, signal=2.0)
    test = es.subset("test")
    rng = np.random.default_rng(0)
    good = write_predictions(tmp_path / "ft.csv", test.ids, rng.random((len(test), 6)))
    res = learning_curve(es, fractions=(0.5, 1.0), repeats=1, methods=("probe",), n_boot=200,
                         finetune_predictions=str(good))
    assert res.finetune["n_train"] == 60 and res.finetune["macro"]["value"] is not None
    assert "fine-tune" in res.reading
    bad = write_predictions(tmp_path / "short.csv", test.ids[:-1], rng.random((len(test) - 1, 6)))
    with pytest.raises(CurveError, match=r"short\.csv: no prediction for 1 test image"):
        learning_curve(es, fractions=(1.0,), repeats=1, methods=("probe",), n_boot=200, finetune_predictions=str(bad))


def test_cli_writes_table_plot_and_json(tmp_path) -> None:
    es = synthetic_embedding_set(60, 20, 40, dim=8, seed=3, signal=2.0)
    cache = tmp_path / "c.h5"
    write_synthetic_cache(cache, es)
    out = tmp_path / "curve"
    r = CliRunner().invoke(cli, ["curve", str(cache), "--out", str(out), "--fractions", "0.5,1", "--repeats", "2",
                                 "--bootstrap", "200", "--max-epochs", "5", "--patience", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Rule: a curve has flattened" in r.output
    data = json.loads((out / "curve.json").read_text())  # strict JSON: NaN would not parse back as null
    assert data["sizes"] == [30, 60] and data["settings"]["mlp"] == {"max_epochs": 5, "patience": 2}
    assert set(data["steps"]) == {"probe", "mlp"} and data["reading"]
    csv_lines = (out / "curve.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(COLUMNS) and len(csv_lines) == 1 + 2 * 2 * 7
    assert "| method | train_images |" in (out / "curve.md").read_text()
    with Image.open(out / "curve.png") as im:
        assert im.size[0] >= 1500 and round(im.info["dpi"][0]) >= 150
    bad = CliRunner().invoke(cli, ["curve", str(cache), "--out", str(out), "--fractions", "a,b"])
    assert bad.exit_code == 2 and "--fractions" in bad.output


def test_write_curve_json_has_no_nan(tmp_path) -> None:
    es = synthetic_embedding_set(40, 20, 30, dim=8, seed=0, signal=2.0)
    res = learning_curve(es, fractions=(0.25, 1.0), repeats=1, methods=("probe",), n_boot=100)
    files = write_curve(res, tmp_path)
    assert "NaN" not in files["curve.json"].read_text()
