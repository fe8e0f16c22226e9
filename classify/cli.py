"""`wound-classify` (README: "How it is built", "CLI reference"). The library is imported in the
command bodies so that ``--help`` loads neither scikit-learn nor the encoder.
"""

from __future__ import annotations

import json
import sys

import click

from woundscore.cache.errors import WoundscoreError


class _Group(click.Group):
    """Turns every WoundscoreError of a command into ``Error: <message>``, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WoundscoreError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(package_name="woundscore")
def cli() -> None:
    """Stage two: train and apply classifiers on cached embeddings."""


def _epoch_printer(max_epochs: int):
    def show(rec: dict) -> None:
        auc = rec.get("val_macro_auc")
        parts = [f"epoch {rec['epoch']:>3}/{max_epochs}", f"loss {rec['loss']:.4f}"]
        if "val_loss" in rec:
            parts.append(f"val_loss {rec['val_loss']:.4f}")
            parts.append(f"val macro AUC {'n/a' if auc is None else f'{auc:.3f}'}")
            parts.append(f"best epoch {rec['best_epoch']}")
        parts.append(f"{rec['seconds'] * 1000:.0f} ms")
        click.echo("  ".join(parts), err=True)

    return show


@cli.command("train")
@click.argument("cache", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Model folder to write (model.keras + history.csv or probe.json; thresholds.json, schema.json, "
                   "provenance.json).")
@click.option("--model", type=click.Choice(["mlp", "logreg"]), default="mlp", show_default=True,
              help="mlp: the Keras MLP; logreg: one logistic regression per label.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, dropout and shuffling.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=300, show_default=True, help="MLP only.")
@click.option("--patience", type=click.IntRange(min=1), default=25, show_default=True,
              help="MLP only: epochs without a better validation macro AUC before stopping.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=0.90, show_default=True,
              help="Minimum validation sensitivity of the urgency and infection_risk thresholds.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="MLP only: torch threads while Keras fits (more helps only on idle cores).")
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
def train_command(cache: str, out: str, model: str, seed: int, max_epochs: int, patience: int,
                  target_sensitivity: float, threads: int, overwrite: bool, quiet: bool) -> None:
    """Train a classifier on CACHE's train split; choose epoch and thresholds on its val split.

    Prints per-epoch progress (stderr; MLP) unless --quiet, then the validation table: per label
    n, positives, ROC AUC, the applied threshold and its sensitivity/specificity, and macro AUC.

    \b
    Example:
        wound-classify train embeddings.h5 --out models/mlp
        wound-classify train embeddings.h5 --out models/probe --model logreg --quiet

    \b
    Exit codes: 0 trained and saved; 1 the cache cannot train a model (no train or val rows,
    unreadable) or the model folder exists (use --overwrite); 2 usage error.
    """
    from woundscore.classify.metrics import format_table
    from woundscore.classify.train import train_from_cache

    mlp_params = {"max_epochs": max_epochs, "patience": patience, "n_threads": threads,
                  "on_epoch": None if quiet else _epoch_printer(max_epochs)} if model == "mlp" else {}
    res = train_from_cache(cache, out, model=model, seed=seed, target_sensitivity=target_sensitivity,
                           overwrite=overwrite, **mlp_params)
    tr = res.provenance.get("training", {})
    title = f"validation ({res.provenance['split_sizes']['val']} rows), model {model} -> {res.model_dir}"
    if model == "mlp":
        loop_s = tr["epoch_seconds_mean"] * tr["epochs_run"]
        title += f"  [best epoch {tr['best_epoch']} of {tr['epochs_run']} run, {loop_s:.1f} s training]"
    rules = {n: v["applied"] for n, v in res.thresholds["labels"].items()}
    click.echo(format_table({**res.validation, "rules": rules}, title=title))
    for n, v in res.thresholds["labels"].items():
        if v["note"]:
            click.echo(f"note: {n}: {v['note']}")
    if res.provenance.get("notice"):
        click.echo(f"NOTICE: {res.provenance['notice']}")


@cli.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("cache", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate_command(model_dir: str, cache: str, split: str, as_json: bool) -> None:
    """Score one split of CACHE with the model in MODEL_DIR and print its metrics.

    Per label: n, positives, ROC AUC, the stored threshold and sensitivity/specificity at it;
    then macro AUC over labels with both classes ("n/a" / null when not estimable).
    The cache must come from the same encoder, revision and preprocessing as the model's.

    \b
    Example:
        wound-classify evaluate models/mlp embeddings.h5
        wound-classify evaluate models/mlp embeddings.h5 --split val --json

    \b
    Exit codes: 0 done; 1 unreadable model or cache, empty split, or embeddings from
    another encoder/preprocessing (both sides are shown); 2 usage error.
    """
    from woundscore.classify.evaluation import evaluate_model_on_cache
    from woundscore.classify.metrics import format_table

    result = evaluate_model_on_cache(model_dir, cache, split)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_table(result, title=f"{split} split of {cache} ({result['n_rows']} rows), model {model_dir}"))
    if result.get("notice"):
        click.echo(f"NOTICE: {result['notice']}")


@cli.command("calibrate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("source_or_cache", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="New model folder to write (MODEL_DIR is never modified).")
@click.option("--encoder", default=None,
              help="Hub id or local checkpoint folder to embed a SOURCE with [default: the one recorded in "
                   "MODEL_DIR's provenance]. Not used for a cache.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def calibrate_command(model_dir: str, source_or_cache: str, out: str, encoder: str | None, device: str,
                      overwrite: bool) -> None:
    """Refit MODEL_DIR's calibration and thresholds on your own labelled images, into --out.

    SOURCE_OR_CACHE is a cache (every split is used) or a labelled source as `wound-embed`
    reads it (embedded here with the model's encoder). The same rules as training are applied to
    ALL its rows (there is no separate validation split, so the "after" figures are measured on
    the rows they were fitted on). Prints per label, before -> after: Brier and ECE (bootstrap
    95 % CI), the threshold, sensitivity and specificity (Wilson 95 % CI), each with n; AUC is
    unchanged. Warns for a label with too few positives or negatives (fewer than 3 of a class:
    the model's calibration and threshold are kept). The figures go to --out/recalibration.json.

    \b
    Example:
        wound-classify calibrate models/mlp my_photos/ --out models/mlp-local
        wound-classify calibrate models/mlp local.h5 --out models/mlp-local

    \b
    Exit codes: 0 written; 1 unreadable model or set, no labelled images, an encoder other
    than the model's, or --out exists (use --overwrite); 2 usage error.
    """
    from woundscore.classify.recalibrate import format_recalibration, recalibrate

    click.echo(format_recalibration(recalibrate(model_dir, source_or_cache, out, encoder=encoder, device=device,
                                                overwrite=overwrite)))


@cli.command("predict")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("images", nargs=-1, required=True, type=str)
@click.option("--encoder", default=None,
              help="Hub id or local checkpoint folder of the image encoder [default: the one recorded "
                   "in MODEL_DIR's provenance; a fine-tune folder's own backbone]. It must match the "
                   "training cache's encoder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per encoder forward.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write to this file instead of stdout: .csv gives CSV (one row per image), anything "
                   "else JSON Lines (or the prompt blocks with --format prompt).")
@click.option("--format", "fmt", type=click.Choice(["json", "prompt"]), default="json", show_default=True,
              help="json: the predict contract, one object per line; prompt: the assistant's text block.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar on stderr.")
def predict_command(model_dir: str, images: tuple[str, ...], encoder: str | None, device: str, batch_size: int,
                    out: str | None, fmt: str, quiet: bool) -> None:
    """Score IMAGES (files, folders, globs, a labels.csv or release folder, or a cache) and stream
    one JSON object per image (JSON Lines) to stdout as each batch is done.

    Folders are searched recursively for images; a labels.csv or SurgWound release folder is read
    as a dataset (lines named by image id); a cache (.h5) is scored from its stored vectors, no
    encoder needed. Each line follows the predict contract (README, "The predict contract"):
    image, scores (calibrated), raw_scores, flags, thresholds, in_distribution, ood, model. An
    image that cannot be read gives {"image", "error"} and the others are still scored. Research
    use only, not a diagnosis.

    \b
    Example:
        wound-classify predict models/mlp photo1.jpg photo2.png
        wound-classify predict models/mlp photos/ --out scores.csv --encoder ./medsiglip-448
        wound-classify predict models/mlp embeddings.h5 --out scores.jsonl
        wound-classify predict models/mlp wound.jpg --format prompt

    \b
    Exit codes: 0 every image scored; 1 unreadable model folder or input, encoder cannot be
    loaded, or an encoder/preprocessing other than the model's (both sides are shown);
    2 usage error; 3 some images could not be read (their lines carry "error").
    """
    from woundscore.classify.inputs import ImageInput, resolve_inputs
    from woundscore.classify.predict_run import Sink, run_predict
    from woundscore.classify.scorer import WoundScorer
    from woundscore.embed.runtime import EncoderLoadError

    as_csv = bool(out) and out.lower().endswith(".csv")
    if as_csv and fmt == "prompt":
        raise click.UsageError("--format prompt writes text blocks, not CSV: choose another --out name")
    try:
        scorer = WoundScorer.load(model_dir, encoder, device=device)
        inputs = resolve_inputs(images)
        if any(isinstance(x, ImageInput) for x in inputs):
            _ = scorer.encoder  # load and check the encoder before any image (a cache needs none)
        n, failed = run_predict(scorer, inputs, Sink("csv" if as_csv else fmt, out), batch_size=batch_size,
                                progress=not quiet)
    except EncoderLoadError as e:  # its advice names `--model` (wound-embed's option)
        raise click.ClickException(f"{e}\n(here the option is --encoder)") from None
    if failed:
        click.echo(f"Error: {failed} of {n} images could not be scored (see their \"error\")", err=True)
        sys.exit(3)  # some images failed (their lines say why); 1 is a failure of the whole run
