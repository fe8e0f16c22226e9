"""`wound-embed run`: embed every image of a source and make the cache follow the source.

Identity is the image id: every id of the source gets its own row, labels and split; identical
bytes under two ids in one chunk share one forward pass, never one row. DataLoader workers read
the bytes, hash them (sha256), skip ids the cache already holds with the same bytes and decode +
preprocess the rest, while the main process runs the encoder on the previous batch. An id whose
bytes changed is re-embedded; labels, splits and annotations follow the source without
re-embedding, and ids the source no longer lists are removed (``CacheWriter.reconcile``). Each batch is one durable append (``CacheWriter``): a ``kill -9`` at any moment
loses at most the batch in flight, and a rerun skips what was written.

Batches are fixed chunks of the source listing (chunk k = samples [k*B, (k+1)*B)), whatever is
already cached, so a rerun after a kill recomputes exactly the missing chunks with the same
composition: its vectors are bit-identical to an uninterrupted run (a matmul's last bits can depend
on the batch it runs in). Under torchrun / accelerate launch, rank r embeds the chunks k with
k % WORLD_SIZE == r into ``part_path(out, r, world)``; rows carry their position in the source
(``order``), so ``wound-cache merge`` of the parts equals a single-process run row for row.

Test hook: ``WOUNDSCORE_TEST_BATCH_DELAY_S`` (seconds, float) sleeps after each written batch, so
crash tests can kill a run in the middle. Never set it otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from woundscore.cache import CacheValueError, CacheWriter, read_cache
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.leakage import LeakageAudit, audit_leakage
from woundscore.cache.reconcile import SourceView
from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES
from woundscore.embed.encoder import ImageEncoder, load_encoder
from woundscore.embed.preprocess import ImageDecodeError, preprocess_bytes
from woundscore.embed.runtime import DEFAULT_MODEL, default_batch_size
from woundscore.embed.samples import ImageReadError, Sample
from woundscore.embed.sources import Source, open_source

# torch (DataLoader) and tqdm are imported where a run starts: `wound-embed --help` must not pay.

log = logging.getLogger("embed")

#: Exit codes of `wound-embed run` (documented in its --help).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
TEST_DELAY_ENV = "WOUNDSCORE_TEST_BATCH_DELAY_S"


class EmbedRunError(WoundscoreError):
    """A run cannot start or go on (bad source, encoder, cache); nothing already written is lost."""


@dataclass
class EmbedSummary:
    """What a run did. ``failed``: [(image_id, reason)]; ``out``: the cache written (the rank's
    part file when sharded)."""

    source: str
    out: str
    total: int = 0
    embedded: int = 0
    skipped: int = 0
    shared: int = 0
    reembedded: int = 0
    reconciled: dict[str, int] = field(default_factory=dict)
    leakage: LeakageAudit | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    stopped_strict: bool = False
    rank: int = 0
    world: int = 1
    compute_dtype: str = ""
    fp32_redone: int = 0
    resume_command: str = ""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def format(self, *, max_failures: int = 20) -> str:
        where = f" (rank {self.rank} of {self.world})" if self.world > 1 else ""
        rate = self.embedded / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            f"{self.out}{where}: {self.embedded} embedded, {self.skipped} skipped as already cached, "
            f"{len(self.failed)} failed, of {self.total} images in {self.wall_s:.1f} s "
            f"({rate:.2f} images/s, {self.compute_dtype})"
        ]
        if self.shared:
            lines.append(f"  {self.shared} images had the same bytes as another image of their batch and shared "
                         "its forward pass (each keeps its own row, labels and split)")
        changes = [f"{n} {what}" for what, n in (
            ("re-embedded (bytes changed)", self.reembedded), ("relabelled", self.reconciled.get("relabelled", 0)),
            ("moved to another split", self.reconciled.get("moved", 0)),
            ("with new annotations", self.reconciled.get("annotations", 0)),
            ("removed (no longer in the source)", self.reconciled.get("removed", 0))) if n]
        if changes:
            lines.append("  the cache follows the source: " + ", ".join(changes))
        if self.fp32_redone:
            lines.append(f"  {self.fp32_redone} batches gave non-finite output and were redone in float32")
        for image_id, reason in self.failed[:max_failures]:
            lines.append(f"  failed: {image_id}: {reason}")
        if len(self.failed) > max_failures:
            lines.append(f"  ... and {len(self.failed) - max_failures} more (see `wound-cache info {self.out}`)")
        if self.stopped_strict:
            lines.append("stopped at the first failure (--strict); images before it are kept")
        if self.leakage is not None:
            lines += self.leakage.summary_lines()
        if self.interrupted:
            lines.append(
                "interrupted: every batch written so far is kept. Resume with the same command "
                f"(already embedded images are skipped):\n  {self.resume_command}"
            )
        return "\n".join(lines)


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world) from RANK / WORLD_SIZE (torchrun, accelerate launch); (0, 1) otherwise."""
    env = os.environ if env is None else env
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        raise EmbedRunError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers") from None
    if world < 1 or not 0 <= rank < world:
        raise EmbedRunError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def part_path(out: str | Path, rank: int, world: int) -> Path:
    """The cache a rank writes: ``emb.h5`` -> ``emb.rank0-of-2.h5`` (the cache itself when world == 1)."""
    out = Path(out)
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}-of-{world}{out.suffix or '.h5'}")


