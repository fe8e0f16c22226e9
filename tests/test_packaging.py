"""The installed names: one `woundscore` namespace, from a wheel, beside a user's stray modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cache", "embed", "classify", "compare")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the files git sees (as a fresh clone would): a stale build/ or
    an ignored file in the checkout cannot hide a missing package or data file."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-w", str(out), "-q"], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("woundscore-*.whl")
    return whl


def test_wheel_holds_only_the_woundscore_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"woundscore"}
    for stage in STAGES:
        assert f"woundscore/{stage}/__init__.py" in names
    assert "woundscore/embed/assets/spiece.model" in names  # the vendored tokenizer ships
    assert "woundscore/compare/templates/report.html.j2" in names  # and the report's template
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for stage in STAGES:
        assert f"wound-{stage} = woundscore.{stage}.cli:cli" in text


def test_wheel_in_a_clean_venv_beside_stray_modules(wheel: Path, tmp_path: Path) -> None:
    """A user's own classify.py / cache.py in the working folder must not shadow the stages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies (torch, keras, ...) come from this environment through a plain path line: no
    # second download, and this environment's editable woundscore finder is not activated there.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    for stray in ("classify.py", "cache.py", "embed.py", "compare.py"):
        (work / stray).write_text("raise ImportError('the stray user module was imported')\n")
    code = ("import woundscore\n"
            "from woundscore import WoundScorer, read_cache, MaskedBCE, EmbeddingSet, LABEL_NAMES\n"
            "import woundscore.compare.cli, woundscore.embed.cli\n"
            "print(woundscore.__version__, woundscore.__file__)")
    r = subprocess.run([str(py), "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    version, location = r.stdout.split()
    assert version == "0.1.0"
    assert Path(location).is_relative_to(venv)  # the wheel's copy, not the checkout
    r = subprocess.run([str(venv / "bin" / "wound-classify"), "--help"], cwd=work, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: wound-classify")
    r = subprocess.run([str(py), "-m", "woundscore.cache", "--help"], cwd=work, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Usage:" in r.stdout, r.stderr


def _imports_a_bare_stage(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        bad += [n for n in names if n.split(".")[0] in STAGES]
    return bad


def test_no_code_imports_a_stage_by_its_bare_name() -> None:
    """`import cache` would work from the checkout (cwd on sys.path) and break in a wheel."""
    files = [f for d in (*STAGES, "woundscore", "tests", "bench") for f in (ROOT / d).rglob("*.py")]
    found = {str(f.relative_to(ROOT)): bad for f in files if (bad := _imports_a_bare_stage(ast.parse(f.read_text())))}
    assert found == {}


def test_public_names_and_version() -> None:
    import woundscore
    from woundscore.cache import read_cache
    from woundscore.classify.loss import MaskedBCE
    from woundscore.classify.scorer import WoundScorer

    assert woundscore.read_cache is read_cache and woundscore.MaskedBCE is MaskedBCE
    assert woundscore.WoundScorer is WoundScorer
    assert woundscore.__version__ == "0.1.0"
    assert set(woundscore.__all__) <= set(dir(woundscore))
