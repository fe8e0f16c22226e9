"""Which words the assistant's text block uses for each side of each label (interface 10).

Defined once, beside the label schema (``cache.schema``): the plan's wording and order of the six
lines the conversational layer reads. ``positive`` is the phrase for label value 1 (the schema's
positive class, e.g. healing_status 1 = "Not Healed"), ``negative`` the phrase for 0. A model's
flag is ``score >= threshold``, so a flagged label reads as its ``positive`` phrase.
``woundscore.classify.prompt`` renders the block; nothing else should spell these words.
"""

from __future__ import annotations

from dataclasses import dataclass

from woundscore.cache.schema import LABEL_NAMES


@dataclass(frozen=True)
class LabelWording:
    """One line of the block: ``"<title>: <positive or negative>"``."""

    label: str  # a name of cache.schema.LABEL_NAMES
    title: str  # e.g. "Erythema (redness)"
    positive: str  # the words for label value 1 (flag raised)
    negative: str  # the words for label value 0 (flag not raised)

    def phrase(self, flagged: bool) -> str:
        """The side's words: ``positive`` when the flag is raised."""
        return self.positive if flagged else self.negative


#: The plan's six lines, in the plan's order (not LABEL_NAMES order).
WORDING: tuple[LabelWording, ...] = (
    LabelWording("healing_status", "Healing", "not progressing", "progressing"),
    LabelWording("erythema", "Erythema (redness)", "present", "absent"),
    LabelWording("edema", "Edema (swelling)", "present", "absent"),
    LabelWording("exudate", "Exudate (drainage)", "present", "absent"),
    LabelWording("infection_risk", "Infection risk", "elevated", "low"),
    LabelWording("urgency", "Urgency", "needs professional attention", "home care OK"),
)

#: The research-use notice every block ends with.
RESEARCH_NOTICE = ("Research use only: these scores come from an experimental model and are not a "
                   "diagnosis; they must not replace a clinician's assessment.")

#: What the block says instead of the six lines when a photo is outside the model's range.
NOT_ASSESSABLE = ("The photo could not be assessed: it does not look like the wound photos the model "
                  "was trained on. Please ask for a clearer photo of the wound: close up, well lit, "
                  "in focus, the whole wound in the frame.")

#: What the block says when a photo could not be read at all.
UNREADABLE = "The photo could not be read. Please ask for the photo again (a JPEG or PNG of the wound)."

BY_LABEL: dict[str, LabelWording] = {w.label: w for w in WORDING}