def chunk_indices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Fixed chunks of the source listing this rank embeds: [[k*B, ..., k*B+B-1] for k % world == rank]."""
    return [list(range(s, min(n, s + batch_size))) for k, s in enumerate(range(0, n, batch_size)) if k % world == rank]


class _ChunkDataset:
    """Map-style dataset whose item k is a whole chunk, read, hashed and preprocessed in a worker."""

    def __init__(self, samples: Sequence[Sample], chunks: list[list[int]], spec: Any, known: dict[str, str]) -> None:
        self.samples, self.chunks, self.spec, self.known = samples, chunks, spec, known

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        ok, shas, pix, pixels, skipped, failed = [], [], [], [], [], []
        first: dict[str, int] = {}  # sha256 -> its pixels' row: identical bytes share one forward pass
        for i in self.chunks[k]:
            s = self.samples[i]
            try:
                data = s.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                if self.known.get(s.image_id) == sha:
                    skipped.append(i)
                    continue
                if sha not in first:
                    pixels.append(preprocess_bytes(data, self.spec, origin=s.origin))
                    first[sha] = len(pixels) - 1
            except (ImageReadError, ImageDecodeError) as e:
                failed.append((i, str(e)))
                continue
            except Exception as e:  # one image must never stop the run: record it, go on
                failed.append((i, f"{s.origin}: {type(e).__name__}: {e}"))
                continue
            ok.append(i)
            shas.append(sha)
            pix.append(first[sha])
        return {"k": k, "ok": ok, "sha": shas, "pix": pix, "pixels": torch.stack(pixels) if pixels else None,
                "skipped": skipped, "failed": failed}


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_workers() -> int:
    """Decode workers: leave the cores to the model on small machines, up to 4 elsewhere."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class _StopOnSigint:
    """Ctrl-C (or SIGTERM, e.g. a batch scheduler's time limit) stops the run at once: waiting for
    decode workers (a file that blocks, a slow disk) or inside the encoder forward, nothing is
    half-written. Only while a batch is being appended to the cache (one durable write) does the
    stop wait for that append to end, so the cache ends on a whole batch. A second signal during
    the append stops at once too (the cache is crash-safe)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_append = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        stop_now = self.requested or not self.in_append
        self.requested = True
        sys.stderr.write(f"\n{what}: stopping now (every batch already written is kept)\n" if stop_now else
                         f"\n{what}: stopping once this batch is written (press Ctrl-C again to stop at once)\n")
        sys.stderr.flush()
        if stop_now:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def appending(self) -> Iterator[None]:
        self.in_append = True
        try:
            yield
        finally:
            self.in_append = False

    def __enter__(self) -> "_StopOnSigint":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Batches:
    """Writes the worker's chunks to the cache, one durable append each, and counts in the summary."""

    def __init__(self, writer: CacheWriter, enc: ImageEncoder, samples: Sequence[Sample], summary: EmbedSummary) -> None:
        self.writer, self.enc, self.samples, self.summary = writer, enc, samples, summary
        self.cached = writer.known_ids()  # id -> sha256 before this run
        self.stop = _StopOnSigint()  # replaced by the running one in _embed_chunks
        self.extra_names = list(dict.fromkeys(list(EXTRA_NAMES) + [k for s in samples for k in s.extras]))

    def fail(self, i: int, reason: str) -> None:
        self.writer.record_failure(self.samples[i].image_id, reason)
        self.summary.failed.append((self.samples[i].image_id, reason))

    def write(self, item: dict[str, Any]) -> None:
        """Embed one worker item (ok rows' pixels), never writing NaN/inf, and append it."""
        for i, reason in item["failed"]:
            self.fail(i, reason)
        self.summary.skipped += len(item["skipped"])
        ok, shas = list(item["ok"]), list(item["sha"])
        feats = np.zeros((0, self.enc.dim), np.float32)
        if item["pixels"] is not None:
            unique, finite_u = self.enc.embed_pixels_checked(item["pixels"])
            pix = np.asarray(item["pix"], dtype=np.int64)
            feats, finite = unique[pix], finite_u[pix]  # one forward pass per distinct image
            self.summary.shared += len(ok) - len(unique)
            for j in np.flatnonzero(~finite):  # name the image
                self.fail(ok[j], f"{self.samples[ok[j]].origin}: non-finite embedding even in float32")
            keep = np.flatnonzero(finite)
            ok, shas, feats = [ok[j] for j in keep], [shas[j] for j in keep], feats[keep]
        if ok or item["failed"]:
            with self.stop.appending():  # the one part a Ctrl-C lets finish
                self.summary.embedded += self._append(ok, shas, feats)
            self.summary.reembedded += sum(self.samples[i].image_id in self.cached for i in ok)

    def _append(self, idx: list[int], shas: list[str], feats: np.ndarray) -> int:
        """One durable write. A row the cache refuses (an image id already stored with other
        bytes: the file changed since) becomes a failure instead of ending the run."""
        try:
            return self._put(idx, shas, feats, list(range(len(idx))))
        except CacheValueError:
            if not idx:
                raise
        written = 0
        for j in range(len(idx)):  # rare: find the refused row(s); vectors are unchanged
            try:
                written += self._put(idx, shas, feats, [j])
            except CacheValueError as e:
                self.fail(idx[j], f"{self.samples[idx[j]].origin}: {str(e).split(': ', 1)[-1]}")
        return written

    def _put(self, idx: list[int], shas: list[str], feats: np.ndarray, sel: list[int]) -> int:
        batch = [self.samples[idx[j]] for j in sel]
        labels = (np.stack([s.labels for s in batch]).astype(np.int8) if batch
                  else np.zeros((0, len(LABEL_NAMES)), np.int8))
        extras = {name: [s.extras.get(name, "") for s in batch] for name in self.extra_names}
        return self.writer.append([s.image_id for s in batch], [shas[j] for j in sel], [s.split for s in batch],
                                  labels, extras, feats[sel], order=np.asarray([idx[j] for j in sel], dtype=np.int64),
                                  replace_changed=True)

    def source_view(self, indices: Sequence[int]) -> SourceView:
        """What the source says about the images ``indices`` (this rank's chunks)."""
        batch = [self.samples[i] for i in indices]
        labels = (np.stack([s.labels for s in batch]).astype(np.int8) if batch
                  else np.zeros((0, len(LABEL_NAMES)), np.int8))
        return SourceView([s.image_id for s in batch], [s.split for s in batch], labels,
                          {name: [s.extras.get(name, "") for s in batch] for name in self.extra_names},
                          np.asarray(list(indices), dtype=np.int64))


