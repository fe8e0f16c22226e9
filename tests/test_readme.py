"""The README's first lines give the two commands, and its CLI reference is the commands' own help."""

from __future__ import annotations

from pathlib import Path

from tests.cli_reference import END, START, commands, render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_lines_give_demo_and_test_commands() -> None:
    head = "\n".join(README.read_text().splitlines()[:10])
    assert "make demo" in head and "make test" in head


def test_cli_reference_is_generated_from_help() -> None:
    text = README.read_text()
    assert START in text and END in text, "README lacks the CLI reference markers"
    section = text[text.index(START) : text.index(END) + len(END)]
    assert section == render(), "README's CLI reference is stale: run `python -m tests.cli_reference` (it rewrites the section)"


def test_every_command_is_in_the_reference_with_an_example() -> None:
    text = README.read_text()
    names = [name for name, _ in commands()]
    assert len(names) >= 10
    for name in names:
        assert f"### `{name}`" in text
    for name, cmd in commands():
        assert "Example" in (cmd.help or ""), f"{name} --help has no example"
