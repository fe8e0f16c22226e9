"""The offline demo end to end on a small size: every artifact is made, every output says it used
random weights and generated images, the printed next command works, and a rerun reuses the
checkpoint, the dataset and the cache (nothing embedded twice)."""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.demo import CHECKPOINT_DIR, DEMO_NOTICE, RELEASE_DIR, DemoSettings, _reusable, run_demo

N_IMAGES = 40  # the smallest size the CLI accepts: 28 train / 4 val / 8 test


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory):
    """Two runs of the quick demo into the same folder: (first result, its printed lines, second
    result, its printed lines, the checkpoint weights' mtime after the first run)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    lines1: list[str] = []
    first = run_demo(out, quick=True, n_images=N_IMAGES, quiet=True, echo=lines1.append)
    weights_mtime = (first.checkpoint / "model.safetensors").stat().st_mtime_ns
    lines2: list[str] = []
    second = run_demo(out, quick=True, n_images=N_IMAGES, quiet=True, echo=lines2.append)
    return first, "\n".join(lines1), second, "\n".join(lines2), weights_mtime


def test_every_artifact_is_written(demo_runs) -> None:
    r, _, _, _, _ = demo_runs
    assert r.checkpoint == r.out_dir / CHECKPOINT_DIR and "RANDOM-WEIGHTS" in r.checkpoint.name
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "spiece.model", "README.md"):
        assert (r.checkpoint / f).is_file(), f
    config = json.loads((r.checkpoint / "config.json").read_text())
    assert "text_config" in config and "vision_config" in config  # both towers (zero-shot needs text)
    assert r.release == r.out_dir / RELEASE_DIR
    for s in ("train", "val", "test"):
        for k in ("question", "report"):
            assert (r.release / f"{s}_{k}.json").is_file()
    assert r.cache.is_file()
    assert (r.model_dir / "provenance.json").is_file() and (r.model_dir / "thresholds.json").is_file()
    assert (r.finetune_dir / "predictions.csv").is_file()
    for name in ("report.md", "report.html", "metrics.json", "roc.png", "reliability.png", "forest.png"):
        assert r.report_files[name].is_file() and r.report_files[name].parent == r.report_dir, name
        assert r.report_files[name].stat().st_size > 0
    assert r.example_images and all(p.is_file() and p.suffix == ".jpg" for p in r.example_images)


def test_the_report_holds_all_four_methods(demo_runs) -> None:
    r, _, _, _, _ = demo_runs
    metrics = json.loads(r.report_files["metrics.json"].read_text())
    assert set(metrics["methods"]) == {"mlp", "probe", "zero-shot", "finetune"}, metrics.get("skipped")
    from woundscore.cache import read_cache

    n_test = int((read_cache(r.cache).split == "test").sum())
    assert metrics["answer"]["macro_delta"]["n"] == n_test


def test_every_output_says_random_weights_and_generated_images(demo_runs) -> None:
    r, printed, _, _, _ = demo_runs
    assert "random weights" in DEMO_NOTICE and "generated images" in DEMO_NOTICE
    assert "nothing clinically" in DEMO_NOTICE
    md = r.report_files["report.md"].read_text(encoding="utf-8")
    assert f"NOTICE: {DEMO_NOTICE}" in md.split("## ")[0]  # a banner above the first section
    page = r.report_files["report.html"].read_text(encoding="utf-8")
    assert f'<div class="banner" role="alert">NOTICE: {html.escape(DEMO_NOTICE)}' in page  # one banner, every notice
    assert page.count('class="banner"') == 1
    assert DEMO_NOTICE in json.loads(r.report_files["metrics.json"].read_text())["notice"]
    provenance = json.loads((r.model_dir / "provenance.json").read_text())
    assert provenance["notice"] == DEMO_NOTICE
    assert r.prediction["model"]["notice"] == DEMO_NOTICE
    from woundscore.cache import read_cache

    assert read_cache(r.cache).provenance["notice"] == DEMO_NOTICE
    assert "random weights" in (r.checkpoint / "README.md").read_text().lower()
    assert DEMO_NOTICE in (r.release / "README.md").read_text()
    assert DEMO_NOTICE in (r.out_dir / "README.md").read_text()
    assert f"NOTICE: {DEMO_NOTICE}" in printed


def test_predict_json_is_the_contract(demo_runs) -> None:
    r, _, _, _, _ = demo_runs
    p = r.prediction
    assert p["image"] == str(r.example_images[0])
    assert list(p["scores"]) == list(LABEL_NAMES) == list(p["flags"]) == list(p["thresholds"])
    for name in LABEL_NAMES:
        assert 0.0 <= p["scores"][name] <= 1.0
        assert p["flags"][name] == (p["scores"][name] >= p["thresholds"][name]["value"])
    assert p["model"]["type"] == "mlp" and p["model"]["encoder_id"] == f"local/{CHECKPOINT_DIR}"


def test_printed_steps_and_next_command_work(demo_runs) -> None:
    """Headings 1..6, the report path, and a next command that `wound-classify predict` runs with
    the demo notice in its JSON."""
    r, printed, _, _, _ = demo_runs
    for k in range(1, 7):
        assert f"[{k}/6]" in printed
    assert str(r.report_files["report.html"]) in printed
    assert "The real path" in printed
    assert r.next_command in printed
    argv = shlex.split(r.next_command)
    assert argv[:2] == ["wound-classify", "predict"]
    from woundscore.classify.cli import cli as classify_cli

    res = CliRunner().invoke(classify_cli, argv[1:])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["image"] == argv[3] and out["model"]["notice"] == DEMO_NOTICE
    # the printed predict command on the first image gives what the demo printed
    res0 = CliRunner().invoke(classify_cli, ["predict", str(r.model_dir), str(r.example_images[0]),
                                             "--encoder", str(r.checkpoint)])
    assert res0.exit_code == 0, res0.output
    assert json.loads(res0.output.strip().splitlines()[-1])["scores"] == pytest.approx(r.prediction["scores"])


def test_rerun_reuses_checkpoint_dataset_and_cache(demo_runs) -> None:
    first, _, second, printed, weights_mtime = demo_runs
    assert first.reused == {"checkpoint": False, "dataset": False}
    assert first.embedded == N_IMAGES and first.skipped == 0
    assert second.reused == {"checkpoint": True, "dataset": True}
    assert second.embedded == 0 and second.skipped == N_IMAGES
    assert (second.checkpoint / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert "0 embedded, 40 skipped as already cached" in printed
    from woundscore.cache import read_cache

    assert len(read_cache(second.cache)) == N_IMAGES
    steps = [t.step for t in second.times]
    assert steps == ["1 tiny random SigLIP", "2 generated dataset", "3 stats + embed + cache info",
                     "4 train MLP + predict", "5a fine-tune (few CPU steps)", "5b report (probe, MLP, zero-shot)"]
    # really timed (not 0, not swapped): the report step lasts at least as long as the report says it took
    assert all(t.wall_s > 0 and t.cpu_s >= 0 for t in second.times)
    report_s = json.loads(second.report_files["metrics.json"].read_text())["timing"]["total_seconds"]
    assert second.times[-1].wall_s >= report_s > 0
    manifest = json.loads((second.out_dir / "demo.json").read_text())
    assert manifest["last_run"]["settings"]["n_images"] == N_IMAGES


def test_reuse_needs_same_settings_and_all_files(tmp_path: Path) -> None:
    want = DemoSettings.quick().checkpoint_params()
    (tmp_path / "a.json").write_text("{}")
    assert _reusable(tmp_path, ("a.json",), dict(want), want)
    assert not _reusable(tmp_path, ("a.json",), {**want, "hidden_size": 64}, want)  # other settings
    assert not _reusable(tmp_path, ("a.json",), None, want)  # never recorded (interrupted build)
    assert not _reusable(tmp_path, ("a.json", "b.json"), dict(want), want)  # a file is gone


def test_cli_demo_usage_errors() -> None:
    from woundscore.compare.cli import cli

    res = CliRunner().invoke(cli, ["demo", "--images", "5"])
    assert res.exit_code == 2
    assert "Invalid value for '--images': 5 is not in the range x>=40." in res.output
    res = CliRunner().invoke(cli, ["demo", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output and "means nothing" in res.output.replace("\n  ", " ")


def test_the_demo_prints_the_command_that_deploys_the_reports_best(demo_runs) -> None:
    r, printed, _, _, _ = demo_runs
    deploy = json.loads(r.report_files["metrics.json"].read_text())["deploy"]
    assert deploy["command"] and deploy["command"].startswith("wound-serve ")
    assert f"deploy {deploy['deployable']}: {deploy['command']}" in printed
