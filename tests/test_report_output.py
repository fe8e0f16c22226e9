"""Issue 14 section 4 for the compare stage: the report folder is whole or absent, outputs are
checked writable before compute, zero-shot refuses a source whose images are not the cache's,
predictions CSVs are spreadsheet-safe and keep ids verbatim, and human-readable text escapes
control characters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.types import EmbeddingSet
from woundscore.compare import report as report_mod
from woundscore.compare.predictions import read_predictions, write_predictions
from woundscore.compare.report import ReportError, run_comparison
from tests.test_report import make_set, write_external


def _ext_run(tmp_path, out, es=None, z=None, **kw):
    if es is None:
        es, z = make_set(seed=7)
    p = write_external(tmp_path / "x.csv", es, z)
    return run_comparison(es, out, predictions={"ext": p}, methods=(), zero_shot=False, n_boot=100, quiet=True, **kw)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_run_leaves_the_earlier_report_untouched_and_no_debris(tmp_path, monkeypatch):
    out = tmp_path / "report"
    _ext_run(tmp_path, out)
    before = _snapshot(out)

    def boom(*a, **k):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(report_mod.plots, "plot_forest", boom)
    es, z = make_set(seed=8)  # other data: every file the failed run could write would differ
    with pytest.raises(RuntimeError, match="disk full"):
        _ext_run(tmp_path, out, es, z)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "x.csv"]  # no half-built folder beside it


def test_a_rerun_replaces_the_report_as_a_whole(tmp_path):
    out = tmp_path / "report"
    _ext_run(tmp_path, out)
    (out / "stale.png").write_bytes(b"old")
    _ext_run(tmp_path, out)
    assert not (out / "stale.png").exists() and (out / "report.html").is_file()


@pytest.mark.parametrize("setup, message", [
    ("file", "exists and is not a folder"),
    ("foreign", "holds no earlier report"),
    ("under_file", "cannot write the report there"),
])
def test_unwritable_output_is_refused_before_any_compute(tmp_path, monkeypatch, setup, message):
    def no_compute(*a, **k):
        raise AssertionError("computed before checking the output")

    monkeypatch.setattr(report_mod, "_external_runs", no_compute)
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("x")
    elif setup == "foreign":
        out.mkdir()
        (out / "thesis.docx").write_text("mine")
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    es, z = make_set(seed=7)
    with pytest.raises(ReportError, match=message):
        run_comparison(es, out, predictions={"ext": tmp_path / "nope.csv"}, methods=(), zero_shot=False, quiet=True)
    if setup == "foreign":
        assert (out / "thesis.docx").read_text() == "mine"


def test_zero_shot_output_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    from woundscore.compare import zeroshot
    from woundscore.compare.predictions import PredictionsError

    monkeypatch.setattr(zeroshot, "zero_shot_source", lambda *a, **k: pytest.fail("scored before the check"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(PredictionsError, match="cannot write there"):
        zeroshot.run_zero_shot(tmp_path, tmp_path / "f" / "zs.csv", quiet=True)
    with pytest.raises(PredictionsError, match="is a folder"):
        zeroshot.run_zero_shot(tmp_path, tmp_path, quiet=True)


def test_zero_shot_refuses_a_source_whose_images_are_not_the_caches(tmp_path, mini_release):
    from woundscore.embed.sources import open_source

    samples = open_source(mini_release).samples()
    ids = [s.image_id for s in samples]
    splits = {s.image_id: s.split for s in samples}
    n = len(ids)
    rng = np.random.default_rng(0)
    sha = np.array(["0" * 64] * n)  # the cache says these ids had other bytes
    es = EmbeddingSet(ids=np.array(ids), X=rng.normal(size=(n, 8)).astype(np.float32),
                      Y=rng.integers(0, 2, size=(n, 6)).astype(np.int8),
                      split=np.array([splits[i] or "test" for i in ids]), sha256=sha,
                      extras={}, provenance={"encoder_id": "x", "encoder_revision": "r"})
    with pytest.raises(ReportError, match=r"differ from the cache's \(sha256 per id\)"):
        run_comparison(es, tmp_path / "out", source=mini_release, model="any-model", methods=(),
                       predictions={}, quiet=True)
    assert not (tmp_path / "out").exists()


FORMULAS = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "'quoted", "\tTAB", " padded.jpg ", "tail.jpg "]


def test_predictions_neutralise_formulas_and_keep_ids_verbatim(tmp_path):
    P = np.full((len(FORMULAS), 6), 0.5)
    path = write_predictions(tmp_path / "p.csv", FORMULAS, P)
    cells = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]
    for cell in cells:
        assert not cell.lstrip('"').startswith(("=", "+", "-", "@", "\t")), cell
    ids, back = read_predictions(path)
    assert list(ids) == FORMULAS and np.array_equal(back, P)


def test_a_report_of_ids_with_spaces_matches_them(tmp_path):
    es, z = make_set(seed=8)
    ids = es.ids.astype(object)
    test_rows = np.flatnonzero(es.split == "test")
    ids[test_rows[0]] = " lead.jpg"
    ids[test_rows[1]] = "=cmd.jpg"
    es = EmbeddingSet(ids.astype(str), es.X, es.Y, es.split, es.sha256, es.extras, es.schema, es.provenance)
    res = _ext_run(tmp_path, tmp_path / "out", es, z)
    assert res.metrics["metrics"]["macro_auc"]["ext"]["n"] == len(test_rows)


def test_human_readable_output_escapes_control_characters(tmp_path):
    from woundscore.compare.render import printable

    assert printable("a\x1b[31mred\x07\u202e") == "a\\x1b[31mred\\x07\\u202e"
    evil_id, evil_notice = "img\x1b[2J.jpg", "demo\x1b]0;owned\x07 data"
    es, z = make_set(seed=9, notice=evil_notice)
    ids = es.ids.astype(object)
    first_test = int(np.flatnonzero(es.split == "test")[0])
    ids[first_test] = evil_id
    urgency = es.extras["urgency_level"].copy()
    urgency[first_test] = "Red"
    es = EmbeddingSet(ids.astype(str), es.X, es.Y, es.split, es.sha256, {**es.extras, "urgency_level": urgency},
                      es.schema, es.provenance)
    _ext_run(tmp_path, tmp_path / "out", es, z)
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert "\x1b" not in text and "\x07" not in text, name
        assert "img\\x1b[2J.jpg" in text.replace("\\\\", "\\").replace("\\[", "["), name
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["notice"] == [evil_notice]  # data kept as is


def test_cli_answer_line_is_escaped(tmp_path, monkeypatch):
    from woundscore.compare.cli import cli

    class R:
        metrics = {"answer": {"text": "answer \x1b[31m"}, "deploy": {"command": "wound-serve x\x1b", "deployable": "p"}}
        files = {"report.html": tmp_path / "r.html", "report.md": tmp_path / "r.md"}

    monkeypatch.setattr(report_mod, "run_comparison", lambda *a, **k: R())
    cache = tmp_path / "c.h5"
    cache.write_text("x")
    r = CliRunner().invoke(cli, ["run", str(cache), "--out", str(tmp_path / "o")], catch_exceptions=False)
    assert r.exit_code == 0 and "\x1b" not in r.output and "answer \\x1b[31m" in r.output
