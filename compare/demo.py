"""`wound-compare demo`: the whole pipeline offline, on a tiny random model and generated images.

One call runs every stage through the same library function its own command calls:

1. ``embed.tiny.build_tiny_siglip``   a tiny random SigLIP (vision + text towers), built once
2. ``embed.synthetic.make_release``   a generated dataset in the real SurgWound release format
3. ``embed.sources.source_stats``     (``wound-embed stats``), ``embed.run.run_embedding``
                                      (``wound-embed run``), ``cache.store.cache_info``
                                      (``wound-cache info``)
4. ``classify.train.train_from_cache`` (``wound-classify train``), ``classify.scorer.WoundScorer``
                                      (``wound-classify predict``) on one image
5. ``compare.finetune.finetune``      (``wound-compare finetune``, a few CPU steps), then
   ``compare.report.run_comparison``  (``wound-compare run``: probe, MLP, zero-shot, fine-tune)
6. where the report is and the next command to try.

Layout of OUT (default ``demo_out/``)::

    README.md                      what this folder is (and that it means nothing clinically)
    demo.json                      what was built with which settings (reuse check), step timings
    tiny-siglip-RANDOM-WEIGHTS/    the checkpoint (save_pretrained layout of google/medsiglip-448)
    SurgWound-GENERATED/           {train,val,test}_{question,report}.json
    example-images/                a few test images as JPEG files (for predict)
    cache.h5                       the embeddings
    models/mlp/                    the trained MLP
    finetune/                      predictions.csv (+ .json), model/, trainer/
    report/                        report.html, report.md, metrics.json, roc/reliability/forest PNGs

A rerun reuses the checkpoint and the dataset when ``demo.json`` says they were built with the
same settings (and their files are there), and the cache resumes (nothing embedded twice); the
model, fine-tune and report are made again. Everything made here carries :data:`DEMO_NOTICE`:
the cache provenance (so the model provenance, the predict JSON and the report banner), the
checkpoint's name and README, and this folder's README.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from woundscore.cache.errors import WoundscoreError

#: What every demo output says (cache provenance "notice" -> model provenance -> predict JSON,
#: report banner).
DEMO_NOTICE = (
    "DEMO: random weights (a tiny random SigLIP, not MedSigLIP) and generated images; "
    "these numbers mean nothing clinically"
)
CHECKPOINT_DIR = "tiny-siglip-RANDOM-WEIGHTS"
RELEASE_DIR = "SurgWound-GENERATED"
MANIFEST = "demo.json"
MANIFEST_VERSION = 1
#: Files a usable tiny checkpoint folder has (the encoder, zero-shot and fine-tune read them).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "spiece.model",
                    "tokenizer_config.json")
RELEASE_FILES = tuple(f"{s}_{k}.json" for s in ("train", "val", "test") for k in ("question", "report"))


class DemoError(WoundscoreError):
    """The demo cannot go on (a stage failed); the message names the step and the reason."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. The defaults fit the whole demo in under 3 minutes on 2 CPU cores.

    The tiny encoder is 64 px, patch 16 (16 tokens), hidden 128, 2 blocks: with random weights
    its 128-dim pooled embeddings still carry the generated images' colour traces (red halo,
    yellow patch, darker wound), so the probe and the MLP learn something while zero-shot,
    whose random text tower knows no words, does not.
    """

    n_images: int = 100
    seed: int = 0
    image_px: int = 128  # generated JPEGs are image_px x image_px
    tiny_image_size: int = 64
    tiny_patch_size: int = 16
    tiny_hidden_size: int = 128
    tiny_layers: int = 2
    tiny_heads: int = 2
    finetune_steps: int = 30
    finetune_batch_size: int = 8
    finetune_lr: float = 1e-3  # a few steps only: far above the seed's 5e-5, or nothing moves
    finetune_unfreeze_last: int = 1
    n_boot: int = 2000
    mlp_max_epochs: int | None = None  # None: the classify defaults (300, patience 25)
    mlp_patience: int | None = None
    n_examples: int = 3

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoSettings":
        """Test-sized settings (40 images, 1 fine-tune step, 200 resamples, short MLP)."""
        base = cls(n_images=40, image_px=64, tiny_hidden_size=32, finetune_steps=1, finetune_batch_size=4,
                   n_boot=200, mlp_max_epochs=20, mlp_patience=5, n_examples=2)
        return replace(base, **overrides)

    def checkpoint_params(self) -> dict[str, Any]:
        """Arguments of build_tiny_siglip (also the reuse key)."""
        return {"seed": self.seed, "image_size": self.tiny_image_size, "patch_size": self.tiny_patch_size,
                "hidden_size": self.tiny_hidden_size, "layers": self.tiny_layers, "heads": self.tiny_heads,
                "with_text": True}

    def release_params(self) -> dict[str, Any]:
        """Arguments of make_release (also the reuse key)."""
        return {"n_images": self.n_images, "seed": self.seed, "image_size": [self.image_px, self.image_px]}


@dataclass
class StepTime:
    """One step's cost: wall seconds, and CPU seconds of this process and its finished children."""

    step: str
    wall_s: float
    cpu_s: float


