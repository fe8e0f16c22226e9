"""Issue 14 section 3, inputs that must not hurt: extreme aspect ratios, files that are not
regular files, absurd JSON, short CSV rows, a JPEG that ends early but carries an end marker.

Each test's docstring names the bug it catches (it failed against the code before the fix)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_hostile_images import encode, jpeg, photo
from woundscore.embed.preprocess import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    ImageDecodeError,
    ImageShapeError,
    PreprocessSpec,
    decode_image,
    load_image,
    preprocess,
)

SPEC64 = PreprocessSpec(size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# ----------------------------------------------------------------------------- aspect ratio, memory


def test_tiny_png_claiming_100000x1_is_refused_from_its_header():
    """A 375-byte 100000x1 PNG passed the pixel-count guard, then asked the pad for a 100000^2
    canvas (MemoryError, the whole batch lost). Catches removing the aspect-ratio check."""
    data = encode(Image.new("RGB", (100000, 1), (9, 9, 9)), "PNG")
    assert len(data) < 1000
    for d in (data, encode(Image.new("L", (1, 100000)), "PNG")):
        with pytest.raises(ImageShapeError) as e:
            decode_image(d, origin="x/long.png")
        assert isinstance(e.value, ImageDecodeError)  # callers that record decode errors catch it
        assert "x/long.png" in str(e.value) and "aspect ratio" in str(e.value)
    # an in-memory image (the API's path) is refused the same way, per image
    with pytest.raises(ImageShapeError):
        load_image(Image.new("RGB", (MAX_ASPECT_RATIO * 3 + 1, 3)))
    # the documented limit itself is accepted: the 2000x50 strip of the hostile corpus is 40:1
    assert load_image(Image.new("RGB", (MAX_ASPECT_RATIO * 3, 3))).size == (MAX_ASPECT_RATIO * 3, 3)


def test_preprocessing_never_allocates_a_canvas_beyond_the_pixel_bound(monkeypatch):
    """A 20000x300 image (66:1, 6 M pixels) asked for a 20000^2 = 400 M pixel canvas (1.2 GB).
    Catches padding before reducing: every Image.new during preprocessing is recorded."""
    sizes = []
    real_new = Image.new

    def recording_new(mode, size, *a, **kw):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= MAX_PIXELS, f"canvas {size} exceeds MAX_PIXELS"
        return real_new(mode, size, *a, **kw)

    im = real_new("RGB", (20000, 300), (200, 40, 40))
    monkeypatch.setattr(Image, "new", recording_new)
    t = preprocess(im, SPEC64)
    assert t.shape == (3, 64, 64) and bool(torch_isfinite(t))
    assert sizes and max(w * h for w, h in sizes) <= MAX_PIXELS
    # the strip (under one output row high) is centred: only the middle rows carry the red
    col = t[0, :, 32].numpy()
    assert col[31:33].max() > -0.5 and (col[:28] == -1.0).all() and (col[36:] == -1.0).all()


def torch_isfinite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def test_images_within_the_bound_keep_the_exact_pad(monkeypatch):
    """The reduce path is only for canvases beyond MAX_PIXELS: a 1000x20 strip is padded to its
    full 1000^2 square exactly as before (bit-identical pixels)."""
    from woundscore.embed.preprocess import pad_to_square

    im = Image.fromarray(photo(1000, 20, seed=3))
    ref = pad_to_square(im).resize((64, 64), Image.Resampling.BILINEAR)
    got = preprocess(im, SPEC64)
    ref_t = (np.asarray(ref, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    np.testing.assert_array_equal(got.numpy(), ref_t.astype(np.float32))


# ----------------------------------------------------------------------------- JPEG that ends early


def cut_jpeg_with_end_marker(frac: float = 0.5, **kw) -> bytes:
    full = jpeg(200, 160, seed=5, **kw)
    return full[: int(len(full) * frac)] + b"\xff\xd9"


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("fast", [False, True])
def test_jpeg_cut_short_with_an_end_marker_is_a_failure(frac, fast):
    """libjpeg fills the missing blocks with grey and only warns ("premature end of data segment");
    Pillow swallowed the warning, so the half-grey image was scored. Catches removing the check."""
    data = cut_jpeg_with_end_marker(frac)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, origin="cut.jpg", fast_decode=fast, target_size=(16, 16))
    assert "cut.jpg" in str(e.value) and "ends early" in str(e.value)


def test_grey_images_and_grey_corners_are_not_mistaken_for_cut_ones():
    """The grey-corner pre-filter is confirmed by a second decode: whole images stay accepted."""
    grey = encode(Image.new("RGB", (64, 48), (128, 128, 128)), "JPEG", quality=95)
    a = photo(120, 90)
    a[-24:, -32:] = 128
    corner = encode(Image.fromarray(a), "JPEG", quality=100)
    gray_l = encode(Image.new("L", (40, 40), 128), "JPEG")
    for data in (grey, corner, gray_l):
        im = decode_image(data)
        assert np.asarray(im)[-1, -1].tolist() == [128, 128, 128]
    # with bytes after the end marker (phones append an MPF preview there), still accepted
    assert decode_image(grey + jpeg(20, 20)).size == (64, 48)


# ----------------------------------------------------------------------------- not regular files


def _in_thread(fn, timeout: float = 10.0):
    """Run fn in a daemon thread; return ("done", value) / ("raised", exc), or ("hung", None)."""
    box: list = []

    def target():
        try:
            box.append(("done", fn()))
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box.append(("raised", e))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else ("hung", None)


def _unblock(fifo: Path) -> None:
    """Open the FIFO's write end so a reader stuck in open() (the old code) returns."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_socket_are_refused_before_they_are_opened(tmp_path):
    """A FIFO named p.jpg blocked Sample.read_bytes / load_image in open() for good (embed run and
    predict hung). Catches reading with a plain blocking open."""
    from woundscore.embed.samples import ImageReadError, Sample

    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.jpg"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path in (fifo, sock_path, Path("/dev/zero")):
            s = Sample(path.name, "", np.full(6, -1, np.int8), {}, f"labels.csv: row 2 (image {path.name!r})",
                       path=path)
            status, value = _in_thread(s.read_bytes)
            _unblock(fifo)
            assert status == "raised", f"{path}: {status}"
            assert isinstance(value, ImageReadError) and "not a regular file" in str(value), value
            status, value = _in_thread(lambda p=path: load_image(p))
            _unblock(fifo)
            assert status == "raised" and isinstance(value, ImageDecodeError), (path, status, value)
            assert "not a regular file" in str(value)
    finally:
        sock.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_embed_run_records_a_fifo_as_a_failure_and_goes_on(tmp_path, tiny_siglip_dir):
    """The whole run hung on the FIFO; now it is one failure and the other image is embedded."""
    from woundscore.cache import read_cache, read_failures
    from woundscore.embed.run import run_embedding

    src = tmp_path / "imgs"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(40, 30))
    os.mkfifo(src / "p.jpg")
    box = _in_thread(lambda: run_embedding(src, tmp_path / "e.h5", model=tiny_siglip_dir, batch_size=4,
                                           workers=0, quiet=True), timeout=120)
    _unblock(src / "p.jpg")
    assert box[0] == "done", box
    assert box[1].exit_code == 3
    assert read_cache(tmp_path / "e.h5").ids.tolist() == ["a.jpg"]
    (fail,) = read_failures(tmp_path / "e.h5")
    assert fail["image_id"] == "p.jpg" and "FIFO" in fail["reason"]


