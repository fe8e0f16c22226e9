"""cache/schema.py: the one label schema. Property-based tests (hypothesis) of the label parser.

The vocabularies are written out here from the SurgWound README rather than imported, so that a
change to the schema's rules shows up as a failing test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from woundscore.cache.schema import (
    EXTRA_NAMES,
    FIELD_ALIASES,
    LABEL_NAMES,
    MISSING,
    SCHEMA,
    LabelError,
    LabelSchema,
    LabelValueError,
    canonical_field,
    encode_annotations,
    encode_value,
    pos_weight,
)

POSITIVE = {
    "healing_status": ["Not Healed"],
    "erythema": ["Existent"],
    "edema": ["Existent"],
    "infection_risk": ["Medium", "High"],
    "urgency": ["Clinic Visit (Yellow): Requires professional evaluation within 48 hours",
                "Emergency Care (Red): Seek immediate medical attention", "Yellow", "Red"],
    "exudate": ["Serous", "Sanguineous", "Purulent", "Seropurulent"],
}
NEGATIVE = {
    "healing_status": ["Healed"],
    "erythema": ["Non-existent"],
    "edema": ["Non-existent"],
    "infection_risk": ["Low"],
    "urgency": ["Home Care (Green): Manage with routine care", "Green"],
    "exudate": ["Non-existent"],
}
UNSURE = ["Uncertain", "MISSING", ""]  # README, "Labels": the documented tokens only
NOT_UNSURE = ["None", "nan", "-1", "unsure", "N/A", "null", "?"]
WHITESPACE = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", max_size=3)
FAST = settings(max_examples=60, deadline=None)


@st.composite
def recased(draw, value: str) -> str:
    flips = draw(st.integers(0, 2**64 - 1))
    cased = "".join(c.upper() if flips >> (i % 64) & 1 else c.lower() for i, c in enumerate(value))
    return draw(WHITESPACE) + cased + draw(WHITESPACE)


@st.composite
def valid_value(draw) -> tuple[str, str, int]:
    key = draw(st.sampled_from(LABEL_NAMES))
    code = draw(st.sampled_from([0, 1]))
    value = draw(st.sampled_from((POSITIVE if code else NEGATIVE)[key]))
    return key, draw(recased(value)), code


@FAST
@given(valid_value())
def test_any_casing_and_whitespace_of_a_valid_value_encodes_the_same(case):
    key, value, code = case
    assert encode_value(key, value, source="f.csv", item="row 2") == code


@FAST
@given(key=st.sampled_from(LABEL_NAMES), value=st.sampled_from(UNSURE).flatmap(recased))
def test_unsure_values_are_missing(key, value):
    assert encode_value(key, value) == MISSING


def _is_known(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in {u.lower() for u in UNSURE}:
        return True
    if key == "urgency":
        import re

        m = re.fullmatch(r"(home care|clinic visit|emergency care)\s*\(\s*(green|yellow|red)\s*\)(\s*:.*)?"
                         r"|green|yellow|red", low, re.DOTALL)
        pairs = {"home care": "green", "clinic visit": "yellow", "emergency care": "red"}
        return bool(m) and (m.group(1) is None or pairs[m.group(1)] == m.group(2))
    return low in {v.lower() for v in POSITIVE[key] + NEGATIVE[key]}


@FAST
@given(key=st.sampled_from(LABEL_NAMES), value=st.text(max_size=20))
def test_any_other_string_raises_naming_file_item_field_value(key, value):
    if _is_known(key, value):
        return
    with pytest.raises(LabelValueError) as e:
        encode_value(key, value, source="labels.csv", item="row 7 (image 'a.jpg')")
    assert (e.value.source, e.value.item, e.value.field, e.value.value) == (
        "labels.csv", "row 7 (image 'a.jpg')", key, value)
    assert str(e.value) == f"labels.csv: row 7 (image 'a.jpg'): field {key!r} has unknown value {value!r}"
    assert isinstance(e.value, LabelError)


def test_near_misses_are_errors_not_guesses():
    for key, value in [("healing_status", "Not  Healed"), ("erythema", "exists"), ("edema", "yes"),
                       ("infection_risk", "Very High"), ("exudate", "Pus"), ("urgency", "Green or Red"),
                       ("urgency", "Greenish"), ("erythema", 1)]:
        with pytest.raises(LabelValueError):
            encode_value(key, value)
    with pytest.raises(KeyError):
        encode_value("location", "Abdomen")


def test_nan_and_none_are_missing():
    assert encode_value("erythema", None) == MISSING
    assert encode_value("erythema", float("nan")) == MISSING
    assert encode_value("erythema", np.float32("nan")) == MISSING


@FAST
@given(st.dictionaries(st.sampled_from(LABEL_NAMES), st.sampled_from([0, 1, -1])))
def test_encode_annotations_absent_keys_are_missing(codes):
    raw = {k: (POSITIVE[k][0] if c == 1 else NEGATIVE[k][0] if c == 0 else "Uncertain") for k, c in codes.items()}
    labels, extras = encode_annotations(raw)
    assert labels.dtype == np.int8 and labels.shape == (6,)
    assert labels.tolist() == [codes.get(k, -1) for k in LABEL_NAMES]
    assert list(extras) == list(EXTRA_NAMES)


def test_extras_keep_the_raw_detail_in_one_spelling():
    _, a = encode_annotations({"exudate": " seropurulent ", "infection_risk": "HIGH",
                               "urgency": "clinic visit (yellow): soon", "location": " Abdomen"})
    assert a == {"location": "Abdomen", "closure_method": "", "exudate_type": "Seropurulent",
                 "infection_risk_level": "High", "urgency_level": "Yellow",
                 "urgency_text": "clinic visit (yellow): soon"}
    _, b = encode_annotations({"exudate": "Non-existent", "location": "Uncertain"})
    assert b["exudate_type"] == "Non-existent" and b["location"] == "" and b["urgency_level"] == ""


@FAST
@given(alias=st.sampled_from([(k, a) for k, aliases in FIELD_ALIASES.items() for a in aliases]).flatmap(
    lambda ka: st.tuples(st.just(ka[0]), recased(ka[1]))))
def test_field_aliases_any_casing(alias):
    key, name = alias
    assert canonical_field(name) == key


def test_old_and_new_field_names():
    assert canonical_field("Wound Status") == canonical_field("Healing Status") == "healing_status"
    assert canonical_field("Exudate Characteristics") == canonical_field("Exudate Type") == "exudate"
    assert canonical_field("Medical Report") is None and canonical_field("Erythema Uncertain") is None


@FAST
@given(hnp.arrays(np.int8, st.tuples(st.integers(0, 30), st.just(6)), elements=st.sampled_from([-1, 0, 1])))
def test_pos_weight_is_neg_over_pos_of_observed(Y):
    got = pos_weight(Y)
    assert got.shape == (6,)
    for j in range(6):
        pos, neg = int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum())
        if pos == 0:
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(neg / pos)


def test_schema_json_is_deterministic_and_round_trips():
    text = SCHEMA.to_json()
    assert text == LabelSchema().to_json()
    d = json.loads(text)
    assert d["labels"] == list(LABEL_NAMES) and d["missing"] == -1
    assert d["rules"]["infection_risk"] == {"positive": ["high", "medium"], "negative": ["low"]}
    assert LabelSchema.from_json(text) == SCHEMA
    assert LabelSchema.from_json(text).to_json() == text


@pytest.mark.parametrize("key", LABEL_NAMES)
@pytest.mark.parametrize("value", NOT_UNSURE)
def test_undocumented_missing_tokens_are_errors(key, value):
    """Issue 14: "None" (and "nan", "-1", ...) was silently MISSING; the README documents only
    Uncertain / MISSING / empty / absent. Catches re-adding any token to UNSURE_VALUES."""
    with pytest.raises(LabelValueError) as e:
        encode_value(key, value, source="labels.csv", item="row 3")
    assert e.value.value == value and "labels.csv: row 3" in str(e.value)


@pytest.mark.parametrize("value", [
    "Home care: no red flags",  # contained "red": was encoded positive
    "Home Care (Red): Manage with routine care",  # category and colour disagree
    "Emergency Care (Green)",
    "No red flags, green light",
    "Red flag",
    "Clinic visit recommended (yellow discharge)",
])
def test_urgency_is_read_from_the_release_strings_only(value):
    """Issue 14: the colour word anywhere in the text used to be the label ("Home care: no red
    flags" -> positive). Catches a return to searching for any colour word."""
    with pytest.raises(LabelValueError):
        encode_value("urgency", value)


def test_urgency_release_strings_and_reworded_advice():
    """The release's three strings, the category alone, a reworded advice and the bare colour word."""
    assert encode_value("urgency", "Home Care (Green): Manage with routine care") == 0
    assert encode_value("urgency", "Clinic Visit (Yellow): Requires professional evaluation within 48 hours") == 1
    assert encode_value("urgency", "Emergency Care (Red): Seek immediate medical attention") == 1
    assert encode_value("urgency", "Emergency Care (Red)") == 1
    assert encode_value("urgency", "Home Care (Green): no red flags seen") == 0
    assert encode_value("urgency", " yellow ") == 1
