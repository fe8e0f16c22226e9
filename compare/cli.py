"""`wound-compare`: Benchmark the MLP against a probe, zero-shot and a fine-tune; write the report.

Each command is a thin adapter over one library function; library errors (``WoundscoreError``)
become `Error: <message>` in one place (``WoundscoreGroup``), usage errors exit 2. The library is
imported inside the command bodies so that `wound-compare --help` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from woundscore.cache.cli import WoundscoreGroup
from woundscore.embed.cli import encoder_options


@click.group(cls=WoundscoreGroup)
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
@click.option("--exclude-leaked", is_flag=True,
              help="Also report the test metrics without the test images that have an exact or near "
                   "duplicate in train/val (the leakage audit).")
@click.option("--curve", is_flag=True, help="Add the learning-curve section (as `wound-compare curve`).")
@click.option("--seeds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train N MLP seeds (in one fit) to show the MLP's seed spread, e.g. 5 (about 5x the "
                   "MLP's train time); 0: not measured. An MLP seed ensemble shows its own members instead.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def run_cmd(cache: str, out_dir: str, source: str | None, model: str | None, finetune_dir: str | None,
            predictions: dict[str, str], zero_shot: bool, train: tuple[str, ...], n_boot: int, seed: int,
            exclude_leaked: bool, curve: bool, seeds: int, quiet: bool) -> None:
    """Compare the MLP with the probe, zero-shot and a fine-tune on the same test images.

    Trains the logistic probe and the MLP on the cache's train split (early
    stopping, calibration and thresholds on val), scores the test split, adds
    zero-shot and any predictions files, and writes the report. The first
    section names the best method and the one command that deploys it.

    \b
    Writes REPORT_DIR all-or-nothing (built beside it, then swapped in):
    report.md, report.html (self-contained), metrics.json, roc.png,
    reliability.png, forest.png, and models/probe, models/mlp (model
    folders for wound-serve). Every estimate carries its n and a 95%
    confidence interval.

    \b
    Example:
      wound-compare run surgwound.h5 --out report/ --finetune-dir ft/
      wound-compare run surgwound.h5 --out report/ --source SurgWound --model google/medsiglip-448
      wound-compare run surgwound.h5 --out report/ --predictions ft8=ft8/predictions.csv --no-zero-shot

    \b
    Exit codes: 0 report written; 1 the comparison could not run (the
    message says why; nothing is written); 2 usage error.
    """
    from woundscore.compare.render import printable
    from woundscore.compare.report import run_comparison

    result = run_comparison(cache, out_dir, source=source, model=model, finetune_dir=finetune_dir,
                            predictions=predictions, zero_shot=zero_shot, n_boot=n_boot, seed=seed, quiet=quiet,
                            methods=tuple(m for m in dict.fromkeys(train) if m != "none"),
                            exclude_leaked=exclude_leaked, curve=curve, seeds=seeds)
    click.echo(printable(result.metrics["answer"]["text"]))
    deploy = result.metrics.get("deploy") or {}
    if deploy.get("command"):
        click.echo(printable(f"deploy {deploy['deployable']}: {deploy['command']}"))
    click.echo(f"report: {result.files['report.html']}")
    click.echo(f"        {result.files['report.md']}")


@cli.command("finetune")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The model folder to write (scored by `wound-classify predict` and `wound-serve` like an MLP "
                   "folder; model/ for transformers users); it also holds predictions.csv (+ .json cost sidecar) "
                   "and trainer/ (TensorBoard logs).")
@encoder_options(dtype_help="auto: bfloat16 on GPUs that have it, float16 on T4-class GPUs, float32 on CPU "
                           "(training; embedding uses bf16 on CPUs with native bf16).")
@click.option("--unfreeze-last", type=click.IntRange(min=0), default=4, show_default=True,
              help="Train the last N encoder blocks (+ post-layernorm, head with --pooling attention, classifier).")
@click.option("--pooling", type=click.Choice(["mean", "attention"]), default="mean", show_default=True,
              help="mean: SiglipForImageClassification as is (mean of patch tokens, the seed's model); "
                   "attention: the pretrained attention-pool head that the cached embeddings come from.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=16, show_default=True,
              help="Gradient accumulation steps (effective batch = batch size x this).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-5, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after N optimizer steps (smoke tests); evaluates and saves then.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes [default: 0 on CPU, up to 8 on GPU].")
@click.option("--no-prefix-cache", is_flag=True,
              help="Run the frozen blocks every step instead of once per image (same result, slower).")
@click.option("--push-to-hub", "push_to_hub", metavar="REPO", default=None,
              help="Upload model/ with its model card, calibration.json and thresholds.json to this (private) hub "
                   "repo; needs `hf auth login`.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=0.90, show_default=True,
              help="Minimum validation sensitivity of the urgency and infection_risk thresholds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or training logs (errors still shown).")
def finetune_command(source: str, out: str, no_prefix_cache: bool, **settings: Any) -> None:
    """Fine-tune the last blocks of MedSigLIP on SOURCE; save OUT as a deployable model folder.

    SOURCE needs train, val and test images (a SurgWound release folder or a labels.csv folder
    with a split column). The seed's plan: 5 epochs, batch 4 x accumulation 16, lr 5e-5, weight
    decay 0.01, 10 warmup steps, cosine; eval and save each epoch, best by validation macro AUC;
    masked pos_weight BCE (classify.loss). The frozen blocks run once per image (prefix cache)
    unless --no-prefix-cache. Then, as for the MLP: calibration and thresholds on the validation
    split, the out-of-distribution reference on the train images' features. OUT is scored like
    any model folder (`wound-classify predict OUT ...`, `wound-serve OUT`);
    OUT/predictions.csv (uncalibrated) feeds `wound-compare run --finetune-dir OUT`.

    \b
    Example:
        wound-compare finetune SurgWound/ --out ft/ --unfreeze-last 4
        wound-serve ft/
        wound-compare finetune SurgWound/ --out ft-smoke/ --model tiny/ --max-steps 2 --device cpu

    \b
    Exit codes: 0 done; 1 the source, model or settings cannot be used (the message says why);
    2 usage error; 3 stopped because the loss stayed NaN/inf (try --dtype float32 or a lower --lr).
    """
    from woundscore.compare.finetune import finetune

    res = finetune(source, out, prefix_cache=not no_prefix_cache, **settings)  # the options are its arguments
    macro = res.test_metrics["macro_auc"]
    click.echo(f"{res.predictions_path}: {len(res.ids)} test images (+ {len(res.val_ids)} val rows for thresholds), "
               f"test macro AUC {'not estimable' if macro is None else f'{macro:.3f}'} (point estimate); "
               f"trained {res.meta['trainable_params']:,} of {res.meta['total_params']:,} parameters "
               f"in {res.meta['train_seconds']:.1f} s on {res.meta['device']}")
    if res.post_hoc is not None:
        val = res.post_hoc.validation.get("macro_auc")
        click.echo(f"{res.out_dir}: model folder, validation macro AUC (calibrated) "
                   f"{'not estimable' if val is None else f'{val:.3f}'}; score with "
                   f"`wound-classify predict {res.out_dir} PHOTO` or serve with `wound-serve {res.out_dir}`")


@cli.command("zero-shot")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Predictions CSV to write (a .json cost sidecar goes next to it).")
@encoder_options(model_help="Full SigLIP checkpoint (vision + text tower): hub id or local folder.", dtype_help=None)
@click.option("--split", default="test", show_default=True, help="Which split of SOURCE to score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def zero_shot_command(source: str, out: str, model: str, revision: str | None, split: str, batch_size: int,
                      device: str, quiet: bool) -> None:
    """Score a split of SOURCE zero-shot with MedSigLIP's text tower; write predictions to OUT.

    Each label is scored by a positive and a negative prompt (PROMPTS in compare/zeroshot.py):
    p = sigmoid(exp(logit_scale) * (cos(image, positive) - cos(image, negative))). No training.
    Unreadable images are skipped and listed in the sidecar.

    \b
    Example:
        wound-compare zero-shot SurgWound/ --out zeroshot.csv
        wound-compare run cache.h5 --out report/ --predictions zero-shot=zeroshot.csv

    \b
    Exit codes: 0 done; 1 the source or model cannot be used (the message says why); 2 usage error.
    """
    from woundscore.compare.zeroshot import run_zero_shot

    res = run_zero_shot(source, out, model=model, revision=revision, split=split, device=device,
                        batch_size=batch_size, quiet=quiet)
    skipped = f", {len(res.skipped)} skipped (see the .json sidecar)" if res.skipped else ""
    click.echo(f"{out}: {len(res.ids)} images scored zero-shot{skipped}")


@cli.command("demo")
@click.option("--out", "-o", "out_dir", default="demo_out", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Demo folder (created; a rerun reuses its checkpoint, dataset and cache).")
@click.option("--images", "n_images", type=click.IntRange(min=40), default=100, show_default=True,
              help="Generated images, at least 40 (about 70 / 10 / 20 % train / val / test).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the model, the images and training.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage logs (step results still print).")
def demo_command(out_dir: str, n_images: int, seed: int, quiet: bool) -> None:
    """Run the whole pipeline offline: tiny random SigLIP + generated images -> report.

    Builds (once) a tiny random SigLIP checkpoint and a generated dataset in the SurgWound
    release format, then runs what `wound-embed stats`, `wound-embed run`, `wound-cache info`,
    `wound-classify train`, `wound-classify predict`, `wound-compare finetune` (a few CPU steps)
    and `wound-compare run` (probe, MLP, zero-shot, fine-tune) do, through the same library
    functions. Prints each step's result and time, where the report is and what to try next.
    Everything it writes says: random weights, generated images, means nothing clinically.

    \b
    Example:
        wound-compare demo
        wound-compare demo --out /tmp/demo --images 200 --seed 1 --quiet

    \b
    Exit codes: 0 done; 1 a step failed (the message names the step); 2 usage error;
    130 interrupted (Ctrl-C): rerun the same command, finished steps are reused.
    """
    from woundscore.compare.demo import run_demo

    try:
        run_demo(out_dir, n_images=n_images, seed=seed, quiet=quiet, echo=click.echo)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: rerun the same command (the checkpoint, dataset and cache made so far are reused)",
                   err=True)
        raise SystemExit(130) from None


@cli.command("curve")
@click.argument("cache", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for curve.csv, curve.md, curve.png and curve.json (created; replaced).")
@click.option("--fractions", default="0.1,0.25,0.5,1.0", show_default=True,
              help="Fractions of the train split, comma-separated, increasing, in (0, 1].")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Subsets (and seeds) per size.")
@click.option("--method", "methods", multiple=True, type=click.Choice(["probe", "mlp"]),
              default=("probe", "mlp"), show_default=True, help="Heads to train (repeatable).")
@click.option("--finetune-predictions", type=click.Path(exists=True, dir_okay=False),
              help="A fine-tune's predictions.csv: its test macro AUC is drawn at the full train size.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples for the intervals.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=100, show_default=True,
              help="The curve's MLP: at most this many epochs (the trained head's default: 300).")
@click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True,
              help="The curve's MLP: early-stopping patience in epochs (the trained head's default: 25).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subsets, training and bootstrap.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def curve_cmd(cache: str, out_dir: str, fractions: str, repeats: int, methods: tuple[str, ...],
              finetune_predictions: str | None, n_boot: int, max_epochs: int, patience: int, seed: int,
              quiet: bool) -> None:
    """Learning curve: test AUC of the probe and the MLP vs the number of training images.

    Trains on nested, stratified subsets of the cache's train split, REPEATS
    times per size, scores the full test split (early stopping and the probe's
    C on val) and says whether the curve has flattened (rule in the output).

    \b
    Writes into OUT: curve.csv, curve.md (table + reading), curve.png, curve.json.

    \b
    Example:
      wound-compare curve surgwound.h5 --out curve/
      wound-compare curve surgwound.h5 --out curve/ --finetune-predictions ft/predictions.csv

    \b
    Exit codes: 0 written; 1 the curve could not run (the message says why); 2 usage error.
    """
    from woundscore.cache import read_cache
    from woundscore.compare.curve import learning_curve
    from woundscore.compare.curve_output import write_curve

    try:
        fr = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise click.BadParameter(f"{fractions!r} is not a comma-separated list of numbers",
                                 param_hint="--fractions") from None
    res = learning_curve(read_cache(cache), fractions=fr, repeats=repeats, seed=seed, methods=tuple(dict.fromkeys(methods)),
                         n_boot=n_boot, finetune_predictions=finetune_predictions,
                         mlp_params={"max_epochs": max_epochs, "patience": patience},
                         on_progress=None if quiet else (lambda m: click.echo(m, err=True)))
    files = write_curve(res, out_dir)
    click.echo(res.reading)
    click.echo(f"curve: {files['curve.md']}  ({res.timing['total']:.1f} s)")
