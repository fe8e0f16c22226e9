"""`python -m woundscore.compare` is the same as the `wound-compare` console script."""

from woundscore.compare.cli import cli

if __name__ == "__main__":
    cli(prog_name="wound-compare")