@dataclass
class DemoResult:
    """Where everything went, and what each step did."""

    out_dir: Path
    checkpoint: Path
    release: Path
    cache: Path
    model_dir: Path
    finetune_dir: Path
    report_dir: Path
    report_files: dict[str, Path]
    example_images: list[Path]
    prediction: dict[str, Any]
    embedded: int
    skipped: int
    reused: dict[str, bool]
    times: list[StepTime] = field(default_factory=list)
    next_command: str = ""

    @property
    def total_seconds(self) -> float:
        return sum(t.wall_s for t in self.times)

    def format_times(self) -> str:
        """The step timing table printed at the end."""
        lines = [f"  {'step':<34}{'wall s':>8}{'cpu s':>8}"]
        lines += [f"  {t.step:<34}{t.wall_s:>8.1f}{t.cpu_s:>8.1f}" for t in self.times]
        lines.append(f"  {'total':<34}{self.total_seconds:>8.1f}{sum(t.cpu_s for t in self.times):>8.1f}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# helpers


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, once reaped
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _Timer:
    def __init__(self, times: list[StepTime], step: str) -> None:
        self.times, self.step = times, step

    def __enter__(self) -> "_Timer":
        self.w0, self.c0 = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.times.append(StepTime(self.step, time.perf_counter() - self.w0, _cpu_seconds() - self.c0))


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) and m.get("version") == MANIFEST_VERSION else {}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"version": MANIFEST_VERSION, **manifest}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def _reusable(folder: Path, files: tuple[str, ...], recorded: Any, wanted: dict[str, Any]) -> bool:
    """Built before with the same settings, and every file it needs is still there."""
    return recorded == wanted and all((folder / f).is_file() for f in files)


def _build_atomically(final: Path, build: Callable[[Path], Any]) -> None:
    """Build into a temporary sibling, then move it into place: an interrupted build never leaves
    a half folder that a rerun would take for a finished one."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readme(out: Path, s: DemoSettings) -> str:
    return f"""# woundscore demo output

**{DEMO_NOTICE}.**

Made by `wound-compare demo --out {out}` (seed {s.seed}, {s.n_images} generated images). It shows
that every stage runs end to end on this machine; nothing here is a measurement of anything real.

- `{CHECKPOINT_DIR}/`: a tiny SigLIP with random weights (`embed.tiny.build_tiny_siglip`), in the
  layout of google/medsiglip-448 so it loads through the same code.
- `{RELEASE_DIR}/`: generated wound drawings in the SurgWound release format
  (`embed.synthetic.make_release`); labels leave drawn traces (red halo = erythema, yellow patch =
  exudate, ...). Not photographs of wounds.
- `cache.h5`, `models/mlp/`, `finetune/`, `report/`: what the stages made from them.

