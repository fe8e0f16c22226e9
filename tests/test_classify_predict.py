"""End to end with the tiny random SigLIP: embed a release into a cache, train, then `predict` on
image files reproduces the cached rows' scores; another encoder or preprocessing is refused;
an unreadable image is reported and the rest are scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.cli import cli


@pytest.fixture(scope="module")
def setup(mini_release: Path, mini_mlp, tmp_path_factory):
    from woundscore.cache import read_cache
    from woundscore.embed.sources import open_source

    cache, model_dir = mini_mlp
    es = read_cache(cache)
    work = tmp_path_factory.mktemp("predict")
    images = work / "images"
    images.mkdir()
    files = {}
    for s in open_source(mini_release).samples()[:4]:
        f = images / Path(s.image_id).name
        f.write_bytes(s.read_bytes())
        files[s.image_id] = f
    return es, model_dir, files


def test_predict_reproduces_the_cached_rows(setup, tiny_siglip_dir: Path) -> None:
    from woundscore.classify.scorer import WoundScorer

    es, model_dir, files = setup
    r = CliRunner().invoke(cli, ["predict", str(model_dir), *map(str, files.values()),
                                 "--encoder", str(tiny_siglip_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(l) for l in r.output.splitlines()]
    assert len(lines) == len(files)
    scorer = WoundScorer.load(model_dir)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())["labels"]
    for (image_id, f), obj in zip(files.items(), lines):
        assert set(obj) == {"image", "scores", "raw_scores", "flags", "thresholds", "in_distribution", "ood", "model"}
        assert obj["image"] == str(f)
        assert list(obj["scores"]) == list(LABEL_NAMES)
        row = int(np.flatnonzero(es.ids == image_id)[0])
        cached = scorer.score_embeddings(es.X[row : row + 1], es.provenance)[0]
        np.testing.assert_allclose([obj["scores"][n] for n in LABEL_NAMES], cached, rtol=0, atol=1e-5)
        for n in LABEL_NAMES:
            t = thresholds[n]
            assert obj["thresholds"][n] == {"value": t["value"], "rule": t["applied"]}
            assert obj["flags"][n] == (obj["scores"][n] >= t["value"])
        assert_model_fields(obj["model"], model_dir, es)


def assert_model_fields(m: dict, model_dir: Path, es) -> None:
    """Each field of the contract's "model" against the folder's provenance (issue 16, finding 5:
    "" for the path, null created/revision or a made-up validation AUC must fail here)."""
    prov = json.loads((model_dir / "provenance.json").read_text())
    assert set(m) == {"type", "path", "created", "encoder_id", "encoder_revision", "validation_macro_auc",
                      "calibration", "notice"}
    assert m["type"] == "mlp"
    assert m["path"] == str(model_dir) and m["path"] != ""
    assert m["created"] is not None and m["created"] == prov["created"]
    assert m["encoder_id"] == es.provenance["encoder_id"] == prov["encoder"]["encoder_id"]
    assert m["encoder_revision"] is not None and m["encoder_revision"] == es.provenance["encoder_revision"]
    auc = prov["validation"]["macro_auc"]
    assert auc is not None and m["validation_macro_auc"] == auc
    cal = prov.get("calibration")
    if (model_dir / "calibration.json").is_file():
        c = json.loads((model_dir / "calibration.json").read_text())
        assert m["calibration"]["fitted_on"] == c["fitted_on"] and list(m["calibration"]["methods"]) == list(LABEL_NAMES)
    else:
        assert m["calibration"] is None, cal
    assert m["notice"] == es.provenance.get("notice") and m["notice"]


def test_in_memory_image_and_unestimable_auc(setup, tiny_siglip_dir: Path) -> None:
    """"<image>" for a PIL image; a validation macro AUC that is null or NaN in the provenance is
    null in the contract, and the object is strict JSON (issue 16, finding 5)."""
    import dataclasses

    from PIL import Image

    from woundscore.classify.scorer import WoundScorer

    _, model_dir, files = setup
    scorer = WoundScorer.load(model_dir, encoder=str(tiny_siglip_dir), device="cpu")
    f = next(iter(files.values()))
    with Image.open(f) as im:
        r = scorer.score(im.copy())
    assert r["image"] == "<image>"
    assert r["scores"] == scorer.score(f)["scores"]
    for bad in (None, float("nan")):
        prov = {**scorer.model.provenance, "validation": {**scorer.model.provenance["validation"], "macro_auc": bad}}
        other = WoundScorer(dataclasses.replace(scorer.model, provenance=prov), scorer.encoder)
        obj = other.score(f)
        assert obj["model"]["validation_macro_auc"] is None
        json.dumps(obj, allow_nan=False)


def test_api_score_matches_cli(setup, tiny_siglip_dir: Path) -> None:
    from woundscore.classify.scorer import WoundScorer

    es, model_dir, files = setup
    scorer = WoundScorer.load(model_dir, encoder=str(tiny_siglip_dir), device="cpu")
    f = next(iter(files.values()))
    a = scorer.score(f)
    b = scorer.score(f.read_bytes())
    assert a["scores"] == b["scores"] and b["image"] == "<bytes>"
    assert scorer.score_embeddings(es.X[:2]).shape == (2, 6)


def test_unreadable_image_is_reported_and_the_rest_scored(setup, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    _, model_dir, files = setup
    bad = tmp_path / "not an image.jpg"
    bad.write_text("<html>hello</html>")
    good = next(iter(files.values()))
    r = CliRunner().invoke(cli, ["predict", str(model_dir), str(bad), str(good), str(tmp_path / "gone.png"),
                                 "--encoder", str(tiny_siglip_dir), "--device", "cpu"])
    assert r.exit_code == 3
    out = [json.loads(l) for l in r.output.splitlines() if l.startswith("{")]
    assert [o["image"] for o in out] == [str(bad), str(good), str(tmp_path / "gone.png")]
    assert set(out[0]) == {"image", "error"} and out[0]["error"].startswith(f"{bad}: ")
    assert "scores" in out[1]
    assert set(out[2]) == {"image", "error"} and out[2]["error"].startswith(f"{tmp_path / 'gone.png'}: cannot read file")
    assert 'Error: 2 of 3 images could not be scored (see their "error")' in r.output


def test_another_encoder_is_refused(setup, tmp_path: Path) -> None:
    from woundscore.embed.tiny import build_tiny_siglip

    _, model_dir, files = setup
    other = build_tiny_siglip(tmp_path / "tiny-siglip", seed=1)
    r = CliRunner().invoke(cli, ["predict", str(model_dir), str(next(iter(files.values()))),
                                 "--encoder", str(other), "--device", "cpu"])
    assert r.exit_code == 1
    first, *rest = r.output.splitlines()
    assert first == f"Error: {model_dir}: refusing to score embeddings made differently from the model's training data:"
    assert len(rest) == 1 and rest[0].startswith("  encoder_revision: model has 'local:")
    assert f", encoder {'local/tiny-siglip'!r} has 'local:" in rest[0]


def test_other_preprocessing_is_refused(setup, tiny_siglip_dir: Path) -> None:
    from woundscore.classify.artifacts import EncoderMismatchError
    from woundscore.classify.scorer import WoundScorer
    from woundscore.embed.encoder import load_encoder

    _, model_dir, _ = setup
    enc = load_encoder(tiny_siglip_dir, device="cpu", fast_decode=True)
    with pytest.raises(EncoderMismatchError, match=r"\n  preprocessing\.decode: model has '\w+', encoder '[^']+' has 'draft'"):
        WoundScorer.load(model_dir, encoder=enc)


def test_model_from_a_local_checkpoint_needs_the_encoder_folder(setup) -> None:
    """A local checkpoint is recorded by name + hash, not by path: predict says to pass the folder."""
    es, model_dir, files = setup
    r = CliRunner().invoke(cli, ["predict", str(model_dir), str(next(iter(files.values())))])
    assert r.exit_code == 1
    name, rev = es.provenance["encoder_id"], es.provenance["encoder_revision"]
    assert r.output == (
        f"Error: {model_dir}: the model was trained on embeddings from a local checkpoint ({name}, revision "
        f"{rev}); pass that folder as the encoder (wound-classify predict ... --encoder FOLDER, or "
        f"WoundScorer.load(..., encoder=FOLDER))\n"
    )
