"""The one preprocessing function: image bytes -> RGB -> pixels the encoder sees.

Embed, fine-tune and predict all call :func:`decode_image` and :func:`preprocess` (timm style: a
:class:`PreprocessSpec` is resolved once from the checkpoint's processor config, then pure typed
functions apply it). The steps, Google's MedSigLIP fine-tune notebook padded to a square everywhere,
are in README.md, "How it is built", **Preprocessing**.

Decisions (each tested in tests/test_preprocess.py):

- EXIF orientation is applied (``ImageOps.exif_transpose``): phones store photos sideways and set
  the Orientation tag; a viewer shows the rotated image, so the clinician saw that one.
- Alpha (RGBA, LA, palette with transparency) is composited on black, the same colour as the pad,
  so transparent areas look like "no image" rather than white.
- CMYK is converted with Pillow's conversion (Adobe-inverted JPEGs are handled by the decoder).
- 16-bit grayscale (``I;16*``, ``I``) is scaled by 255/65535 (Pillow's ``convert("L")`` would clip
  everything above 255 to white); float (``F``) is taken as [0, 1]. Pillow decodes 16-bit RGB PNGs
  to 8 bits per channel (high byte).
- ICC colour profiles (e.g. Display P3) are not applied, as in torchvision and the notebook.
- Decompression bombs: an image claiming more than ``MAX_PIXELS`` pixels is refused from its
  header, before any pixel is decoded.
- Extreme shapes: an image longer than ``MAX_ASPECT_RATIO`` times its width (or the reverse) is
  refused from its header (ImageShapeError): a 375-byte 100000x1 PNG would otherwise ask the pad for
  a 100000^2 canvas. An image whose square canvas would exceed ``MAX_PIXELS`` is first reduced
  (box filter) to about 2S on the long side, so one image's preprocessing never allocates more than
  ``MAX_PIXELS`` canvas pixels; every image below that bound is padded exactly as before.
- A JPEG whose compressed data stops early but still ends with an end marker (libjpeg fills the
  rest grey and only warns, which Pillow does not pass on) is refused (ImageDecodeError,
  "JPEG data ends early"): see :func:`_jpeg_ends_early`.
- Only regular files are read (:func:`embed.samples.read_regular_file`): a FIFO, device or socket named
  ``p.jpg`` is refused before it could block the run.
- ``fast_decode`` (off by default) lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT
  scaling, "draft mode") while keeping at least 2S pixels on the long side; the spec records it
  (part of the cache's preprocessing identity, so fast and exact rows never mix).
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from PIL import Image, ImageOps

from woundscore.cache.errors import WoundscoreError
from woundscore.embed.samples import NotRegularFileError, read_regular_file

if TYPE_CHECKING:  # torch is imported lazily: `--help` and the readers must not pay for it
    import torch

# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS): room for 108 MP phone photos, while a
# small file claiming 40000 x 40000 (1.6 G pixels, ~5 GB decoded) is refused from its header.
MAX_PIXELS = 178_956_970
# Longest side / shortest side beyond which an image is refused (no camera writes 1000:1; a 5x2000
# strip, 400:1, is still preprocessed bit for bit). Memory is bounded by the canvas rule in
# preprocess() whatever the ratio; this only refuses what cannot be a photo. Stated in README.md.
MAX_ASPECT_RATIO = 1000

PREPROCESS_VERSION = 2  # bump when the pixels produced for the same spec change (2: draft keeps >= 2S)
DRAFT_OVERSAMPLE = 2  # fast decode keeps at least this many times the target size


class ImageDecodeError(WoundscoreError):
    """Bytes that cannot become an image: names the origin (file, record) and the reason."""

    def __init__(self, origin: str, reason: str) -> None:
        self.origin, self.reason = origin, reason
        super().__init__(f"{origin}: {reason}")


class ImageShapeError(ImageDecodeError):
    """An image whose shape cannot be preprocessed within bounded memory (aspect ratio beyond
    ``MAX_ASPECT_RATIO``). A subclass of ImageDecodeError: callers record it per image."""


def check_shape(w: int, h: int, origin: str) -> None:
    """Raise ImageShapeError when ``w`` x ``h`` is beyond ``MAX_ASPECT_RATIO`` (either way)."""
    if w >= 1 and h >= 1 and max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageShapeError(origin, f"extreme aspect ratio {w}x{h} (more than {MAX_ASPECT_RATIO}:1); "
                              "not a photo that can be scored")


class PreprocessConfigError(WoundscoreError):
    """The checkpoint has no usable image-processor config (size, mean, std)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels are made; stored in every cache row's provenance (identity key).

    Attributes:
        size: (height, width) fed to the encoder, e.g. (448, 448).
        mean, std: per-channel Normalize() constants (after scaling to [0, 1]).
        resample: resize filter; bilinear as in Google's fine-tune notebook.
        pad, exif, alpha: the module's decisions, named ("center-zero": CenterCrop(max side)).
        decode: "exact" or "draft" (JPEG DCT-scaled decode, see fast_decode).
        version: PREPROCESS_VERSION.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bilinear"
    pad: str = "center-zero"
    exif: str = "transpose"
    alpha: str = "composite-black"
    decode: str = "exact"
    version: int = PREPROCESS_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessSpec":
        d = dict(d)
        d["size"] = tuple(int(v) for v in d["size"])
        d["mean"] = tuple(float(v) for v in d["mean"])
        d["std"] = tuple(float(v) for v in d["std"])
        return cls(**d)

    def with_decode(self, fast: bool) -> "PreprocessSpec":
        return PreprocessSpec(**{**self.__dict__, "decode": "draft" if fast else "exact"})


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def spec_from_processor_config(cfg: Mapping[str, Any], *, origin: str = "<config>") -> PreprocessSpec:
    """A spec from an image-processor config dict (``preprocessor_config.json`` contents).

    Accepts ``size`` as {"height", "width"}, {"shortest_edge"} or an int, and 1- or 3-element
    ``image_mean`` / ``image_std``. The resize filter stays bilinear (the notebook's), whatever
    the processor uses for its own plain resize.
    """
    size = cfg.get("size")
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            hw = (int(size["shortest_edge"]),) * 2
        else:
            raise PreprocessConfigError(f"{origin}: size {dict(size)!r} has no height/width or shortest_edge")
    elif isinstance(size, (int, float)):
        hw = (int(size), int(size))
    else:
        raise PreprocessConfigError(f"{origin}: no 'size' in the image processor config")

    def triple(key: str) -> tuple[float, float, float]:
        v = cfg.get(key)
        if v is None:
            raise PreprocessConfigError(f"{origin}: no '{key}' in the image processor config")
        v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if len(v) == 1:
            v = v * 3
        if len(v) != 3:
            raise PreprocessConfigError(f"{origin}: '{key}' must have 1 or 3 values, got {v!r}")
        return (v[0], v[1], v[2])

    mean, std = triple("image_mean"), triple("image_std")
    if any(s <= 0 for s in std):
        raise PreprocessConfigError(f"{origin}: image_std must be positive, got {std!r}")
    if min(hw) < 1:
        raise PreprocessConfigError(f"{origin}: size must be positive, got {hw!r}")
    return PreprocessSpec(size=hw, mean=mean, std=std)


