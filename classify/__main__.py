"""`python -m woundscore.classify` is the same as the `wound-classify` console script."""

from woundscore.classify.cli import cli

if __name__ == "__main__":
    cli(prog_name="wound-classify")
