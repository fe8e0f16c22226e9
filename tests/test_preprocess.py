"""The one preprocessing function: spec from the checkpoint, torchvision-identical pixels, EXIF,
modes (CMYK, palette, RGBA, LA, 16-bit, grayscale), decode errors, and the fast-decode option."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from woundscore.embed.preprocess import (
    ImageDecodeError,
    PreprocessConfigError,
    PreprocessSpec,
    decode_image,
    load_image,
    pad_to_square,
    preprocess,
    preprocess_bytes,
    resolve_spec,
    spec_from_processor_config,
)
from tests.test_hostile_images import (
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    garbage_after_jpeg_header,
    gray16_png,
    jpeg,
    palette_png_transparent,
    photo,
    png_bomb,
    rgb48_png,
    rgba_png,
    truncated_jpeg,
)

# What google/medsiglip-448 ships as preprocessor_config.json (transformers 4 layout).
MEDSIGLIP_PROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
    "size": {"height": 448, "width": 448},
}
SPEC64 = PreprocessSpec(size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_spec_from_medsiglip_config():
    spec = spec_from_processor_config(MEDSIGLIP_PROCESSOR)
    assert spec.size == (448, 448) and spec.mean == (0.5,) * 3 and spec.std == (0.5,) * 3
    assert spec.resample == "bilinear" and spec.pad == "center-zero" and spec.exif == "transpose"
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_follows_the_config_not_constants():
    spec = spec_from_processor_config({"size": {"shortest_edge": 224}, "image_mean": [0.48, 0.45, 0.40],
                                       "image_std": 0.25})
    assert spec.size == (224, 224) and spec.mean == (0.48, 0.45, 0.40) and spec.std == (0.25,) * 3
    x = preprocess(Image.new("RGB", (10, 10), (255, 255, 255)), spec)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor([0.48, 0.45, 0.40])) / 0.25)


def test_spec_errors_name_the_file():
    with pytest.raises(PreprocessConfigError, match=r"cfg.json: no 'image_std'"):
        spec_from_processor_config({"size": 448, "image_mean": [0.5] * 3}, origin="cfg.json")
    with pytest.raises(PreprocessConfigError, match=r"no 'size'"):
        spec_from_processor_config({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})


def test_resolve_spec_reads_the_checkpoint_folder(tiny_siglip_dir, tmp_path):
    assert resolve_spec(tiny_siglip_dir) == SPEC64
    # transformers 5 layout: the image processor nested in processor_config.json
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": MEDSIGLIP_PROCESSOR}))
    assert resolve_spec(tmp_path).size == (448, 448)
    with pytest.raises(PreprocessConfigError, match="no preprocessor_config.json"):
        resolve_spec(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)


@pytest.mark.parametrize("wh", [(64, 64), (97, 41), (41, 97), (300, 299), (5, 2000), (1, 1)])
def test_matches_torchvision_pipeline_bit_for_bit(wh):
    """The notebook's CenterCrop(max side) -> Resize bilinear -> ToTensor -> Normalize."""
    from torchvision import transforms as T

    w, h = wh
    im = Image.fromarray(photo(w, h, seed=w + h))
    spec = PreprocessSpec(size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ref = T.Compose([T.CenterCrop(max(w, h)), T.Resize((64, 64), interpolation=T.InterpolationMode.BILINEAR),
                     T.ToTensor(), T.Normalize(spec.mean, spec.std)])(im)
    got = preprocess(im, spec)
    assert got.dtype == torch.float32 and got.shape == (3, 64, 64)
    assert torch.equal(got, ref)
    assert got.min() >= -1 and got.max() <= 1


def test_pad_is_zero_and_centred():
    im = Image.new("RGB", (20, 10), (255, 255, 255))
    sq = np.asarray(pad_to_square(im))
    assert sq.shape == (20, 20, 3)
    assert (sq[:5] == 0).all() and (sq[5:15] == 255).all() and (sq[15:] == 0).all()
    x = preprocess(im, PreprocessSpec(size=(20, 20), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert (x[:, :5] == -1).all() and (x[:, 5:15] == 1).all()  # pad = black = -1 after Normalize


def test_exif_orientation_is_applied():
    """Orientation 6 = rotate 90 deg clockwise to display: stored left half (red) shows on top."""
    data = exif_rotated_jpeg(40, 20, orientation=6)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    im = decode_image(data)
    assert im.size == (20, 40)
    a = np.asarray(im).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 60  # top: red
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 60  # bottom: blue
    # preprocess of an already opened (not yet transposed) image gives the same pixels
    opened = Image.open(io.BytesIO(data))
    assert torch.equal(preprocess(opened, SPEC64), preprocess(im, SPEC64))
    assert torch.equal(preprocess(im, SPEC64), preprocess(decode_image(data), SPEC64))  # idempotent


def test_cmyk_becomes_rgb():
    a = np.asarray(decode_image(cmyk_jpeg())).astype(int)
    assert a.shape[2] == 3
    assert a[..., 0].mean() > 230 and a[..., 1].mean() < 25 and a[..., 2].mean() < 25  # red


def test_palette_with_transparency_composites_on_black():
    a = np.asarray(decode_image(palette_png_transparent(32, 32)))
    assert (a[:, :16] == (0, 200, 0)).all()  # opaque green stays
    assert (a[:, 16:] == 0).all()  # transparent white -> black, like the pad


def test_rgba_and_la_composite_on_black():
    a = np.asarray(decode_image(rgba_png(32, 32)))
    assert (a[:16] == (200, 100, 50)).all() and (a[16:] == 0).all()
    la = Image.merge("LA", [Image.new("L", (4, 4), 200), Image.new("L", (4, 4), 128)])
    b = np.asarray(decode_image(encode(la, "PNG"))).astype(int)
    assert np.all(np.abs(b - round(200 * 128 / 255)) <= 1)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    data = gray16_png(32, 16)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    a = np.asarray(decode_image(data))
    assert (a[:, :16] == 255).all()
    assert (a[:, 16:] == 128).all()  # 32768 * 255 / 65535 = 127.5 -> 128; clipping would give 255
    i32 = Image.fromarray(np.full((4, 4), 65535 // 4, np.int32))  # mode "I"
    assert i32.mode == "I"
    assert (np.asarray(load_image(i32)) == 64).all()


def test_sixteen_bit_rgb_png():
    a = np.asarray(decode_image(rgb48_png())).astype(int)
    assert (a[..., 0] == 255).all() and np.all(np.abs(a[..., 1] - 128) <= 1) and (a[..., 2] == 0).all()


def test_grayscale_and_bilevel_replicate_channels():
    g = np.asarray(decode_image(encode(Image.fromarray(photo(8, 8)[..., 1]), "PNG")))
    assert g.shape == (8, 8, 3) and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    one = Image.new("1", (4, 4), 1)
    assert (np.asarray(load_image(one)) == 255).all()


def test_progressive_jpeg_decodes_like_baseline():
    a = np.asarray(decode_image(jpeg(90, 70, seed=2, progressive=True))).astype(int)
    b = np.asarray(decode_image(jpeg(90, 70, seed=2))).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty file"),
        (b"<html><body>not found</body></html>", "not an image"),
        (b"hello, this is text", "not an image"),
        (truncated_jpeg(), "truncated"),
        (garbage_after_jpeg_header(), "cannot"),
        (png_bomb(40000, 40000), "decompression bomb"),
    ],
)
def test_bad_bytes_raise_image_decode_error_with_origin(data, words):
    with pytest.raises(ImageDecodeError) as e:
        preprocess_bytes(data, SPEC64, origin="images/x.jpg")
    assert str(e.value).startswith("images/x.jpg: ")
    assert words in e.value.reason.lower()


def test_bomb_limit_is_checked_from_the_header_only():
    bomb = png_bomb(40000, 40000)
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError, match=r"decompression bomb refused: .*1600000000 pixels"):
        decode_image(bomb)
    with pytest.raises(ImageDecodeError, match=r"header claims 20x10 = 200 pixels \(limit 100\)"):
        decode_image(jpeg(20, 10), max_pixels=100)


def test_fast_decode_difference_is_small_and_measured():
    """JPEG draft mode on a 2400x1800 photo at S=448 (decoded at 1200x900, >= 2S): measured mean
    |diff| of the final pixels (in [0, 1] units) is 0.0005, max 0.0078 = 2 8-bit levels (12 MP
    4000x3000, decoded at 1000x750: the same); asserted with margin. Keeping only >= S (version 1)
    gave mean 0.0021, max 0.29 on 12 MP."""
    data = jpeg(2400, 1800, seed=11)
    spec = PreprocessSpec(size=(448, 448), mean=(0.5,) * 3, std=(0.5,) * 3)
    fast_im = decode_image(data, fast_decode=True, target_size=spec.size)
    assert max(fast_im.size) >= 2 * 448 and fast_im.size[0] < 2400  # really decoded smaller, >= 2S
    exact = preprocess_bytes(data, spec)
    fast = preprocess_bytes(data, spec.with_decode(True))
    diff = (exact - fast).abs() * 0.5  # back to [0, 1] pixel units (std 0.5)
    assert float(diff.mean()) < 0.002
    assert float(diff.max()) < 0.03
    assert spec.with_decode(True).to_dict()["decode"] == "draft" != spec.to_dict()["decode"]
    # small images are never draft-decoded: identical pixels
    small = jpeg(300, 200, seed=1)
    assert torch.equal(preprocess_bytes(small, spec), preprocess_bytes(small, spec.with_decode(True)))


def test_heic_gets_an_actionable_reason():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(ImageDecodeError, match=r"x.heic: HEIC/HEIF photo .*convert it to JPEG"):
        decode_image(heic, origin="x.heic")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_keeps_the_pixels():
    good = exif_rotated_jpeg(40, 20, orientation=6)
    # corrupt the EXIF IFD's entry count so that parsing it fails, pixels untouched
    i = good.index(b"Exif\x00\x00") + 6
    bad = good[: i + 8] + b"\xff\xff" + good[i + 10 :]
    im = decode_image(bad)
    assert im.size in ((40, 20), (20, 40))
