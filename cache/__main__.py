"""`python -m woundscore.cache` is the same as the `wound-cache` console script."""

from woundscore.cache.cli import cli

if __name__ == "__main__":
    cli(prog_name="wound-cache")
