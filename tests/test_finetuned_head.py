"""The fine-tune's output folder is a model folder: scored by WoundScorer like an MLP/probe folder,
equal to the fine-tune's own predictions, loadable by transformers alone, refusing other encoders."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES

CONTRACT_KEYS = {"image", "scores", "raw_scores", "flags", "thresholds", "in_distribution", "ood", "model"}


@pytest.fixture(scope="module")
def ft(tiny_siglip_dir: Path, mini_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 1-step fine-tune of the tiny random SigLIP on the mini release: (result, folder)."""
    from woundscore.compare.finetune import finetune

    out = tmp_path_factory.mktemp("ft") / "ft"
    res = finetune(mini_release, out, model=tiny_siglip_dir, unfreeze_last=1, batch_size=2, grad_accum=2,
                   max_steps=1, device="cpu", quiet=True)
    return res, out


def _test_images(mini_release: Path, ids) -> list[bytes]:
    from woundscore.embed.sources import open_source

    by_id = {s.image_id: s for s in open_source(mini_release).samples()}
    return [by_id[i].read_bytes() for i in ids]


def test_folder_scores_with_the_contract_equal_to_the_finetunes_predictions(ft, mini_release: Path) -> None:
    from woundscore.classify.scorer import WoundScorer
    from woundscore.compare.predictions import read_predictions

    res, out = ft
    ids, P = read_predictions(out / "predictions.csv")
    n_test = len(res.ids)
    scorer = WoundScorer.load(out, device="cpu", dtype="float32")
    assert scorer.model.kind == "finetune"
    images = _test_images(mini_release, ids[:n_test])
    results = scorer.score_batch(images) if hasattr(scorer, "score_batch") else [scorer.score(x) for x in images]
    thresholds = json.loads((out / "thresholds.json").read_text())["labels"]
    raw = np.array([[r["raw_scores"][n] for n in LABEL_NAMES] for r in results])
    np.testing.assert_allclose(raw, P[:n_test], rtol=0, atol=1e-5)  # the deployed path = the fine-tune's own
    cal = scorer.model.calibration.apply(raw)
    for r, c in zip(results, cal):
        assert set(r) == CONTRACT_KEYS
        assert [r["scores"][n] for n in LABEL_NAMES] == pytest.approx(list(c), abs=1e-12)
        for n in LABEL_NAMES:
            assert r["thresholds"][n] == {"value": thresholds[n]["value"], "rule": thresholds[n]["applied"]}
            assert r["flags"][n] == (r["scores"][n] >= thresholds[n]["value"])
        assert r["model"]["type"] == "finetune" and r["model"]["encoder_id"] == "finetune/local/tiny-siglip"
        assert r["model"]["encoder_revision"].startswith("weights:")
        assert r["model"]["validation_macro_auc"] == res.post_hoc.validation["macro_auc"]
        assert "random weights - not MedSigLIP" in r["model"]["notice"]
        assert isinstance(r["in_distribution"], bool) and r["ood"]["method"]
    # the calibration is not the identity: scores are the calibrated raw scores, not the raw ones
    assert np.abs(cal - raw).max() > 1e-3


def test_thresholds_are_chosen_on_the_calibrated_val_scores(ft) -> None:
    """Recomputed here from predictions.csv's val rows and the folder's calibration.json."""
    from woundscore.classify.artifacts import load_model_dir
    from woundscore.classify.thresholds import choose_thresholds
    from woundscore.compare.predictions import read_predictions
    from woundscore.embed.sources import open_source

    res, out = ft
    m = load_model_dir(out)
    ids, P = read_predictions(out / "predictions.csv")
    n_test = len(res.ids)
    labels = {s.image_id: s.labels for s in open_source(_source(out)).samples()}
    Y_val = np.array([labels[i] for i in ids[n_test:]], dtype=np.int8)
    expected = choose_thresholds(Y_val, m.calibration.apply(P[n_test:]), m.provenance["target_sensitivity"])
    assert json.loads((out / "thresholds.json").read_text()) == json.loads(json.dumps(expected))
    assert (out / "calibration.json").is_file() and (out / "ood.npz").is_file() and m.ood is not None
    assert m.ood.n_train == m.provenance["split_sizes"]["train"] == 21


def _source(out: Path) -> str:
    return json.loads((out / "provenance.json").read_text())["training_source"]["path"]


