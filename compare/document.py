"""What the comparison report says: its content as JSON-ready data (``metrics.json``) and as a
list of blocks that :mod:`woundscore.compare.render` turns into Markdown and HTML.

A block is a tuple: ``("h1" | "h2" | "p" | "banner", text)``, ``("list", [text, ...])``,
``("table", header, rows)`` or ``("image", file name, caption)``. All text is plain (no markup);
the renderers escape it, so the two documents say the same thing and escaping happens in one place.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np

from woundscore.cache.schema import label_counts
from woundscore.cache.types import EmbeddingSet
from woundscore.compare.calibration_report import calibration_blocks
from woundscore.compare.headline import headline_blocks
from woundscore.compare.methods import FINETUNE, MEMORY_KIND, MLP, MethodRun
from woundscore.compare.metrics import one_class_reason
from woundscore.compare.sections import deploy_blocks, excluded_blocks, leakage_blocks, seed_spread_blocks

METRICS_SCHEMA_VERSION = 1
Block = tuple

#: The nearest public result (external; quoted, never recomputed here).
EXTERNAL_REFERENCE: dict[str, Any] = {
    "what": "fine-tune of the last 8 encoder blocks on the same 6 labels and the same "
    "137-image test split",
    "per_label_auc": {"healing_status": 0.718, "erythema": 0.686, "edema": 0.713, "infection_risk": 0.810,
                      "urgency": 0.822, "exudate": 0.721},
    "macro_auc": 0.745,
    "n_test_images": 137,
    "train_time": "22.5 min on a T4",
    "status": "external, quoted as published, not recomputed here; no confidence interval published",
}

POOLING_NOTE = (
    "SiglipForImageClassification (the fine-tune's model class) mean-pools the patch tokens of the "
    "last layer and ignores the attention-pooling head that the cached embeddings (and so the MLP "
    "and the probe) come from. The fine-tune therefore classifies a different feature than the "
    "other methods; wound-compare finetune --pooling attention classifies the attention-pooled "
    "feature instead."
)

FIXED_CAVEATS = (
    "SurgWound images are mostly not C-section scars: results may not transfer to the maternal-health "
    "population this is meant for.",
    "The images are social-media photos (varied cameras, lighting, framing and selection), not a "
    "prospective clinical sample.",
    "Research use only. Not a medical device; the scores are not a diagnosis.",
    "The intervals cover the sampling of test images only: training randomness (seed, early "
    "stopping) is not included, and each method was trained once.",
    "Thresholds are chosen on the validation split, which is small; their operating points on test "
    "are therefore themselves uncertain.",
)

QUESTION = ("On the same test images, how does the cheap MLP compare with the fine-tune "
            "(or the best alternative present), and how sure are we?")

# --- Content as data ---


def notices(data: EmbeddingSet, runs: Mapping[str, MethodRun]) -> list[str]:
    """The cache's notice, then each method's (demo data, random weights ...), each said once: a
    notice that repeats an earlier one's "; "-separated parts keeps only its new parts."""
    found = [str(n) for n in [(data.provenance or {}).get("notice"), *(r.notice for r in runs.values())] if n]
    seen: set[str] = set()
    out = []
    for notice in found:
        parts = [p.strip() for p in notice.split(";") if p.strip()]
        new = [p for p in parts if p not in seen]
        seen.update(parts)
        if new:
            out.append(notice if len(new) == len(parts) else "; ".join(new))
    return out