For the real path (MedSigLIP-448 and the SurgWound release) see the repository README,
section "The real path".
"""


def _release_readme() -> str:
    return (f"# Generated SurgWound-format dataset\n\n**{DEMO_NOTICE}.**\n\n"
            "Written by `embed.synthetic.make_release` for `wound-compare demo`: drawn images, not "
            "photographs; labels leave visible traces on purpose.\n")


# ---------------------------------------------------------------------------------------------
# the demo


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    *,
    n_images: int | None = None,
    seed: int | None = None,
    finetune_steps: int | None = None,
    n_boot: int | None = None,
    quick: bool = False,
    settings: DemoSettings | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage offline on a tiny random SigLIP and a generated release; write a report.

    Args:
        out_dir: the demo folder (created; see the module docstring for its layout).
        n_images, seed, finetune_steps, n_boot: override :class:`DemoSettings` (defaults: 100
            images, seed 0, 30 fine-tune steps, 2,000 bootstrap resamples).
        quick: start from :meth:`DemoSettings.quick` (test size) instead of the defaults.
        settings: full settings (then quick is ignored; the overrides above still apply).
        quiet: no progress bars or per-stage logs (the step headings and results still print).
        echo: where the step headings and results go (default: print to stdout).
    Returns:
        :class:`DemoResult` (paths, the predict JSON, reuse flags, step timings).
    Raises:
        DemoError naming the step, for any stage's error.
    """
    say = echo or (lambda msg: print(msg, flush=True))
    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    overrides = {k: v for k, v in (("n_images", n_images), ("seed", seed), ("finetune_steps", finetune_steps),
                                   ("n_boot", n_boot)) if v is not None}
    s = replace(s, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: list[StepTime] = []
    manifest = _read_manifest(out)
    ckpt, release, cache = out / CHECKPOINT_DIR, out / RELEASE_DIR, out / "cache.h5"
    model_dir, ft_dir, report_dir = out / "models" / "mlp", out / "finetune", out / "report"
    (out / "README.md").write_text(_readme(out, s), encoding="utf-8")
    say(f"woundscore demo -> {out}/")
    say(f"NOTICE: {DEMO_NOTICE}.")

    # 1. checkpoint -------------------------------------------------------------------------
    say("\n[1/6] Tiny random SigLIP checkpoint (vision + text towers)")
    with _Timer(times, "1 tiny random SigLIP"), _step("build the tiny SigLIP"):
        want = s.checkpoint_params()
        reuse_ckpt = _reusable(ckpt, CHECKPOINT_FILES, manifest.get("checkpoint"), want)
        if reuse_ckpt:
            say(f"  reused {ckpt}/ (built before with the same settings)")
        else:
            from woundscore.embed.tiny import build_tiny_siglip

            manifest.pop("checkpoint", None)  # not reusable until the new one is complete
            _write_manifest(out, manifest)
            _build_atomically(ckpt, lambda d: build_tiny_siglip(d, **want))
            manifest["checkpoint"] = want
            _write_manifest(out, manifest)
            say(f"  built {ckpt}/: image {s.tiny_image_size} px, patch {s.tiny_patch_size}, hidden "
                f"{s.tiny_hidden_size}, {s.tiny_layers} blocks, RANDOM weights (see its README.md)")

    # 2. dataset ----------------------------------------------------------------------------
    say(f"\n[2/6] Generated dataset in the SurgWound release format ({s.n_images} images)")
    with _Timer(times, "2 generated dataset"), _step("generate the dataset"):
        want_rel = s.release_params()
        reuse_rel = _reusable(release, RELEASE_FILES, manifest.get("dataset"), want_rel)
        if reuse_rel:
            say(f"  reused {release}/ (generated before with the same settings)")
        else:
            from woundscore.embed.synthetic import make_release

            manifest.pop("dataset", None)  # not reusable until the new one is complete
            _write_manifest(out, manifest)

            def _make(d: Path) -> None:
                make_release(d, s.n_images, seed=s.seed, image_size=(s.image_px, s.image_px), notice=DEMO_NOTICE)
                (d / "README.md").write_text(_release_readme(), encoding="utf-8")

            _build_atomically(release, _make)
            manifest["dataset"] = want_rel
            _write_manifest(out, manifest)
            say(f"  wrote {release}/: {', '.join(RELEASE_FILES)} (base64 JPEGs, {s.image_px} px; "
                "red halo = erythema, yellow patch = exudate, ...)")
        examples = _write_examples(release, out / "example-images", s.n_examples)

    # 3. stats, embed, cache info -----------------------------------------------------------
    say("\n[3/6] wound-embed stats / wound-embed run / wound-cache info")
    with _Timer(times, "3 stats + embed + cache info"), _step("embed"):
        from woundscore.cache.store import cache_info, format_info
        from woundscore.embed.encoder import load_encoder
        from woundscore.embed.run import run_embedding
        from woundscore.embed.sources import format_stats, source_stats

        say(_indent(format_stats(source_stats(release))))
        enc = load_encoder(ckpt)
        enc.notice = DEMO_NOTICE  # the cache provenance carries it; every later artifact copies it
        summary = run_embedding(release, cache, encoder=enc, quiet=quiet,
                                overwrite=not (reuse_ckpt and reuse_rel))  # new model or images: rebuild
        if summary.interrupted:  # Ctrl-C: the batches written are kept; a rerun resumes
            raise KeyboardInterrupt
        if summary.failed:
            raise DemoError(f"embed: {summary.format()}")
        say(_indent(summary.format()))
        say(_indent(format_info(cache_info(cache))))

    # 4. train + predict --------------------------------------------------------------------
    say("\n[4/6] wound-classify train (MLP) / wound-classify predict on one image")
    with _Timer(times, "4 train MLP + predict"), _step("train / predict"):
        from woundscore.classify.metrics import format_table
        from woundscore.classify.scorer import WoundScorer
        from woundscore.classify.train import train_from_cache

        res = train_from_cache(cache, model_dir, model="mlp", seed=s.seed, max_epochs=s.mlp_max_epochs,
                               patience=s.mlp_patience, overwrite=True)
        tr = res.provenance.get("training", {})
        say(_indent(format_table(res.validation, title=(
            f"validation ({res.provenance['split_sizes']['val']} rows), model mlp -> {res.model_dir}  "
            f"[best epoch {tr.get('best_epoch')} of {tr.get('epochs_run')}]"))))
        scorer = WoundScorer.load(model_dir, enc)
        prediction = scorer.score(examples[0])
        say(f"  $ wound-classify predict {model_dir} {examples[0]} --encoder {ckpt}")
        say(_indent(json.dumps(prediction, indent=2)))

    # 5. fine-tune + report -----------------------------------------------------------------
    say(f"\n[5/6] wound-compare finetune ({s.finetune_steps} CPU steps) / wound-compare run")
    with _Timer(times, "5a fine-tune (few CPU steps)"), _step("fine-tune"):
        from woundscore.compare.finetune import finetune

        shutil.rmtree(ft_dir / "trainer", ignore_errors=True)  # a fresh run, not a resume
        ft = finetune(release, ft_dir, model=ckpt, unfreeze_last=min(s.finetune_unfreeze_last, s.tiny_layers),
                      max_steps=s.finetune_steps, batch_size=s.finetune_batch_size, grad_accum=1,
                      lr=s.finetune_lr, warmup_steps=0, device="cpu", seed=s.seed,
                      # the Trainer's per-step log dicts would drown the demo's output: keep only
                      # the stage's own messages (and none with --quiet)
                      quiet=True, log=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr)))
        say(f"  {ft.predictions_path}: {len(ft.ids)} test images; trained {ft.meta['trainable_params']:,} of "
            f"{ft.meta['total_params']:,} parameters in {ft.meta['train_seconds']:.1f} s")
    with _Timer(times, "5b report (probe, MLP, zero-shot)"), _step("report"):
        from woundscore.compare.report import run_comparison

        mlp_params = {k: v for k, v in (("max_epochs", s.mlp_max_epochs), ("patience", s.mlp_patience))
                      if v is not None}
        rep = run_comparison(cache, report_dir, source=release, model=ckpt, finetune_dir=ft_dir,
                             n_boot=s.n_boot, seed=s.seed, mlp_params=mlp_params or None, quiet=quiet)
        say(_indent(_auc_table(rep.metrics)))
        say(_indent(rep.metrics["answer"]["text"], wrap=True))
        skipped = rep.metrics.get("skipped") or {}
        for name, why in skipped.items():
            say(f"  skipped {name}: {why}")

    # 6. where to look next -----------------------------------------------------------------
    nxt = examples[1] if len(examples) > 1 else examples[0]
    next_command = f"wound-classify predict {model_dir} {nxt} --encoder {ckpt}"
    result = DemoResult(
        out_dir=out, checkpoint=ckpt, release=release, cache=cache, model_dir=model_dir, finetune_dir=ft_dir,
        report_dir=report_dir, report_files=dict(rep.files), example_images=examples, prediction=prediction,
        embedded=summary.embedded, skipped=summary.skipped, reused={"checkpoint": reuse_ckpt, "dataset": reuse_rel},
        times=times, next_command=next_command,
    )
    manifest["last_run"] = {"settings": asdict(s), "times": [asdict(t) for t in times],
                            "total_seconds": round(result.total_seconds, 1)}
    _write_manifest(out, manifest)
    say("\n[6/6] Done")
    say(result.format_times())
    say(f"\n  report: {rep.files['report.html']}")
    say(f"          {rep.files['report.md']} (+ metrics.json, roc.png, reliability.png, forest.png)")
    say(f"  NOTICE: {DEMO_NOTICE}.")
    say("\n  Next, score another image:")
    say(f"    {next_command}")
    say("  Real MedSigLIP-448 and the SurgWound release: see README, \"The real path\".")
    return result