def _resume_command() -> str:
    argv = list(sys.argv) or ["wound-embed"]
    argv[0] = "wound-embed" if argv[0].endswith(("__main__.py", "cli.py")) else Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv if a != "--overwrite")  # resuming must not rebuild


def _provenance(enc: ImageEncoder, src: Source) -> dict[str, Any]:
    provenance = enc.provenance()
    # generated images (the source's marker) and random weights (the checkpoint's) both say so
    notice = "; ".join(dict.fromkeys(n for n in (provenance.get("notice"), src.notice) if n))
    return {**provenance, "notice": notice} if notice else provenance


def _embed_chunks(batches: _Batches, chunks: list[list[int]], *, workers: int, strict: bool, quiet: bool) -> None:
    """Run the chunks through the decode workers and the encoder until done, --strict or Ctrl-C."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    summary, enc = batches.summary, batches.enc
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    loader = DataLoader(_ChunkDataset(batches.samples, chunks, enc.spec, batches.cached),
                        batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
                        persistent_workers=False, pin_memory=enc.device.startswith("cuda"))
    where = f" rank {summary.rank}" if summary.world > 1 else ""
    bar = tqdm(total=summary.total, unit="img", desc=f"embedding{where}", disable=quiet, dynamic_ncols=True,
               smoothing=0.1)
    with _StopOnSigint() as stop, bar:
        batches.stop = stop
        try:
            for item in loader:
                batches.write(item)
                bar.update(len(chunks[item["k"]]))
                if delay:
                    time.sleep(delay)
                if strict and summary.failed:
                    summary.stopped_strict = True
                    break
                if stop.requested:
                    summary.interrupted = True
                    break
        except KeyboardInterrupt:  # raised by the handler outside an append: every written batch is whole
            summary.interrupted = True
        finally:
            del loader  # shuts the workers down before the cache is consolidated


def run_embedding(source: str | Path, out: str | Path, *, model: str | Path = DEFAULT_MODEL,
                  revision: str | None = None, batch_size: int | None = None, device: str = "auto",
                  dtype: str = "auto", workers: int | None = None, strict: bool = False, overwrite: bool = False,
                  quiet: bool = False, fast_decode: bool = False, encoder: ImageEncoder | None = None,
                  shard: tuple[int, int] | None = None) -> EmbedSummary:
    """Embed every image of ``source`` into the cache ``out`` (resumable, sharded, crash-safe).

    The options are `wound-embed run`'s (model, revision, device, dtype, fast_decode: see
    :func:`embed.encoder.load_encoder`). ``encoder``: an already loaded ImageEncoder (then those five
    are ignored); ``shard``: (rank, world), default from RANK / WORLD_SIZE.
    Returns an EmbedSummary (``exit_code``: 0 all embedded, 3 some failed, 130 interrupted).
    Raises SourceError / LabelError (before anything is embedded), EncoderLoadError, CacheError.
    """
    t0 = time.perf_counter()
    rank, world = shard if shard is not None else shard_from_env()
    if batch_size is not None and batch_size < 1:  # a library caller; the CLI's IntRange checks too
        raise EmbedRunError(f"batch size must be >= 1, got {batch_size}")
    # Labels first: a label problem is an error before any model is loaded or anything written.
    src = open_source(source)
    samples = src.samples()
    enc = encoder or load_encoder(model, revision, device=device, dtype=dtype, fast_decode=fast_decode)
    bs = int(batch_size or default_batch_size(enc.device))
    chunks, target = chunk_indices(len(samples), bs, rank, world), part_path(out, rank, world)
    summary = EmbedSummary(source=str(source), out=str(target), total=sum(map(len, chunks)),
                           rank=rank, world=world, compute_dtype=str(enc.dtype).replace("torch.", ""),
                           resume_command=_resume_command())
    redone_before = enc.fp32_redone
    with CacheWriter(target, _provenance(enc, src), overwrite=overwrite) as writer:
        batches = _Batches(writer, enc, samples, summary)
        # labels, splits and annotations follow the source; ids it no longer lists go (on close)
        summary.reconciled = writer.reconcile(batches.source_view([i for c in chunks for i in c]))
        _embed_chunks(batches, chunks, strict=strict, quiet=quiet,
                      workers=default_workers() if workers is None else int(workers))
    if world == 1 and not summary.interrupted:  # a shard holds only its share: `wound-cache info` audits the merge
        summary.leakage = audit_leakage(read_cache(target))
    summary.fp32_redone = enc.fp32_redone - redone_before
    summary.wall_s = time.perf_counter() - t0
    if world > 1 and not summary.interrupted:
        log.info("rank %d of %d done; when every rank is done: wound-cache merge %s --out %s",
                 rank, world, " ".join(str(part_path(out, r, world)) for r in range(world)), out)
    return summary

