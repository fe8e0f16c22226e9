"""Issue 7, crashes: `wound-embed run` killed with SIGKILL at random moments and rerun each time
ends with the cache an uninterrupted run makes (same ids, order, bit-identical vectors, verify
clean); Ctrl-C (SIGINT) stops after the current batch, exits 130 and says how to resume.

The runs are real processes running the `wound-embed run` command. To keep the test fast they are
forked from a forkserver that has imported torch and transformers once (a fresh interpreter
spends ~8 s importing them); the forkserver has never run a kernel, so forking it is safe.
``WOUNDSCORE_TEST_BATCH_DELAY_S`` (test-only, see embed/run.py) slows each batch so that kills land
in the middle of the work.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from woundscore.embed.run import TEST_DELAY_ENV

PRELOAD = ["torch", "transformers", "transformers.models.siglip.modeling_siglip", "h5py", "woundscore.embed.cli",
           "woundscore.embed.run", "woundscore.embed.encoder", "woundscore.embed.sources", "woundscore.cache"]


def _cli_child(args: list[str], log: str, delay: float) -> None:
    """Run `wound-embed <args>` in this process, stdout+stderr to ``log``; exit with its code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ[TEST_DELAY_ENV] = str(delay)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    sys.argv = ["wound-embed", *args]
    import threading

    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore; a SIGKILLed child cannot unregister
    # it, and the resource tracker would warn about "leaked semaphores" at exit.
    tqdm.set_lock(threading.RLock())
    from woundscore.embed.cli import cli

    try:
        cli.main(args=args, prog_name="wound-embed", standalone_mode=True)
    except SystemExit as e:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)
    os._exit(0)


def _noop() -> None:
    os._exit(0)


@pytest.fixture(scope="module")
def ctx():
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(PRELOAD)
    p = c.Process(target=_noop)  # start the forkserver (the imports) now, not inside a timing
    p.start()
    p.join(300)
    return c


def _start(ctx, args, log, delay):
    p = ctx.Process(target=_cli_child, args=(args, str(log), delay))
    p.start()
    return p


def _run_args(source, out, model, batch_size=2):
    return ["run", str(source), "--out", str(out), "--model", str(model), "--batch-size", str(batch_size),
            "--workers", "0", "--quiet"]


def _kill_and_resume(ctx, tmp_path, source, model, kills: int, seed: int, delay: float):
    from woundscore.cache import read_cache, read_failures, verify_cache

    log = tmp_path / "log.txt"
    # the uninterrupted run, in the same kind of process
    base = tmp_path / "base.h5"
    t0 = time.monotonic()
    p = _start(ctx, _run_args(source, base, model), log, delay)
    p.join(120)
    duration = time.monotonic() - t0
    assert p.exitcode == 0, log.read_text()[-2000:]

    out = tmp_path / "killed.h5"
    rng = random.Random(seed)
    killed_mid_run = 0
    for _ in range(kills):
        p = _start(ctx, _run_args(source, out, model), log, delay)
        time.sleep(rng.uniform(0.0, 0.9) * duration)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            killed_mid_run += 1
        p.join(60)
        assert p.exitcode in (0, -signal.SIGKILL)
        if out.exists():  # a killed run's batches are whole parts: the cache verifies at every kill
            assert verify_cache(out) == []  # (was `== [] or True`: asserted nothing, issue 16.3)
    p = _start(ctx, _run_args(source, out, model), log, delay)
    p.join(120)
    assert p.exitcode == 0, log.read_text()[-2000:]
    assert killed_mid_run >= 1
    print(f"baseline run {duration:.2f} s; {killed_mid_run} of {kills} kills landed mid-run")

    assert verify_cache(out) == []
    a, b = read_cache(base), read_cache(out)
    assert a.ids.tolist() == b.ids.tolist()
    assert a.sha256.tolist() == b.sha256.tolist()
    assert a.split.tolist() == b.split.tolist() and np.array_equal(a.Y, b.Y)
    assert np.array_equal(a.X, b.X)  # bit-identical
    assert read_failures(out) == read_failures(base)
    return killed_mid_run


def test_sigkill_three_times_then_resume_equals_uninterrupted(ctx, tmp_path, mini_release, tiny_siglip_dir):
    _kill_and_resume(ctx, tmp_path, mini_release, tiny_siglip_dir, kills=3, seed=1, delay=0.08)


@pytest.mark.slow
def test_sigkill_twenty_times_then_resume_equals_uninterrupted(ctx, tmp_path, mini_release, tiny_siglip_dir):
    killed = _kill_and_resume(ctx, tmp_path, mini_release, tiny_siglip_dir, kills=20, seed=2, delay=0.3)
    assert killed >= 10


def test_sigint_stops_after_the_batch_and_says_how_to_resume(ctx, tmp_path, mini_release, tiny_siglip_dir):
    from woundscore.cache import read_cache, verify_cache

    out = tmp_path / "int.h5"
    log = tmp_path / "int.txt"
    p = _start(ctx, _run_args(mini_release, out, tiny_siglip_dir), log, 0.3)
    deadline = time.monotonic() + 60
    # wait until the first batch is durable, then Ctrl-C
    while time.monotonic() < deadline and not (Path(str(out) + ".parts").is_dir() and
                                               any(Path(str(out) + ".parts").glob("*.part"))):
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGINT)
    p.join(60)
    text = log.read_text()
    assert p.exitcode == 130, text[-2000:]
    assert ("Ctrl-C: stopping now (every batch already written is kept)" in text
            or "Ctrl-C: stopping once this batch is written" in text)
    assert "interrupted: every batch written so far is kept. Resume with the same command" in text
    assert f"wound-embed run {mini_release} --out {out}" in text
    assert verify_cache(out) == []  # consolidated, clean
    n = len(read_cache(out))
    assert 0 < n < 30 and n % 2 == 0  # whole batches only
    # the resume command completes it
    p = _start(ctx, _run_args(mini_release, out, tiny_siglip_dir), log, 0.0)
    p.join(60)
    assert p.exitcode == 0 and len(read_cache(out)) == 30


def test_sigterm_is_a_graceful_stop_too(ctx, tmp_path, labels_csv_dir, tiny_siglip_dir):
    """A batch scheduler's SIGTERM (time limit) stops after the batch like Ctrl-C."""
    from woundscore.cache import read_cache, verify_cache

    out = tmp_path / "term.h5"
    log = tmp_path / "term.txt"
    p = _start(ctx, _run_args(labels_csv_dir, out, tiny_siglip_dir), log, 0.3)
    parts = Path(str(out) + ".parts")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (parts.is_dir() and any(parts.glob("*.part"))):
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGTERM)
    p.join(60)
    text = log.read_text()
    assert p.exitcode == 130, text[-2000:]
    assert ("SIGTERM: stopping now (every batch already written is kept)" in text
            or "SIGTERM: stopping once this batch is written" in text)
    assert verify_cache(out) == [] and 0 < len(read_cache(out)) < 16
