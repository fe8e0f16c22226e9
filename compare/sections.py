"""The report's smaller sections, as data and as blocks: the leakage audit (and the metrics without
the leaked test images), the one command that deploys the best method, and the MLP's seed spread.

Blocks are the tuples of :mod:`woundscore.compare.document`; all text is plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.types import EmbeddingSet

#: Leaked pairs listed in the report's text; metrics.json ("leakage") holds every pair.
SHOWN_PAIRS = 20


def leakage_data(data: EmbeddingSet) -> dict[str, Any]:
    """``cache.leakage.audit_leakage`` of the cache as JSON (every pair, the leaked test ids)."""
    from woundscore.cache.leakage import audit_leakage

    # the near-duplicate cut-off means something only for a trained encoder (README, "Leakage audit")
    return {**audit_leakage(data).to_json(), "embeddings_notice": data.provenance.get("notice") or None}


def leakage_blocks(lk: Mapping[str, Any] | None) -> list[tuple]:
    """The context section's leakage paragraph: "k of n test images have an exact/near duplicate
    in train/val", then the pairs (at most SHOWN_PAIRS of each kind)."""
    if lk is None:
        return []
    c = lk["counts"]
    k, n, cut = c["leaked_test"], c["test_rows"], lk["near_cutoff"]
    text = (f"Leakage audit: {k} of {n} test images have an exact or near duplicate (same bytes, or "
            f"embedding cosine >= {cut}) in train/val; {c['exact']} exact and {c['near']} near duplicate "
            f"pair(s) across splits, {c['conflicts']} duplicate pair(s) within a split with conflicting labels.")
    text += (" The near cut-off is not yet validated on MedSigLIP embeddings of SurgWound; exact pairs do not "
             "depend on it.")
    if lk.get("embeddings_notice"):  # e.g. the demo's random weights: different images look alike
        text += " These embeddings carry a notice (see the banner): near pairs from them are noise."
    if k:
        text += (" Scores on those images may measure memory rather than skill; "
                 "wound-compare run --exclude-leaked reports the test metrics without them as well.")
    items = []
    for kind, sign in (("exact", "="), ("near", "~"), ("conflicts", "vs")):
        pairs = lk[kind]
        items += [f"{kind}: {p['id_a']} ({p['split_a']}) {sign} {p['id_b']} ({p['split_b']}), cosine {p['cosine']:.4f}"
                  for p in pairs[:SHOWN_PAIRS]]
        if len(pairs) > SHOWN_PAIRS:
            items.append(f"... {len(pairs) - SHOWN_PAIRS} more {kind} pair(s): the full list is in metrics.json "
                         "under leakage")
    return [("p", text)] + ([("list", items)] if items else [])


def excluded_blocks(ex: Mapping[str, Any] | None, label_names: Sequence[str], fmt_est: Any) -> list[tuple]:
    """The metrics on the test images without a duplicate in train/val (``--exclude-leaked``)."""
    if ex is None:
        return []
    head = [("h2", "Without the leaked test images"),
            ("p", f"The same methods (same calibration and thresholds) on the {ex['n_test_images']} test images "
                  f"left after removing the {ex['n_excluded']} with an exact or near duplicate in train/val.")]
    if ex.get("metrics") is None:
        return head + [("p", f"Not computed: {ex['reason']}.")]
    res = ex["metrics"]
    macro = res["macro_auc"]
    return head + [
        ("table", ["method", "n", "macro AUC (95% CI)"],
         [[n, str(e["n"]), fmt_est(e)] for n, e in macro.items()]),
        ("table", ["label", "method", "n", "positives", "ROC AUC (95% CI)"],
         [[lab, n, str(r["n"]), str(r["positives"]), fmt_est(r["auc"])]
          for lab in label_names for n, r in res["per_label"][lab].items()]),
    ]


