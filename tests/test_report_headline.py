"""The report's first section names the best method by macro AUC (with its CI) and the direction of
every distinguishable per-label difference; the presentation fixes of issue 13 section 4."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from woundscore.compare.report import run_comparison
from tests.test_report import make_set, md_tables, write_external


@pytest.fixture(scope="module")
def probe_wins(tmp_path_factory):
    """The probe is planted to win: a linear signal it learns, an MLP that barely trains (tiny
    learning rate, one epoch) and an external method that scores mostly noise."""
    tmp = tmp_path_factory.mktemp("headline")
    es, z = make_set(n_train=200, n_val=60, n_test=90, seed=11, notice="synthetic: means nothing clinically")
    noisy = write_external(tmp / "noisy.csv", es, z, noise=4.0, seed=3)
    res = run_comparison(es, tmp / "out", predictions={"noisy": noisy}, n_boot=300, seed=0, quiet=True,
                         zero_shot=False, mlp_params={"max_epochs": 1, "learning_rate": 1e-7, "patience": 1})
    return res, es


def _first_section(md: str) -> str:
    return md.split("\n## ", 2)[1]


def test_first_section_names_the_best_method_with_its_ci(probe_wins):
    res, _ = probe_wins
    macro = res.metrics["metrics"]["macro_auc"]
    best = max((n for n in macro if macro[n]["value"] is not None), key=lambda n: macro[n]["value"])
    assert best == "probe"
    head = res.metrics["headline"]
    assert head["best"] == "probe"
    first = _first_section((res.out_dir / "report.md").read_text())
    e = macro["probe"]
    assert (f"Best by macro ROC AUC: probe, {e['value']:.3f} (95% CI {e['low']:.3f} to {e['high']:.3f}, "
            f"n={e['n']} images)") in first


def test_every_distinguishable_difference_is_named_with_its_direction(probe_wins):
    res, es = probe_wins
    head = res.metrics["headline"]
    comps = head["comparisons"]
    methods = list(res.metrics["methods"])
    # every pair of methods is compared, once
    assert sorted((c["a"], c["b"]) for c in comps) == sorted(
        (a, b) for i, a in enumerate(methods) for b in methods[i + 1:])
    expected = set()
    for c in comps:
        for lab, x in c["per_label"].items():
            if x.get("low") is None:
                continue
            if x["low"] > 0:
                expected.add((c["a"], c["b"], lab))
            elif x["high"] < 0:
                expected.add((c["b"], c["a"], lab))
    got = {(d["better"], d["worse"], d["label"]) for d in head["differences"]}
    assert got == expected and expected
    assert any(b == "probe" and w == "mlp" for b, w, _ in got)
    assert not any(b == "mlp" and w == "probe" for b, w, _ in got)
    first = _first_section((res.out_dir / "report.md").read_text())
    for d in head["differences"]:
        assert d["delta"] > 0 and d["low"] > 0  # stated from the better method's side
        line = (f"{d['better']} better than {d['worse']} on {d['label']}: {d['delta']:+.2f}, "
                f"CI {d['low']:+.2f} to {d['high']:+.2f} (n={d['n']})")
        assert line in first, line


def test_one_banner_with_every_notice(probe_wins):
    res, _ = probe_wins
    md = (res.out_dir / "report.md").read_text()
    page = (res.out_dir / "report.html").read_text()
    assert page.count('class="banner"') == 1
    assert sum(1 for line in md.splitlines() if line.startswith("> **")) == 1
    assert "NOTICE: synthetic: means nothing clinically" in md.split("\n## ")[0]


def test_no_literal_backticks_in_the_html(probe_wins):
    res, _ = probe_wins
    assert "`" not in (res.out_dir / "report.html").read_text()


def test_figures_are_at_least_150_dpi(probe_wins):
    from PIL import Image

    for name in ("roc.png", "reliability.png", "forest.png"):
        with Image.open(res_dir(probe_wins) / name) as im:
            assert min(im.info["dpi"]) >= 149.9, name


def res_dir(probe_wins):
    return probe_wins[0].out_dir


def test_context_names_the_real_test_n(probe_wins):
    res, es = probe_wins
    md = (res.out_dir / "report.md").read_text()
    context = md.split("## Context", 1)[1].split("\n## ", 1)[0]
    n_test = int((es.split == "test").sum())
    pos = int((es.subset("test").Y[:, 4] == 1).sum())
    assert f"This report's test split: {n_test} images" in context
    assert f"{pos} urgency positives" in context
    assert "With 16 urgency positives in the public test split" not in context or "137" in context


def test_cost_table_uses_one_memory_measure(probe_wins):
    res, _ = probe_wins
    kinds = {m["cost"].get("memory_kind") for n, m in res.metrics["methods"].items() if n in ("probe", "mlp")}
    assert len(kinds) == 1 and "peak RSS of the work" in kinds.pop()
    md = (res.out_dir / "report.md").read_text()
    cost = next(rows for header, rows in md_tables(md) if header[0] == "method" and "device" in header)
    header = next(h for h, _ in md_tables(md) if h[0] == "method" and "device" in h)
    col = header.index("peak memory")
    assert re.fullmatch(r"[\d.]+ MiB", next(r for r in cost if r[0] == "probe")[col])
    assert "peak RSS of the work" in md.split("## Cost", 1)[1].split("\n## ", 1)[0]


def test_forest_plot_notice_overlaps_no_other_text(tmp_path, monkeypatch):
    """Every text drawn in a figure (tick labels, axis labels, titles) keeps clear of the notice."""
    from matplotlib.figure import Figure

    from woundscore.compare import plots

    figs = []
    real = Figure.savefig

    def spy(self, *a, **k):
        figs.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    es, z = make_set(seed=2, notice="random weights, generated images, " * 8)
    p = write_external(tmp_path / "x.csv", es, z)
    q = write_external(tmp_path / "y.csv", es, z, noise=2.0)
    run_comparison(es, tmp_path / "out", predictions={"ext": p, "other": q}, methods=(), zero_shot=False,
                   n_boot=100, quiet=True)
    assert len(figs) == 3
    for fig in figs:
        r = fig.canvas.get_renderer()
        notices = [t for t in fig.texts if t.get_text().startswith("NOTICE")]
        assert len(notices) == 1
        # matplotlib's wrap=True re-wraps at draw time and its measured extent is then not what is
        # drawn (the old notice overlapped the forest's axis label so): the notice comes pre-wrapped
        assert not notices[0].get_wrap()
        box = notices[0].get_window_extent(r)
        assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.width + 1
        others = [t for ax in fig.axes if ax.get_visible()
                  for t in [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.get_xticklabels(), *ax.get_yticklabels()]
                  if t.get_text()]
        for t in others:
            assert not box.overlaps(t.get_window_extent(r)), (t.get_text(), plots.__name__)
        if fig._suptitle is not None:  # the figure's title clears every panel title
            top = fig._suptitle.get_window_extent(r)
            for ax in fig.axes:
                if ax.get_visible() and ax.title.get_text():
                    assert not top.overlaps(ax.title.get_window_extent(r)), (fig._suptitle.get_text(), ax.title.get_text())
