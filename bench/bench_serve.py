"""The scoring service under load: throughput and p50/p99 latency at concurrency 1, 4, 16 with
micro-batching on and off, the service vs offline `wound-embed run` at concurrency 8 (measured in
the same run), and cold start (process start -> ready) broken into import, load, first forward.

The encoder is the real MedSigLIP-448 architecture with RANDOM weights (speed does not depend on
weight values; outputs mean nothing); ``--layers N`` truncates the tower to N of its 27 blocks (same
per-block cost, same 448x448 input) so a shared 2-core CPU can finish in minutes -- the tables say
which. The head is a logistic probe fitted on synthetic vectors with the encoder's identity.
Everything runs on 127.0.0.1; request count and time are bounded.

Usage:  .venv/bin/python bench/bench_serve.py [--layers 27] [--requests 16] [--cold-full]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def make_checkpoint(out: Path, layers: int | None) -> Path:
    """A vision-only random checkpoint of the MedSigLIP-448 architecture (first ``layers`` blocks)."""
    import torch
    from transformers import SiglipImageProcessor

    m = C.random_vision_model(layers=layers).to(torch.bfloat16)
    m.config.woundscore_notice = "random weights - benchmark only"
    m.save_pretrained(out, safe_serialization=True)
    s = m.config.image_size
    SiglipImageProcessor(size={"height": s, "width": s}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                         resample=2).to_json_file(out / "preprocessor_config.json")
    return out


def make_model_dir(ckpt: Path, out: Path) -> Path:
    """A probe on synthetic 1152-d vectors whose provenance names ``ckpt`` as its encoder."""
    from woundscore.classify.synthetic import synthetic_embedding_set
    from woundscore.classify.train import train_on_set
    from woundscore.embed.encoder import local_revision
    from woundscore.embed.preprocess import resolve_spec

    es = synthetic_embedding_set(120, 60, 0, dim=1152)
    prov = {**es.provenance, "encoder_id": "local/" + ckpt.resolve().name, "encoder_revision": local_revision(ckpt),
            "preprocessing": resolve_spec(ckpt).to_dict(), "notice": "random weights - benchmark only"}
    train_on_set(dataclasses.replace(es, provenance=prov), out, model="logreg", source="bench")
    return out


def start_server(model_dir: Path, ckpt: Path, port: int, *args: str) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from woundscore.classify.serve_cli import main; main(prog_name='wound-serve')",
           str(model_dir), "--encoder", str(ckpt), "--device", "cpu", "--port", str(port), *args]
    t0 = time.perf_counter()
    log = open(model_dir.parent / f"server-{port}.log", "wb")  # read back if the server exits early
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc, t0


def serve(model_dir: Path, ckpt: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A ready server; started again once on another port if the first start fails (on a shared
    machine another process may take the free port between the check and the bind)."""
    for attempt in (1, 2):
        port = free_port()
        proc, _ = start_server(model_dir, ckpt, port, *args)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, 900)
            return proc, url
        except RuntimeError:
            tail = Path(proc.log_path).read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
            print(f"server start {attempt} failed:\n{tail}", file=sys.stderr)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> dict:
    import httpx

    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server not ready")


async def load(url: str, images: list[bytes], concurrency: int, n: int) -> tuple[float, list[float]]:
    """``n`` requests from ``concurrency`` workers; -> (images/s, latencies in s)."""
    import httpx

    lat: list[float] = []
    todo = list(range(n))

    async def worker(c: httpx.AsyncClient) -> None:
        while todo:
            i = todo.pop()
            t = time.perf_counter()
            r = await c.post("/v1/score", content=images[i % len(images)], headers={"content-type": "image/jpeg"})
            r.raise_for_status()
            lat.append(time.perf_counter() - t)

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(c) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return n / wall, lat


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def offline_rate(ckpt: Path, folder: Path, out: Path, batch: int) -> dict[int, float]:
    """`wound-embed run` (run_embedding) images/s, encoder load excluded, with 0 decode workers
    (decode in the main process) and with its default workers (decode overlapping the forward);
    -> {workers: images/s}. The folder's images are all distinct (identical bytes share a forward)."""
    from woundscore.embed.encoder import load_encoder
    from woundscore.embed.run import default_workers, run_embedding

    enc = load_encoder(ckpt, device="cpu")
    n = len(list(folder.glob("*.jpg")))
    rates = {}
    run_embedding(folder, out / "warm.h5", encoder=enc, batch_size=batch, workers=0, quiet=True, overwrite=True)
    for workers in (0, default_workers()):
        t = time.perf_counter()
        run_embedding(folder, out / "off.h5", encoder=enc, batch_size=batch, workers=workers, quiet=True, overwrite=True)
        rates[workers] = n / (time.perf_counter() - t)
    return rates


