"""The one label schema of woundscore: six binary labels plus raw extras.

Every stage imports the label names, their order and the encoding rules from here. The schema is
also serialised (``schema_json``) into every artifact, so that a cache or a model folder says how
its labels were made and two artifacts with different rules are never mixed.

Encoding (SurgWound annotation vocabulary, see ../shared/data/surgwound/README.md):

==============  =========================================  ==========================
label           positive (1)                               negative (0)
==============  =========================================  ==========================
healing_status  Not Healed                                 Healed
erythema        Existent                                   Non-existent
edema           Existent                                   Non-existent
infection_risk  Medium, High                               Low
urgency         Clinic Visit (Yellow), Emergency Care (Red)  Home Care (Green)
exudate         Serous, Sanguineous, Purulent, Seropurulent Non-existent
==============  =========================================  ==========================

``Uncertain``, ``MISSING``, an empty cell or no record at all is MISSING (-1): masked out of loss
and metrics, never guessed. Any other value (also "None", "nan", "-1", "N/A") raises
:class:`LabelValueError` naming the file, the item (image or row), the field and the value.
Urgency is read from the release's own strings only: ``<Category> (<Colour>)[: advice]`` with the
category matching the colour (Home Care/Green, Clinic Visit/Yellow, Emergency Care/Red), or the
bare colour word; "Home care: no red flags" is an error, not Red.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from woundscore.cache.errors import WoundscoreError

SCHEMA_VERSION = 2  # 2: only the documented unsure tokens; urgency from the release strings only
MISSING = -1

#: The dataset's fixed splits, in report order (a cache may also hold rows with split "").
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: The six labels, in the order of every ``(n, 6)`` array in the project.
LABEL_NAMES: tuple[str, ...] = (
    "healing_status",
    "erythema",
    "edema",
    "infection_risk",
    "urgency",
    "exudate",
)
N_LABELS = len(LABEL_NAMES)

#: Raw annotations kept beside the binary labels (strings; "" when unsure or absent).
EXTRA_NAMES: tuple[str, ...] = (
    "location",
    "closure_method",
    "exudate_type",  # Non-existent / Serous / Sanguineous / Purulent / Seropurulent
    "infection_risk_level",  # Low / Medium / High
    "urgency_level",  # Green / Yellow / Red
    "urgency_text",  # the full urgency string, e.g. "Clinic Visit (Yellow): Requires ..."
)

#: Values that mean "the annotator was unsure" (compared case-insensitively, after stripping).
#: The documented ones only (README, "Labels"): "None" or "nan" written in a cell is an error, not
#: a silent -1 (the SurgWound sheet writes "Uncertain"; the release omits the record).
UNSURE_VALUES: frozenset[str] = frozenset({"", "uncertain", "missing"})

#: Field names as written by each source, mapped to the canonical key. The HF release uses the
#: new names (``Healing Status``, ``Exudate Type``); the annotation sheet the old ones
#: (``Wound Status``, ``Exudate Characteristics``); a labels.csv uses the snake_case keys.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "healing_status": ("Healing Status", "Wound Status", "healing_status"),
    "erythema": ("Erythema", "erythema"),
    "edema": ("Edema", "edema"),
    "infection_risk": ("Infection Risk Assessment", "infection_risk"),
    "urgency": ("Urgency Level", "urgency_level", "urgency"),
    "exudate": ("Exudate Type", "Exudate Characteristics", "exudate_type", "exudate"),
    "location": ("Wound Location", "location"),
    "closure_method": ("Closure Method", "closure_method"),
}
_ALIAS_TO_KEY = {alias.lower(): key for key, aliases in FIELD_ALIASES.items() for alias in aliases}

# Binary vocabularies, lower-cased. Urgency is matched by its colour word instead (below).
_BINARY_VOCAB: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "healing_status": (frozenset({"not healed"}), frozenset({"healed"})),
    "erythema": (frozenset({"existent"}), frozenset({"non-existent"})),
    "edema": (frozenset({"existent"}), frozenset({"non-existent"})),
    "infection_risk": (frozenset({"medium", "high"}), frozenset({"low"})),
    "exudate": (
        frozenset({"serous", "sanguineous", "purulent", "seropurulent"}),
        frozenset({"non-existent"}),
    ),
}
_URGENCY_POSITIVE = ("yellow", "red")
_URGENCY_NEGATIVE = ("green",)
#: The release's urgency categories and the colour each is written with.
URGENCY_CATEGORIES: dict[str, str] = {"home care": "green", "clinic visit": "yellow", "emergency care": "red"}
_URGENCY_RE = re.compile(r"(?:(home care|clinic visit|emergency care)\s*\(\s*(green|yellow|red)\s*\)(?:\s*:.*)?"
                         r"|(green|yellow|red))", re.IGNORECASE | re.DOTALL)


class LabelError(WoundscoreError, ValueError):
    """Base class of label problems in an annotation source."""


class LabelValueError(LabelError):
    """A value outside the schema's vocabulary. The message names file, item, field and value."""

    def __init__(self, source: str, item: str, field: str, value: object) -> None:
        self.source, self.item, self.field, self.value = source, item, field, value
        super().__init__(f"{source}: {item}: field {field!r} has unknown value {value!r}")


def canonical_field(name: str) -> str | None:
    """Map a source's field or column name to its canonical key, or None if it is not annotated."""
    return _ALIAS_TO_KEY.get(name.strip().lower())