# ---------------------------------------------------------------------------------------------


class _step:
    """Turn any stage error into a DemoError that names the step (the stage's own text kept)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (DemoError, KeyboardInterrupt, SystemExit)):
            return False
        raise DemoError(f"demo step '{self.what}' failed: {type(exc).__name__}: {exc}") from exc


def _indent(text: str, *, wrap: bool = False) -> str:
    if wrap:
        import textwrap

        return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(("  " + line) if line else line for line in text.splitlines())


def _fmt_auc(e: Any) -> str:
    if not isinstance(e, dict) or e.get("value") is None:
        return "not estimable"
    ci = f" ({e['low']:.2f}-{e['high']:.2f})" if e.get("low") is not None and e.get("high") is not None else ""
    return f"{e['value']:.3f}{ci}"


def _auc_table(metrics: dict[str, Any], labels: tuple[str, ...] = ("erythema", "exudate")) -> str:
    """Macro ROC AUC and the AUC of the labels with the clearest drawn traces, per method, from
    the report's metrics.json content (what learned something next to what did not)."""
    m = metrics.get("metrics") or {}
    macro, per = m.get("macro_auc") or {}, m.get("per_label") or {}
    n = next((e.get("n") for e in macro.values() if isinstance(e, dict) and e.get("n")), "?")
    head = f"{'method':<11}{'macro AUC (95% CI)':<22}" + "".join(f"{lab + ' AUC':<22}" for lab in labels)
    lines = [f"test split, n={n} images (chance = 0.5):", head.rstrip()]
    for name in macro:
        row = f"{name:<11}{_fmt_auc(macro[name]):<22}"
        row += "".join(f"{_fmt_auc(((per.get(lab) or {}).get(name) or {}).get('auc')):<22}" for lab in labels)
        lines.append(row.rstrip())
    return "\n".join(lines)


def _write_examples(release: Path, folder: Path, n: int) -> list[Path]:
    """The first ``n`` test images of the release as JPEG files (what `predict` takes)."""
    from woundscore.embed.sources import open_source

    test = sorted((smp for smp in open_source(release).samples() if smp.split == "test"),
                  key=lambda smp: smp.image_id)
    if not test:
        raise DemoError(f"{release}: no test image to score")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for smp in test[: max(1, n)]:
        p = folder / Path(smp.image_id).name
        p.write_bytes(smp.read_bytes())
        paths.append(p)
    return paths


__all__ = ["CHECKPOINT_DIR", "DEMO_NOTICE", "DemoError", "DemoResult", "DemoSettings", "RELEASE_DIR", "StepTime",
           "run_demo"]
