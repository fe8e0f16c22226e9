"""A model folder whose numbers are not numbers is refused on load, naming the file and key, so that
predict / the API / the service never print a NaN score or flag against a NaN threshold (issue 14,
section 4). Each test edits one value of a freshly trained folder; each was seen failing with the
matching check in classify/artifacts.py removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from woundscore.classify.artifacts import ArtifactError, load_model_dir
from woundscore.classify.synthetic import synthetic_embedding_set
from woundscore.classify.train import train_on_set


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    es = synthetic_embedding_set(120, 40, 20, dim=8, seed=2, signal=4.0)
    root = tmp_path_factory.mktemp("guards")
    train_on_set(es, root / "mlp", model="mlp", max_epochs=3, source="synthetic.h5")
    train_on_set(es, root / "probe", model="logreg", source="synthetic.h5")
    return {"mlp": root / "mlp", "probe": root / "probe"}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    # json.dumps writes NaN / Infinity literally, as a careless tool would
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, -0.1, "0.3", None])
def test_a_threshold_that_is_not_a_number_in_0_1_is_refused(folders, tmp_path, value):
    """Catches: the threshold check in load_model_dir removed or loosened (NaN slips through a
    plain ``0 <= v <= 1`` written the other way round, ``not (v < 0 or v > 1)``)."""
    d = _copy(folders["probe"], tmp_path)
    _edit_json(d / "thresholds.json", lambda t: t["labels"]["urgency"].__setitem__("value", value))
    with pytest.raises(ArtifactError) as e:
        load_model_dir(d)
    assert str(e.value) == (f"{d / 'thresholds.json'}: labels.urgency.value is {value!r}; "
                            "a threshold must be a finite number in [0, 1]")


def test_a_missing_threshold_is_refused(folders, tmp_path):
    d = _copy(folders["probe"], tmp_path)
    _edit_json(d / "thresholds.json", lambda t: t["labels"].pop("edema"))
    with pytest.raises(ArtifactError, match=r"thresholds\.json: no threshold for edema$"):
        load_model_dir(d)


def test_a_non_finite_mlp_weight_is_refused(folders, tmp_path):
    """Catches: the Keras weight check removed (the MLP would then score NaN for every image)."""
    import keras

    d = _copy(folders["mlp"], tmp_path)
    model = keras.saving.load_model(d / "model.keras", safe_mode=True)
    w = model.weights[0]
    bad = np.array(w.numpy())
    bad[0, 0] = np.nan
    w.assign(bad)
    model.save(d / "model.keras")
    with pytest.raises(ArtifactError) as e:
        load_model_dir(d)
    assert str(e.value) == f"{d / 'model.keras'}: weight {w.path!r} holds non-finite values"


def test_a_non_finite_probe_coefficient_is_refused(folders, tmp_path):
    d = _copy(folders["probe"], tmp_path)
    _edit_json(d / "probe.json", lambda p: p["coef"][0].__setitem__(0, float("nan")))
    with pytest.raises(ArtifactError) as e:
        load_model_dir(d)
    assert str(e.value) == f"{d / 'probe.json'}: field 'coef' holds non-finite values"


def test_the_untouched_folders_load(folders):
    """Control: the guards do not refuse good folders."""
    for d in folders.values():
        assert np.isfinite(load_model_dir(d).predict_proba(np.zeros((2, 8), np.float32))).all()
