"""Security rules that cut across stages: a Hugging Face token never reaches output or artifacts,
and no code path can unpickle (no pickle, no torch.load without weights_only, no remote code)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_woundscoreTESTsecret0123456789"


def test_token_never_printed_or_written(tmp_path: Path, mini_release: Path, tiny_siglip_dir: Path, monkeypatch) -> None:
    from woundscore.classify.cli import cli as classify_cli
    from woundscore.compare.cli import cli as compare_cli
    from woundscore.embed.cli import cli as embed_cli

    monkeypatch.setenv("HF_TOKEN", SECRET)
    runner = CliRunner()
    cache, model = tmp_path / "emb.h5", tmp_path / "mlp"
    outputs = []
    r = runner.invoke(embed_cli, ["run", str(mini_release), "--out", str(cache), "--model", str(tiny_siglip_dir),
                                  "--device", "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    r = runner.invoke(classify_cli, ["train", str(cache), "--out", str(model), "--max-epochs", "3"])
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (180, 90, 80)).save(image)
    r = runner.invoke(classify_cli, ["predict", str(model), str(image), "--encoder", str(tiny_siglip_dir)])
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    r = runner.invoke(compare_cli, ["run", str(cache), "--out", str(tmp_path / "report"), "--no-zero-shot",
                                    "--bootstrap", "100", "--quiet"])
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    # a hub id that does not exist offline: the error explains, and does not echo the token
    r = runner.invoke(embed_cli, ["run", str(mini_release), "--out", str(tmp_path / "x.h5"),
                                  "--model", "google/medsiglip-448", "--device", "cpu"])
    assert r.exit_code == 1
    outputs.append(r.output)

    assert all(SECRET not in o for o in outputs)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10
    for p in written:
        assert SECRET.encode() not in p.read_bytes(), f"token written into {p}"


def test_no_code_path_unpickles_or_runs_remote_code() -> None:
    forbidden = [
        (re.compile(r"^\s*(import pickle|from pickle|import cloudpickle|import dill|import joblib)", re.M), "pickle"),
        (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
        (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
        (re.compile(r"safe_mode\s*=\s*False"), "safe_mode=False"),
        (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    ]
    sources = [p for pkg in ("embed", "cache", "classify", "compare") for p in (REPO / pkg).rglob("*.py")]
    assert len(sources) > 20
    problems = [f"{p.relative_to(REPO)}: {what}" for p in sources for rx, what in forbidden if rx.search(p.read_text())]
    assert problems == []
