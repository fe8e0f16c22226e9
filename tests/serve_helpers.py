"""Helpers of tests/test_serve.py: build a model folder from the tiny random SigLIP, start
`wound-serve` in a subprocess on a free 127.0.0.1 port, craft hostile request bodies."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest

# Run inside the server subprocess: test hooks around the real `wound-serve` command.
#   WS_TEST_LOAD_GATE: loading waits until this file exists (readiness before load)
#   WS_TEST_FORWARD_DELAY: seconds every batch forward sleeps first (a request in flight for SIGTERM)
SERVER_SCRIPT = r'''
import os, sys, time
from woundscore.classify import scorer as S
gate, delay = os.environ.get("WS_TEST_LOAD_GATE"), float(os.environ.get("WS_TEST_FORWARD_DELAY", "0"))
_load, _batch = S.WoundScorer.load.__func__, S.WoundScorer.score_prepared
def load(cls, *a, **k):
    while gate and not os.path.exists(gate):
        time.sleep(0.05)
    return _load(cls, *a, **k)
def score_prepared(self, items, names):
    time.sleep(delay)
    return _batch(self, items, names)
S.WoundScorer.load = classmethod(load)
S.WoundScorer.score_prepared = score_prepared
from woundscore.classify.serve_cli import main
main(prog_name="wound-serve")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `wound-serve` subprocess; its stdout+stderr go to ``log``."""

    def __init__(self, work: Path, model_dir: Path, encoder: Path, *args: str, env: dict[str, str] | None = None,
                 name: str = "server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"{name}.log"
        self.tmpdir = work / f"{name}-tmp"
        self.tmpdir.mkdir(exist_ok=True)
        script = work / "serve_under_test.py"
        script.write_text(SERVER_SCRIPT)
        full_env = {k: v for k, v in os.environ.items() if k != "WOUNDSCORE_API_TOKEN"}
        full_env.update({"TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1", **(env or {})})
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), str(model_dir), "--encoder", str(encoder),
                                      "--device", "cpu", "--port", str(self.port), *args],
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=full_env)

    def wait(self, path: str = "/readyz", timeout: float = 180.0) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} not 200 after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._logf.close()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~60-byte PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def noise_png(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(mini_release: Path, mini_mlp, tmp_path_factory):
    """(work folder, the shared mini MLP folder (fixtures_model.mini_mlp), 8 image files in work)."""
    from woundscore.embed.sources import open_source

    work = tmp_path_factory.mktemp("serve")
    model_dir = mini_mlp[1]
    images = []
    for s in open_source(mini_release).samples()[:8]:
        f = work / Path(s.image_id).name
        f.write_bytes(s.read_bytes())
        images.append(f)
    return work, model_dir, images


@contextlib.contextmanager
def ready_client(app, timeout: float = 120.0):
    """``with ready_client(create_app(...)) as c``: a started fastapi TestClient once /readyz is 200."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        t_end = time.monotonic() + timeout
        while c.get("/readyz").status_code != 200:
            if time.monotonic() > t_end:
                raise TimeoutError(f"/readyz not 200 after {timeout} s: {c.get('/readyz').text}")
            time.sleep(0.05)
        yield c
