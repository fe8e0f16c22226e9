"""`wound-embed`: Stage one: read a SurgWound source and embed its images into the cache.

The library is imported in the command bodies so that ``wound-embed --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable, TypeVar

import click

from woundscore.cache.cli import WoundscoreGroup
from woundscore.embed.runtime import DEFAULT_MODEL

F = TypeVar("F", bound=Callable)


def encoder_options(*, model_help: str = "Hub id (gated: accept the terms, then `hf auth login`) or a local "
                                      "checkpoint folder.",
                    dtype_help: str | None = "auto: bfloat16 on GPUs and CPUs with native bf16, float16 on "
                                             "older GPUs (T4), else float32.") -> Callable[[F], F]:
    """The --model/--revision/--device[/--dtype] options of every command that loads MedSigLIP
    (``dtype_help=None``: no --dtype; a command whose "auto" means something else says so there)."""
    opts = [click.option("--model", default=DEFAULT_MODEL, show_default=True, help=model_help),
            click.option("--revision", default=None, help="Hub branch, tag or commit (the commit loaded is recorded)."),
            click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)]
    if dtype_help is not None:
        opts.append(click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                                 default="auto", show_default=True, help=dtype_help))

    def decorate(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


@click.group(cls=WoundscoreGroup)
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
    from woundscore.embed.sources import format_stats, source_stats

    stats = source_stats(source)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(format_stats(stats))


@cli.command("run")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The cache (.h5) to create or append to.")
@encoder_options()
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass and per durable write [default: 32 on GPU, 4 on CPU].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode/preprocess worker processes [default: cores-1, at most 4; 0 = in process].")
@click.option("--strict", is_flag=True, help="Stop at the first image that cannot be embedded.")
@click.option("--overwrite", is_flag=True, help="Rebuild the cache instead of resuming it.")
@click.option("--fast-decode", is_flag=True,
              help="Decode large JPEGs at reduced DCT scale (faster; small measured pixel difference, "
                   "recorded in the cache's preprocessing so fast and exact rows never mix).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary (errors still shown).")
def run_command(source: str, out: str, model: str, revision: str | None, batch_size: int | None, device: str,
                dtype: str, workers: int | None, strict: bool, overwrite: bool, fast_decode: bool,
                quiet: bool) -> None:
    """Embed every image of SOURCE with MedSigLIP-448 into the cache OUT, one row per image id.

    SOURCE is a SurgWound release folder, a folder with labels.csv and images/, a folder of
    images, or one image. Label problems stop the run before anything is embedded. A rerun skips
    ids already in the cache with the same bytes (sha256), re-embeds ids whose bytes changed,
    updates labels and splits from SOURCE and removes ids SOURCE no longer lists. Images that
    cannot be read or decoded are recorded in the cache's failure list and the run goes on. The
    summary lists duplicate images across splits (leakage). Ctrl-C stops at once (a batch being
    written to the cache is finished first).

    \b
    Example:
        wound-embed run SurgWound/ --out emb.h5
        wound-embed run SurgWound/ --out emb.h5 --model ./medsiglip-448   # offline, local folder
        torchrun --nproc_per_node 4 -m woundscore.embed run SurgWound/ --out emb.h5
        wound-cache merge emb.rank*-of-4.h5 --out emb.h5

    \b
    Under torchrun / accelerate launch (RANK, WORLD_SIZE set) each rank writes its share to
    OUT with ".rank<r>-of-<w>" before the suffix; join them with `wound-cache merge`.

    \b
    Exit codes: 0 every image embedded (or already cached); 3 some images failed (listed, and
    kept in the cache's failure list), with --strict: stopped at the first; 1 error (source,
    labels, model, cache: nothing written is lost); 2 usage error; 130 interrupted (Ctrl-C or
    SIGTERM; every batch written is kept): rerun the same command to resume.
    """
    from woundscore.embed.run import run_embedding

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        summary = run_embedding(source, out, model=model, revision=revision, batch_size=batch_size, device=device,
                                dtype=dtype, workers=workers, strict=strict, overwrite=overwrite, quiet=quiet,
                                fast_decode=fast_decode)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: every batch already written is kept; rerun the same command to resume", err=True)
        raise SystemExit(130) from None
    if not quiet or summary.exit_code:
        click.echo(summary.format(), err=bool(summary.exit_code))
    raise SystemExit(summary.exit_code)
