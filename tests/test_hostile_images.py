"""Issue 7, hostile images: a corpus of odd-but-valid images that must be embedded correctly and
broken ones that must be reported (file + reason) while the run goes on, through `wound-embed run`.

The image generators here are also used by tests/test_preprocess.py.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


# ----------------------------------------------------------------------------- generators


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like (h, w, 3) uint8 array (gradients + a blob + mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 120 + 80 * np.sin(xx / max(w, 1) * 3.1) + 20 * np.cos(yy / max(h, 1) * 5)
    g = 90 + 60 * (yy / max(h - 1, 1))
    b = 140 - 50 * (xx / max(w - 1, 1))
    blob = 70 * np.exp(-(((xx - w * 0.6) / (0.15 * w + 1)) ** 2 + ((yy - h * 0.4) / (0.2 * h + 1)) ** 2))
    img = np.stack([r + blob, g - blob / 2, b], axis=-1) + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 80, h: int = 60, seed: int = 0, **kw) -> bytes:
    return encode(Image.fromarray(photo(w, h, seed)), "JPEG", quality=92, **kw)


def exif_rotated_jpeg(w: int = 40, h: int = 20, orientation: int = 6) -> bytes:
    """Stored landscape, left half red / right half blue, EXIF Orientation tag set."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def cmyk_jpeg(w: int = 48, h: int = 32) -> bytes:
    """Pure red in CMYK: C=0, M=255, Y=255, K=0."""
    return encode(Image.new("CMYK", (w, h), (0, 255, 255, 0)), "JPEG", quality=95)


