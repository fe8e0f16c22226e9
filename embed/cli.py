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


@cli.command("stats")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_command(source: str, as_json: bool) -> None:
    """Count images and labels per split of SOURCE (nothing is embedded).

    SOURCE is a SurgWound release folder ({train,val,test}_{question,report}.json), a folder
    with labels.csv and images/, a folder of images, one image, or the annotation sheet
    (records_processed.csv). Per split: images, and per label pos / neg / missing and
    pos_weight = neg/pos over the annotated images (what the classifier's loss uses).

    \b
    Example:
        wound-embed stats SurgWound/
        wound-embed stats SurgWound/ --json

    \b
    Exit codes: 0 done; 1 the source cannot be read or has a label problem
    (the message names the file, record or row, field and value); 2 usage error.
    """
    # Imported here so that `wound-embed --help` stays fast.
    import json

    from cache.schema import LabelError
    from embed.sources import SourceError, format_stats, source_stats

    try:
        stats = source_stats(source)
    except (SourceError, LabelError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(format_stats(stats))
