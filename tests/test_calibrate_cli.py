"""`wound-classify calibrate MODEL_DIR SOURCE_OR_CACHE --out NEW_DIR` (issue 13, section 2): a new
folder whose predictions use the new calibration and whose provenance names the set; MODEL_DIR
byte-identical afterwards; before/after figures with CI and n; warnings for small labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import load_model_dir
from woundscore.classify.cli import cli
from woundscore.classify.synthetic import synthetic_embedding_set, write_synthetic_cache
from woundscore.classify.train import train_on_set


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _shifted(seed: int, n: int, cut: float):
    """Planted-signal rows labelled at another prevalence than the training set (a new population)."""
    es = synthetic_embedding_set(n, 0, 0, dim=16, seed=seed)
    rng = np.random.default_rng(seed + 100)
    Y = (2.0 * es.X[:, :6] + rng.normal(size=(len(es), 6)) > cut).astype(np.int8)
    return dataclasses.replace(es, Y=Y, split=np.array(["test"] * len(es)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    es = synthetic_embedding_set(240, 80, 0, dim=16, seed=1)
    out = tmp_path_factory.mktemp("cal") / "probe"
    train_on_set(es, out, model="logreg", source="train.h5")
    return out


def test_calibrate_on_a_cache_writes_a_new_folder_and_leaves_the_old_one_alone(model: Path, tmp_path: Path) -> None:
    local = _shifted(7, 150, 2.0)  # ~20 % positives where the training set had ~40 %
    Y = local.Y.copy()
    Y[:, 5] = 0
    Y[:2, 5] = 1  # exudate: 2 positives -> too small to refit
    local = dataclasses.replace(local, Y=Y)
    write_synthetic_cache(tmp_path / "local.h5", local)
    before = _tree(model)
    r = CliRunner().invoke(cli, ["calibrate", str(model), str(tmp_path / "local.h5"), "--out", str(tmp_path / "new")])
    assert r.exit_code == 0, r.output
    assert _tree(model) == before  # byte-identical
    new, old = load_model_dir(tmp_path / "new"), load_model_dir(model)
    X = local.X
    np.testing.assert_array_equal(new.predict_raw(X), old.predict_raw(X))
    np.testing.assert_allclose(new.predict_proba(X), new.calibration.apply(old.predict_raw(X)))
    assert not np.allclose(new.predict_proba(X)[:, 0], old.predict_proba(X)[:, 0])
    prov = json.loads((tmp_path / "new" / "provenance.json").read_text())
    assert prov["recalibration"]["calibration_set"] == f"cache {tmp_path / 'local.h5'} (150 rows, all splits)"
    assert prov["recalibration"]["kept_from_model"] == ["exudate"]
    assert new.calibration.fitted_on.startswith("recalibration on cache")
    assert new.calibration.labels["exudate"] == old.calibration.labels["exudate"]
    assert new.thresholds["labels"]["exudate"] == old.thresholds["labels"]["exudate"]
    # the output: the same-rows note, per label before -> after with CIs and n, the warning
    assert "measured on the same rows" in r.output and "AUC is unchanged" in r.output
    assert "WARNING: exudate: 2 positive and 148 negative images; at least 3 of each" in r.output
    assert "  ece " in r.output and " n=150" in r.output and "->" in r.output
    fig = json.loads((tmp_path / "new" / "recalibration.json").read_text())["labels"]["healing_status"]
    assert fig["n"] == 150 and fig["after"]["ece"] < fig["before"]["ece"]
    lo, hi = fig["after"]["sensitivity_ci"]
    assert lo <= fig["after"]["sensitivity"] <= hi and fig["after"]["sensitivity_n"] == fig["positives"]


def test_recalibrated_threshold_keeps_the_sensitivity_rule_on_the_new_set(model: Path, tmp_path: Path) -> None:
    local = _shifted(8, 120, 2.0)
    write_synthetic_cache(tmp_path / "local.h5", local)
    r = CliRunner().invoke(cli, ["calibrate", str(model), str(tmp_path / "local.h5"), "-o", str(tmp_path / "n")])
    assert r.exit_code == 0, r.output
    new = load_model_dir(tmp_path / "n")
    P = new.predict_proba(local.X)
    j = LABEL_NAMES.index("urgency")
    t = new.thresholds["labels"]["urgency"]
    y, p = local.Y[:, j], P[:, j]
    assert t["applied"] == "sensitivity>=0.90"
    assert (p[y == 1] >= t["value"]).mean() >= 0.90  # hand check of the rule on the set itself
    assert (p[y == 1] >= np.nextafter(t["value"], 1)).mean() < 0.90  # and it is the highest such value


def test_refusals(model: Path, tmp_path: Path) -> None:
    unlabelled = dataclasses.replace(_shifted(9, 20, 2.0), Y=np.full((20, 6), -1, np.int8))
    write_synthetic_cache(tmp_path / "u.h5", unlabelled)
    r = CliRunner().invoke(cli, ["calibrate", str(model), str(tmp_path / "u.h5"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "no labelled images" in r.output and not (tmp_path / "x").exists()
    r = CliRunner().invoke(cli, ["calibrate", str(model), str(tmp_path / "u.h5"), "--out", str(model)])
    assert r.exit_code == 1 and "folder exists and is not empty" in r.output
    other = synthetic_embedding_set(20, 0, 0, dim=16, seed=3, encoder_id="other/encoder")
    write_synthetic_cache(tmp_path / "o.h5", other)
    r = CliRunner().invoke(cli, ["calibrate", str(model), str(tmp_path / "o.h5"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "encoder_id: model has 'synthetic/encoder'" in r.output
