"""A refusal skips a report part with its reason; a bug is not dressed up as a refusal.

Issue 16, finding 9: the zero-shot runner used to catch every exception, so a programming error in
zero-shot scoring (a TypeError, an IndexError) showed up as "zero-shot: skipped" and the report
still exited 0. Catches: widening the except clause in compare/report.py back to ``Exception``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_report import make_set
from woundscore.compare import report as report_mod
from woundscore.compare.predictions import write_predictions
from woundscore.compare.report import run_comparison
from woundscore.embed.runtime import EncoderLoadError


def _run(tmp_path, monkeypatch, exc: Exception):
    es, _ = make_set(n_train=20, n_val=10, n_test=12, seed=4)
    test = es.subset("test")
    p = write_predictions(tmp_path / "a.csv", test.ids, np.random.default_rng(0).random((len(test), 6)))

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(report_mod, "zero_shot_method", boom)
    return run_comparison(es, tmp_path / "out", source=tmp_path, model="some/model", predictions={"a": p},
                          methods=(), n_boot=100, quiet=True)


def test_a_named_refusal_skips_zero_shot_with_its_reason(tmp_path, monkeypatch):
    res = _run(tmp_path, monkeypatch, EncoderLoadError("some/model: gated, accept the terms"))
    assert res.metrics["skipped"]["zero-shot"] == "EncoderLoadError: some/model: gated, accept the terms"


def test_a_bug_in_zero_shot_is_raised_not_reported_as_skipped(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="unsupported operand"):
        _run(tmp_path, monkeypatch, TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
    assert not (tmp_path / "out").exists()  # all-or-nothing: no half report left behind