def cold_start(model_dir: Path, ckpt: Path) -> dict:
    t_imp = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import woundscore.classify.serve, woundscore.embed.encoder, torch, "
                    "transformers, keras, sklearn"], check=True)
    imp = time.perf_counter() - t_imp
    port = free_port()
    proc, t0 = start_server(model_dir, ckpt, port)
    try:
        r = wait_ready(f"http://127.0.0.1:{port}", proc, 900)
        total = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    return {"total_s": total, "import_s": imp, "load_s": r["load_s"], "first_forward_s": r["first_forward_s"]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=27, help="blocks of the 27 to keep (27: the full tower)")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level (>= the level)")
    ap.add_argument("--offline-images", type=int, default=64,
                    help="distinct images of the offline run (enough to amortise its per-run costs)")
    ap.add_argument("--cold-full", action="store_true", help="cold start also with the full 27-block checkpoint")
    args = ap.parse_args()
    info = C.print_header("bench_serve: the scoring service", extra={"layers": f"{args.layers} of 27"})
    print(f"CPU bf16 native: {info['native_bf16_matmul']} (dtype auto = {'bf16' if info['native_bf16_matmul'] else 'fp32'})")
    print("GPU row: not measured (no device lent to this session)\n")
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve."))
    ckpt = make_checkpoint(tmp / "ckpt", None if args.layers >= 27 else args.layers)
    model_dir = make_model_dir(ckpt, tmp / "model")
    folder = tmp / "imgs"
    folder.mkdir()
    for i in range(args.offline_images):
        (folder / f"img{i}.jpg").write_bytes(C.phone_jpeg(1600, 1200, seed=i))
    images = [(folder / f"img{i}.jpg").read_bytes() for i in range(min(16, args.offline_images))]
    rows, summary = [], {}
    for mode, extra in (("on", ["--max-batch", "16", "--max-wait-ms", "10"]), ("off", ["--max-batch", "1"])):
        proc, url = serve(model_dir, ckpt, *extra)
        try:
            for c in (1, 4, 16):
                rate, lat = asyncio.run(load(url, images, c, max(c, args.requests)))
                rows.append([f"micro-batching {mode}", c, len(lat), rate, pct(lat, 0.5), pct(lat, 0.99)])
                print(f"  {rows[-1]}", flush=True)
            if mode == "on":
                summary["service_c8"], _ = asyncio.run(load(url, images, 8, max(8, args.requests)))
        finally:
            proc.terminate()
            proc.wait(60)
    offline = offline_rate(ckpt, folder, tmp, 8)
    summary["offline"] = max(offline.values())  # the ratio is taken against the faster offline run
    print(C.table(["mode", "concurrency", "requests", "images/s", "p50 s", "p99 s"], rows))
    ratio = summary["service_c8"] / summary["offline"]
    print("\n" + C.table(["path", "images/s"], [["service, concurrency 8 (max-batch 16)", summary["service_c8"]],
                                               *[[f"offline wound-embed run, batch 8, {w} decode workers", r]
                                                 for w, r in offline.items()],
                                               ["ratio to the faster offline run (target >= 0.9)", ratio]]))
    cold = [["truncated" if args.layers < 27 else "full", *cold_start(model_dir, ckpt).values()]]
    if args.cold_full and args.layers < 27:
        full = make_checkpoint(tmp / "ckpt_full", None)
        cold.append(["full (27 blocks)", *cold_start(make_model_dir(full, tmp / "model_full"), full).values()])
    print("\n" + C.table(["checkpoint", "process start -> ready s", "import s", "load s", "first forward s"], cold))
    C.emit_summary("serve", [C.target("service / offline at concurrency 8", ">= 0.9", f"{ratio:.2f}", ratio >= 0.9)])


if __name__ == "__main__":
    main()
