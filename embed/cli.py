"""`wound-embed`: Stage one: read a SurgWound source and embed its images into the cache.

Each command is a thin adapter over one library function; library errors become
`click.ClickException` (exit 1), usage errors exit 2.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="woundscore")
def cli() -> None:
    """Stage one: read a SurgWound source and embed its images into the cache."""