# ----------------------------------------------------------------------------- absurd JSON, short rows


@pytest.mark.parametrize("record", ["[" * 200_000 + "]" * 200_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_deeply_nested_json_is_a_source_error_naming_the_file(tmp_path, record):
    """A record nested 100000 deep raised RecursionError (a traceback). Catches removing the catch."""
    from woundscore.embed.release import iter_json_array
    from woundscore.embed.samples import SourceError

    path = tmp_path / "train_question.json"
    path.write_text("[" + json.dumps({"id": "ok"}) + "," + record + "]", encoding="utf-8")
    with pytest.raises(SourceError) as e:
        list(iter_json_array(path, chunk_chars=4096))
    assert str(path) in str(e.value) and "record 1" in str(e.value) and "nested" in str(e.value)


def test_short_csv_row_is_an_error_like_a_long_one(tmp_path):
    """A row with a cell missing was padded with "" (that label silently MISSING). Catches padding."""
    from woundscore.embed.samples import SourceLabelError
    from woundscore.embed.tables import read_labels_folder

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(jpeg(20, 20))
    header = "image,split,healing_status,erythema,edema,infection_risk,urgency_level,exudate_type\n"
    short = "a.jpg,train,Healed,Existent,Non-existent,Low,Home Care (Green)\n"  # exudate cell lost
    (root / "labels.csv").write_text(header + short, encoding="utf-8")
    with pytest.raises(SourceLabelError) as e:
        read_labels_folder(root)
    assert "labels.csv: row 2: 7 cells but the header has 8 columns" in str(e.value)