def deploy_data(best: str | None, model_dirs: Mapping[str, Path], finetune_dir: Any, finetune_name: str | None,
                macro_order: Sequence[str]) -> dict[str, Any]:
    """The best deployable method and its one command. ``model_dirs``: method -> saved model folder;
    the fine-tune deploys from its own output folder; zero-shot and other predictions files have
    no model folder (the next deployable method by macro AUC is named instead)."""
    folders = {n: str(p) for n, p in model_dirs.items()}
    note = None
    if finetune_dir is not None and finetune_name:
        if (Path(finetune_dir) / "provenance.json").is_file():  # a model folder (wound-compare finetune)
            folders[finetune_name] = str(finetune_dir)
        else:
            note = f"{finetune_dir} holds predictions but no model folder, so it cannot be served"
    deployable = [n for n in macro_order if n in folders]
    pick = deployable[0] if deployable else None
    return {"best": best, "deployable": pick, "command": f"wound-serve {folders[pick]}" if pick else None,
            "folders": folders, "note": note}


def deploy_blocks(dp: Mapping[str, Any] | None) -> list[tuple]:
    if not dp:
        return []
    if dp["command"] is None:
        return [("p", "Deploy: none of the methods scored here has a model folder to serve (train the probe or "
                      "the MLP here, or pass --finetune-dir).")]
    lead = (f"Deploy the best method ({dp['best']}) with one command: {dp['command']}" if dp["deployable"] == dp["best"]
            else f"The best method ({dp['best']}) has no model folder here; the best deployable one is "
                 f"{dp['deployable']}: {dp['command']}")
    others = [f"{n}: wound-serve {p}" for n, p in dp["folders"].items() if n != dp["deployable"]]
    text = lead + (". Other model folders: " + "; ".join(others) + "." if others else ".")
    return [("p", text + (f" Note: {dp['note']}." if dp.get("note") else ""))]


def seed_spread(member_val: np.ndarray | None, member_test: np.ndarray | None, Y_val: np.ndarray,
                Y_test: np.ndarray, *, source: str, reason: str = "") -> dict[str, Any]:
    """The MLP's spread over seeds: each member's val and test macro AUC (raw scores; calibration
    is monotone per label, so AUC is unchanged). ``member_*``: (m, n, 6) or None (then
    ``reason`` says why nothing was measured); ``source``: which members these are."""
    from woundscore.classify.metrics import macro_auc

    if member_test is None:
        return {"available": False, "reason": reason}

    def summary(members: np.ndarray | None, Y: np.ndarray) -> dict[str, Any]:
        aucs = [] if members is None else [macro_auc(Y, P) for P in members]
        vals = np.array([a for a in aucs if a is not None], dtype=np.float64)
        return {"macro_auc": aucs, "min": float(vals.min()) if vals.size else None,
                "max": float(vals.max()) if vals.size else None,
                "sd": float(vals.std(ddof=1)) if vals.size > 1 else None}

    return {"available": True, "members": int(len(member_test)), "source": source,
            "val": summary(member_val, Y_val), "test": summary(member_test, Y_test)}


def seed_spread_blocks(s: Mapping[str, Any] | None) -> list[tuple]:
    if not s:
        return []
    if not s["available"]:
        return [("p", f"MLP seed spread: not measured ({s['reason']}).")]

    def part(x: Mapping[str, Any], split: str) -> str:
        if not x["macro_auc"]:
            return f"{split}: not measured"
        if x["min"] is None:
            return f"{split}: not estimable"
        sd = "" if x["sd"] is None else f", sd {x['sd']:.3f}"
        return f"{split} macro ROC AUC {x['min']:.3f} to {x['max']:.3f}{sd}"

    return [("p", f"MLP seed spread over {s['members']} seeds ({s['source']}): {part(s['test'], 'test')}; "
                  f"{part(s['val'], 'val')} (point values per seed; the interval of the mlp rows above covers "
                  "test sampling only). One training run's AUC is partly this luck.")]
