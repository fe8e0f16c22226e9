"""MLP training on a 480x1152 cache, wall time INCLUDING imports, vs the 10 s target.

Each measurement is a fresh process running ``python -m woundscore.classify train CACHE --out DIR --quiet``
(what a user types), timed from outside, so interpreter start and every import count. The cache
has SurgWound's split sizes (480 train / 69 val / 137 test) at MedSigLIP's 1152 dims, synthetic:

- ``random``: labels independent of the embeddings (early stopping ends it soon);
- ``signal``: a planted signal, so validation AUC keeps climbing for longer;
- ``fixed``: planted signal with patience = max epochs, i.e. all ``--max-epochs`` epochs run (the
  worst case of early stopping).

Reference points measured in the same run (a ratio survives load that an absolute number does
not): ``python -c "import torch"`` (a floor no torch program goes under) and a plain
``import keras`` (what the deferred import in classify/_keras.py avoids); and, with
``--compare-fit``, Keras's own ``model.fit`` on the same model/loss vs our loop, per epoch.

Example:
    .venv/bin/python bench/bench_train.py
    .venv/bin/python bench/bench_train.py --repeat 1 --cases random --compare-fit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

TARGET_S = 10.0
SPLITS = (480, 69, 137)


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=str(C.REPO), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


FIT_SCRIPT = r"""
import json, sys, time
import numpy as np
from woundscore.classify._keras import import_keras
from woundscore.classify.loss import MaskedBCE
from woundscore.classify.models import KerasMLPClassifier, build_mlp, training_pos_weight
from woundscore.classify.synthetic import synthetic_embedding_set
keras = import_keras()
import torch
torch.set_num_threads(int(sys.argv[2]))
epochs = int(sys.argv[1])
es = synthetic_embedding_set(480, 69, 137, dim=1152, seed=0)
tr, va = es.subset("train"), es.subset("val")
keras.utils.set_random_seed(0)
m = build_mlp(1152)
m.compile(optimizer=keras.optimizers.Adam(1e-4), loss=MaskedBCE(training_pos_weight(tr.Y)))
Y = tr.Y.astype("float32")
m.fit(tr.X, Y, batch_size=32, epochs=1, verbose=0)  # warm-up (builds the train function)
t = time.perf_counter()
m.fit(tr.X, Y, batch_size=32, epochs=epochs, verbose=0, validation_data=(va.X, va.Y.astype("float32")))
keras_s = (time.perf_counter() - t) / epochs
ours = KerasMLPClassifier(max_epochs=epochs + 1, patience=10**6, n_threads=int(sys.argv[2])).fit(tr.X, tr.Y, va.X, va.Y)
ours_s = sum(h["seconds"] for h in ours.history_[1:]) / epochs
print(json.dumps({"keras_fit_epoch_s": keras_s, "ours_epoch_s": ours_s}))
"""


def step_profile(threads: int, n: int = 60) -> list:
    """Per-step milliseconds of the training loop's parts (batch 32, 1152 -> 512 -> 256 -> 6)."""
    import numpy as np
    import torch

    from woundscore.classify.loss import masked_bce
    from woundscore.classify.models import _KerasAdam, _run_program, _torch_program, build_mlp

    torch.set_num_threads(threads)
    m = build_mlp(1152)
    steps, params, pen = _torch_program(m)
    opt = _KerasAdam(params, 1e-4, penalties=pen)
    X, Y, pw = torch.randn(32, 1152), torch.randint(0, 2, (32, 6)).float(), torch.ones(6)
    parts = np.zeros(4)
    for i in range(n + 10):
        t0 = time.perf_counter()
        z = _run_program(steps, X, True)
        t1 = time.perf_counter()
        loss = masked_bce(Y, z, pw)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= 10:
            parts += [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
    W = params[0].detach()
    mm = C.timed(lambda: X @ W, repeat=200, warmup=20)
    gflops = 2 * 32 * 1152 * 512 / C.median(mm) / 1e9
    ms = parts / n * 1000
    return [threads, *[f"{x:.3f}" for x in ms], f"{ms.sum():.3f}", f"{ms.sum() * 15:.1f}", f"{gflops:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    ap.add_argument("--cases", default="random,signal,fixed")
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--patience", type=int, default=25)
    ap.add_argument("--fixed-epochs", type=int, default=100, help="epochs of the 'fixed' case")
    ap.add_argument("--compare-fit", action="store_true", help="also time Keras model.fit per epoch")
    ap.add_argument("--fit-epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training loop")
    ap.add_argument("--profile-steps", action="store_true", help="per-step breakdown at 1 and 2 threads")
    args = ap.parse_args()
    if args.profile_steps:
        C.print_header("MLP training step breakdown (ms per step, batch 32)")
        print(C.table(["threads", "forward", "loss", "backward", "adam", "step", "epoch (15 steps)",
                       "GFLOP/s 32x1152x512"], [step_profile(1), step_profile(2)]))
        return

    from woundscore.classify.synthetic import synthetic_embedding_set, write_synthetic_cache

    C.print_header("MLP training, 480x1152 cache, wall incl. imports (fresh process each run)")
    env = dict(os.environ, PYTHONPATH=str(C.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    caches = {}
    for c in cases:
        es = synthetic_embedding_set(*SPLITS, dim=1152, seed=0, random_labels=(c == "random"), signal=1.0)
        caches[c] = tmp / f"{c}.h5"
        write_synthetic_cache(caches[c], es)

    floor = [wall([py, "-c", "import torch"], env) for _ in range(args.repeat)]
    plain = [wall([py, "-c", "import classify, keras"], env | {"WOUNDSCORE_PLAIN_KERAS_IMPORT": "1"}) for _ in range(1)]
    fast = [wall([py, "-c", "from classify._keras import import_keras; import_keras()"], env) for _ in range(args.repeat)]

    rows, results = [], {}
    for c in cases:
        max_epochs = args.fixed_epochs if c == "fixed" else args.max_epochs
        patience = max_epochs if c == "fixed" else args.patience
        walls, info = [], {}
        for r in range(args.repeat):
            out = tmp / f"model_{c}_{r}"
            walls.append(wall([py, "-m", "woundscore.classify", "train", str(caches[c]), "--out", str(out), "--quiet",
                               "--max-epochs", str(max_epochs), "--patience", str(patience),
                               "--threads", str(args.threads)], env))
            info = json.loads((out / "provenance.json").read_text())["training"]
        med = statistics.median(walls)
        per_epoch_ms = 1000 * info["epoch_seconds_mean"]
        results[c] = {"wall_s": med, "walls": walls, **info, "per_epoch_ms": per_epoch_ms}
        rows.append([c, f"{med:.2f}", f"{med / TARGET_S:.2f}", info["epochs_run"], info["best_epoch"],
                     f"{info['fit_seconds']:.2f}", f"{per_epoch_ms:.1f}"])
    print(C.table(["case", "wall s (median, incl. imports)", "x of 10 s target", "epochs run", "best epoch",
                   "fit s (in process, incl. keras import)", "ms/epoch"], rows))
    print()
    print(C.table(["reference (fresh process)", "wall s (median)"], [
        ["python -c 'import torch'", f"{statistics.median(floor):.2f}"],
        ["import keras, plain", f"{statistics.median(plain):.2f}"],
        ["import keras via classify._keras (dynamo, pyplot, sklearn deferred)", f"{statistics.median(fast):.2f}"],
    ]))
    if args.compare_fit:
        r = subprocess.run([py, "-c", FIT_SCRIPT, str(args.fit_epochs), str(args.threads)], env=env, cwd=str(C.REPO),
                           capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print()
        print(C.table(["per epoch (480 rows, batch 32, val each epoch)", "ms"], [
            ["Keras model.fit (+ validation_data)", f"{1000 * d['keras_fit_epoch_s']:.1f}"],
            ["classify loop (+ val macro AUC)", f"{1000 * d['ours_epoch_s']:.1f}"],
            ["speed-up", f"{d['keras_fit_epoch_s'] / d['ours_epoch_s']:.2f}x"],
        ]))
        results["compare_fit"] = d
    main_case = "signal" if "signal" in results else cases[0]
    m = results[main_case]["wall_s"]
    C.emit_summary("train", [C.target("MLP train 480x1152 incl. imports", f"< {TARGET_S:.0f} s", f"{m:.2f} s ({main_case})",
                                      m < TARGET_S, f"median of {args.repeat}; torch import alone {statistics.median(floor):.2f} s")],
                   results=results)


if __name__ == "__main__":
    main()