def _limitations(data: EmbeddingSet) -> dict[str, Any]:
    """Split sizes, per-label test counts, Red urgency cases and body sites of the test split."""
    test = data.subset("test")
    labels = {lab: {"n": c["pos"] + c["neg"], "positives": c["pos"], "negatives": c["neg"], "missing": c["missing"]}
              for lab, c in label_counts(test.Y).items()}
    lim: dict[str, Any] = {"n_test_images": len(test), "n_val_images": len(data.subset("val")),
                           "n_train_images": len(data.subset("train")), "labels": labels}
    urgency = test.extras.get("urgency_level")
    if urgency is None:
        lim.update(red_urgency=None, red_urgency_reason="the cache has no urgency_level extras")
    else:
        red = [str(i) for i, u in zip(test.ids, urgency) if str(u).strip().lower() == "red"]
        lim["red_urgency"] = {"count": len(red), "ids": red}
    location = test.extras.get("location")
    if location is None:
        lim.update(body_sites=None, body_sites_reason="the cache has no location extras")
    else:
        counts = Counter(str(v).strip() or "not recorded" for v in location)
        lim["body_sites"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {**lim, "caveats": list(FIXED_CAVEATS)}


def _alternative(runs: Mapping[str, MethodRun], macro: Mapping[str, dict]) -> tuple[str, str, bool]:
    """(the method the MLP is held against, why that one, whether it is a fine-tune)."""
    others = [n for n in runs if n != MLP]
    ft = [n for n in others if n.lower().replace("_", "-").startswith((FINETUNE, "fine-tune"))]
    if ft:
        return ft[0], "the fine-tune", True
    est = [n for n in others if macro[n]["value"] is not None]
    alt = max(est, key=lambda n: macro[n]["value"]) if est else others[0]
    return alt, "the best alternative present (no fine-tune predictions were given)", False


def _answer(result: dict, runs: Mapping[str, MethodRun], n_test: int) -> dict[str, Any]:
    """The plain-words answer: MLP vs the fine-tune (or the best alternative present)."""
    macro = result["macro_auc"]
    if MLP not in runs:
        return {"text": "The MLP was not run, so the report cannot answer how it compares.", "alternative": None}
    if len(runs) == 1:
        e = macro[MLP]
        return {"alternative": None,
                "text": f"Only the MLP was scored: macro ROC AUC {fmt_est(e)} on n={e['n']} test images. "
                "Add a probe, zero-shot or a fine-tune's predictions to compare."}
    alt, why, is_ft = _alternative(runs, macro)
    comp = next(c for c in result["comparisons"] if c["a"] == MLP and c["b"] == alt)
    d, em, ea = comp["macro"], macro[MLP], macro[alt]
    if d.get("value") is None or em["value"] is None:
        return {"alternative": alt, "text": f"Macro AUC is not estimable on this test split ({em.get('reason')})."}
    if d["low"] > 0:
        verdict = f"the MLP ranks these test images better than {alt}; the interval of the difference lies above zero"
    elif d["high"] < 0:
        verdict = f"{alt} ranks these test images better than the MLP; the interval of the difference lies below zero"
    else:
        verdict = (
            "the interval of the difference includes zero, so this test split cannot tell the two apart; "
            f"a true difference anywhere from {d['low']:+.3f} to {d['high']:+.3f} is consistent with these images"
        )
    per = comp["per_label"]
    clear = [lab for lab, x in per.items() if x.get("value") is not None and (x["low"] > 0 or x["high"] < 0)]
    mlp_text = fmt_ci(em, f"n={em['n']} images; mean over {len(em.get('labels') or [])} estimable labels")
    alt_text = fmt_ci(ea, f"n={ea['n']}")
    delta_text = fmt_ci(d, f"n={d['n']}; the same resampled images for both", signed=True)
    text = (
        f"On the same {n_test} test images, the cheap MLP on frozen embeddings reaches a macro ROC AUC of "
        f"{mlp_text}, against {alt_text} for {alt}, {why}. The paired difference "
        f"MLP - {alt} is {delta_text}: {verdict}. Per label, the difference's interval excludes zero for "
        f"{len(clear)} of {len(per)} labels" + (f" ({', '.join(clear)})." if clear else ".")
    )
    return {"alternative": alt, "alternative_is_finetune": is_ft, "macro_delta": d, "text": text,
            "labels_with_clear_difference": clear}


def report_data(
    *, data: EmbeddingSet, cache_name: str, runs: Mapping[str, MethodRun], skipped: Mapping[str, str],
    result: dict, n_boot: int, seed: int, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the report says, JSON-ready (it is ``metrics.json``; ``timing`` is added by the
    runner). ``extra``: the runner's further sections (headline, calibration, leakage, deploy,
    seed_spread, curve ...), merged in."""
    prov = dict(data.provenance or {})
    prov.pop("label_schema", None)  # long; the schema is in the cache itself
    methods = {n: {"description": r.description, "origin": r.origin, "threshold_rule": r.threshold_rule,
                   "thresholds": r.thresholds, "cost": r.cost, "notes": r.notes, "calibration": r.calibration,
                   "calibration_note": r.calibration_note} for n, r in runs.items()}
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "notice": notices(data, runs) or None,
        "question": QUESTION,
        "answer": _answer(result, runs, len(data.subset("test"))),
        "cache": {"path": cache_name, "rows": len(data), "provenance": prov},
        "label_names": list(data.label_names),
        "methods": methods,
        "skipped": dict(skipped),
        "metrics": result,
        "external_reference": EXTERNAL_REFERENCE,
        "pooling_note": POOLING_NOTE,
        "limitations": _limitations(data),
        "settings": {"n_boot": int(n_boot), "seed": int(seed)},
        "figures": {"roc": "roc.png", "reliability": "reliability.png", "forest": "forest.png"},
        **dict(extra or {}),
    }


# --- Formatting ---


def fmt_est(e: Mapping[str, Any], *, signed: bool = False, digits: int = 3) -> str:
    """'0.718 (0.620 to 0.810)'; 'not estimable (reason)' when value is None."""
    if e.get("value") is None:
        reason = str(e.get("reason") or "").replace("not estimable: ", "")
        return f"not estimable ({reason})" if reason else "not estimable"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if e.get("low") is None:
        return f.format(e["value"]) + " (no interval)"
    return f"{f.format(e['value'])} ({f.format(e['low'])} to {f.format(e['high'])})"


def fmt_ci(e: Mapping[str, Any], n_text: str, *, signed: bool = False) -> str:
    """'0.833 (95% CI 0.802 to 0.862, n=137 images)' for prose."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if e.get("low") is None:  # e.g. every macro resample lost a class of some label
        return f"{f.format(e['value'])} (no interval: no usable resample, {n_text})"
    return f"{f.format(e['value'])} (95% CI {f.format(e['low'])} to {f.format(e['high'])}, {n_text})"


def _fmt_cost(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "not reported"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}{unit}"
    return f"{v}{unit}"


# --- Content as blocks, one function per section ---


RESEARCH_USE = "Research use only. Not a medical device. The scores are not a diagnosis."


def _head(d: Mapping[str, Any]) -> list[Block]:
    b: list[Block] = [("h1", "woundscore: MLP vs probe, zero-shot and fine-tune on the same test images")]
    # one banner: the data's notices when there are any (they are stronger), else research use only
    b.append(("banner", "NOTICE: " + "; ".join(d["notice"]) if d["notice"] else RESEARCH_USE))
    b += [("h2", "The answer"), *headline_blocks(d["headline"], len(d["methods"]))]
    if d["notice"]:
        b.append(("p", RESEARCH_USE))
    b += [("p", d["question"]), ("p", d["answer"]["text"])]
    b += deploy_blocks(d.get("deploy"))
    costs = [(n, m["cost"]) for n, m in d["methods"].items() if m["cost"].get("train_seconds") is not None]
    if costs:
        b.append(("p", "Training cost (single measurements, details in the cost table): " + "; ".join(
            f"{n} {_fmt_cost(c['train_seconds'], ' s')} on {c.get('device') or 'an unreported device'}"
            for n, c in costs) + "."))
    b.append(("p", "Read the intervals, not the points: every estimate below is followed by its 95% "
                   "confidence interval in parentheses and sits in a row that gives its n."))
    return b


def _context_and_methods(d: Mapping[str, Any]) -> list[Block]:
    ext = d["external_reference"]
    items = []
    for n, m in d["methods"].items():
        text = f"{n}: {m['description']}. Source: {m['origin']}. Thresholds: {m['threshold_rule']}."
        items.append(text + (" Notes: " + "; ".join(m["notes"]) + "." if m["notes"] else ""))
    items += [f"{n}: skipped, {why}." for n, why in d["skipped"].items()]
    return [
        ("h2", "Context: the nearest public result (external, not recomputed)"),
        ("p", f"{ext['what'].capitalize()}: macro ROC AUC {ext['macro_auc']:.3f}, {ext['train_time']}; "
              f"{ext['status']}. Per label, as published (n = {ext['n_test_images']} test images; point "
              "estimates only):"),
        ("table", ["label", "published AUC (external, point only)"],
         [[lab, f"{ext['per_label_auc'][lab]:.3f}"] for lab in d["label_names"] if lab in ext["per_label_auc"]]),
        ("p", _this_split(d)),
        *leakage_blocks(d.get("leakage")),
        ("h2", "Methods"),
        ("list", items),
        ("p", "Fine-tune pooling: " + d["pooling_note"]),
    ]


def _this_split(d: Mapping[str, Any]) -> str:
    """The context line: this report's own test n (and urgency positives) beside the published 137."""
    lim, first = d["limitations"], next(iter(d["methods"]), None)
    urg = lim["labels"].get("urgency", {})
    text = (f"This report's test split: {lim['n_test_images']} images ({urg.get('positives', 0)} urgency "
            f"positives of n={urg.get('n', 0)}); the published figures above rest on "
            f"{EXTERNAL_REFERENCE['n_test_images']} images.")
    auc = d["metrics"]["per_label"].get("urgency", {}).get(first, {}).get("auc", {}) if first else {}
    if auc.get("low") is not None:
        text += (f" Here, {first}'s urgency AUC interval is {auc['high'] - auc['low']:.2f} wide: differences of a "
                 "few hundredths between the published points and ours mean little.")
    return text


def _discrimination(d: Mapping[str, Any]) -> list[Block]:
    res, methods = d["metrics"], list(d["methods"])
    macro, n_boot = res["macro_auc"], res["bootstrap"]["n_resamples"]
    b: list[Block] = [
        ("h2", "Macro ROC AUC"),
        ("p", "Mean of the per-label AUCs over the labels estimable on the test split; interval: "
              "bootstrap over images (resamples in which an averaged label lost a class are dropped; "
              "the count used is shown)."),
        ("table", ["method", "n", "labels averaged", "macro AUC (95% CI)", "resamples used"],
         [[n, str(macro[n]["n"]), str(len(macro[n].get("labels") or [])), fmt_est(macro[n]),
           str(macro[n].get("n_resamples", 0))] for n in methods]),
    ]
    thin = [n for n in methods if macro[n]["value"] is not None and macro[n].get("n_resamples", 0) < n_boot / 2]
    if thin:
        b.append(("p", "Rough intervals: the macro interval of " + ", ".join(thin) + " rests on fewer than half "
                       f"of the {n_boot} resamples (labels with very few positives often lose them all in a "
                       "resample); read it as a rough range."))
    rows = [[lab, n, str(r["n"]), str(r["positives"]), fmt_est(r["auc"]), fmt_est(r["ap"])]
            for lab in d["label_names"] for n in methods for r in [res["per_label"][lab][n]]]
    return b + [("h2", "Discrimination per label"),
                ("table", ["label", "method", "n", "positives", "ROC AUC (95% CI)", "average precision (95% CI)"],
                 rows),
                ("image", "roc.png", "ROC curves per label, all methods")] + seed_spread_blocks(d.get("seed_spread"))


def _differences(d: Mapping[str, Any]) -> list[Block]:
    res = d["metrics"]
    rows = []
    for c in res["comparisons"]:
        name = f"{c['a']} - {c['b']}"
        for lab in d["label_names"]:
            x = c["per_label"][lab]
            rows.append([name, lab, str(x["n"]), str(res["per_label"][lab][c["a"]]["positives"]),
                         fmt_est(x, signed=True)])
        x = c["macro"]
        rows.append([name, f"macro ({len(x.get('labels') or [])} labels)", str(x["n"]), "-", fmt_est(x, signed=True)])
    table = (("table", ["comparison", "label", "n", "positives", "ΔAUC (95% CI)"], rows) if rows
             else ("p", "Only one method was scored: nothing to compare."))
    return [
        ("h2", "Paired differences (ΔAUC)"),
        ("p", "A - B on the same resampled test images (stratified per label; images for the macro); "
              "an interval that excludes 0 means the test split tells the two apart."),
        table,
        ("image", "forest.png", "Forest plot of paired ΔAUC with 95% CIs"),
    ]


def _operating_points(d: Mapping[str, Any]) -> list[Block]:
    res = d["metrics"]
    per = [(lab, n, res["per_label"][lab][n]) for lab in d["label_names"] for n in d["methods"]]
    ops = [[lab, n, point, f"{op['threshold']:.3f}", str(r["n"]), str(r["positives"]), fmt_est(op["sensitivity"]),
            str(r["negatives"]), fmt_est(op["specificity"])]
           for lab, n, r in per for point, op in r["operating_points"].items()]
    return [
        ("h2", "Operating points"),
        ("p", "Sensitivity and specificity of the calibrated scores at 0.5 and at the threshold chosen "
              "on the calibrated validation scores (rule in Methods); intervals: Wilson score. "
              "Sensitivity rests on the positives, specificity on the negatives."),
        ("table", ["label", "method", "operating point", "threshold", "n", "positives",
                   "sensitivity (95% CI)", "negatives", "specificity (95% CI)"], ops),
    ]


def _cost(d: Mapping[str, Any]) -> list[Block]:
    rows = []
    for n, m in d["methods"].items():
        c = m["cost"]
        mem = _fmt_cost(c.get("peak_memory_mb"), " MiB")
        if c.get("peak_memory_mb") is not None and c.get("memory_kind") != MEMORY_KIND:
            # another measure (e.g. a GPU's max allocated): shown, but marked as not comparable
            mem = f"not comparable: {mem} ({c.get('memory_kind') or 'kind not reported'})"
        rows.append([n, _fmt_cost(c.get("device")), _fmt_cost(c.get("train_seconds"), " s"), mem,
                     _fmt_cost(c.get("trainable_params")), _fmt_cost(c.get("inference_ms_per_image"), " ms", 3)])
    return [
        ("h2", "Cost"),
        ("p", "Single measurements on the machine that ran each method (not statistical estimates, "
              f"so no interval). Peak memory is one measure for every method: the {MEMORY_KIND}; a "
              "predictions file's sidecar that measured something else is marked not comparable. "
              "Train time of the heads trained here includes calibration, thresholds and saving the "
              "model folder."),
        ("table", ["method", "device", "train time", "peak memory", "trainable parameters", "inference per image"],
         rows),
    ]


def _limitations_blocks(lim: Mapping[str, Any]) -> list[Block]:
    b: list[Block] = [
        ("h2", "Limitations"),
        ("p", f"Test split: {lim['n_test_images']} images ({lim['n_train_images']} train, "
              f"{lim['n_val_images']} val). Observed labels per label in test:"),
        ("table", ["label", "n", "positives", "negatives", "missing (masked)"],
         [[lab, str(x["n"]), str(x["positives"]), str(x["negatives"]), str(x["missing"])]
          for lab, x in lim["labels"].items()]),
    ]
    red = lim.get("red_urgency")
    if red is None:
        b.append(("p", f"Red (emergency) urgency cases in test: unknown ({lim.get('red_urgency_reason')})."))
    else:
        ids = red["ids"]
        shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
        b.append(("p", f"Red (emergency) urgency cases in test: {red['count']}"
                       + (f" (image ids: {shown})" if ids else "") + ". Few Red cases mean the urgency "
                       "metrics say little about the cases that matter most."))
    sites = lim.get("body_sites")
    if sites is None:
        b.append(("p", f"Body sites in test: unknown ({lim.get('body_sites_reason')})."))
    else:
        b.append(("p", "Body sites in test: " + ", ".join(f"{k} {v}" for k, v in sites.items()) + "."))
    lacking = [lab for lab, x in lim["labels"].items() if one_class_reason(x["n"], x["positives"])]
    if lacking:
        b.append(("p", "Not estimable on this test split (one class only): " + ", ".join(lacking) + "."))
    return b + [("list", list(lim["caveats"]))]


def _how(d: Mapping[str, Any]) -> list[Block]:
    boot, prov = d["metrics"]["bootstrap"], d["cache"]["provenance"]
    return [
        ("h2", "How the numbers were computed"),
        ("list", [
            f"{boot['n_resamples']} bootstrap resamples, seed {boot['seed']}, 95% percentile intervals.",
            f"Per label: {boot['per_label']}. Macro: {boot['macro']}. Paired differences: {boot['paired']}.",
            f"Sensitivity and specificity: {boot['sensitivity_specificity']}.",
            f"Calibration: {boot['ece_note']}.",
            "Unsure or missing labels (-1) are masked per label, never guessed; n counts observed labels.",
            "A label whose test split holds one class only is reported as not estimable, never as 0.",
        ]),
        ("p", f"Cache: {d['cache']['path']} ({d['cache']['rows']} rows); encoder "
              f"{prov.get('encoder_id', 'unknown')} (revision {prov.get('encoder_revision', 'unknown')}), "
              f"created {prov.get('created', 'unknown')}. Report written in "
              f"{d.get('timing', {}).get('total_seconds', 0) or 0:.1f} s."),
    ]


def build_document(d: Mapping[str, Any], extra_blocks: list[Block] | None = None) -> list[Block]:
    """The report (``report_data``'s dict ``d``) as blocks, section by section, answer first;
    ``extra_blocks`` (e.g. the learning curve's section) go before the limitations."""
    return [*_head(d), *_context_and_methods(d), *_discrimination(d), *_differences(d),
            *excluded_blocks(d.get("excluded_leaked"), d["label_names"], fmt_est), *_operating_points(d), *calibration_blocks(d, fmt_est), *_cost(d), *(extra_blocks or []),
            *_limitations_blocks(d["limitations"]), *_how(d)]