def test_provenance_has_the_fields_of_other_model_folders(ft) -> None:
    res, out = ft
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("created", "encoder", "split_sizes", "pos_weight", "hyperparameters", "seed", "target_sensitivity",
                "validation", "versions", "notice", "calibration"):
        assert prov.get(key) is not None, key
    assert prov["kind"] == prov["model_type"] == "finetune"
    assert prov["split_sizes"] == {"train": 21, "val": 3, "test": 6}
    assert prov["hyperparameters"]["unfreeze_last"] == 1 and prov["hyperparameters"]["max_steps"] == 1
    assert set(prov["pos_weight"]) == set(LABEL_NAMES) and prov["target_sensitivity"] == 0.9
    enc = prov["encoder"]
    assert enc["encoder_id"] == "finetune/local/tiny-siglip" and enc["embedding_dim"] == 32
    assert enc["preprocessing"]["size"] == [64, 64] and enc["preprocessing"]["pad"] == "center-zero"
    assert enc["base_revision"].startswith("local:") and enc["pooling"] == "mean"
    card = (out / "model" / "README.md").read_text()
    assert "padded to a square first" in card and "calibration.json" in card and "uncalibrated" in card


def test_transformers_alone_loads_model_and_gives_the_same_logits(ft) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from woundscore.classify.finetuned import FineTunedHead

    _, out = ft
    model = AutoModelForImageClassification.from_pretrained(out / "model").eval()
    processor = AutoImageProcessor.from_pretrained(out / "model")
    assert model.config.id2label == dict(enumerate(LABEL_NAMES))
    assert model.config.label2id == {n: i for i, n in enumerate(LABEL_NAMES)}
    rng = np.random.default_rng(5)
    square = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # square, at the model size
    with torch.no_grad():
        hf = model(**processor(images=square, return_tensors="pt")).logits.numpy()
    head = FineTunedHead.load(out)
    ours = head.predict_logits(head.encoder(device="cpu", dtype="float32").embed_images([square]))
    np.testing.assert_allclose(ours, hf, rtol=0, atol=1e-5)
    assert np.abs(hf).max() > 1e-3  # not a trivially zero comparison


def test_other_encoders_and_changed_weights_are_refused(ft, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from woundscore.classify.artifacts import EncoderMismatchError
    from woundscore.classify.scorer import WoundScorer
    from woundscore.embed.encoder import load_encoder

    _, out = ft
    base = load_encoder(tiny_siglip_dir, device="cpu", dtype="float32")
    with pytest.raises(EncoderMismatchError) as e:
        WoundScorer.load(out, encoder=base)
    assert "encoder_id" in e.value.differences and "encoder_revision" in e.value.differences

    changed = tmp_path / "changed"
    shutil.copytree(out, changed, ignore=shutil.ignore_patterns("trainer"))
    weights = load_file(changed / "model" / "model.safetensors")
    key = next(k for k in sorted(weights) if k.startswith("vision_model.encoder.layers.0."))
    weights[key] = weights[key] + np.float32(0.01)
    save_file(weights, changed / "model" / "model.safetensors")
    scorer = WoundScorer.load(changed, device="cpu", dtype="float32")
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (30, 50), (180, 60, 60)).save(buf, "PNG")
    with pytest.raises(EncoderMismatchError) as e:
        scorer.score(buf.getvalue())
    assert set(e.value.differences) == {"encoder_revision"}


@pytest.mark.parametrize("damage, message", [
    ("id2label", "is not woundscore's six labels in order"),
    ("nan", "weight 'classifier.bias' holds non-finite values"),
    ("pooling", "woundscore_pooling is 'max'"),
    ("no_model", "model/config.json is missing"),
])
def test_a_damaged_folder_is_refused_naming_the_file(ft, tmp_path: Path, damage: str, message: str) -> None:
    from safetensors.numpy import load_file, save_file

    from woundscore.classify.artifacts import ArtifactError, load_model_dir

    _, out = ft
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("trainer"))
    cfg_path = bad / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if damage == "id2label":
        cfg["id2label"] = {"0": "erythema", "1": "healing_status", **{str(i): n for i, n in enumerate(LABEL_NAMES)
                                                                       if i > 1}}
        cfg_path.write_text(json.dumps(cfg))
    elif damage == "pooling":
        cfg["woundscore_pooling"] = "max"
        cfg_path.write_text(json.dumps(cfg))
    elif damage == "nan":
        w = load_file(bad / "model" / "model.safetensors")
        w["classifier.bias"][2] = np.nan
        save_file(w, bad / "model" / "model.safetensors")
    else:
        shutil.rmtree(bad / "model")
    with pytest.raises(ArtifactError) as e:
        load_model_dir(bad)
    assert message in str(e.value) and str(bad) in str(e.value)
