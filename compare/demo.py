"""`wound-compare demo`: the whole pipeline offline, on a tiny random model and generated images.

One call runs every stage through the same library function its own command calls (one step
function each, below) on a tiny random SigLIP (``embed.tiny``) and a generated SurgWound-format
release (``embed.synthetic``); what it prints and writes: README, section "What `make demo` does",
and :func:`_readme` (the README.md it writes into OUT). A rerun reuses the checkpoint and the
dataset when ``demo.json`` says they were built with the same settings (and their files are
there), and the cache resumes; the model, fine-tune and report are made again. Everything made
here carries :data:`DEMO_NOTICE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from woundscore.cache import cache_info, format_info
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import SPLITS
from woundscore.cache.util import atomic_write_text
from woundscore.classify.metrics import format_table
from woundscore.classify.scorer import WoundScorer
from woundscore.classify.train import train_from_cache
from woundscore.compare.headline import headline_blocks
from woundscore.compare.report import run_comparison
from woundscore.embed.encoder import load_encoder
from woundscore.embed.run import run_embedding
from woundscore.embed.sources import format_stats, open_source, source_stats
from woundscore.embed.synthetic import make_release
from woundscore.embed.tiny import build_tiny_siglip

#: What every demo output says (cache provenance "notice" -> model provenance -> predict JSON,
#: report banner).
DEMO_NOTICE = ("DEMO: random weights (a tiny random SigLIP, not MedSigLIP) and generated images; "
               "these numbers mean nothing clinically")
CHECKPOINT_DIR = "tiny-siglip-RANDOM-WEIGHTS"
RELEASE_DIR = "SurgWound-GENERATED"
MANIFEST = "demo.json"
MANIFEST_VERSION = 1
#: Files a usable tiny checkpoint folder has (the encoder, zero-shot and fine-tune read them).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "spiece.model",
                    "tokenizer_config.json")
RELEASE_FILES = tuple(f"{s}_{k}.json" for s in SPLITS for k in ("question", "report"))


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
    def quick(cls) -> "DemoSettings":
        """Test-sized settings (40 images, 1 fine-tune step, 200 resamples, short MLP)."""
        return cls(n_images=40, image_px=64, tiny_hidden_size=32, finetune_steps=1, finetune_batch_size=4,
                   n_boot=200, mlp_max_epochs=20, mlp_patience=5, n_examples=2)

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


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, once reaped
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class _Run:
    """One demo run: settings, where things go, the manifest, the step timings and the printer."""

    s: DemoSettings
    out: Path
    say: Callable[[str], None]
    quiet: bool
    manifest: dict[str, Any]
    times: list[StepTime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ckpt, self.release, self.cache = self.out / CHECKPOINT_DIR, self.out / RELEASE_DIR, self.out / "cache.h5"
        self.model_dir, self.ft_dir = self.out / "models" / "mlp", self.out / "finetune"
        self.report_dir = self.out / "report"

    @contextlib.contextmanager
    def stage(self, timing: str, what: str) -> Iterator[None]:
        """Time a step (wall and CPU) and turn any stage error into a DemoError naming the step
        (the stage's own text kept)."""
        w0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            yield
        except DemoError:
            raise
        except Exception as exc:  # noqa: BLE001 - any stage's error, reported with its step
            raise DemoError(f"demo step '{what}' failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.times.append(StepTime(timing, time.perf_counter() - w0, _cpu_seconds() - c0))

    def save_manifest(self) -> None:
        text = json.dumps({"version": MANIFEST_VERSION, **self.manifest}, indent=2)
        atomic_write_text(self.out / MANIFEST, text + "\n")

    def reuse_or_build(self, key: str, folder: Path, files: tuple[str, ...], want: dict[str, Any],
                       build: Callable[[Path], Any]) -> bool:
        """True when ``folder`` was built before with ``want`` and is complete; else build it
        (atomically) and record ``want`` under ``key`` once it is complete."""
        if _reusable(folder, files, self.manifest.get(key), want):
            return True
        self.manifest.pop(key, None)  # not reusable until the new one is complete
        self.save_manifest()
        _build_atomically(folder, build)
        self.manifest[key] = want
        self.save_manifest()
        return False


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) and m.get("version") == MANIFEST_VERSION else {}


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
- `cache.h5`, `models/mlp/`, `finetune/`, `report/`: what the stages made from them;
  `example-images/`: a few test images as JPEG files (for predict); `demo.json`: what was built
  with which settings (the rerun's reuse check) and the step timings.

For the real path (MedSigLIP-448 and the SurgWound release) see the repository README,
section "The real path".
"""


def _checkpoint_and_dataset(r: _Run) -> tuple[bool, bool, list[Path]]:
    """Steps 1 and 2: the tiny checkpoint and the generated release (each reused when built before
    with the same settings); the example images. Returns (checkpoint reused, dataset reused, examples)."""
    s = r.s
    r.say("\n[1/6] Tiny random SigLIP checkpoint (vision + text towers)")
    with r.stage("1 tiny random SigLIP", "build the tiny SigLIP"):
        want = s.checkpoint_params()
        reuse_ckpt = r.reuse_or_build("checkpoint", r.ckpt, CHECKPOINT_FILES, want,
                                      lambda d: build_tiny_siglip(d, **want))
        r.say(f"  reused {r.ckpt}/ (built before with the same settings)" if reuse_ckpt else
              f"  built {r.ckpt}/: image {s.tiny_image_size} px, patch {s.tiny_patch_size}, hidden "
              f"{s.tiny_hidden_size}, {s.tiny_layers} blocks, RANDOM weights (see its README.md)")

    r.say(f"\n[2/6] Generated dataset in the SurgWound release format ({s.n_images} images)")
    with r.stage("2 generated dataset", "generate the dataset"):
        def make(d: Path) -> None:
            make_release(d, s.n_images, seed=s.seed, image_size=(s.image_px, s.image_px), notice=DEMO_NOTICE)
            (d / "README.md").write_text(
                f"# Generated SurgWound-format dataset\n\n**{DEMO_NOTICE}.**\n\nWritten by "
                "`embed.synthetic.make_release` for `wound-compare demo`: drawn images, not photographs; "
                "labels leave visible traces on purpose.\n", encoding="utf-8")

        reuse_rel = r.reuse_or_build("dataset", r.release, RELEASE_FILES, s.release_params(), make)
        r.say(f"  reused {r.release}/ (generated before with the same settings)" if reuse_rel else
              f"  wrote {r.release}/: {', '.join(RELEASE_FILES)} (base64 JPEGs, {s.image_px} px; "
              "red halo = erythema, yellow patch = exudate, ...)")
        examples = _write_examples(r.release, r.out / "example-images", s.n_examples)
    return reuse_ckpt, reuse_rel, examples


def _embed(r: _Run, rebuild: bool) -> tuple[Any, Any]:
    """Step 3: stats, embed (resumes unless ``rebuild``), cache info. Returns (encoder, run summary)."""
    r.say("\n[3/6] wound-embed stats / wound-embed run / wound-cache info")
    with r.stage("3 stats + embed + cache info", "embed"):
        r.say(_indent(format_stats(source_stats(r.release))))
        enc = load_encoder(r.ckpt)
        enc.notice = DEMO_NOTICE  # the cache provenance carries it; every later artifact copies it
        summary = run_embedding(r.release, r.cache, encoder=enc, quiet=r.quiet, overwrite=rebuild)
        if summary.interrupted:  # Ctrl-C: the batches written are kept; a rerun resumes
            raise KeyboardInterrupt
        if summary.failed:
            raise DemoError(f"embed: {summary.format()}")
        r.say(_indent(summary.format()))
        r.say(_indent(format_info(cache_info(r.cache))))
    return enc, summary


def _train_and_predict(r: _Run, enc: Any, example: Path) -> dict[str, Any]:
    """Step 4: train the MLP on the cache, score one example image. Returns the predict JSON."""
    r.say("\n[4/6] wound-classify train (MLP) / wound-classify predict on one image")
    with r.stage("4 train MLP + predict", "train / predict"):
        res = train_from_cache(r.cache, r.model_dir, model="mlp", seed=r.s.seed, max_epochs=r.s.mlp_max_epochs,
                               patience=r.s.mlp_patience, overwrite=True)
        tr = res.provenance.get("training", {})
        r.say(_indent(format_table(res.validation, title=(
            f"validation ({res.provenance['split_sizes']['val']} rows), model mlp -> {res.model_dir}  "
            f"[best epoch {tr.get('best_epoch')} of {tr.get('epochs_run')}]"))))
        prediction = WoundScorer.load(r.model_dir, enc).score(example)
        r.say(f"  $ wound-classify predict {r.model_dir} {example} --encoder {r.ckpt}")
        r.say(_indent(json.dumps(prediction, indent=2)))
    return prediction


def _finetune_and_report(r: _Run) -> Any:
    """Step 5: a few CPU fine-tune steps, then the comparison report. Returns the report result."""
    s = r.s
    r.say(f"\n[5/6] wound-compare finetune ({s.finetune_steps} CPU steps) / wound-compare run")
    with r.stage("5a fine-tune (few CPU steps)", "fine-tune"):
        from woundscore.compare.finetune import finetune  # torch + transformers' Trainer: seconds to import

        shutil.rmtree(r.ft_dir / "trainer", ignore_errors=True)  # a fresh run, not a resume
        ft = finetune(r.release, r.ft_dir, model=r.ckpt, unfreeze_last=min(s.finetune_unfreeze_last, s.tiny_layers),
                      max_steps=s.finetune_steps, batch_size=s.finetune_batch_size, grad_accum=1,
                      lr=s.finetune_lr, warmup_steps=0, device="cpu", seed=s.seed,
                      # the Trainer's per-step log dicts would drown the demo's output: keep only
                      # the stage's own messages (and none with --quiet)
                      quiet=True, log=(lambda m: None) if r.quiet else (lambda m: print(m, file=sys.stderr)))
        r.say(f"  {ft.predictions_path}: {len(ft.ids)} test images; trained {ft.meta['trainable_params']:,} of "
              f"{ft.meta['total_params']:,} parameters in {ft.meta['train_seconds']:.1f} s")
    with r.stage("5b report (probe, MLP, zero-shot)", "report"):
        mlp_params = {k: v for k, v in (("max_epochs", s.mlp_max_epochs), ("patience", s.mlp_patience))
                      if v is not None}
        rep = run_comparison(r.cache, r.report_dir, source=r.release, model=r.ckpt, finetune_dir=r.ft_dir,
                             n_boot=s.n_boot, seed=s.seed, mlp_params=mlp_params or None, quiet=r.quiet,
                             seeds=5)  # the MLP's seed spread: cheap on the demo's 70 train rows
        r.say(_indent(_auc_table(rep.metrics)))
        for kind, body in headline_blocks(rep.metrics["headline"], len(rep.metrics["methods"])):
            r.say(_indent("\n".join(f"- {x}" for x in body) if kind == "list" else body, wrap=kind != "list"))
        deploy = rep.metrics.get("deploy") or {}
        if deploy.get("command"):  # the report's best deployable head, one command
            r.say(f"  deploy {deploy['deployable']}: {deploy['command']}")
        for name, why in (rep.metrics.get("skipped") or {}).items():
            r.say(f"  skipped {name}: {why}")
    return rep


def _finish(r: _Run, result: DemoResult) -> None:
    """Step 6: record the run in the manifest; print the timings, the report and what to try next."""
    r.manifest["last_run"] = {"settings": asdict(r.s), "times": [asdict(t) for t in r.times],
                              "total_seconds": round(result.total_seconds, 1)}
    r.save_manifest()
    r.say("\n[6/6] Done")
    r.say(result.format_times())
    r.say(f"\n  report: {result.report_files['report.html']}")
    r.say(f"          {result.report_files['report.md']} (+ metrics.json, roc.png, reliability.png, forest.png)")
    r.say(f"  NOTICE: {DEMO_NOTICE}.")
    r.say("\n  Next, score another image:")
    r.say(f"    {result.next_command}")
    r.say("  Real MedSigLIP-448 and the SurgWound release: see README, \"The real path\".")


def run_demo(out_dir: str | os.PathLike = "demo_out", *, n_images: int | None = None, seed: int | None = None,
             quick: bool = False, quiet: bool = False, echo: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage offline on a tiny random SigLIP and a generated release; write a report.

    ``n_images`` and ``seed`` override :class:`DemoSettings` (``quick``: :meth:`DemoSettings.quick`,
    test size); ``quiet``: no progress bars or stage logs (step headings and results still go to
    ``echo``, default stdout). Returns :class:`DemoResult`; raises DemoError naming the step.
    """
    s = DemoSettings.quick() if quick else DemoSettings()
    s = replace(s, **{k: v for k, v in (("n_images", n_images), ("seed", seed)) if v is not None})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = _Run(s=s, out=out, say=echo or (lambda msg: print(msg, flush=True)), quiet=quiet, manifest=_read_manifest(out))
    (out / "README.md").write_text(_readme(out, s), encoding="utf-8")
    r.say(f"woundscore demo -> {out}/")
    r.say(f"NOTICE: {DEMO_NOTICE}.")

    reuse_ckpt, reuse_rel, examples = _checkpoint_and_dataset(r)
    enc, summary = _embed(r, rebuild=not (reuse_ckpt and reuse_rel))  # new model or images: rebuild
    prediction = _train_and_predict(r, enc, examples[0])
    rep = _finetune_and_report(r)
    result = DemoResult(
        out_dir=out, checkpoint=r.ckpt, release=r.release, cache=r.cache, model_dir=r.model_dir,
        finetune_dir=r.ft_dir, report_dir=r.report_dir, report_files=dict(rep.files), example_images=examples,
        prediction=prediction, embedded=summary.embedded, skipped=summary.skipped,
        reused={"checkpoint": reuse_ckpt, "dataset": reuse_rel}, times=r.times,
        next_command=f"wound-classify predict {r.model_dir} {examples[min(1, len(examples) - 1)]} --encoder {r.ckpt}",
    )
    _finish(r, result)
    return result


def _indent(text: str, *, wrap: bool = False) -> str:
    if wrap:
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
    test = sorted((smp for smp in open_source(release).samples() if smp.split == "test"),
                  key=lambda smp: smp.image_id)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / Path(smp.image_id).name for smp in test[: max(1, n)]]
    for p, smp in zip(paths, test):
        p.write_bytes(smp.read_bytes())
    return paths
