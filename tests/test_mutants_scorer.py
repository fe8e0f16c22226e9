"""The predict contract's builders (classify/scorer.py: origin, finite_or_none, model_info,
_calibration_info, WoundScorer.result / results_for_embeddings) pinned field by field on a stand-in
model, no encoder or Keras (TESTING.md, `make mutants`, group classify_scorer). The end-to-end
contract on a real model folder is tests/test_classify_predict.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.scorer import WoundScorer, finite_or_none, model_info, origin

TH = {"labels": {n: {"value": 0.25 + 0.1 * k, "applied": "youden" if k % 2 else "sensitivity>=0.90"}
                 for k, n in enumerate(LABEL_NAMES)}}


class _Cal:
    rule = "per label: smallest AIC"
    methods = {n: "platt" for n in LABEL_NAMES}
    fitted_on = "val split (9 rows)"


class _OOD:
    cutoff = 2.0
    method = "mahalanobis"

    def distance(self, X):
        return np.asarray(X, dtype=np.float64)[:, 0] * 2


class _Model(SimpleNamespace):
    def predict_proba(self, X, provenance=None):
        self.seen = provenance
        return np.clip(np.asarray(X, dtype=np.float64)[:, :6], 0, 1)

    def predict_raw(self, X, provenance=None):
        return np.clip(np.asarray(X, dtype=np.float64)[:, :6] / 2, 0, 1)


def _model(**kw) -> _Model:
    base = dict(kind="mlp", path=Path("/models/m1"), thresholds=TH, calibration=_Cal(), ood=_OOD(),
                provenance={"created": "2026-01-02T03:04:05Z", "notice": "research only",
                            "encoder": {"encoder_id": "google/medsiglip-448", "encoder_revision": "rev9"},
                            "validation": {"macro_auc": 0.8125}})
    return _Model(**{**base, **kw})


def test_origin_and_finite_or_none() -> None:
    assert origin("a/b.jpg") == "a/b.jpg" and origin(Path("a/b.jpg")) == "a/b.jpg"
    assert origin(b"x") == origin(bytearray(b"x")) == origin(memoryview(b"x")) == "<bytes>"
    assert origin(object()) == "<image>"
    assert [finite_or_none(v) for v in (None, "x", [1], math.nan, math.inf, -math.inf, "0.5", 2, np.float32(0.25))] == \
        [None, None, None, None, None, None, 0.5, 2.0, 0.25]


def test_model_info_every_field() -> None:
    assert model_info(_model()) == {
        "type": "mlp", "path": "/models/m1", "created": "2026-01-02T03:04:05Z",
        "encoder_id": "google/medsiglip-448", "encoder_revision": "rev9", "validation_macro_auc": 0.8125,
        "calibration": {"methods": {n: "platt" for n in LABEL_NAMES}, "fitted_on": "val split (9 rows)"},
        "notice": "research only"}
    bare = model_info(_model(calibration=SimpleNamespace(rule="none", methods={}, fitted_on=""),
                             provenance={"validation": {"macro_auc": None}, "notice": ""}))
    assert bare == {"type": "mlp", "path": "/models/m1", "created": None, "encoder_id": None,
                    "encoder_revision": None, "validation_macro_auc": None, "calibration": None, "notice": None}
    assert model_info(_model(calibration=None, provenance={"encoder": None}))["calibration"] is None
    cal = SimpleNamespace(rule="r", methods={"a": "identity"}, fitted_on=None)
    assert model_info(_model(calibration=cal))["calibration"] == {"methods": {"a": "identity"}, "fitted_on": ""}


def test_result_every_field_flags_at_the_threshold_and_ood() -> None:
    s = WoundScorer(_model())
    probs = [0.25, 0.2, math.nan, 0.9, 0.65, 0.8]  # label 0 exactly at its threshold 0.25: flagged
    r = s.result(probs, "<image>", raw=[0.1, 0.2, 0.3, 0.4, math.inf, 0.6], distance=1.5)
    assert list(r) == ["image", "scores", "raw_scores", "flags", "thresholds", "in_distribution", "ood", "model"]
    assert r["image"] == "<image>"
    assert r["scores"] == dict(zip(LABEL_NAMES, [0.25, 0.2, None, 0.9, 0.65, 0.8]))
    assert r["raw_scores"] == dict(zip(LABEL_NAMES, [0.1, 0.2, 0.3, 0.4, None, 0.6]))
    assert r["flags"] == dict(zip(LABEL_NAMES, [True, False, False, True, True, True]))
    assert r["thresholds"]["healing_status"] == {"value": 0.25, "rule": "sensitivity>=0.90"}
    assert r["thresholds"]["erythema"] == {"value": 0.35, "rule": "youden"}
    assert r["in_distribution"] is True and r["ood"] == {"distance": 1.5, "cutoff": 2.0, "method": "mahalanobis"}
    assert r["model"] == model_info(_model()) and r["model"] is not s.result(probs, "x")["model"]
    json.dumps(r, allow_nan=False)
    assert s.result(probs, "x")["raw_scores"] == r["scores"]  # no raw given: the scores
    assert s.result(probs, "x", distance=2.0)["in_distribution"] is True  # at the cutoff: inside
    out = s.result(probs, "x", distance=2.5)
    assert out["in_distribution"] is False and out["ood"]["distance"] == 2.5
    nan = s.result(probs, "x", distance=math.nan)
    assert nan["in_distribution"] is False and nan["ood"] == {"distance": None, "cutoff": 2.0, "method": "mahalanobis"}
    for no in (s.result(probs, "x", distance=None), WoundScorer(_model(ood=None)).result(probs, "x", distance=1.0)):
        assert no["in_distribution"] is None and no["ood"] is None


def test_results_for_embeddings_row_by_row() -> None:
    m = _model()
    s = WoundScorer(m)
    X = np.array([[0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 9], [1.5, 0.9, 0.8, 0.7, 0.6, 0.5, 9]], dtype=np.float64)
    res = s.results_for_embeddings(X, ["a.jpg", "b.jpg"], {"p": 1})
    assert m.seen == {"p": 1} and [r["image"] for r in res] == ["a.jpg", "b.jpg"]
    assert res[0]["scores"]["healing_status"] == 0.5 and res[1]["scores"]["healing_status"] == 1.0
    assert res[0]["raw_scores"]["healing_status"] == 0.25 and res[1]["raw_scores"]["erythema"] == pytest.approx(0.45)
    assert res[0]["ood"]["distance"] == 1.0 and res[0]["in_distribution"] is True
    assert res[1]["ood"]["distance"] == 3.0 and res[1]["in_distribution"] is False
    assert s.results_for_embeddings(np.zeros((0, 7)), []) == []
    no_raw = _model(ood=None)
    no_raw.predict_raw = None
    r = WoundScorer(no_raw).results_for_embeddings(X[:1], ["a"])[0]
    assert r["raw_scores"] == r["scores"] and r["ood"] is None and r["in_distribution"] is None


# --- score_batch / _one_by_one / _error_text with a stand-in encoder (the ImageEncoder face) ---

def _png(rgb: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), rgb).save(buf, "PNG")
    return buf.getvalue()


class _Enc:
    """embed_images: feature k = channel value / 100 (7 columns); a red value of 255 gives NaN and the
    whole call raises NonFiniteEmbeddingError, as the real encoder does."""
    model_id = "stand-in"
    dim = 7

    def __init__(self) -> None:
        self.calls: list[tuple[int, object]] = []

    def provenance(self) -> dict:
        return {"p": 2}

    def embed_images(self, images, batch_size=None):
        from woundscore.embed.encoder import NonFiniteEmbeddingError
        from woundscore.embed.preprocess import load_image

        self.calls.append((len(images), batch_size))
        rows = []
        for im in images:
            r, g, b = load_image(im).getpixel((0, 0))  # raises ImageDecodeError like the real one
            rows.append([math.nan if r == 255 else r / 100, g / 100, b / 100, 0.1, 0.2, 0.3, 0.0])
        X = np.asarray(rows, dtype=np.float64)
        if not np.isfinite(X).all():
            raise NonFiniteEmbeddingError("stand-in: non-finite embedding even in float32")
        return X


def _scorer() -> tuple[WoundScorer, _Model, _Enc]:
    m = _model(check_compatible=lambda prov, offered: None)
    enc = _Enc()
    return WoundScorer(m, enc), m, enc


def test_score_batch_one_forward_in_order_with_per_image_errors(tmp_path: Path) -> None:
    from PIL import Image

    from woundscore.embed.preprocess import load_image

    s, m, enc = _scorer()
    p = tmp_path / "c.png"
    p.write_bytes(_png((30, 40, 50)))
    images = [_png((10, 20, 30)), b"not an image", Image.new("RGB", (3, 2), (60, 70, 80)), str(p)]
    res = s.score_batch(images)
    assert enc.calls == [(3, 3)]  # ONE forward over the three readable images, batch_size = their count
    assert m.seen == {"p": 2}  # the encoder's provenance reaches the model
    assert [r["image"] for r in res] == ["<bytes>", "<bytes>", "<image>", str(p)]
    with pytest.raises(Exception) as e:
        load_image(b"not an image")
    assert res[1] == {"image": "<bytes>", "error": str(e.value)}
    assert [r["scores"]["healing_status"] for r in (res[0], res[2], res[3])] == pytest.approx([0.1, 0.6, 0.3], abs=1e-6)
    assert res[2]["scores"]["erythema"] == pytest.approx(0.7, abs=1e-6) and res[3]["ood"]["distance"] == pytest.approx(0.6)
    named = s.score_batch(images[:2], names=["one", "two"])
    assert [r["image"] for r in named] == ["one", "two"] and named[1]["error"] == str(e.value)
    enc.calls.clear()
    bad = s.score_batch([b"", b"xx"], names=["a", "b"])  # nothing readable: no forward at all
    assert enc.calls == [] and [set(r) for r in bad] == [{"image", "error"}] * 2
    assert s.score_batch([]) == [] and enc.calls == []
    assert s.score_many(images[:1]) == s.score_batch(images[:1])


def test_score_batch_non_finite_redone_one_by_one() -> None:
    s, m, enc = _scorer()
    images = [_png((10, 20, 30)), _png((255, 0, 0)), b"junk", _png((50, 60, 70))]
    res = s.score_batch(images, names=["a", "nan", "junk", "d"])
    assert enc.calls[0] == (3, 3) and [c[0] for c in enc.calls[1:]] == [1, 1, 1, 1]  # then one image at a time
    assert [r["image"] for r in res] == ["a", "nan", "junk", "d"]
    assert res[0]["scores"]["healing_status"] == pytest.approx(0.1, abs=1e-6) and res[3]["scores"]["healing_status"] == pytest.approx(0.5, abs=1e-6)
    assert res[0]["model"] == model_info(m) and m.seen == {"p": 2}
    assert res[1] == {"image": "nan", "error": "stand-in: non-finite embedding even in float32"}
    assert set(res[2]) == {"image", "error"} and res[2]["image"] == "junk"
    assert s._one_by_one([], []) == []


def test_memory_errors_become_per_image_errors(monkeypatch) -> None:
    import woundscore.embed.preprocess as pre
    from woundscore.classify.scorer import _error_text
    from woundscore.cache.errors import WoundscoreError

    s, m, enc = _scorer()
    enc.spec = "SPEC"
    real, seen = pre.load_image, []

    def load_image(x, *, spec=None):
        seen.append(spec)
        if x == b"huge":
            raise MemoryError
        return real(x)

    monkeypatch.setattr(pre, "load_image", load_image)
    res = s.score_batch([b"huge", _png((10, 20, 30))], names=["big", "ok"])
    assert seen[:2] == ["SPEC", "SPEC"]  # the encoder's preprocessing spec reaches the decoder
    assert res[0] == {"image": "big", "error": "big: image too large to preprocess in memory"}
    assert res[1]["scores"]["healing_status"] == pytest.approx(0.1, abs=1e-6)

    def embed(images, batch_size=None):
        raise MemoryError

    enc.embed_images = embed
    assert s._one_by_one([b"x"], ["q"]) == [{"image": "q", "error": "q: image too large to preprocess in memory"}]
    assert _error_text(WoundscoreError("a: b"), "n") == "a: b"
    assert _error_text(MemoryError(), "n") == "n: image too large to preprocess in memory"
    assert _error_text(ValueError("v"), "n") == "v"


def test_bare_model_and_what_the_heads_are_given() -> None:
    """A model object without calibration / ood / predict_raw attributes, a calibration without
    rule / fitted_on (the getattr defaults); the heads get float32 rows and the provenance
    (mutants: defaults dropped, provenance not passed to predict_raw, float32 cast dropped)."""
    seen: dict = {}

    class Bare:
        kind, path, thresholds = "logreg", Path("/m"), TH
        provenance: dict = {}

        def predict_proba(self, X, provenance=None):
            seen["proba"] = (X.dtype, provenance)
            return np.full((len(X), 6), 0.5)

    s = WoundScorer(Bare())
    r = s.results_for_embeddings(np.ones((1, 3), dtype=np.float64), ["a"], {"p": 3})[0]
    assert seen["proba"] == (np.float32, {"p": 3})
    assert r["raw_scores"] == r["scores"] and r["ood"] is None and r["in_distribution"] is None
    assert r["model"]["calibration"] is None and s.result([0.5] * 6, "x", distance=1.0)["ood"] is None

    class Cal:
        methods = {"a": "platt"}

    b = Bare()
    b.calibration = Cal()
    assert model_info(b)["calibration"] == {"methods": {"a": "platt"}, "fitted_on": ""}
    m = _model()
    m.predict_raw = lambda X, provenance=None: (seen.__setitem__("raw", (X.dtype, provenance)), np.zeros((len(X), 6)))[1]
    WoundScorer(m).results_for_embeddings(np.ones((1, 7)), ["a"], {"p": 4})
    assert seen["raw"] == (np.float32, {"p": 4})
