"""GPU sections of bench/gpu.sh: matmul peak, bf16 embedding throughput and MFU, decode supply.

Each section is its own process (gpu.sh runs them under `timeout`), prints as it goes, and
tolerates missing packages: without transformers the embedding section runs an equivalent
pure-torch ViT of the same shape (and says so).

  python3 bench/bench_gpu.py env
  python3 bench/bench_gpu.py matmul   [--smoke]
  python3 bench/bench_gpu.py embed    [--smoke] [--batches 32,64,128] [--compile]
  python3 bench/bench_gpu.py supply   [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

warnings.filterwarnings("ignore")

# Dense bf16 tensor-core peak, no sparsity (NVIDIA datasheets). H200 is the same GH100 chip and
# clocks as H100 SXM: same 989 TFLOP/s. H100 PCIe: 756.
PEAKS_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
                ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("T4", 65.0)]


def peak_for(name: str) -> tuple[float, str]:
    for key, v in PEAKS_TFLOPS:
        if key.lower() in name.lower():
            return v, f"{key} dense bf16 peak {v:.0f} TFLOP/s (datasheet, no sparsity)"
    return 989.0, f"unknown GPU {name!r}: using H100 SXM dense bf16 peak 989 TFLOP/s"


def device_and_dtype(args):
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    if not args.smoke:
        print("NO CUDA DEVICE: run with --smoke on a CPU (tiny config, float32), or on the GPU machine")
        sys.exit(3)
    return "cpu", torch.float32


def sync(dev):
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def cmd_env(args) -> None:
    info = C.machine_info("cuda")
    for k, v in info.items():
        print(f"  {k}: {v}")
    import importlib.util

    for mod in ("torch", "transformers", "keras", "PIL", "h5py", "click", "tqdm", "woundscore.embed.encoder", "woundscore.compare.prefix"):
        if mod == "keras":  # importing keras needs KERAS_BACKEND (set only by classify): just look for it
            print(f"  keras: {'present' if importlib.util.find_spec('keras') else 'MISSING'} (not needed here)")
            continue
        try:
            __import__(mod)
            print(f"  import {mod}: ok")
        except Exception as e:
            print(f"  import {mod}: MISSING ({type(e).__name__}: {e})")
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            print(f"  gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                  f"capability {p.major}.{p.minor}; torch {torch.__version__} cuda {torch.version.cuda}")
        else:
            print("  gpu: none visible to torch")
    except ImportError:
        print("  torch MISSING: nothing else can run")


def cmd_matmul(args) -> None:
    import torch

    dev, dt = device_and_dtype(args)
    n = 1024 if args.smoke else 8192
    rows = []
    for dtype, name in ((dt, str(dt).replace("torch.", "")), (torch.float32, "float32"))[: 1 if dt == torch.float32 else 2]:
        if dev == "cuda" and dtype == torch.float32:
            torch.backends.cuda.matmul.allow_tf32 = False
        r = C.matmul_rate(dtype, (n, n, n), seconds=3.0 if not args.smoke else 0.3, device=dev) / 1e3
        rows.append([f"{name} {n}^3", r])
        r2 = C.matmul_rate(dtype, (64 * 1024, 1152, 4304) if not args.smoke else (1024, 1152, 4304),
                           seconds=2.0 if not args.smoke else 0.3, device=dev) / 1e3
        rows.append([f"{name} MLP fc1 shape ({'64x' if not args.smoke else ''}1024 tokens x 1152 x 4304)", r2])
    print(C.table(["GEMM", "TFLOP/s"], rows))
    if dev == "cuda":
        peak, note = peak_for(torch.cuda.get_device_name(0))
        print(f"  {note}; bf16 {n}^3 reaches {rows[0][1] / peak:.0%} of it")
    print("RESULT matmul_%s_tflops=%.1f" % (str(dt).replace("torch.", ""), rows[0][1]))


class TorchViT:
    """Fallback when transformers is missing: a pre-LN ViT with SigLIP's shapes (patch conv, N
    blocks of MHA + GELU MLP, attention-pooling head) in plain torch.nn, SDPA inside MHA."""

    @staticmethod
    def build(cfg: dict):
        import torch
        from torch import nn

        d, L, h, i, p, s = (cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "patch_size", "image_size"))

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.patch = nn.Conv2d(3, d, p, p)
                self.pos = nn.Parameter(torch.zeros(1, (s // p) ** 2, d))
                self.blocks = nn.TransformerEncoder(
                    nn.TransformerEncoderLayer(d, h, i, dropout=0.0, activation="gelu", batch_first=True,
                                               norm_first=True), L, enable_nested_tensor=False)
                self.norm = nn.LayerNorm(d)
                self.probe = nn.Parameter(torch.zeros(1, 1, d))
                self.pool = nn.MultiheadAttention(d, h, batch_first=True)

            def forward(self, pixel_values):
                x = self.patch(pixel_values).flatten(2).transpose(1, 2) + self.pos
                x = self.norm(self.blocks(x))
                return self.pool(self.probe.expand(x.shape[0], -1, -1), x, x, need_weights=False)[0][:, 0]

        return M()


def cmd_embed(args) -> None:
    import torch

    dev, dt = device_and_dtype(args)
    from woundscore.embed.tiny import medsiglip_448_vision_config

    cfgd = C.SMOKE_VISION if args.smoke else medsiglip_448_vision_config()
    flop = C.vit_flops(cfgd, attention=False)
    flop_attn = C.vit_flops(cfgd, attention=True)
    try:
        import transformers  # noqa: F401

        model = C.random_vision_model(smoke=args.smoke)
        impl = f"transformers {transformers.__version__} SiglipVisionModel, SDPA"
        hf = True
    except ImportError as e:
        print(f"  transformers MISSING ({e}): using an equivalent pure-torch ViT of the same shape")
        model = TorchViT.build(cfgd).eval()
        impl = "pure-torch ViT (same shapes)"
        hf = False
    model = model.to(dev, dt).eval()
    s = cfgd["image_size"]
    peak, note = (peak_for(torch.cuda.get_device_name(0)) if dev == "cuda" else (1.0, "CPU smoke: MFU meaningless"))
    print(f"  {impl}; {dt}; {C.RANDOM_NOTE}")
    print(f"  {flop / 1e12:.3f} TFLOP/image (weight matmuls) / {flop_attn / 1e12:.3f} with attention; {note}")

    def fwd(m, x):
        with torch.inference_mode():
            o = m(pixel_values=x)
            return o.pooler_output if hf else o

    rows = []
    best = 0.0
    batches = [int(b) for b in args.batches.split(",")] if not args.smoke else [2, 4]
    for b in batches:
        try:
            x = torch.randn(b, 3, s, s, device=dev, dtype=dt)
            reps = 3 if args.smoke else max(3, int(512 / b))
            ts = C.timed(lambda: fwd(model, x), repeat=reps, warmup=2, sync=lambda: sync(dev))
            ips = b * reps / sum(ts)
        except torch.OutOfMemoryError:
            print(f"  batch {b}: out of memory")
            break
        best = max(best, ips)
        rows.append([f"model forward, pixels on device, bs{b}", ips, ips * flop / 1e12, ips * flop / 1e12 / peak,
                     ips * flop_attn / 1e12 / peak])
        print(f"  bs{b}: {ips:,.0f} images/s", flush=True)
    # woundscore's encoder path: pixels from host memory, fp32 -> dtype cast, pooled features back to host
    try:
        from woundscore.embed.encoder import ImageEncoder
        from woundscore.embed.preprocess import PreprocessSpec

        if not hf:
            raise ImportError("needs transformers")
        enc = ImageEncoder(model, PreprocessSpec(size=(s, s), mean=(0.5,) * 3, std=(0.5,) * 3), model_id="bench",
                           revision="random", device=dev)
        b = batches[min(1, len(batches) - 1)]
        xh = torch.randn(b, 3, s, s).pin_memory() if dev == "cuda" else torch.randn(b, 3, s, s)
        reps = 3 if args.smoke else max(3, int(512 / b))
        ts = C.timed(lambda: enc.embed_pixels(xh), repeat=reps, warmup=2, sync=lambda: sync(dev))
        ips = b * reps / sum(ts)
        rows.append([f"woundscore ImageEncoder.embed_pixels, host fp32 pixels, bs{b}", ips, ips * flop / 1e12,
                     ips * flop / 1e12 / peak, ips * flop_attn / 1e12 / peak])
        print(f"  ImageEncoder.embed_pixels bs{b}: {ips:,.0f} images/s", flush=True)
    except Exception as e:
        print(f"  woundscore ImageEncoder path skipped: {type(e).__name__}: {e}")
    print(C.table(["path", "images/s", "TFLOP/s (0.849/img)", "MFU (weights)", "MFU (incl. attention)"], rows),
          flush=True)
    print("RESULT embed_images_per_s=%.1f mfu=%.3f" % (best, best * flop / 1e12 / peak), flush=True)
    if args.compile and dev == "cuda":
        try:
            b = batches[-1] if len(batches) > 1 else batches[0]
            x = torch.randn(b, 3, s, s, device=dev, dtype=dt)
            t0 = time.perf_counter()
            mc = torch.compile(model)
            fwd(mc, x)
            sync(dev)
            ct = time.perf_counter() - t0
            reps = max(3, int(512 / b))
            ts = C.timed(lambda: fwd(mc, x), repeat=reps, warmup=2, sync=lambda: sync(dev))
            ips = b * reps / sum(ts)
            print(f"  torch.compile bs{b}: {ips:,.0f} images/s, MFU {ips * flop / 1e12 / peak:.1%} "
                  f"(incl. attention {ips * flop_attn / 1e12 / peak:.1%}); compile {ct:.0f} s")
            print("RESULT embed_compiled_images_per_s=%.1f mfu=%.3f" % (ips, ips * flop / 1e12 / peak))
        except Exception as e:
            print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}")


def cmd_supply(args) -> None:
    """Can the CPUs decode phone photos as fast as the GPU embeds them? One-core ms/image x cores."""
    import torch

    torch.set_num_threads(1)
    try:
        from woundscore.embed.preprocess import PreprocessSpec, preprocess_bytes
    except ImportError as e:
        print(f"  embed.preprocess not importable ({e}): skipped")
        return
    spec = PreprocessSpec(size=(448, 448), mean=(0.5,) * 3, std=(0.5,) * 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for name, (w, h) in (("12 MP", (4000, 3000)), ("1080p", (1920, 1080)), ("SurgWound-like 800x600", (800, 600))):
        data = C.phone_jpeg(w, h, seed=3)
        for mode, sp in (("exact", spec), ("draft", spec.with_decode(True))):
            ms = 1000 * C.median(C.timed(lambda: preprocess_bytes(data, sp), repeat=2 if args.smoke else 5, warmup=1))
            rows.append([name, mode, ms, cores, 1000 / ms * max(1, cores - 1)])
    print(C.table(["image", "decode", "ms/image (1 core)", "cores", "images/s with cores-1 workers"], rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", choices=["env", "matmul", "embed", "supply"])
    ap.add_argument("--smoke", action="store_true", help="tiny config, CPU allowed: checks the script")
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args(argv)
    if args.section != "env":
        try:
            import torch  # noqa: F401
        except ImportError:
            print(f"torch is not importable by {sys.executable}: section {args.section} cannot run "
                  "(set PYTHON=/path/to/python that has torch)")
            return 2
    {"env": cmd_env, "matmul": cmd_matmul, "embed": cmd_embed, "supply": cmd_supply}[args.section](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
