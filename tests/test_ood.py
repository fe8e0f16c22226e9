"""The out-of-distribution flag (classify.ood) with the tiny random SigLIP encoder: generated
wound drawings pass; solid colours, noise, rendered text and an all-black frame are flagged; the
cut-off is reproducible from the stored file; broken files are named errors.

Measured with this encoder (d = 32, random weights): 224 wound drawings (157 train / 22 val /
45 test, seed 1); 0 to a few held-out drawings land above the cut-off. A plain SKIN-coloured frame
is NOT flagged (distance ~3, inside the wounds' cloud: the drawings are mostly skin, and a random
encoder sees little else); that limit is asserted below so that it is not forgotten.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from woundscore.classify.ood import METHOD, OODError, OODModel, fit_ood


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    return b.getvalue()


def _text(size: int, lines: str) -> np.ndarray:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for y in range(0, size, 12):
        d.text((2, y), lines, fill=(20, 20, 20))
    return np.asarray(im)


NOT_WOUNDS = {
    "all-black frame": np.zeros((64, 64, 3), np.uint8),
    "solid white": np.full((64, 64, 3), 255, np.uint8),
    "solid red": np.full((64, 64, 3), (200, 30, 30), np.uint8),
    "solid blue": np.full((64, 64, 3), (30, 60, 200), np.uint8),
    "solid green": np.full((64, 64, 3), (40, 170, 60), np.uint8),
    "uniform noise": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),
    "rendered text": _text(64, "Lorem ipsum dolor"),
    "screenshot-like text": _text(256, "Settings  Wi-Fi  Bluetooth  12:45"),
}


@pytest.fixture(scope="module")
def wounds(tiny_siglip_dir: Path):
    from woundscore.embed.encoder import load_encoder
    from woundscore.embed.synthetic import make_release_images

    enc = load_encoder(str(tiny_siglip_dir), device="cpu", dtype="float32")
    imgs = make_release_images(224, seed=1, image_size=(64, 64))
    X = enc.embed_images([i.image for i in imgs])
    split = np.array([i.split for i in imgs])
    return enc, X, split


@pytest.fixture(scope="module")
def ood(wounds) -> OODModel:
    _, X, split = wounds
    return fit_ood(X[split == "train"], X[split == "val"])


def test_held_out_wound_drawings_pass(wounds, ood: OODModel) -> None:
    _, X, split = wounds
    d = ood.distance(X[split == "test"])
    # a 99th-percentile cut-off from 22 validation rows: a few % of new wounds may land above it
    assert (d <= ood.cutoff).mean() >= 0.9, (np.sort(d)[-5:], ood.cutoff)


@pytest.mark.parametrize("name", list(NOT_WOUNDS))
def test_other_pictures_are_flagged(wounds, ood: OODModel, name: str) -> None:
    enc = wounds[0]
    d = ood.distance(enc.embed_images([_png(NOT_WOUNDS[name])]))
    assert d[0] > ood.cutoff, (name, float(d[0]), ood.cutoff)
    assert not ood.in_distribution(enc.embed_images([_png(NOT_WOUNDS[name])]))[0]


def test_a_skin_coloured_blank_frame_is_a_known_miss_of_the_tiny_encoder(wounds, ood: OODModel) -> None:
    """Recorded limit, not a goal: with random weights a skin-toned blank passes."""
    enc = wounds[0]
    d = ood.distance(enc.embed_images([_png(np.full((64, 64, 3), (224, 172, 138), np.uint8))]))
    assert d[0] <= ood.cutoff


def test_cutoff_is_reproducible_from_the_stored_file(wounds, ood: OODModel, tmp_path: Path) -> None:
    _, X, split = wounds
    ood.save(tmp_path / "ood.npz")
    back = OODModel.load(tmp_path / "ood.npz")
    with np.load(tmp_path / "ood.npz", allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    assert str(stored["method"]) == METHOD == back.method
    assert back.cutoff == float(np.quantile(stored["val_distances"], float(stored["quantile"])))
    # the stored validation distances are those of the val embeddings under the stored description
    np.testing.assert_allclose(back.distance(X[split == "val"]), stored["val_distances"], rtol=1e-5)
    np.testing.assert_allclose(back.distance(X), ood.distance(X), rtol=1e-5)
    # and refitting on the same rows gives the same file content
    again = fit_ood(X[split == "train"], X[split == "val"])
    assert again.cutoff == ood.cutoff
    assert stored["components"].dtype == np.float32 and stored["components"].shape == (31, 32)


def test_distance_is_hand_checkable_on_isotropic_data() -> None:
    """Whitened Gaussian data: the squared distance of a point is close to its squared norm."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5))
    m = fit_ood(X[:3000], X[3000:])
    x = np.array([[3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(m.distance(x), [3.0, 0.0], atol=0.15)
    # the 99th percentile of a chi distribution with 5 degrees of freedom is ~3.88
    assert m.cutoff == pytest.approx(3.88, abs=0.2)


def test_nonfinite_rows_are_infinitely_far() -> None:
    rng = np.random.default_rng(0)
    m = fit_ood(rng.normal(size=(50, 4)), rng.normal(size=(10, 4)))
    assert np.isinf(m.distance(np.array([[np.nan, 0, 0, 0]])))[0]
    with pytest.raises(OODError, match=r"expected \(n, 4\) embeddings, got shape \(1, 3\)"):
        m.distance(np.zeros((1, 3)))


@pytest.mark.parametrize("key,value,match", [
    ("cutoff", np.float64(np.nan), r"key 'cutoff' holds non-finite values"),
    ("method", np.array("knn"), r"key 'method' is 'knn'"),
    ("variances", None, r"'variances'/'resid_var' must be > 0"),
])
def test_broken_files_are_named_errors(tmp_path: Path, key, value, match) -> None:
    rng = np.random.default_rng(0)
    m = fit_ood(rng.normal(size=(50, 4)), rng.normal(size=(10, 4)))
    m.save(tmp_path / "ood.npz")
    with np.load(tmp_path / "ood.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d[key] = np.zeros_like(d[key]) if value is None else value
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(OODError, match=match):
        OODModel.load(tmp_path / "bad.npz")
    del d[key]
    np.savez(tmp_path / "short.npz", **d)
    with pytest.raises(OODError, match=rf"short\.npz: key '{key}' is missing"):
        OODModel.load(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(OODError, match=r"junk\.npz: unreadable"):
        OODModel.load(tmp_path / "junk.npz")
