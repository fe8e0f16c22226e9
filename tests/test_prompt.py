"""The assistant's text block: the plan's words, order, sides, scores and thresholds; a photo out
of distribution or unreadable asks for a clearer photo instead of the six lines."""

from __future__ import annotations

from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.wording import BY_LABEL, NOT_ASSESSABLE, RESEARCH_NOTICE, UNREADABLE, WORDING
from woundscore.classify.prompt import HEADER, render_prompt

PLAN = ["Healing: progressing / not progressing", "Erythema (redness): present / absent",
        "Edema (swelling)", "Exudate (drainage)", "Infection risk: low / elevated",
        "Urgency: home care OK / needs professional attention"]


def result(flags: dict[str, bool], *, in_distribution=True, notice=None) -> dict:
    scores = {n: (0.81 if flags[n] else 0.12) for n in LABEL_NAMES}
    return {"image": "x.jpg", "scores": scores, "raw_scores": scores, "flags": flags,
            "thresholds": {n: {"value": 0.47, "rule": "youden"} for n in LABEL_NAMES},
            "in_distribution": in_distribution,
            "ood": None if in_distribution is None else {"distance": 3.0, "cutoff": 2.5, "method": "m"},
            "model": {"notice": notice}}


def test_wording_is_the_plans_in_its_order() -> None:
    assert sorted(BY_LABEL) == sorted(LABEL_NAMES) and len(WORDING) == 6
    assert [w.title for w in WORDING] == [p.split(":")[0] for p in PLAN]
    for w, p in zip(WORDING, PLAN):
        if ":" in p:  # the plan names both sides: positive (label 1) is the worrying one
            assert set(p.split(": ")[1].split(" / ")) == {w.positive, w.negative}
    assert BY_LABEL["healing_status"].phrase(True) == "not progressing"  # 1 = Not Healed
    assert BY_LABEL["infection_risk"].phrase(True) == "elevated"
    assert BY_LABEL["urgency"].phrase(False) == "home care OK"
    assert BY_LABEL["erythema"].phrase(True) == "present" and BY_LABEL["exudate"].phrase(False) == "absent"


def test_block_lines_scores_thresholds_and_notice() -> None:
    flags = {n: n in ("healing_status", "urgency") for n in LABEL_NAMES}
    lines = render_prompt(result(flags, notice="random weights\n- not MedSigLIP")).splitlines()
    assert lines == [
        HEADER,
        "Healing: not progressing (score 0.81, threshold 0.47)",
        "Erythema (redness): absent (score 0.12, threshold 0.47)",
        "Edema (swelling): absent (score 0.12, threshold 0.47)",
        "Exudate (drainage): absent (score 0.12, threshold 0.47)",
        "Infection risk: low (score 0.12, threshold 0.47)",
        "Urgency: needs professional attention (score 0.81, threshold 0.47)",
        RESEARCH_NOTICE,
        "Model notice: random weights\\n- not MedSigLIP",
    ]


def test_no_detector_still_gives_the_six_lines() -> None:
    text = render_prompt(result({n: False for n in LABEL_NAMES}, in_distribution=None))
    assert "Healing: progressing" in text and NOT_ASSESSABLE not in text


def test_out_of_distribution_asks_for_a_clearer_photo() -> None:
    text = render_prompt(result({n: True for n in LABEL_NAMES}, in_distribution=False))
    assert NOT_ASSESSABLE in text and "clearer photo" in text
    assert not any(w.title + ":" in text for w in WORDING)
    assert text.endswith(RESEARCH_NOTICE)


def test_unreadable_photo() -> None:
    text = render_prompt({"image": "x.jpg", "error": "x.jpg: not an image"})
    assert text.splitlines() == [HEADER, UNREADABLE, RESEARCH_NOTICE]
