"""The report's leakage audit (and --exclude-leaked), the deploy line with the saved model folders,
the MLP's seed spread and the learning-curve section (run --curve)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.types import EmbeddingSet
from tests.test_report import make_set, md_tables, write_external

N_EXACT, N_NEAR = 3, 2


def leaky_set():
    """make_set with the first N_EXACT test rows exact copies of train rows (same bytes) and the
    next N_NEAR near copies (other bytes, embedding nudged by 1e-3)."""
    es, z = make_set(n_train=160, n_val=50, n_test=60, seed=12)
    X, sha, ids = es.X.copy(), es.sha256.copy(), es.ids
    test = np.flatnonzero(es.split == "test")
    train = np.flatnonzero(es.split == "train")
    for k in range(N_EXACT + N_NEAR):
        t, s = test[k], train[k]
        X[t] = X[s] + (1e-3 if k >= N_EXACT else 0.0)
        if k < N_EXACT:
            sha[t] = sha[s]
        z[t] = z[s]
    leaked = {str(ids[test[k]]) for k in range(N_EXACT + N_NEAR)}
    return EmbeddingSet(ids, X, es.Y, es.split, sha, es.extras, es.schema, es.provenance), z, leaked


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from woundscore.compare.report import run_comparison

    tmp = tmp_path_factory.mktemp("sections")
    es, z, leaked = leaky_set()
    ft = write_external(tmp / "ft" / "predictions.csv", es, z, split=("val", "test"), noise=0.2)
    res = run_comparison(es, tmp / "out", finetune_dir=ft.parent, zero_shot=False, n_boot=200, quiet=True,
                         mlp_params={"max_epochs": 20, "patience": 5}, seeds=3, exclude_leaked=True,
                         curve={"fractions": (0.5, 1.0), "repeats": 2, "mlp_params": {"max_epochs": 10, "patience": 3}})
    return res, es, leaked, tmp


def test_context_says_how_many_test_images_leak_and_lists_the_pairs(full):
    res, es, leaked, _ = full
    lk = res.metrics["leakage"]
    assert set(lk["leaked_test_ids"]) == leaked
    assert lk["counts"]["exact"] >= N_EXACT and lk["counts"]["near"] >= N_NEAR
    md = (res.out_dir / "report.md").read_text()
    context = md.split("## Context", 1)[1].split("\n## ", 1)[0]
    n_test = int((es.split == "test").sum())
    assert f"Leakage audit: {len(leaked)} of {n_test} test images have an exact or near duplicate" in context
    for p in lk["exact"]:
        assert f"exact: {p['id_a']} ({p['split_a']}) = {p['id_b']} ({p['split_b']})" in context


def test_exclude_leaked_reports_the_metrics_without_them(full):
    res, es, leaked, _ = full
    ex = res.metrics["excluded_leaked"]
    n_test = int((es.split == "test").sum())
    assert ex["n_excluded"] == len(leaked) and ex["n_test_images"] == n_test - len(leaked)
    assert all(e["n"] == n_test - len(leaked) for e in ex["metrics"]["macro_auc"].values())
    md = (res.out_dir / "report.md").read_text()
    assert "## Without the leaked test images" in md
    rows = next(r for h, r in md_tables(md) if h == ["method", "n", "macro AUC (95% CI)"])
    assert {r[1] for r in rows} == {str(n_test - len(leaked))}


def test_the_report_names_the_one_command_that_deploys_the_best(full):
    from woundscore.classify.artifacts import load_model_dir

    res, _, _, tmp = full
    dp = res.metrics["deploy"]
    macro = res.metrics["metrics"]["macro_auc"]
    order = sorted(macro, key=lambda n: -macro[n]["value"])
    assert dp["best"] == order[0] == res.metrics["headline"]["best"] == "finetune"  # planted: low noise
    # ft/ holds predictions only (no provenance.json): the best deployable one is a saved head
    pick = next(n for n in order if n in ("probe", "mlp"))
    folder = str(res.out_dir / "models" / pick)
    assert dp["deployable"] == pick and dp["command"] == f"wound-serve {folder}"
    first = (res.out_dir / "report.md").read_text().split("\n## ", 2)[1].replace("\\", "")
    assert f"The best method (finetune) has no model folder here; the best deployable one is {pick}: wound-serve {folder}" in first
    assert "holds predictions but no model folder" in first
    assert load_model_dir(res.out_dir / "models" / "probe").kind == "logreg"
    assert load_model_dir(res.out_dir / "models" / "mlp").kind == "mlp"


def test_the_report_shows_the_mlps_seed_spread(full):
    res, _, _, _ = full
    s = res.metrics["seed_spread"]
    assert s["available"] and s["members"] == 3 and len(s["test"]["macro_auc"]) == 3
    assert s["test"]["min"] <= s["test"]["max"]
    md = (res.out_dir / "report.md").read_text()
    assert "MLP seed spread over 3 seeds" in md


def test_run_curve_adds_the_learning_curve_section(full):
    res, _, _, _ = full
    md = (res.out_dir / "report.md").read_text()
    assert "## Learning curve" in md and "![" in md and "(curve.png)" in md
    assert (res.out_dir / "curve.png").is_file()
    page = (res.out_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert res.metrics["curve"]["sizes"] if isinstance(res.metrics["curve"], dict) else False


def test_cli_run_has_exclude_leaked_curve_and_seeds(tmp_path):
    from woundscore.compare.cli import cli

    out = CliRunner().invoke(cli, ["run", "--help"]).output
    for flag in ("--exclude-leaked", "--curve", "--seeds"):
        assert flag in out


def test_a_finetune_model_folder_is_the_deploy_command_when_it_wins(tmp_path):
    """ft/ that is a model folder (provenance.json, as wound-compare finetune writes) is served as is."""
    from woundscore.compare.report import run_comparison

    es, z, _ = leaky_set()
    ft = write_external(tmp_path / "ft" / "predictions.csv", es, z, split=("val", "test"), noise=0.2)
    (ft.parent / "provenance.json").write_text("{}")
    res = run_comparison(es, tmp_path / "out", finetune_dir=ft.parent, methods=("probe",), zero_shot=False,
                         n_boot=100, quiet=True)
    assert res.metrics["deploy"]["command"] == f"wound-serve {ft.parent}"
    assert f"Deploy the best method (finetune) with one command: wound-serve {ft.parent}" in \
        (res.out_dir / "report.md").read_text().replace("\\", "")
