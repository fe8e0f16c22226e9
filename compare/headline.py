"""The report's first lines: the best method by macro ROC AUC with its CI, and every per-label
difference the test split can tell apart, stated from the better method's side
("probe better than mlp on erythema: +0.12, CI +0.03 to +0.21 (n=70)").

"Distinguishable" means the 95% paired-bootstrap interval of the AUC difference excludes 0; every
pair of methods is compared on the same resampled images (``metrics.evaluate``'s comparisons).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def all_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``methods`` once, in report order: (m0, m1), (m0, m2), ... (m1, m2) ..."""
    return [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]


def _distinguishable(c: Mapping[str, Any], label_names: Sequence[str]) -> list[dict[str, Any]]:
    """The differences of one comparison whose interval excludes 0, from the better side."""
    out = []
    for label in label_names:
        x = c["per_label"][label]
        if x.get("value") is None or x.get("low") is None or x["low"] <= 0 <= x["high"]:
            continue
        a_better = x["low"] > 0
        sign = 1.0 if a_better else -1.0
        lo, hi = sorted((sign * x["low"], sign * x["high"]))
        out.append({"better": c["a"] if a_better else c["b"], "worse": c["b"] if a_better else c["a"],
                    "label": label, "delta": sign * x["value"], "low": lo, "high": hi, "n": x["n"]})
    return out


def headline(macro: Mapping[str, Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]],
             label_names: Sequence[str]) -> dict[str, Any]:
    """{"best", "best_macro", "differences": [{"better", "worse", "label", "delta", "low", "high",
    "n"}], "macro_differences": [...same, label "macro"], "comparisons"} from evaluate's macro AUC
    and its comparisons of every pair (``all_pairs``)."""
    est = {n: e for n, e in macro.items() if e.get("value") is not None}
    best = max(est, key=lambda n: est[n]["value"]) if est else None
    diffs = [d for c in comparisons for d in _distinguishable(c, label_names)]
    macro_diffs = [dict(d, label="macro AUC") for c in comparisons
                   for d in _distinguishable({**c, "per_label": {"macro": c["macro"]}}, ["macro"])]
    return {"best": best, "best_macro": est.get(best) if best else None, "differences": diffs,
            "macro_differences": macro_diffs, "comparisons": list(comparisons)}


def _line(d: Mapping[str, Any]) -> str:
    return (f"{d['better']} better than {d['worse']} on {d['label']}: {d['delta']:+.2f}, "
            f"CI {d['low']:+.2f} to {d['high']:+.2f} (n={d['n']})")


def headline_blocks(h: Mapping[str, Any], n_methods: int) -> list[tuple]:
    """The first paragraphs of "The answer": the best method, then each distinguishable difference."""
    if h["best"] is None:
        return [("p", "Best by macro ROC AUC: none; macro AUC is not estimable on this test split.")]
    e = h["best_macro"]
    ci = (f"{e['value']:.3f} (no interval, n={e['n']} images)" if e.get("low") is None
          else f"{e['value']:.3f} (95% CI {e['low']:.3f} to {e['high']:.3f}, n={e['n']} images)")
    blocks: list[tuple] = [("p", f"Best by macro ROC AUC: {h['best']}, {ci}.")]
    if n_methods < 2:
        return blocks
    lead = [d for d in h["macro_differences"] if d["better"] == h["best"]]
    others = n_methods - 1
    blocks.append(("p", f"Its macro lead is distinguishable from {len(lead)} of the {others} other method(s)"
                   + (": " + "; ".join(_line(d) for d in lead) + "." if lead else
                      "; the test split cannot rank it above the rest with confidence.")))
    if h["differences"]:
        blocks += [("p", "Per-label differences whose 95% paired interval excludes 0 (ΔAUC from the better "
                         "method's side):"), ("list", [_line(d) for d in h["differences"]])]
    else:
        blocks.append(("p", "No per-label difference between any two methods is distinguishable on this test "
                            "split: every paired interval includes 0."))
    return blocks
