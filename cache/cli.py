"""`wound-cache`: inspect, verify and merge caches; each command is a thin adapter over one library function."""

from __future__ import annotations

import json
from typing import Any

import click

from woundscore.cache import cache_info, format_info, merge_caches, verify_cache
from woundscore.cache.errors import WoundscoreError

_CACHE = click.Path(exists=True, dir_okay=False, path_type=str)


class WoundscoreGroup(click.Group):
    """The click group of every woundscore command line: a ``WoundscoreError`` of any command
    becomes ``Error: <message>`` and exits with the error's ``exit_code`` (1 unless it says)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WoundscoreError as e:
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code
            raise err from None


@click.group(cls=WoundscoreGroup)
@click.version_option(package_name="woundscore")
def cli() -> None:
    """The self-describing HDF5 embedding cache: inspect, verify, merge."""


@cli.command("info")
@click.argument("cache", type=_CACHE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(cache: str, as_json: bool) -> None:
    """Describe CACHE: rows and labels per split, provenance, failures, runs.

    Labels per split are counted as pos / neg / missing (-1). Batches of an
    unfinished run (CACHE.parts/) are included and reported as pending.

    \b
    Example:
        wound-cache info embeddings.h5
        wound-cache info embeddings.h5 --json

    \b
    Exit codes: 0 done; 1 CACHE is not a readable cache; 2 usage error.
    """
    info = cache_info(cache)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@cli.command("verify")
@click.argument("cache", type=_CACHE)
def verify_command(cache: str) -> None:
    """Check CACHE: attributes, shapes, dtypes, NaN/inf, duplicate ids/hashes, label values.

    Prints one line per problem, or "OK: N rows ..." when there is none.

    \b
    Example:
        wound-cache verify embeddings.h5

    \b
    Exit codes: 0 no problem; 1 problems found (listed) or CACHE unreadable; 2 usage error.
    """
    problems = verify_cache(cache)
    if problems:
        for p in problems:
            click.echo(p)
        raise click.ClickException(f"{len(problems)} problem(s) in {cache}")
    info = cache_info(cache)
    splits = ", ".join(f"{s or 'unlabelled'} {d['rows']}" for s, d in info["splits"].items())
    click.echo(f"OK: {info['rows']} rows, dim {info['embedding_dim']}" + (f" ({splits})" if splits else "")
               + f", {info['failures']['count']} failure(s) recorded")


@cli.command("merge")
@click.argument("parts", nargs=-1, required=True, type=_CACHE, metavar="PART...")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The merged cache to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def merge_command(parts: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Join per-rank shards PART... into one cache OUT.

    Shards must come from the same encoder, revision, preprocessing, embedding
    dim and label schema. Rows are ordered by their position in the source
    listing (so a sharded run merged equals a single-process run); duplicate
    images (same sha256) are kept once. OUT is written atomically.

    \b
    Example:
        wound-cache merge shard-0.h5 shard-1.h5 --out embeddings.h5

    \b
    Exit codes: 0 merged; 1 shards differ, a shard is still being written,
    OUT exists (use --overwrite) or cannot be written; 2 usage error.
    """
    summary = merge_caches(list(parts), out, overwrite=overwrite)
    click.echo(f"Merged {summary['shards']} shard(s): {summary['rows']} rows"
               f" ({summary['duplicates']} duplicate(s) skipped) -> {out}")
