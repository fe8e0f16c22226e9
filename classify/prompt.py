"""The assistant's text block: one predict-contract result -> the lines the orchestrator reads.

The words come from ``woundscore.cache.wording`` (defined once, beside the label schema); the flag
of each line is the contract's ``flags[label]`` (score >= the threshold chosen on the validation
split), and each line shows its score and that threshold. The block ends with the research-use
notice, and with the model's own notice when it has one (e.g. random weights). A photo outside
the model's range (``in_distribution`` false) or one that could not be read gets a request for a
clearer photo instead of the six lines. README.md, "The assistant's text block", shows examples.
"""

from __future__ import annotations

from typing import Any, Mapping

from woundscore.cache.wording import NOT_ASSESSABLE, RESEARCH_NOTICE, UNREADABLE, WORDING

HEADER = "Wound photo assessment (automated):"


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\\\n``), for human-readable output."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _number(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.2f}"


def render_prompt(result: Mapping[str, Any]) -> str:
    """One contract object (classify.scorer) -> the text block (lines joined by ``\\n``).

    Lines: the header, then per label in the plan's order ``"<title>: <words> (score 0.81,
    threshold 0.47)"``, then the research-use notice (and the model's notice, escaped).
    """
    lines = [HEADER]
    if "error" in result:
        lines.append(UNREADABLE)
    elif result.get("in_distribution") is False:
        ood = result.get("ood") or {}
        lines.append(NOT_ASSESSABLE)
        lines.append(f"(distance to the training photos {_number(ood.get('distance'))}, "
                     f"cut-off {_number(ood.get('cutoff'))})")
    else:
        for w in WORDING:
            score = result["scores"][w.label]
            thr = result["thresholds"][w.label]["value"]
            lines.append(f"{w.title}: {w.phrase(bool(result['flags'][w.label]))} "
                         f"(score {_number(score)}, threshold {_number(thr)})")
    lines.append(RESEARCH_NOTICE)
    notice = (result.get("model") or {}).get("notice")
    if notice:
        lines.append(f"Model notice: {printable(notice)}")
    return "\n".join(lines)
