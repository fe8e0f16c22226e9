"""`wound-compare`: Benchmark the MLP against a probe, zero-shot and a fine-tune; write the report.

Each command is a thin adapter over one library function; library errors become
`click.ClickException` (exit 1), usage errors exit 2.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="woundscore")
def cli() -> None:
    """Benchmark the MLP against a probe, zero-shot and a fine-tune; write the report."""


def _parse_predictions(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """--predictions NAME=FILE (repeatable) -> {NAME: FILE}; malformed or repeated names are usage errors."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r} is not NAME=FILE", ctx=ctx, param=param)
        if name in out:
            raise click.BadParameter(f"method name {name!r} given twice", ctx=ctx, param=param)
        out[name] = path
    return out


@cli.command("run")
@click.argument("cache", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Report folder (created; report files in it are replaced).")
@click.option("--source", type=click.Path(exists=True),
              help="The images the cache was made from (for zero-shot).")
@click.option("--model", help="Full SigLIP checkpoint (hub id or folder) with its text tower, for zero-shot.")
@click.option("--finetune-dir", type=click.Path(exists=True, file_okay=False),
              help="Output folder of `wound-compare finetune` (its predictions.csv is read).")
@click.option("--predictions", multiple=True, callback=_parse_predictions, metavar="NAME=FILE",
              help="Predictions CSV of another method, matched by image_id (repeatable).")
@click.option("--zero-shot/--no-zero-shot", default=True, show_default=True,
              help="Score zero-shot MedSigLIP (needs --source and --model, else skipped with the reason).")
@click.option("--train", "train", multiple=True, type=click.Choice(["probe", "mlp", "none"]),
              default=("probe", "mlp"), show_default=True,
              help="Methods to train here on the cache (repeatable); 'none' scores only the given predictions.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples for every interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of training and bootstrap.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def run_cmd(
    cache: str, out_dir: str, source: str | None, model: str | None, finetune_dir: str | None,
    predictions: dict[str, str], zero_shot: bool, train: tuple[str, ...], n_boot: int, seed: int,
    quiet: bool,
) -> None:
    """Compare the MLP with the probe, zero-shot and a fine-tune on the same test images.

    Trains the logistic probe and the MLP on the cache's train split (early
    stopping and thresholds on val), scores the test split, adds zero-shot and
    any predictions files, and writes the report.

    \b
    Writes into REPORT_DIR: report.md, report.html (self-contained),
    metrics.json, roc.png, reliability.png, forest.png. Every estimate
    carries its n and a 95% confidence interval.

    \b
    Example:
      wound-compare run surgwound.h5 --out report/ --finetune-dir ft/
      wound-compare run surgwound.h5 --out report/ --source SurgWound --model google/medsiglip-448
      wound-compare run surgwound.h5 --out report/ --predictions ft8=ft8/predictions.csv --no-zero-shot

    \b
    Exit codes: 0 report written; 1 the comparison could not run (the
    message says why; nothing is written); 2 usage error.
    """
    from cache.schema import LabelError
    from cache.types import CacheError
    from compare.predictions import PredictionsError
    from compare.report import ReportError, run_comparison

    try:
        result = run_comparison(
            cache, out_dir, source=source, model=model, finetune_dir=finetune_dir,
            predictions=predictions, zero_shot=zero_shot, n_boot=n_boot, seed=seed, quiet=quiet,
            methods=tuple(m for m in dict.fromkeys(train) if m != "none"),
        )
    except (ReportError, PredictionsError, CacheError, LabelError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(result.metrics["answer"]["text"])
    click.echo(f"report: {result.files['report.html']}")
    click.echo(f"        {result.files['report.md']}")
