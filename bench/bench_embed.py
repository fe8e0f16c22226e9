"""Embedding throughput: Google's naive notebook loop vs woundscore's pipeline, side by side.

Both run the real MedSigLIP-448 vision tower (SigLIP So400m/14: hidden 1152, 27 blocks, 16 heads,
MLP 4304, 1024 tokens) with RANDOM weights -- the cost of a forward does not depend on weight
values -- on the same generated phone-like JPEGs, interleaved A B B A so load drift cancels.

(a) naive: what Google's data-efficient-classifier notebook does: PIL open + convert serially,
    the HF image processor (PIL backend) on the PIL images, float32, ``model.get_image_features``
    per batch under ``torch.no_grad()`` (transformers' default SDPA attention).
(b) woundscore: ``embed.run.run_embedding`` end to end (DataLoader decode workers overlapped
    with the model, the one exact preprocessing, ``--dtype auto``, SDPA, inference_mode, durable
    cache writes) with an ``ImageEncoder`` built around the same architecture.

The bf16 and fp32 matmul rates are measured in the same run; achieved GFLOP/s uses 0.849 TFLOP per
image (weight matmuls only, issue 6's figure; attention adds 14.5 %, shown too).

``--investigate`` adds forward-only variants (batch size, threads, eager vs SDPA, oneDNN off,
torch.compile with and without weight freezing, bf16 if native, int8 dynamic quantisation).

Usage:  .venv/bin/python bench/bench_embed.py [--images 4] [--batch 4] [--investigate] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

warnings.filterwarnings("ignore")


def naive_processor(size: int):
    """The HF image processor on PIL images (the notebook's; transformers 5 calls the PIL backend
    SiglipImageProcessorPil, 4.x called it SiglipImageProcessor). MedSigLIP's config: bilinear,
    rescale 1/255, normalise 0.5/0.5, plain resize to size x size."""
    import transformers

    cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return cls(size={"height": size, "width": size}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def naive_embed(model, processor, paths: list[Path], batch: int):
    """The notebook loop: serial decode, processor, get_image_features per batch, fp32."""
    import torch
    from PIL import Image

    out = []
    for i in range(0, len(paths), batch):
        imgs = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
        inputs = processor(images=imgs, return_tensors="pt")
        with torch.no_grad():
            f = model.get_image_features(pixel_values=inputs["pixel_values"])
        f = getattr(f, "pooler_output", f)  # transformers 5 returns an output object
        out.append(f.numpy())
    return out


class Woundscore:
    """(b): embed.run.run_embedding with an ImageEncoder around the random model."""

    def __init__(self, model, *, batch: int, workers: int | None, tmp: Path) -> None:
        from woundscore.embed.encoder import ImageEncoder
        from woundscore.embed.preprocess import PreprocessSpec
        from woundscore.embed.run import default_workers

        s = model.config.image_size
        spec = PreprocessSpec(size=(s, s), mean=(0.5,) * 3, std=(0.5,) * 3)
        self.enc = ImageEncoder(model, spec, model_id="bench/medsiglip-448-architecture", revision="random",
                                device="cpu", notice="random weights - benchmark only")
        self.batch, self.tmp, self.k = batch, tmp, 0
        self.workers = default_workers() if workers is None else workers
        self.mode = "embed.run.run_embedding"

    def __call__(self, folder: Path) -> None:
        from woundscore.embed.run import run_embedding

        self.k += 1
        s = run_embedding(folder, self.tmp / f"cache{self.k}.h5", encoder=self.enc, batch_size=self.batch,
                          workers=self.workers, quiet=True, overwrite=True)
        if s.failed:
            raise RuntimeError(f"woundscore run failed images: {s.failed[:3]}")


def write_images(folder: Path, n: int, wh: tuple[int, int], seed0: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{seed0 + i:03d}.jpg"
        p.write_bytes(C.phone_jpeg(wh[0], wh[1], seed=seed0 + i, exif_orientation=6 if i % 2 else None))
        paths.append(p)
    return paths


def matmul_table(args, fp32_probe: float, bf16_probe: float) -> tuple[dict, str]:
    import torch

    shape = (1024, 1152, 4304)  # MedSigLIP's MLP up-projection, one image
    rates = {"fp32": C.matmul_rate(torch.float32, shape, seconds=args.mm_seconds)}
    rows = [["float32", "1024x1152x4304 (MLP fc1, 1 image)", rates["fp32"], "native"]]
    native = bf16_probe > 0.5 * fp32_probe
    if native:
        rates["bf16"] = C.matmul_rate(torch.bfloat16, shape, seconds=args.mm_seconds)
        rows.append(["bfloat16", "1024x1152x4304 (MLP fc1, 1 image)", rates["bf16"], "native"])
        if not args.smoke:
            r4 = C.matmul_rate(torch.bfloat16, (4096, 4096, 4096), seconds=args.mm_seconds)
            rows.append(["bfloat16", "4096^3", r4, "native"])
    else:
        rates["bf16"] = bf16_probe
        rows.append(["bfloat16", "256x1152x1152 (probe)", bf16_probe,
                     f"EMULATED: no native bf16 on this CPU, {fp32_probe / max(bf16_probe, 1e-9):.0f}x slower than fp32"])
    rates["bf16_native"] = native
    return rates, C.table(["dtype", "GEMM (m x k x n)", "GFLOP/s", "note"], rows)


# ----------------------------------------------------------------------------- investigate


def fwd_time(model, x, *, reps: int = 1, autocast=None, warm: bool = True) -> float:
    """Seconds per image of forward passes on pixel batch x (after one warm-up call if ``warm``)."""
    import torch

    def go():
        with torch.inference_mode():
            if autocast is not None:
                with torch.autocast("cpu", dtype=autocast):
                    model(pixel_values=x)
            else:
                model(pixel_values=x.to(next(model.parameters()).dtype))

    if warm:
        go()
    return C.median(C.timed(go, repeat=reps)) / x.shape[0]


def investigate(args, model, flop: float, rates: dict, base_spi: float) -> list[list]:
    import torch

    rows: list[list] = []
    s = model.config.image_size
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, 3, s, s, generator=g)
    nthreads = torch.get_num_threads()
    dn = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(next(model.parameters()).dtype, "?")

    bases: list[float] = []

    def add(name: str, spi: float, note: str = "", *, is_base: bool = False) -> None:
        """A variant, then the baseline again: its speed-up is against the mean of the baseline
        measured just before and just after it, so load drift on a shared machine cancels."""
        before = bases[-1]
        after = spi if is_base else fwd_time(model, x1, warm=False)
        bases.append(after)
        ref = 0.5 * (before + after)
        rows.append([name, spi, 1.0 / spi, flop / spi / 1e9, flop / spi / 1e9 / rates["fp32"],
                     ref / spi, base_spi / spi, note])
        print(f"  {name}: {spi:.2f} s/image (baseline around it {before:.2f} / {after:.2f})", flush=True)

    print("investigating (forward only, pixels ready; each variant bracketed by the baseline):", flush=True)
    base1 = fwd_time(model, x1)
    bases.append(base1)
    add(f"{dn} SDPA bs1 {nthreads} threads (baseline)", base1, is_base=True)
    for b in args.inv_batches:
        if b != 1:
            xb = torch.randn(b, 3, s, s, generator=g)
            add(f"{dn} SDPA bs{b}", fwd_time(model, xb, warm=False))
    # eager attention
    t_eager = None
    try:
        model.set_attn_implementation("eager")
        t_eager = fwd_time(model, x1)
    except Exception as e:
        rows.append(["fp32 eager attention", "-", "-", "-", "-", "-", "-", f"failed: {e}"])
    finally:
        try:
            model.set_attn_implementation("sdpa")
        except Exception:
            pass
    if t_eager is not None:
        add(f"{dn} eager attention bs1", t_eager)
    _thread_and_onednn_variants(add, model, x1, dn, base1)
    _dtype_variants(add, rows, model, x1, dn, args, rates, flop)
    if args.compile:
        _compile_variants(add, rows, model, x1, args)
    # the machine's load drifts: re-measure the matmul rate now and use the better of the two
    again = C.matmul_rate(torch.float32, (1024, 1152, 4304), seconds=args.mm_seconds)
    best = max(again, rates["fp32"])
    print(f"  fp32 matmul re-measured after the variants: {again:.1f} GFLOP/s (start {rates['fp32']:.1f}); "
          f"'of fp32 mm' uses {best:.1f}", flush=True)
    for r in rows:
        if isinstance(r[3], float):
            r[4] = r[3] / best
    return rows


def _thread_and_onednn_variants(add, model, x1, dn: str, base1: float) -> None:
    import torch

    nthreads = torch.get_num_threads()
    if nthreads > 1:
        torch.set_num_threads(1)
        t1 = fwd_time(model, x1, warm=False)
        torch.set_num_threads(nthreads)
        add(f"{dn} SDPA bs1, 1 thread", t1,
            f"{t1 / base1:.2f}x the {nthreads}-thread time: {nthreads} processes x 1 thread would give "
            f"{nthreads * base1 / t1:.2f}x the throughput of 1 process x {nthreads} threads")
    # oneDNN off
    with torch.backends.mkldnn.flags(enabled=False):
        t_off = fwd_time(model, x1)
    add(f"{dn} SDPA bs1, oneDNN disabled", t_off)


def _dtype_variants(add, rows: list, model, x1, dn: str, args, rates: dict, flop: float) -> None:
    """bf16 weights / autocast when native, and int8 dynamic quantisation."""
    import torch

    if rates["bf16_native"]:
        if dn == "bf16":
            mf = copy.deepcopy(model).float()
            add("fp32 weights bs1", fwd_time(mf, x1))
            add("fp32 weights + autocast(bf16) bs1", fwd_time(mf, x1, autocast=torch.bfloat16))
            del mf
        else:
            mb = copy.deepcopy(model).to(torch.bfloat16)
            add("bf16 weights (model.to) bs1", fwd_time(mb, x1))
            del mb
            add("fp32 weights + autocast(bf16) bs1", fwd_time(model, x1, autocast=torch.bfloat16))
    else:
        est = getattr(args, "full_flop", flop) / (rates["bf16"] * 1e9)  # the whole tower, not a truncated one
        rows.append(["bf16 (model.to / autocast)", "-", "-", "-", "-", "-", "-",
                     f"skipped: no native bf16; the probe GEMM ran at {rates['bf16']:.1f} GFLOP/s -> ~{est:,.0f} s/image"])
    # int8 dynamic quantisation of the Linear layers (changes the numbers: an option, not the exact path)
    try:
        from torch.ao.quantization import quantize_dynamic

        mq = quantize_dynamic(copy.deepcopy(model).float(), {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            a = model(pixel_values=x1.to(next(model.parameters()).dtype)).pooler_output.float()
            bq = mq(pixel_values=x1).pooler_output
        cos = torch.nn.functional.cosine_similarity(a, bq).item()
        add("int8 dynamic quant (Linear) bs1", fwd_time(mq, x1),
            f"NOT exact: cosine vs fp32 {cos:.4f} (random weights)")
        del mq
    except Exception as e:
        rows.append(["int8 dynamic quant", "-", "-", "-", "-", "-", "-", f"failed: {type(e).__name__}: {e}"])


def _compile_variants(add, rows: list, model, x1, args) -> None:
    """torch.compile (inductor, C++ codegen with gcc), with and without weight freezing (oneDNN prepack)."""
    import torch

    for freezing in (False, True):
        try:
            import torch._dynamo
            import torch._inductor.config as icfg

            torch._dynamo.reset()
            icfg.freezing = freezing
            mc = torch.compile(model, mode=args.compile_mode)
            t0 = time.perf_counter()
            with torch.inference_mode():
                mc(pixel_values=x1)
            ct = time.perf_counter() - t0
            spi = fwd_time(mc, x1)
            add(f"torch.compile({args.compile_mode or 'default'}{', freezing' if freezing else ''}) bs1", spi,
                f"first call (compile) {ct:.0f} s")
            del mc
        except Exception as e:
            rows.append([f"torch.compile freezing={freezing}", "-", "-", "-", "-", "-", "-",
                         f"failed: {type(e).__name__}: {str(e)[:120]}"])
        finally:
            try:
                icfg.freezing = False
                torch._dynamo.reset()
            except Exception:
                pass


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images per round per path (default 4)")
    ap.add_argument("--batch", type=int, default=4, help="batch size of both paths (default 4)")
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds, interleaved ABBA (default 2)")
    ap.add_argument("--image-size", default="1920x1080", help="JPEG size WxH (default 1920x1080)")
    ap.add_argument("--workers", type=int, default=None, help="woundscore decode workers (default: embed.run's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--investigate", action="store_true", help="forward-only variants (adds ~2-4 min)")
    ap.add_argument("--inv-batches", default="1,2,4", help="batch sizes for --investigate")
    ap.add_argument("--inv-blocks", type=int, default=0,
                    help="--investigate on a tower truncated to this many blocks (same per-block cost, "
                         "s/image extrapolated to the full depth); 0: full depth")
    ap.add_argument("--investigate-only", action="store_true", help="skip the (a)/(b) comparison")
    ap.add_argument("--compile", action="store_true", help="with --investigate: torch.compile variants (slow)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--mm-seconds", type=float, default=2.0)
    ap.add_argument("--smoke", action="store_true", help="tiny architecture: checks the script, numbers mean nothing")
    args = ap.parse_args(argv)
    args.inv_batches = [int(b) for b in args.inv_batches.split(",") if b]
    return args


def setup(args: argparse.Namespace) -> SimpleNamespace:
    """Header, architecture and FLOPs, matmul rates, the --dtype auto choice."""
    import torch

    from woundscore.embed.runtime import resolve_dtype

    info = C.print_header("bench_embed: naive notebook loop vs woundscore pipeline")
    print("  " + C.RANDOM_NOTE)
    cfg = C.vision_config(smoke=args.smoke)
    flop = C.vit_flops(cfg, attention=False)
    flop_attn = C.vit_flops(cfg, attention=True)
    args.full_flop = flop
    print(f"  architecture: {'SMOKE (tiny)' if args.smoke else 'MedSigLIP-448 vision tower'}: hidden {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} blocks, MLP {cfg.intermediate_size}, image {cfg.image_size}, patch {cfg.patch_size}; "
          f"{flop / 1e12:.3f} TFLOP/image (weight matmuls; {flop_attn / 1e12:.3f} with attention)")
    fp32_probe, bf16_probe = C.probe_rate(torch.float32), C.probe_rate(torch.bfloat16)
    rates, mm = matmul_table(args, fp32_probe, bf16_probe)
    print("\n### matmul rates (same run)\n")
    print(mm)
    auto = resolve_dtype("auto", "cpu")
    mm_used = rates["bf16"] if auto == torch.bfloat16 else rates["fp32"]  # the matmul rate of the dtype used
    return SimpleNamespace(info=info, cfg=cfg, flop=flop, flop_attn=flop_attn, rates=rates, auto=auto, mm_used=mm_used)


def investigate_table(args: argparse.Namespace, ctx: SimpleNamespace, model, base_spi: float, heading: str) -> list:
    """Forward-only variants on ``model`` (maybe a truncated tower); s/image extrapolated to full depth."""
    iflop = C.vit_flops(model.config, attention=False)
    rows = investigate(args, model, iflop, ctx.rates, base_spi * iflop / ctx.flop)
    for r in rows:  # per-image time of the full tower at the measured rate
        if isinstance(r[1], float):
            r[1], r[2] = r[1] * ctx.flop / iflop, r[2] * iflop / ctx.flop
    print(f"\n### {heading}\n")
    print(C.table(["variant", "s/image", "images/s", "GFLOP/s", "of fp32 mm", "speed-up vs baseline around it",
                   "vs (b) pipeline", "note"], rows))
    return rows


def time_paths(args: argparse.Namespace, ctx: SimpleNamespace, tmp: Path) -> tuple[dict, "Woundscore", Any, Any]:
    """(a) and (b) on the same JPEGs, ABBA. Returns ({path: [s/image per round]}, the (b) runner,
    its model, the naive model)."""
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    rounds_dirs = [write_images(tmp / f"round{r}", args.images, (w, h), seed0=100 * r) for r in range(args.rounds)]
    warm = write_images(tmp / "warm", 1, (w, h), seed0=999)
    t0 = time.perf_counter()
    naive_model = C.random_siglip_model(smoke=args.smoke)
    wmodel = C.random_vision_model(smoke=args.smoke, dtype=ctx.auto)
    print(f"\n  models built in {time.perf_counter() - t0:.1f} s; woundscore --dtype auto -> {ctx.auto}")
    proc = naive_processor(ctx.cfg.image_size)
    ws = Woundscore(wmodel, batch=args.batch, workers=args.workers, tmp=tmp)
    print(f"  woundscore path: {ws.mode}, batch {args.batch}, decode workers {ws.workers}; "
          f"naive: batch {args.batch}, serial decode")
    # warm-up (first-call allocations, oneDNN primitive creation)
    naive_embed(naive_model, proc, warm, 1)
    ws(warm[0].parent)
    times: dict[str, list[float]] = {"naive": [], "woundscore": []}
    order = []
    for r in range(args.rounds):
        order += ["naive", "woundscore"] if r % 2 == 0 else ["woundscore", "naive"]
    for k, name in enumerate(order):
        paths = rounds_dirs[k // 2]
        t = time.perf_counter()
        if name == "naive":
            naive_embed(naive_model, proc, paths, args.batch)
        else:
            ws(paths[0].parent)
        dt = time.perf_counter() - t
        times[name].append(dt / len(paths))
        print(f"  round {k // 2} {name}: {dt / len(paths):.2f} s/image (load {C.load_average()})", flush=True)
    return times, ws, wmodel, naive_model


def throughput_table(args: argparse.Namespace, ctx: SimpleNamespace, times: dict) -> dict[str, tuple[float, float]]:
    """Prints the (a)/(b) table; returns {path: (s/image, GFLOP/s)}."""
    rates, flop, auto, mm_used = ctx.rates, ctx.flop, ctx.auto, ctx.mm_used
    res = {}
    rows = []
    for name, dt in (("naive", "float32"), ("woundscore", str(auto).replace("torch.", ""))):
        spi = C.median(times[name])
        gf = flop / spi / 1e9
        res[name] = (spi, gf)
        rows.append([f"({'a' if name == 'naive' else 'b'}) {name}", dt, spi, 1 / spi, gf, gf / rates["fp32"],
                     gf / rates["bf16"] if rates["bf16_native"] else "n/a (bf16 emulated)", gf / mm_used, res["naive"][0] / spi,
                     " ".join(f"{x:.2f}" for x in times[name])])
    print(f"\n### embed throughput ({args.images} images x {args.rounds} rounds per path, {args.image_size.lower()} JPEGs, "
          f"ABBA order)\n")
    print(C.table(["path", "dtype", "s/image", "images/s", "GFLOP/s", "of fp32 mm", "of bf16 mm", "of mm (dtype used)",
                   "speed-up vs (a)", "per-round s/image"], rows))
    print(f"\n  GFLOP/s at {flop / 1e12:.3f} TFLOP/image; counting attention ({ctx.flop_attn / 1e12:.3f}) multiply by "
          f"{ctx.flop_attn / flop:.3f}. load average now {C.load_average()} (machine shared: ratios are the robust figures)")
    return res


def targets(ctx: SimpleNamespace, res: dict) -> list[dict]:
    rates = ctx.rates
    speedup = res["naive"][0] / res["woundscore"][0]
    frac_bf16 = res["woundscore"][1] / rates["bf16"]
    frac_used = res["woundscore"][1] / ctx.mm_used
    why_bf16 = ("" if rates["bf16_native"] else
                f"no native bf16 on this CPU ({ctx.info['isa']}): bf16 GEMM {rates['bf16']:.1f} GFLOP/s is emulated; "
                f"--dtype auto correctly stays float32, so (b) can only win the decode overlap; of the fp32 matmul "
                f"rate (b) reaches {res['woundscore'][1] / rates['fp32']:.0%}")
    return [
        C.target("embed speed-up vs naive notebook", ">= 3x", f"{speedup:.2f}x", speedup >= 3,
                 "" if speedup >= 3 else (why_bf16 or "see investigate table")),
        C.target("embed achieved / bf16 matmul rate", ">= 60%",
                 f"{frac_bf16:.0%} ({res['woundscore'][1]:.0f} of {rates['bf16']:.0f} GFLOP/s)" if rates["bf16_native"]
                 else f"n/a: bf16 emulated ({rates['bf16']:.1f} GFLOP/s); (b) {res['woundscore'][1]:.0f} GFLOP/s fp32",
                 (frac_bf16 >= 0.6) if rates["bf16_native"] else None,
                 why_bf16 or ("" if frac_bf16 >= 0.6 else "see investigate table")),
        C.target("embed achieved / matmul rate of the dtype used", ">= 60% (proxy)",
                 f"{frac_used:.0%}", frac_used >= 0.6),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.torch_threads(args.threads)
    ctx = setup(args)
    full = ctx.cfg.num_hidden_layers
    if args.investigate_only:
        imodel = C.random_vision_model(smoke=args.smoke, dtype=ctx.auto, layers=args.inv_blocks or None)
        inv_rows = investigate_table(args, ctx, imodel, float("nan"), f"forward-only variants "
                                     f"({imodel.config.num_hidden_layers} of {full} blocks; s/image extrapolated to full depth)")
        C.emit_summary("embed_investigate", [], rows=inv_rows)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    times, ws, wmodel, naive_model = time_paths(args, ctx, tmp)
    res = throughput_table(args, ctx, times)
    if args.investigate:
        imodel, note = wmodel, "full depth"
        if args.inv_blocks and args.inv_blocks < full:
            del naive_model
            imodel = C.random_vision_model(smoke=args.smoke, dtype=ctx.auto, layers=args.inv_blocks)
            note = (f"tower truncated to {args.inv_blocks} of {full} blocks; GFLOP/s measured on it, "
                    f"s/image extrapolated to full depth")
        investigate_table(args, ctx, imodel, C.median(times["woundscore"]),
                          f"how close can the forward get to the matmul rate? (forward only, same run; {note})")
    C.emit_summary("embed", targets(ctx, res), smoke=args.smoke, images_per_s=1 / res["woundscore"][0],
                   naive_images_per_s=1 / res["naive"][0], gflops=res["woundscore"][1],
                   matmul=ctx.rates, dtype=str(ctx.auto), mode=ws.mode)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
