"""The model folder: save -> ``import woundscore`` + plain ``keras.saving.load_model`` in a fresh
process -> the same logits (safe_mode, no custom_objects); history.csv; no pickle; embeddings from
another encoder, revision, size or preprocessing are refused with both sides shown."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import ArtifactError, EncoderMismatchError, load_model_dir, save_model_dir
from woundscore.classify.synthetic import synthetic_embedding_set, synthetic_provenance
from woundscore.classify.train import TrainDataError, train_on_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def es():
    return synthetic_embedding_set(160, 60, 60, dim=16, seed=5, signal=4.0)


@pytest.fixture(scope="module")
def mlp_dir(es, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "mlp"
    train_on_set(es, out, model="mlp", max_epochs=8, source="synthetic.h5")
    return out


@pytest.fixture(scope="module")
def probe_dir(es, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "probe"
    train_on_set(es, out, model="logreg", source="synthetic.h5")
    return out


def test_folder_layout_and_provenance(mlp_dir: Path, es) -> None:
    assert sorted(p.name for p in mlp_dir.iterdir()) == ["calibration.json", "history.csv", "model.keras", "ood.npz",
                                                          "provenance.json", "schema.json", "thresholds.json"]
    prov = json.loads((mlp_dir / "provenance.json").read_text())
    assert prov["model_type"] == "mlp" and prov["labels"] == list(LABEL_NAMES)
    assert prov["encoder"]["encoder_id"] == "synthetic/encoder"
    assert prov["encoder"]["embedding_dim"] == 16
    assert prov["encoder"]["preprocessing"]["size"] == [448, 448]
    assert prov["split_sizes"] == {"train": 160, "val": 60, "test": 60}
    y = es.subset("train").Y[:, 0]
    assert prov["pos_weight"]["healing_status"] == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert prov["seed"] == 0 and prov["training"]["epochs_run"] <= 8
    assert set(prov["validation"]["labels"]) == set(LABEL_NAMES) and prov["validation"]["macro_auc"] > 0.5
    assert {"keras", "torch", "numpy", "python"} <= set(prov["versions"])
    assert prov["notice"] == "synthetic embeddings with a planted signal; means nothing clinically"
    assert prov["training_cache"]["path"] == "synthetic.h5"
    assert "on_epoch" not in prov["hyperparameters"] and prov["hyperparameters"]["hidden"] == [512, 256]
    th = json.loads((mlp_dir / "thresholds.json").read_text())
    assert th["labels"]["urgency"]["applied"] == "sensitivity>=0.90"
    assert th["labels"]["erythema"]["applied"] == "youden"


def test_keras_file_holds_no_pickle_and_names_the_registered_loss(mlp_dir: Path) -> None:
    with zipfile.ZipFile(mlp_dir / "model.keras") as z:
        names = set(z.namelist())
        config = json.loads(z.read("config.json"))
    assert names == {"config.json", "metadata.json", "model.weights.h5"}
    assert config["compile_config"]["loss"]["registered_name"] == "woundscore>MaskedBCE"
    assert "lambda" not in json.dumps(config).lower()


def test_history_csv_is_the_fit_history(es, tmp_path: Path) -> None:
    res = train_on_set(es, tmp_path / "m", model="mlp", max_epochs=3)
    with open(tmp_path / "m" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "val_macro_auc", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, rec in zip(rows, res.estimator.history_):
        assert [float(row[k]) for k in ("loss", "val_loss", "val_macro_auc")] == \
            [rec["loss"], rec["val_loss"], rec["val_macro_auc"]]


LOAD = """
import sys, numpy as np
{imports}
m = keras.saving.load_model(sys.argv[1])
assert type(m.loss).__name__ == "MaskedBCE", m.loss
X = np.load(sys.argv[2])
np.save(sys.argv[3] + "/Z.npy", m.predict(X, verbose=0), allow_pickle=False)
from woundscore.classify.artifacts import load_model_dir
np.save(sys.argv[3] + "/P.npy", load_model_dir(sys.argv[4]).predict_proba(X), allow_pickle=False)
np.save(sys.argv[3] + "/R.npy", load_model_dir(sys.argv[4]).predict_raw(X), allow_pickle=False)
"""


def test_plain_keras_load_model_after_import_woundscore_gives_the_logits(mlp_dir: Path, es, tmp_path: Path) -> None:
    X = es.subset("test").X
    np.save(tmp_path / "X.npy", X)
    args = [str(mlp_dir / "model.keras"), str(tmp_path / "X.npy"), str(tmp_path), str(mlp_dir)]
    r = subprocess.run([sys.executable, "-c", LOAD.format(imports="import woundscore, keras"), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lm = load_model_dir(mlp_dir)
    np.testing.assert_allclose(np.load(tmp_path / "Z.npy"), lm.estimator.decision_function(X), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "P.npy"), lm.predict_proba(X))  # the folder: identical
    np.testing.assert_array_equal(np.load(tmp_path / "R.npy"), lm.predict_raw(X))
    # without `import woundscore` the loss is unknown to Keras: the registration is what loads it
    plain = "import os; os.environ['KERAS_BACKEND'] = 'torch'; import keras"
    r = subprocess.run([sys.executable, "-c", LOAD.format(imports=plain), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Could not locate class 'MaskedBCE'" in r.stderr


def test_training_object_and_loaded_folder_give_identical_probabilities(es, tmp_path: Path) -> None:
    res = train_on_set(es, tmp_path / "m", model="mlp", max_epochs=2)
    X = es.subset("test").X
    lm = load_model_dir(tmp_path / "m")
    np.testing.assert_array_equal(lm.predict_raw(X), res.estimator.predict_proba(X))
    np.testing.assert_array_equal(lm.predict_proba(X), lm.calibration.apply(res.estimator.predict_proba(X)))


def test_probe_folder_is_json_and_reloads_identically(probe_dir: Path, es) -> None:
    assert sorted(p.name for p in probe_dir.iterdir()) == ["calibration.json", "ood.npz", "probe.json",
                                                            "provenance.json", "schema.json", "thresholds.json"]
    d = json.loads((probe_dir / "probe.json").read_text())
    assert len(d["coef"]) == 6 and len(d["coef"][0]) == 16 and len(d["mean"]) == 16
    lm = load_model_dir(probe_dir)
    assert lm.kind == "logreg"
    X = es.subset("test").X
    z = (X.astype(np.float64) - np.array(d["mean"])) / np.array(d["scale"]) @ np.array(d["coef"]).T + d["intercept"]
    np.testing.assert_allclose(lm.predict_raw(X), 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_other_encoder_is_refused_with_both_sides(mlp_dir: Path, es) -> None:
    lm = load_model_dir(mlp_dir)
    other = synthetic_provenance(16, encoder_id="google/medsiglip-448", revision="abc123")
    with pytest.raises(EncoderMismatchError) as e:
        lm.predict_proba(es.X[:3], other)
    assert str(e.value) == (
        f"{mlp_dir}: refusing to score embeddings made differently from the model's training data:\n"
        "  encoder_id: model has 'synthetic/encoder', the input has 'google/medsiglip-448'\n"
        "  encoder_revision: model has 'synthetic-1', the input has 'abc123'"
    )
    assert e.value.differences["encoder_id"] == ("synthetic/encoder", "google/medsiglip-448")


def test_other_preprocessing_or_size_is_refused(mlp_dir: Path, es) -> None:
    lm = load_model_dir(mlp_dir)
    other = synthetic_provenance(16, size=224)
    with pytest.raises(EncoderMismatchError, match=r"  preprocessing\.size: model has \[448, 448\], "
                                                   r"the input has \[224, 224\]$"):
        lm.check_compatible(other)
    with pytest.raises(EncoderMismatchError, match=r"  embedding_dim: model has 16, the input has 12$"):
        lm.predict_proba(np.zeros((2, 12), np.float32))
    lm.check_compatible(synthetic_provenance(16))  # same setup: accepted


def test_existing_folder_is_not_overwritten_unless_asked(mlp_dir: Path, es, tmp_path: Path) -> None:
    before = (mlp_dir / "provenance.json").read_text()
    with pytest.raises(ArtifactError, match=r"folder exists and is not empty \(use --overwrite to replace it\)$"):
        train_on_set(es, mlp_dir, model="logreg")
    assert (mlp_dir / "provenance.json").read_text() == before
    assert not [p for p in mlp_dir.parent.iterdir() if p.name.startswith(".mlp.tmp")]


def test_overwrite_replaces_the_folder_whole(es, tmp_path: Path) -> None:
    out = tmp_path / "m"
    train_on_set(es, out, model="mlp", max_epochs=1)
    assert (out / "history.csv").is_file()
    train_on_set(es, out, model="logreg", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "ood.npz", "probe.json", "provenance.json",
                                                     "schema.json", "thresholds.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_broken_folders_are_named_errors(mlp_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no such model folder$"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty: not a woundscore model folder \(provenance.json is missing\)$"):
        load_model_dir(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in mlp_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"model.keras: cannot load"):
        load_model_dir(bad)
    (bad / "schema.json").write_text('{"version": 99}')
    with pytest.raises(ArtifactError, match=r"schema.json: the model's labels were encoded with other rules"):
        load_model_dir(bad)


def test_training_needs_train_and_val_rows(es, tmp_path: Path) -> None:
    no_val = es.select(es.split != "val")
    with pytest.raises(TrainDataError) as e:
        train_on_set(no_val, tmp_path / "m", source="c.h5")
    assert str(e.value) == ("c.h5: needs rows in both the train and val splits (has train=160, val=0, test=60); "
                            "val chooses the epoch and the thresholds")
    assert not (tmp_path / "m").exists()
