"""`python -m woundscore.embed` is the same as the `wound-embed` console script."""

from woundscore.embed.cli import cli

if __name__ == "__main__":
    cli(prog_name="wound-embed")