def resolve_spec(folder: str | Path) -> PreprocessSpec:
    """The spec of a checkpoint folder: its ``preprocessor_config.json`` (transformers 4), or the
    image processor nested in ``processor_config.json`` (transformers 5).

    Only reads a config: for a hub id, the caller resolves the folder first (e.g.
    ``embed.encoder.resolve_checkpoint(id, config_only=True).path``).
    Raises PreprocessConfigError when there is no image processor config.
    """
    folder = Path(folder).expanduser()
    legacy, combined = folder / "preprocessor_config.json", folder / "processor_config.json"
    if legacy.is_file():
        return spec_from_processor_config(json.loads(legacy.read_text(encoding="utf-8")), origin=str(legacy))
    if combined.is_file():
        cfg = json.loads(combined.read_text(encoding="utf-8")).get("image_processor")
        if isinstance(cfg, Mapping):
            return spec_from_processor_config(cfg, origin=str(combined))
    raise PreprocessConfigError(f"{folder}: no preprocessor_config.json or processor_config.json with an image "
                                "processor (size, image_mean, image_std)")


def _open(data: bytes, origin: str, max_pixels: int) -> Image.Image:
    if len(data) == 0:
        raise ImageDecodeError(origin, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # We check the size ourselves below; Pillow's warning would only go to stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(origin, f"decompression bomb refused: {e}") from None
        except Image.UnidentifiedImageError:
            head = data[:16]
            if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
                raise ImageDecodeError(
                    origin, "HEIC/HEIF photo (iPhone default), which this Pillow cannot read: convert it "
                    "to JPEG (e.g. `heif-convert`, or the phone's 'Most Compatible' camera setting)"
                ) from None
            kind = "text/HTML, not an image" if head.lstrip()[:1] in (b"<", b"{", b"[") or head.isascii() else "unknown format"
            raise ImageDecodeError(origin, f"not an image ({kind}; first bytes {head[:8]!r})") from None
        except Exception as e:  # Pillow plugins raise many types on corrupt headers
            raise ImageDecodeError(origin, f"cannot read image header: {type(e).__name__}: {e}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(origin, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(
            origin, f"decompression bomb refused: header claims {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})"
        )
    check_shape(w, h, origin)
    return im


# Bytes inserted where the last scan's compressed data ends (no 0xFF, so no marker): a complete
# scan never reads them, a scan that stopped early decodes them instead of grey.
_PROBE = bytes(np.random.default_rng(20240).integers(0, 255, 512, dtype=np.uint8))


def _last_scan_end(data: bytes) -> int | None:
    """Offset of the marker that ends the last scan's entropy-coded data (before the first EOI),
    or None when the marker structure cannot be followed."""
    n, i, end = len(data), 2, None
    if data[:2] != b"\xff\xd8":
        return None
    while i + 1 < n:
        if data[i] != 0xFF:
            return end
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xD9:  # EOI (anything after it, e.g. an MPF second image, is not this image)
            return end
        if 0xD0 <= m <= 0xD7 or m == 0x01:  # parameterless markers
            i += 2
            continue
        if i + 4 > n:
            return end
        j = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:  # SOS: entropy-coded data runs to the next marker that is not FF00 / RSTn
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    return end
                if data[j + 1] == 0x00 or 0xD0 <= data[j + 1] <= 0xD7:
                    j += 2
                    continue
                break
            end = j
        i = j
    return end


def _jpeg_ends_early(data: bytes, im: Image.Image, draft: tuple[int, int] | None) -> bool:
    """True when libjpeg ran out of compressed data before the last block (its "premature end of
    data segment" warning, which Pillow swallows) and filled the rest with mid-grey.

    Such blocks decode to exactly (128, 128, 128), so only an image whose bottom-right corner is
    that grey is checked further (a cheap pre-filter): it is decoded again with ``_PROBE`` inserted
    where the last scan's data ends. A complete scan never reads those bytes (identical pixels); a
    scan that stopped early decodes them (different pixels)."""
    if im.mode not in ("RGB", "L"):
        return False
    w, h = im.size
    corner = np.asarray(im.crop((max(0, w - 2), max(0, h - 2), w, h)))
    if not (corner == 128).all():
        return False
    end = _last_scan_end(data)
    if end is None:
        return False
    try:
        probe = Image.open(io.BytesIO(data[:end] + _PROBE + data[end:]))
        if draft is not None:
            probe.draft(None, draft)
        probe.load()
    except Exception:  # cannot prove it: keep the image
        return False
    return probe.size != im.size or probe.tobytes() != im.tobytes()


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    """I;16* / I / F -> L by scaling, not clipping (Pillow's convert("L") clips at 255)."""
    a = np.asarray(im)
    if im.mode == "F":
        a8 = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0
    else:  # I;16, I;16B, I;16L, I (32-bit int holding 16-bit data, e.g. 16-bit TIFF/PNG)
        a8 = np.clip(a.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.rint(a8).astype(np.uint8), mode="L")


def normalize_image(im: Image.Image) -> Image.Image:
    """EXIF orientation applied, then 8-bit RGB, each family of Pillow modes handled deliberately
    (see the module docstring). Idempotent (the orientation tag is removed)."""
    try:
        im = ImageOps.exif_transpose(im) or im
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        # Malformed EXIF (seen in edited phone photos): the pixels are fine, the orientation
        # is unknowable; use them as stored rather than losing the image.
        pass
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_l(im).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    # L, P (opaque), CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversions are exact enough here.
    return im.convert("RGB")


def decode_image(data: bytes, *, origin: str = "<bytes>", fast_decode: bool = False,
                 target_size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Image bytes (any format Pillow reads; the file suffix is ignored) -> fully decoded RGB image,
    EXIF-oriented. ``origin``: the file / record named in errors. ``fast_decode`` (JPEG only): decode
    at a reduced DCT scale that keeps at least 2 x ``target_size`` ((height, width) the image will be
    resized to) pixels on the long side.
    Raises ImageDecodeError: empty, not an image, truncated, corrupt, decompression bomb.
    """
    im = _open(data, origin, max_pixels)
    try:
        draft: tuple[int, int] | None = None
        if fast_decode and target_size is not None and im.format == "JPEG":
            w, h = im.size
            # Keep >= 2S on the long side, not S: the final bilinear resize then averages over
            # the DCT-scaling error (12 MP photo, measured in bench/RESULTS.md: mean error 0.2
            # instead of 2.8 8-bit levels, still 5x faster than the exact decode).
            s = DRAFT_OVERSAMPLE * max(target_size)
            m = max(w, h)
            if m > s:
                # Request the smallest scale whose long side is still >= 2S after padding.
                draft = (math.ceil(s * w / m), math.ceil(s * h / m))
                im.draft(None, draft)
        im.load()  # force the full decode now: truncation and corruption surface here
        if im.format == "JPEG" and _jpeg_ends_early(data, im, draft):
            raise ImageDecodeError(origin, "JPEG data ends early (premature end of the compressed data; the "
                                   "decoder would fill the rest of the image with grey)")
        return normalize_image(im)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(origin, f"decompression bomb refused: {e}") from None
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, struct.error, ...
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image ({msg})"
        raise ImageDecodeError(origin, f"cannot decode image: {msg}") from None


def load_image(x: "bytes | str | Path | Image.Image", *, spec: PreprocessSpec | None = None) -> Image.Image:
    """bytes, a path or a PIL image -> RGB, EXIF-oriented (the decode half of the pipeline)."""
    fast = spec is not None and spec.decode == "draft"
    size = spec.size if spec is not None else None
    if isinstance(x, Image.Image):
        check_shape(*x.size, "<image>")
        return normalize_image(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode_image(bytes(x), fast_decode=fast, target_size=size)
    p = Path(x)
    try:
        data = read_regular_file(p)
    except NotRegularFileError as e:
        raise ImageDecodeError(str(p), f"cannot read file: {e}") from None
    except OSError as e:
        raise ImageDecodeError(str(p), f"cannot read file: {e.strerror or e}") from None
    return decode_image(data, origin=str(p), fast_decode=fast, target_size=size)


def pad_to_square(im: Image.Image) -> Image.Image:
    """Zero-pad to max(w, h) square, image centred exactly as torchvision's CenterCrop pads
    (left = (S - w) // 2, top = (S - h) // 2)."""
    w, h = im.size
    s = max(w, h)
    if w == h:
        return im
    canvas = Image.new("RGB", (s, s), (0, 0, 0))
    canvas.paste(im, ((s - w) // 2, (s - h) // 2))
    return canvas


def preprocess(image: Image.Image, spec: PreprocessSpec) -> "torch.Tensor":
    """An image -> (3, H, W) float32 tensor normalised with the spec (MedSigLIP: [-1, 1]).

    Same numbers as torchvision ``Compose([CenterCrop(max(w, h)), Resize((H, W), bilinear),
    ToTensor(), Normalize(mean, std)])`` on the RGB, EXIF-oriented image (tested bit for bit).
    """
    import torch

    im = normalize_image(image)
    check_shape(*im.size, "<image>")
    s = max(im.size)
    if s * s > MAX_PIXELS:
        # The square canvas would exceed the pixel bound: box-reduce to about 2S on the long side
        # first (bounded memory; only such images leave the exact path).
        im = im.reduce(math.ceil(s / (DRAFT_OVERSAMPLE * max(spec.size))))
    im = pad_to_square(im)
    h, w = spec.size
    if im.size != (w, h):
        im = im.resize((w, h), _RESAMPLE[spec.resample])
    # ToTensor: uint8 HWC -> float CHW / 255 (same op order as torchvision, same bits).
    t = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(dtype=torch.float32).div(255)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def preprocess_bytes(data: bytes, spec: PreprocessSpec, *, origin: str = "<bytes>") -> "torch.Tensor":
    """decode_image + preprocess in one call (what DataLoader workers run)."""
    im = decode_image(data, origin=origin, fast_decode=spec.decode == "draft", target_size=spec.size)
    return preprocess(im, spec)