def palette_png_transparent(w: int = 32, h: int = 32) -> bytes:
    """Palette PNG: left half index 1 (green, opaque), right half index 0 (transparent)."""
    im = Image.new("P", (w, h), 0)
    im.putpalette([255, 255, 255, 0, 200, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (0, 0, w // 2, h))
    return encode(im, "PNG", transparency=0)


def rgba_png(w: int = 32, h: int = 32) -> bytes:
    """RGBA: colour (200, 100, 50), alpha 255 on the top half, 0 on the bottom half."""
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[: h // 2, :, 3] = 255
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def gray16_png(w: int = 32, h: int = 16) -> bytes:
    """16-bit grayscale: left half 65535, right half 32768."""
    a = np.full((h, w), 32768, np.uint16)
    a[:, : w // 2] = 65535
    return encode(Image.fromarray(a), "PNG")


def rgb48_png(w: int = 16, h: int = 8) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one): R=65535, G=32896, B=0."""
    raw = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32896, 0) * w for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_bomb(claim_w: int = 40000, claim_h: int = 40000) -> bytes:
    """A tiny valid PNG whose header claims claim_w x claim_h pixels."""
    data = bytearray(encode(Image.new("L", (8, 8), 0), "PNG"))
    # IHDR data starts at byte 16: width, height; then fix its CRC (bytes 29..32).
    data[16:24] = struct.pack(">II", claim_w, claim_h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    full = jpeg(120, 90, seed=5)
    return full[: len(full) // 2]


def garbage_after_jpeg_header() -> bytes:
    return b"\xff\xd8\xff\xe0" + np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------------------- the corpus


def _labels_row(name: str, i: int) -> str:
    vals = ["Healed" if i % 2 else "Not Healed", "Existent", "Non-existent", "Low",
            "Home Care (Green): Manage with routine care", "Non-existent"]
    return ",".join([f'"{name}"', "train"] + [f'"{v}"' for v in vals]) + "\n"


def build_hostile_corpus(root: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """A labels.csv folder. Returns (good: id -> bytes, bad: id -> expected words in the reason)."""
    images = root / "images"
    images.mkdir(parents=True)
    good = {
        "cmyk.jpg": cmyk_jpeg(),
        "gray.png": encode(Image.fromarray(photo(40, 30)[..., 0]), "PNG"),
        "palette.png": palette_png_transparent(),
        "rgba.png": rgba_png(),
        "gray16.png": gray16_png(),
        "rgb48.png": rgb48_png(),
        "progressive.jpg": jpeg(90, 70, seed=2, progressive=True),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "one_pixel.png": encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "strip.jpg": jpeg(2000, 50, seed=3),
        "png_named.jpg": encode(Image.fromarray(photo(30, 30, 4)), "PNG"),  # suffix lies
        "UPPER.JPG": jpeg(50, 40, seed=6),
        "with spaces in name.jpeg": jpeg(44, 33, seed=7),
    }
    bad = {
        "truncated.jpg": "truncated",
        "empty.jpg": "empty file",
        "page.html.jpg": "not an image",
        "notes.png": "not an image",
        "garbage.jpg": "cannot",
        "bomb.png": "decompression bomb",
        "missing.jpg": "not found",
        "../escape.jpg": "escapes",
    }
    files = dict(good)
    files.update({
        "truncated.jpg": truncated_jpeg(),
        "empty.jpg": b"",
        "page.html.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "notes.png": b"wound looked fine today\n",
        "garbage.jpg": garbage_after_jpeg_header(),
        "bomb.png": png_bomb(),
    })
    for name, data in files.items():
        (images / name).write_bytes(data)
    (root / "escape.jpg").write_bytes(jpeg(20, 20))  # exists, but outside images/
    header = "image,split," + ",".join(["healing_status", "erythema", "edema", "infection_risk",
                                         "urgency_level", "exudate_type"]) + "\n"
    names = list(good) + list(bad)
    (root / "labels.csv").write_text(header + "".join(_labels_row(n, i) for i, n in enumerate(names)),
                                     encoding="utf-8")
    return good, bad


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, tiny_siglip_dir):
    from woundscore.embed.cli import cli

    root = tmp_path_factory.mktemp("hostile")
    good, bad = build_hostile_corpus(root / "src")
    out = root / "emb.h5"
    result = CliRunner().invoke(cli, ["run", str(root / "src"), "--out", str(out), "--model", str(tiny_siglip_dir),
                                      "--batch-size", "4", "--workers", "1", "--quiet"])
    return root, good, bad, out, result


def test_hostile_corpus_run_reports_bad_images_and_keeps_the_good(hostile_run):
    from woundscore.cache import read_cache, read_failures, verify_cache

    root, good, bad, out, result = hostile_run
    assert result.exit_code == 3, result.output  # some failed: documented code 3
    assert verify_cache(out) == []
    es = read_cache(out)
    assert sorted(es.ids.tolist()) == sorted(good)
    assert np.isfinite(es.X).all()
    failures = {f["image_id"]: f["reason"] for f in read_failures(out)}
    assert set(failures) == set(bad)
    for name, words in bad.items():
        assert words in failures[name].lower(), (name, failures[name])
        assert "labels.csv" in failures[name]  # the file (row) is named
    for name in bad:  # the summary printed by the CLI lists each failure
        assert f"failed: {name}:" in result.output


def _reference_rgb(data: bytes) -> Image.Image:
    """An independent decode to RGB, written from the documented decisions (not embed.preprocess):
    EXIF transpose, alpha over black, 16-bit grey scaled by 255/65535, the rest Pillow's convert."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
        rgb = np.rint(rgba[..., :3] * rgba[..., 3:] / 255.0)  # test images: alpha is 0 or 255 only
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    return im.convert("RGB")


def test_hostile_good_images_equal_the_reference_embedding(hostile_run, tiny_siglip_dir):
    """Every odd-but-valid image is embedded as an INDEPENDENT reference gives: the decode above,
    torchvision's CenterCrop(max side) -> Resize bilinear -> ToTensor -> Normalize, and the Hugging
    Face SiglipVisionModel's pooler_output (issue 16 finding 10: this used to compare the run with
    the same preprocess + encoder code path, so a shared bug passed)."""
    import torch
    from torchvision import transforms as T
    from transformers import SiglipVisionModel

    from woundscore.cache import read_cache

    root, good, bad, out, result = hostile_run
    es = read_cache(out)
    cfg = json.loads((tiny_siglip_dir / "preprocessor_config.json").read_text())
    size = (cfg["size"]["height"], cfg["size"]["width"])
    model = SiglipVisionModel.from_pretrained(tiny_siglip_dir, dtype=torch.float32).eval()
    ref = []
    for image_id in es.ids.tolist():
        im = _reference_rgb(good[image_id])
        pixels = T.Compose([T.CenterCrop(max(im.size)), T.Resize(size, interpolation=T.InterpolationMode.BILINEAR),
                            T.ToTensor(), T.Normalize(cfg["image_mean"], cfg["image_std"])])(im)
        with torch.inference_mode():
            ref.append(model(pixel_values=pixels[None]).pooler_output[0].numpy())
    np.testing.assert_allclose(es.X, np.stack(ref), atol=1e-5, rtol=0)
    # sha256 is of the file bytes (resume key), not of the decoded pixels
    import hashlib

    assert es.sha256.tolist() == [hashlib.sha256(good[i]).hexdigest() for i in es.ids.tolist()]


def test_hostile_rerun_skips_everything_and_still_reports_failures(hostile_run, tiny_siglip_dir):
    from woundscore.embed.run import run_embedding

    root, good, bad, out, result = hostile_run
    s = run_embedding(root / "src", out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True)
    assert (s.embedded, s.skipped, len(s.failed)) == (0, len(good), len(bad))
    assert s.exit_code == 3


def test_strict_stops_at_first_failure(tmp_path, tiny_siglip_dir):
    from woundscore.cache import read_cache, read_failures
    from woundscore.embed.run import run_embedding

    root = tmp_path / "src"
    build_hostile_corpus(root)
    out = tmp_path / "strict.h5"
    s = run_embedding(root, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True, strict=True)
    assert s.stopped_strict and s.exit_code == 3
    # labels.csv lists the 13 good images first: chunks of 4 -> the first failure is in chunk 3
    # (images 12..15), so 12 + 1 good images are kept and the rest was never tried.
    assert len(read_cache(out)) == 13
    assert [f["image_id"] for f in read_failures(out)] == ["truncated.jpg", "empty.jpg", "page.html.jpg"]


def test_release_bad_base64_and_conflicting_image_are_reported(tmp_path, mini_release, tiny_siglip_dir):
    """HF release: an image whose base64 is broken (in every record of it), and an image whose
    records disagree about the bytes, are failures naming file + record; the rest is embedded."""
    import json
    import shutil

    from woundscore.cache import read_cache, read_failures, verify_cache
    from woundscore.embed.run import run_embedding

    src = tmp_path / "rel"
    shutil.copytree(mini_release, src)
    path = src / "test_question.json"
    records = json.loads(path.read_text())
    names = list(dict.fromkeys(r["image_name"] for r in records))
    broken, conflicting = names[0], names[1]
    seen = 0
    for r in records:
        if r["image_name"] == broken:
            r["image"] = "@@not base64@@"
        elif r["image_name"] == conflicting:
            seen += 1
            if seen == 2:  # the second record of this image carries other bytes
                r["image"] = __import__("base64").b64encode(jpeg(30, 30, seed=9)).decode()
    path.write_text(json.dumps(records))
    out = tmp_path / "e.h5"
    s = run_embedding(src, out, model=tiny_siglip_dir, batch_size=8, workers=0, quiet=True)
    assert s.exit_code == 3 and verify_cache(out) == []
    failures = {f["image_id"]: f["reason"] for f in read_failures(out)}
    assert set(failures) == {broken, conflicting}
    assert "bad base64" in failures[broken] and "test_question.json" in failures[broken]
    assert "test_question.json" in failures[conflicting]
    assert len(read_cache(out)) == 30 - 2


def test_appending_with_another_encoder_is_refused(tmp_path, labels_csv_dir, tiny_siglip_dir):
    from woundscore.embed.cli import cli
    from woundscore.embed.tiny import build_tiny_siglip

    out = tmp_path / "e.h5"
    r = CliRunner().invoke(cli, ["run", str(labels_csv_dir), "--out", str(out), "--model", str(tiny_siglip_dir),
                                 "--batch-size", "8", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    other = build_tiny_siglip(tmp_path / "tiny-siglip", seed=1)  # same name, other weights
    r = CliRunner().invoke(cli, ["run", str(labels_csv_dir), "--out", str(out), "--model", str(other), "--quiet"])
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {out}: refusing to mix rows from a different setup:")
    assert "encoder_revision: cache has 'local:" in r.output