def is_unsure(value: object) -> bool:
    """True for an annotation that means 'unsure' (masked, never guessed)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and np.isnan(value):  # an empty cell read by pandas
        return True
    return str(value).strip().lower() in UNSURE_VALUES


def urgency_colour(value: str) -> str | None:
    """The colour of an urgency string ('Green'/'Yellow'/'Red'), or None if it is not one.

    Accepted: the release's form ``<Category> (<Colour>)`` optionally followed by ``: advice``
    (any advice text, so a reworded advice keeps its label), with the category matching the
    colour, or the bare colour word. A colour word elsewhere ("Home care: no red flags") is not
    read as the code.
    """
    m = _URGENCY_RE.fullmatch(str(value).strip())
    if m is None:
        return None
    category, colour, bare = m.groups()
    if bare is not None:
        return bare.capitalize()
    if URGENCY_CATEGORIES[category.lower()] != colour.lower():
        return None
    return colour.capitalize()


def encode_value(key: str, value: object, *, source: str = "<input>", item: str = "?") -> int:
    """Encode one raw annotation of label ``key`` to 1, 0 or MISSING (-1)."""
    if key not in LABEL_NAMES:
        raise KeyError(f"not a label: {key!r}")
    if is_unsure(value):
        return MISSING
    text = str(value).strip()
    low = text.lower()
    if key == "urgency":
        colour = urgency_colour(text)
        if colour is None:
            raise LabelValueError(source, item, key, value)
        return 1 if colour.lower() in _URGENCY_POSITIVE else 0
    pos, neg = _BINARY_VOCAB[key]
    if low in pos:
        return 1
    if low in neg:
        return 0
    raise LabelValueError(source, item, key, value)


def encode_annotations(
    raw: Mapping[str, object], *, source: str = "<input>", item: str = "?"
) -> tuple[np.ndarray, dict[str, str]]:
    """Encode one image's raw annotations.

    Args:
        raw: canonical key (see ``FIELD_ALIASES``) -> raw value; absent keys are unsure.
        source: file the annotations came from (for error messages).
        item: image name or row (for error messages).

    Returns:
        labels: (6,) int8 in ``LABEL_NAMES`` order with 1 / 0 / -1.
        extras: ``EXTRA_NAMES`` -> string ("" when unsure or absent).
    """
    labels = np.array(
        [encode_value(k, raw.get(k), source=source, item=item) for k in LABEL_NAMES], dtype=np.int8
    )
    extras = {name: "" for name in EXTRA_NAMES}
    for key in ("location", "closure_method"):
        if not is_unsure(raw.get(key)):
            extras[key] = str(raw[key]).strip()
    if labels[LABEL_NAMES.index("exudate")] != MISSING:
        # One spelling per subtype ("serous" in a labels.csv and "Serous" in the release are the
        # same category); every exudate value is one word, so capitalize() is the canonical form.
        extras["exudate_type"] = str(raw["exudate"]).strip().capitalize()
    if labels[LABEL_NAMES.index("infection_risk")] != MISSING:
        extras["infection_risk_level"] = str(raw["infection_risk"]).strip().capitalize()
    if labels[LABEL_NAMES.index("urgency")] != MISSING:
        text = str(raw["urgency"]).strip()
        extras["urgency_level"] = urgency_colour(text) or ""
        extras["urgency_text"] = text
    return labels, extras


@dataclass(frozen=True)
class LabelSchema:
    """A serialisable description of the encoding rules; equal schemas encode labels the same way."""

    version: int = SCHEMA_VERSION
    labels: tuple[str, ...] = LABEL_NAMES
    extras: tuple[str, ...] = EXTRA_NAMES
    missing: int = MISSING

    def to_dict(self) -> dict:
        rules = {k: {"positive": sorted(p), "negative": sorted(n)} for k, (p, n) in _BINARY_VOCAB.items()}
        rules["urgency"] = {
            "positive": [f"{k} ({c})" for k, c in URGENCY_CATEGORIES.items() if c in _URGENCY_POSITIVE],
            "negative": [f"{k} ({c})" for k, c in URGENCY_CATEGORIES.items() if c in _URGENCY_NEGATIVE],
        }
        return {
            "version": self.version,
            "labels": list(self.labels),
            "extras": list(self.extras),
            "missing": self.missing,
            "unsure_values": sorted(UNSURE_VALUES),
            "rules": {k: rules[k] for k in self.labels},
        }

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys): equal strings mean equal encoding rules."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LabelSchema":
        d = json.loads(text)
        return cls(
            version=int(d["version"]),
            labels=tuple(d["labels"]),
            extras=tuple(d["extras"]),
            missing=int(d["missing"]),
        )


#: The schema in force. Artifacts store ``SCHEMA.to_json()`` and compare it on load.
SCHEMA = LabelSchema()


def pos_weight(Y: np.ndarray) -> np.ndarray:
    """neg/pos per label over observed (!= -1) entries of ``Y`` (n, 6). NaN where a label has no positive."""
    Y = np.asarray(Y)
    pos = (Y == 1).sum(axis=0).astype(np.float64)
    neg = (Y == 0).sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pos > 0, neg / np.maximum(pos, 1), np.nan)


def training_pos_weight(Y: np.ndarray) -> np.ndarray:
    """(6,) :func:`pos_weight` with 1.0 where a label has no positive (its positive term is empty
    then, so the weight does not matter): what the loss and the probe's class weights use."""
    pw = pos_weight(Y)
    return np.where(np.isfinite(pw), pw, 1.0)


def label_counts(Y: np.ndarray) -> dict[str, dict[str, int]]:
    """Per label of ``Y`` (n, 6): ``{"pos", "neg", "missing"}`` counts (missing = -1 entries)."""
    Y = np.asarray(Y)
    return {name: {"pos": int((Y[:, j] == 1).sum()), "neg": int((Y[:, j] == 0).sum()),
                   "missing": int((Y[:, j] == MISSING).sum())} for j, name in enumerate(LABEL_NAMES)}
