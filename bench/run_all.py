"""Run every CPU bench of woundscore (what `make bench` runs) and print a summary of targets.

    .venv/bin/python bench/run_all.py            # full sizes, ~20 min on a quiet 2-core machine
    .venv/bin/python bench/run_all.py --quick    # smoke sizes (tiny model, small cache), ~3-5 min
    .venv/bin/python bench/run_all.py --only embed,finetune_step --out /tmp/bench.md

Each bench runs in its own process (its own imports, its own timeout), streams its table, and
ends with a ``BENCH-SUMMARY {json}`` line that is collected into the final summary. A bench
whose file does not exist yet is skipped with a note; one that fails or times out is reported
and the others still run. Exit 0 when every present bench ran, 1 otherwise (a missed target is
a finding, not a failure).

The machine is often shared: each bench measures its key figure as a ratio side by side in one
run, and the header of each table prints the load average so noise is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

# name, file, full-size args, quick args, timeout (s) at full size.
# Full sizes are what fits ~20 minutes on a quiet 2-core x86 machine (fp32 MedSigLIP ~5.5 s/image):
# 13.6 min measured for the first six; serve (2-block tower) and curve add about 5 min.
BENCHES = [
    ("cache", "bench_cache.py", [], ["--rows", "10000", "--append-batches", "50"], 300),
    ("embed", "bench_embed.py", ["--images", "4", "--batch", "4", "--rounds", "2", "--investigate", "--inv-blocks", "9"],
     ["--smoke", "--images", "2", "--rounds", "2", "--mm-seconds", "0.5"], 420),
    ("preprocess", "bench_preprocess.py", ["--reps", "5", "--overlap-images", "2", "--batch", "1"],
     ["--smoke", "--reps", "2", "--overlap-images", "2"], 240),
    ("train", "bench_train.py", [], ["--repeat", "1", "--cases", "signal"], 240),
    ("report", "bench_report.py", [], ["--bootstrap", "200"], 180),
    ("finetune_step", "bench_finetune_step.py", ["--batch", "1", "--steps", "1", "--warmup", "1", "--repeat", "2"],
     ["--smoke", "--steps", "1", "--warmup", "1"], 300),
    ("serve", "bench_serve.py", ["--layers", "2"], ["--layers", "1", "--requests", "4", "--offline-images", "8"], 420),
    ("curve", "bench_curve.py", ["--part", "curve"], ["--part", "curve", "--repeats", "1"], 300),
]


def run_one(name: str, path: Path, argv: list[str], timeout: float, log) -> dict:
    cmd = [sys.executable, str(path), *argv]
    print(f"\n{'=' * 100}\n$ {' '.join(cmd)}   (timeout {timeout:.0f} s)", flush=True)
    log.write(f"\n$ {' '.join(cmd)}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    summaries: list[dict] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(HERE.parent))
    killed = []

    def kill() -> None:  # a silent hang must not block the whole run
        killed.append(True)
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("[transformers]"):
                continue
            if line.startswith("BENCH-SUMMARY "):
                try:
                    summaries.append(json.loads(line[len("BENCH-SUMMARY "):]))
                except ValueError:
                    pass
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    status = (f"TIMED OUT after {timeout:.0f} s" if killed else "ok" if rc == 0 else f"FAILED (exit {rc})")
    wall = time.perf_counter() - t
    if status != "ok":
        print(f"--- {name}: {status}; last lines above", flush=True)
    return {"name": name, "status": status, "wall_s": wall, "summaries": summaries}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes: checks every bench runs (numbers mean little)")
    ap.add_argument("--only", default="", help="comma-separated bench names: " + ",".join(b[0] for b in BENCHES))
    ap.add_argument("--out", default=None, help="also write the whole output to this file (markdown)")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every bench's timeout (slow machine)")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    out = Path(args.out) if args.out else Path(os.environ.get("TMPDIR", "/tmp")) / "woundscore_bench_last.md"
    t0 = time.perf_counter()
    results = []
    with open(out, "w", encoding="utf-8") as log:
        info = C.machine_info()
        head = "woundscore benches " + ("(--quick: smoke sizes)" if args.quick else "(full sizes)")
        print(f"# {head}\n\n" + " | ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
        log.write(f"# {head}\n\n" + " | ".join(f"{k}: {v}" for k, v in info.items()) + "\n")
        for name, fname, full, quick, timeout in BENCHES:
            if only and name not in only:
                continue
            path = HERE / fname
            if not path.exists():
                print(f"\n--- {name}: skipped ({fname} does not exist yet)")
                results.append({"name": name, "status": f"skipped: {fname} missing", "wall_s": 0.0, "summaries": []})
                continue
            results.append(run_one(name, path, quick if args.quick else full,
                                   timeout * args.timeout_scale, log))
        total = time.perf_counter() - t0
        rows = []
        for r in results:
            ts = [dict(t, smoke=bool(s.get("smoke"))) for s in r["summaries"] for t in s.get("targets", [])]
            if not ts:
                rows.append([r["name"], "-", "-", "-", r["status"], f"{r['wall_s']:.0f}"])
            for t in ts:
                met = t.get("met")
                verdict = "met" if met is True else ("MISSED" if met is False else "reported")
                if t["smoke"]:  # tiny model: checks the bench runs, the figure is not a measurement
                    verdict, met = "smoke run (not a measurement)", True
                why = t.get("why") or ""
                rows.append([t.get("name", r["name"]), t.get("target", ""), t.get("measured", ""),
                             verdict + (f": {why}" if why and met is not True else ""), r["status"],
                             f"{r['wall_s']:.0f}"])
        summary = C.table(["bench / target", "target", "measured", "verdict", "run", "wall s"], rows)
        foot = (f"total wall {total / 60:.1f} min ({'quick' if args.quick else 'full'}; budget ~20 min); "
                f"load average at the end {C.load_average()}")
        print(f"\n{'=' * 100}\n## summary\n\n{summary}\n\n{foot}\n(full output: {out})")
        log.write(f"\n## summary\n\n{summary}\n\n{foot}\n")
    bad = [r for r in results if r["status"] not in ("ok",) and not r["status"].startswith("skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
