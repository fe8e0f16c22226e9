"""`python -m classify` is the same as the `wound-classify` console script."""

from classify.cli import cli

if __name__ == "__main__":
    cli(prog_name="wound-classify")
