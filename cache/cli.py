"""`wound-cache`: inspect, verify and merge caches; each command is a thin adapter over one library function."""

from __future__ import annotations

import json
from typing import Any

import click

from woundscore.cache import cache_info, format_info, merge_caches, verify_cache
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.leakage import format_leakage
from woundscore.cache.read import load
from woundscore.cache.reconcile import SourceView, source_differences

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
    """Describe CACHE: rows and labels per split, provenance, failures, runs, leakage.

    Labels per split are counted as pos / neg / missing (-1). Batches of an
    unfinished run (CACHE.parts/) are included and reported as pending. The
    leakage section lists image pairs in different splits that are the same
    file (sha256) or near duplicates (embedding cosine >= 0.98).

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
@click.option("--source", "source", default=None, type=click.Path(exists=True, path_type=str),
              help="Also check the cache against this source: ids, bytes (sha256), labels, splits.")
def verify_command(cache: str, source: str | None) -> None:
    """Check CACHE: attributes, shapes, dtypes, NaN/inf, duplicate ids, label values.

    With --source, also lists every difference between CACHE and SOURCE (an id
    missing on either side, other bytes, another split or label). Prints one
    line per problem, or "OK: N rows ..." when there is none, then the leakage
    audit (duplicate images across splits; informative, not a problem).

    \b
    Example:
        wound-cache verify embeddings.h5
        wound-cache verify embeddings.h5 --source SurgWound/

    \b
    Exit codes: 0 no problem; 1 problems or differences found (listed) or CACHE
    unreadable; 2 usage error.
    """
    problems = verify_cache(cache)
    if source is not None and not problems:
        problems = _source_problems(cache, source)
    if problems:
        for p in problems:
            click.echo(p)
        raise click.ClickException(f"{len(problems)} problem(s) in {cache}")
    info = cache_info(cache)
    splits = ", ".join(f"{s or 'unlabelled'} {d['rows']}" for s, d in info["splits"].items())
    click.echo(f"OK: {info['rows']} rows, dim {info['embedding_dim']}" + (f" ({splits})" if splits else "")
               + f", {info['failures']['count']} failure(s) recorded" + (f"; same as {source}" if source else ""))
    click.echo("\n".join(format_leakage(info["leakage"])))


def _source_problems(cache: str, source: str) -> list[str]:
    """Differences between CACHE and SOURCE (reads and hashes every image of the source)."""
    import hashlib

    import numpy as np

    # The one place the cache stage reads a source: the source readers live in embed (imported
    # only here, when --source is given; the cache library itself never imports embed).
    from woundscore.embed.sources import open_source

    samples = open_source(source).samples()
    shas = []
    for s in samples:
        try:
            shas.append(hashlib.sha256(s.read_bytes()).hexdigest())
        except WoundscoreError as exc:
            shas.append(f"(unreadable: {exc})")
    extras = sorted({k for s in samples for k in s.extras})
    view = SourceView([s.image_id for s in samples], [s.split for s in samples],
                      np.stack([s.labels for s in samples]) if samples else np.zeros((0, 6), np.int8),
                      {k: [s.extras.get(k, "") for s in samples] for k in extras}, sha256=shas)
    loaded = load(cache, with_x=False)
    failed = {f["image_id"]: f["reason"] for f in loaded.failures}
    return source_differences(loaded.rows, view, where=cache, failed=failed)


@cli.command("merge")
@click.argument("parts", nargs=-1, required=True, type=_CACHE, metavar="PART...")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The merged cache to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def merge_command(parts: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Join per-rank shards PART... into one cache OUT.

    Shards must come from the same encoder, revision, preprocessing, embedding
    dim and label schema. Rows are ordered by their position in the source
    listing (so a sharded run merged equals a single-process run); an image id
    found in several shards is kept once if they agree, and the merge stops,
    naming the ids, if they disagree about its bytes, split, labels or
    annotations. The result does not depend on the order of PART... . OUT is
    written atomically.

    \b
    Example:
        wound-cache merge shard-0.h5 shard-1.h5 --out embeddings.h5

    \b
    Exit codes: 0 merged; 1 shards differ (setup or an image id), a shard is still being written,
    OUT exists (use --overwrite) or cannot be written; 2 usage error.
    """
    summary = merge_caches(list(parts), out, overwrite=overwrite)
    click.echo(f"Merged {summary['shards']} shard(s): {summary['rows']} rows"
               f" ({summary['duplicates']} duplicate(s) skipped) -> {out}")
