"""Property-based tests (hypothesis) of the release reader and its streaming JSON parser."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from woundscore.cache.schema import encode_annotations
from woundscore.embed.release import iter_json_array
from woundscore.embed.sources import open_source
from woundscore.embed.synthetic import EXUDATES, LOCATIONS, URGENCY_TEXT, ReleaseImage, write_release

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "healing_status": ["Healed", "Not Healed"],
    "erythema": ["Existent", "Non-existent"],
    "edema": ["Existent", "Non-existent"],
    "infection_risk": ["Low", "Medium", "High"],
    "urgency": list(URGENCY_TEXT.values()),
    "exudate": ["Non-existent", *EXUDATES],
    "location": list(LOCATIONS),
    "closure_method": ["Sutures", "Invisible", "Adhesives", "Staples"],
}
WHITESPACE = st.text(alphabet=" \t\n\u00a0\u2003", max_size=3)


@st.composite
def decorated(draw, values: list[str]) -> str:
    """A valid value in random casing with random surrounding whitespace."""
    value = draw(st.sampled_from(values))
    flips = draw(st.integers(0, 2**32 - 1))  # bit i: upper-case character i
    cased = "".join(c.upper() if flips >> (i % 32) & 1 else c.lower() for i, c in enumerate(value))
    return draw(WHITESPACE) + cased + draw(WHITESPACE)


@st.composite
def release_images(draw) -> list[ReleaseImage]:
    names = draw(st.lists(st.text(min_size=1, max_size=12).filter(str.strip),
                          min_size=3, max_size=8, unique=True))
    splits = ["train", "val", "test"] + draw(
        st.lists(st.sampled_from(["train", "val", "test"]), min_size=len(names) - 3, max_size=len(names) - 3))
    images = []
    for name, split in zip(names, splits):
        answers = {}
        for key, values in VALID.items():
            if draw(st.booleans()):
                answers[key] = draw(decorated(values))
        report = draw(st.one_of(st.none(), st.text(max_size=40)))
        if not answers and report is None:
            report = ""
        data = draw(st.binary(min_size=1, max_size=64))
        images.append(ReleaseImage(name=name, split=split, image=data, answers=answers, report=report))
    return images


def summary(samples) -> dict:
    return {s.image_id: (s.split, s.labels.tolist(), s.extras, s.report, s.read_bytes()) for s in samples}


@SETTINGS
@given(images=release_images(), field_names=st.sampled_from(["new", "old", "mixed"]),
       indent=st.sampled_from([None, 0, 2]), shuffle=st.integers(0, 2**16))
def test_release_round_trips_and_ignores_record_order(images, field_names, indent, shuffle):
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_release(Path(tmp) / "a", images, field_names=field_names, indent=indent)
        shuffled = write_release(Path(tmp) / "b", images, field_names=field_names, shuffle_seed=shuffle)
        got = summary(open_source(plain).samples())
        assert got == summary(open_source(shuffled).samples())
    assert set(got) == {i.name for i in images}
    for img in images:
        labels, extras = encode_annotations(img.answers)
        # Exactly what the writer wrote: split, labels (absent field = -1), extras, report, bytes.
        assert got[img.name] == (img.split, labels.tolist(), extras, img.report or "", img.image)
        # Casing and whitespace do not change the labels.
        plain_labels, _ = encode_annotations({k: v.strip() for k, v in img.answers.items()})
        assert labels.tolist() == plain_labels.tolist()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(values=st.lists(json_values, max_size=8), chunk=st.integers(1, 40),
       indent=st.sampled_from([None, 1, 4]), ascii_only=st.booleans())
def test_streaming_parser_equals_json_load(values, chunk, indent, ascii_only):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "x.json"
        f.write_text(json.dumps(values, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
        got = list(iter_json_array(f, chunk_chars=chunk))
    assert [i for i, _ in got] == list(range(len(values)))
    assert [v for _, v in got] == values


def test_reader_labels_are_int8_rows():
    images = [ReleaseImage(n, s, b"x" + n.encode(), {"erythema": "Existent"}) for n, s in
              [("a", "train"), ("b", "val"), ("c", "test")]]
    with tempfile.TemporaryDirectory() as tmp:
        samples = open_source(write_release(tmp, images)).samples()
    assert all(s.labels.dtype == np.int8 and s.labels.shape == (6,) for s in samples)
