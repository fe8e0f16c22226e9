"""wound-serve's request handling in process (classify/serve.py: read_body, multipart_file,
decode_or_refuse, _check_token, _image_from_request, model_description), each refusal's status,
code and message pinned (TESTING.md, `make mutants`, group classify_serve). tests/test_serve.py
checks the same over HTTP, but in a server subprocess that mutation testing cannot see into."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.wording import RESEARCH_NOTICE
from woundscore.classify import serve as S
from tests.test_mutants_scorer import _model


def _err(fn, *a) -> tuple[int, str, str]:
    with pytest.raises(S.RequestError) as e:
        fn(*a)
    return e.value.status, e.value.code, str(e.value.message if hasattr(e.value, "message") else e.value)


class _Req:
    def __init__(self, headers: dict, chunks: list[bytes]) -> None:
        self.headers, self._chunks = headers, chunks

    async def stream(self):
        for c in self._chunks:
            yield c


def _png(size=(4, 3), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def test_read_body_limits_declared_and_streamed() -> None:
    run = asyncio.run
    assert run(S.read_body(_Req({"content-length": "6"}, [b"abc", b"def"]), 6)) == b"abcdef"
    with pytest.raises(S.RequestError) as e:
        run(S.read_body(_Req({"content-length": "2000"}, [b"x"]), 1000))
    assert (e.value.status, e.value.code) == (413, "too_large")
    assert "body of 2,000 bytes is over the limit of 1,000 bytes" in str(e.value.args or e.value.message)
    with pytest.raises(S.RequestError) as e:  # no (or a lying) length: refused while reading
        run(S.read_body(_Req({"content-length": "x"}, [b"abc", b"def"]), 5))
    assert (e.value.status, e.value.code) == (413, "too_large")
    assert "body is over the limit of 5 bytes" in str(e.value.args or e.value.message)
    assert run(S.read_body(_Req({}, [b"abcde"]), 5)) == b"abcde"  # exactly at the limit


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, str]:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_picks_the_file_part() -> None:
    body, ctype = _multipart([("note", None, b"hello"), ("file", "a.png", b"IMG1")])
    assert S.multipart_file(body, ctype) == b"IMG1"
    body, ctype = _multipart([("note", None, b"hello"), ("image", None, b"IMG2")])
    assert S.multipart_file(body, ctype) == b"IMG2"
    body, ctype = _multipart([("note", None, b"hello"), ("upload", "b.jpg", b"IMG3")])  # the one with a filename
    assert S.multipart_file(body, ctype) == b"IMG3"
    assert S._image_from_request(ctype, body) == b"IMG3"
    for parts in ([("a", None, b"1")], [("file", "x", b"1"), ("image", "y", b"2")]):
        body, ctype = _multipart(parts)
        with pytest.raises(S.RequestError) as e:
            S.multipart_file(body, ctype)
        assert (e.value.status, e.value.code) == (400, "bad_multipart")
        assert "multipart body needs exactly one image part named 'file'" in str(e.value.message)
    with pytest.raises(S.RequestError) as e:
        S.multipart_file(b"--x\r\n", "multipart/form-data")
    assert (e.value.status, e.value.code, e.value.message) == (400, "bad_multipart",
                                                               "multipart/form-data without a boundary")


def test_content_types() -> None:
    assert S._image_from_request("image/PNG; q=1", b"B") == b"B"
    assert S._image_from_request(" application/octet-stream", b"B") == b"B"
    with pytest.raises(S.RequestError) as e:
        S._image_from_request("text/html; charset=utf-8", b"B")
    assert (e.value.status, e.value.code) == (415, "unsupported_media_type")
    assert e.value.message == ("Content-Type 'text/html': send multipart/form-data (field 'file'), image/* or "
                               "application/octet-stream")
    with pytest.raises(S.RequestError) as e:
        S._image_from_request("", b"B")
    assert e.value.message.startswith("Content-Type 'none': ")
    with pytest.raises(S.RequestError) as e:
        S._image_from_request("te xt/<b>" + "a" * 100, b"B")
    assert e.value.message.startswith("Content-Type 'te?xt/?b?" + "a" * 71 + "': ")


def test_decode_or_refuse_codes() -> None:
    img = S.decode_or_refuse(_png())
    assert img.size == (4, 3) and img.mode == "RGB"
    assert S.decode_or_refuse(_png(), lambda d: len(d)) == len(_png())
    cases = {b"": (400, "empty_body"), b"hello there, not an image": (422, "not_an_image"),
             _png((64, 64), "JPEG")[:300]: (422, "truncated_image")}
    for data, (status, code) in cases.items():
        with pytest.raises(S.RequestError) as e:
            S.decode_or_refuse(data)
        assert (e.value.status, e.value.code) == (status, code), data[:10]
        assert "hello" not in e.value.message and "first bytes" not in e.value.message

    def oom(_):
        raise MemoryError

    with pytest.raises(S.RequestError) as e:
        S.decode_or_refuse(b"x", oom)
    assert (e.value.status, e.value.code, e.value.message) == (422, "too_large_to_decode",
                                                               "the image is too large to decode in memory")


def test_bearer_token() -> None:
    S._check_token(SimpleNamespace(headers={}), None)
    for h in ("Bearer s3cret", "bearer s3cret ", "BEARER  s3cret"):
        S._check_token(SimpleNamespace(headers={"authorization": h}), "s3cret")
    for h in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}, {"authorization": "s3cret"}):
        with pytest.raises(S.RequestError) as e:
            S._check_token(SimpleNamespace(headers=h), "s3cret")
        assert (e.value.status, e.value.code) == (401, "unauthorized")
        assert e.value.message == "a valid 'Authorization: Bearer <token>' header is required"


def test_model_description_every_field() -> None:
    from woundscore.classify.scorer import model_info

    m = _model()
    st = SimpleNamespace(scorer=SimpleNamespace(model=m))
    d = S.model_description(st, max_bytes=10, max_batch=3, max_wait_ms=5.0)
    info = model_info(m)
    assert d == {
        "labels": list(LABEL_NAMES),
        "thresholds": {n: {"value": m.thresholds["labels"][n]["value"], "rule": m.thresholds["labels"][n]["applied"]}
                       for n in LABEL_NAMES},
        "calibration": info["calibration"], "ood": {"cutoff": 2.0, "method": "mahalanobis"},
        "encoder": {"id": "google/medsiglip-448", "revision": "rev9"}, "model": info, "notice": RESEARCH_NOTICE,
        "limits": {"max_bytes": 10, "max_batch": 3, "max_wait_ms": 5.0}}
    st.scorer.model = _model(ood=None)
    assert S.model_description(st, max_bytes=1, max_batch=1, max_wait_ms=1.0)["ood"] is None


def test_error_body_shape() -> None:
    assert S.error_body("too_large", "the body is too big") == {"error": "too_large", "detail": "the body is too big"}


def test_decode_refusal_codes_from_the_decoder_reason() -> None:
    """Each reason word the service maps to a code (mutants: the words, the codes, the "first
    bytes" scrub's replacement)."""
    from woundscore.embed.preprocess import ImageDecodeError

    with pytest.raises(S.RequestError) as e:
        S.decode_or_refuse(b"hello there, not an image")
    assert (e.value.code, e.value.message) == ("not_an_image", "not an image (text/HTML, not an image)")
    cases = {"decompression bomb: 1,000,000,000 pixels (limit 178,956,970)": "decompression_bomb",
             "image file is truncated (3 bytes not processed)": "truncated_image",
             "Premature end of JPEG file": "truncated_image",
             "HEIC photo; install pillow-heif": "not_an_image",
             "not an image (unknown format; first bytes b'abc')": "not_an_image",
             "broken data stream when reading image file": "undecodable_image"}
    for reason, code in cases.items():
        def prepare(_data, reason=reason):
            raise ImageDecodeError("<bytes>", reason)

        with pytest.raises(S.RequestError) as e:
            S.decode_or_refuse(b"x", prepare)
        assert (e.value.status, e.value.code) == (422, code), reason
        assert e.value.message == reason.replace("; first bytes b'abc')", ")")


def test_multipart_content_type_with_several_parameters() -> None:
    body, _ = _multipart([("file", "a.png", b"IMG1")])
    assert S._image_from_request("multipart/form-data; boundary=XyZ; charset=utf-8", body) == b"IMG1"


def test_model_description_of_a_model_without_an_ood_attribute() -> None:
    m = _model()
    del m.ood
    d = S.model_description(SimpleNamespace(scorer=SimpleNamespace(model=m)), max_bytes=1, max_batch=1, max_wait_ms=1.0)
    assert d["ood"] is None
