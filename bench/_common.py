"""Shared helpers for the benches: machine/versions header, matmul rates, FLOP counts, tables,
and the real MedSigLIP vision architecture with random weights.

Import from a bench script as ``import _common`` (bench/ is on sys.path when a script in it runs).
Importing it is light: torch, transformers and woundscore (which loads Keras) are imported in the
functions that need them.

Each bench ends with one machine-readable line that bench/run_all.py collects::

    BENCH-SUMMARY {"bench": "embed", "targets": [{"name": ..., "target": ..., "measured": ..., "met": true}]}
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the repo's packages without a pip install (PYTHONPATH=. also works)
    sys.path.insert(0, str(REPO))

# woundscore is imported inside the functions: `import woundscore` loads Keras (it registers the
# loss), which a bench that times its own imports, or does not need it, must not pay here.

# Same shape, a few seconds per forward on a laptop core: for --smoke / --quick runs.
SMOKE_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                    image_size=112, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
                    layer_norm_eps=1e-6)


RANDOM_NOTE = ("random weights: the cost of a forward/backward does not depend on weight values, "
               "so speed measured here is the real model's speed; the outputs mean nothing")


# ----------------------------------------------------------------------------- machine header

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_cpu() -> bool:
    """torch multiplies bf16 natively here (embed.runtime's detection, WOUNDSCORE_CPU_BF16 overrides).
    Without it torch falls back to a reference kernel that is 20-100x slower than float32 (measured)."""
    from woundscore.embed.runtime import cpu_has_native_bf16

    return cpu_has_native_bf16()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Date, CPU, cores, ISA features that decide the dtype, package versions, threads, load."""
    from woundscore.cache.util import package_versions

    flags = cpu_flags()
    versions = package_versions(("torch", "transformers", "keras", "pillow", "numpy"))
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "asimd")
                         if f in flags) or "unknown",
        "native_bf16_matmul": native_bf16_cpu(),
        **{k: versions.get(k, "missing") for k in ("python", "torch", "transformers", "keras", "pillow", "numpy")},
        "load_avg_1_5_15": load_average(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        try:
            info["onednn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            info["onednn_bf16"] = "n/a"
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        info["torch_threads"] = "torch missing"
    return info


def print_header(title: str, device: str = "cpu", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = machine_info(device)
    if extra:
        info.update(extra)
    print(f"\n## {title}\n")
    print("  " + " | ".join(f"{k}: {v}" for k, v in info.items()))
    print()
    return info


# ----------------------------------------------------------------------------- timing

def timed(fn: Callable[[], Any], *, repeat: int = 1, warmup: int = 0, sync: Callable[[], None] | None = None
          ) -> list[float]:
    """Wall seconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t)
    return out


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def matmul_rate(dtype: Any, shape: tuple[int, int, int] = (1024, 1152, 4304), *, seconds: float = 2.0,
                device: str = "cpu", max_one_s: float = 5.0) -> float:
    """Achieved GFLOP/s of ``(m, k) @ (k, n)`` in ``dtype``: best of repeated products over
    ``seconds``. The default shape is MedSigLIP's MLP up-projection for one image (1024 tokens).
    A product that takes longer than ``max_one_s`` once (bf16 without native support) is timed once."""
    import torch

    m, k, n = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    flop = 2.0 * m * k * n
    first = timed(lambda: a @ b, sync=sync)[0]
    if first > max_one_s:
        return flop / first / 1e9
    first = min(first, timed(lambda: a @ b, sync=sync)[0])  # the first call pays library set-up
    best, t_end = float("inf"), time.perf_counter() + seconds
    reps = max(1, int(0.05 / max(first, 1e-6)))  # batch tiny products so the timer is not the cost
    while time.perf_counter() < t_end:
        t = timed(lambda: [a @ b for _ in range(reps)], sync=sync)[0] / reps
        best = min(best, t)
    return flop / best / 1e9


def probe_rate(dtype: Any, device: str = "cpu") -> float:
    """A cheap (256 x 1152 x 1152) product: tells in well under a second whether a dtype is native."""
    return matmul_rate(dtype, (256, 1152, 1152), seconds=0.3, device=device, max_one_s=0.5)


# ----------------------------------------------------------------------------- FLOPs

def vit_flops(cfg: Any, *, attention: bool = True) -> float:
    """Forward FLOPs of one image through a SigLIP vision tower incl. the attention-pooling head
    (multiply-add = 2). ``attention=False`` counts only the weight matmuls (the 0.849 TFLOP figure
    of issue 6 for MedSigLIP-448); attention scores and weighted sums add ~14.5 % more at 1024 tokens."""
    g = (lambda k: getattr(cfg, k)) if not isinstance(cfg, dict) else cfg.__getitem__
    d, i, L = g("hidden_size"), g("intermediate_size"), g("num_hidden_layers")
    p, s, c = g("patch_size"), g("image_size"), g("num_channels")
    n = (s // p) ** 2
    patch = 2 * n * c * p * p * d
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * i
    if attention:
        per_layer += 2 * 2 * n * n * d
    # pooling head: one probe query; K, V projections of all tokens, out proj + MLP on one token
    head = 2 * n * d * 2 * d + 2 * d * d * 2 + 2 * 2 * d * i
    if attention:
        head += 2 * 2 * n * d
    return float(patch + L * per_layer + head)


# ----------------------------------------------------------------------------- models

def vision_config(*, smoke: bool = False, attn: str = "sdpa", layers: int | None = None) -> Any:
    """MedSigLIP-448's SiglipVisionConfig, or a tiny one with the same structure for --smoke."""
    from transformers import SiglipVisionConfig

    from woundscore.embed.tiny import medsiglip_448_vision_config

    cfg = SiglipVisionConfig(**(SMOKE_VISION if smoke else medsiglip_448_vision_config()))
    if layers:  # a truncated tower: same per-block cost, for quick per-block measurements
        cfg.num_hidden_layers = layers
    cfg._attn_implementation = attn
    return cfg


def fast_random_init(model: Any, seed: int = 0) -> Any:
    """Fill parameters with N(0, 0.02) values (norm weights 1, biases 0) drawn from a 4 M pool at
    random offsets: about a second for 429 M parameters, where the transformers initialiser (or
    one normal_ per parameter) takes 20-30 s on 2 cores. Cost does not depend on the values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pool_n = 1 << 22
    pool = torch.randn(2 * pool_n, generator=g).mul_(0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layer_norm" in name):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                flat = p.view(-1)
                for i in range(0, flat.numel(), pool_n):
                    k = min(pool_n, flat.numel() - i)
                    off = int(torch.randint(0, pool_n, (1,), generator=g))
                    flat[i:i + k].copy_(pool[off:off + k])
        for name, b in model.named_buffers():
            if "position_ids" in name:
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    return model


def _on_meta(cls: Any, cfg: Any) -> Any:
    import torch

    with torch.device("meta"):
        m = cls(cfg)
    m = m.to_empty(device="cpu")
    # non-persistent buffers (position_ids) are not restored by to_empty
    return m


def random_vision_model(*, smoke: bool = False, dtype: Any = None, attn: str = "sdpa", seed: int = 0,
                        layers: int | None = None) -> Any:
    """SiglipVisionModel with the real (or smoke) architecture and random weights, eval mode."""
    import torch
    from transformers import SiglipVisionModel

    cfg = vision_config(smoke=smoke, attn=attn, layers=layers)
    try:
        m = fast_random_init(_on_meta(SiglipVisionModel, cfg), seed)
    except Exception:  # meta construction unsupported: slow but sure
        torch.manual_seed(seed)
        m = SiglipVisionModel(cfg)
    if dtype is not None:
        m = m.to(dtype)
    return m.eval()


def random_siglip_model(*, smoke: bool = False, seed: int = 0) -> Any:
    """SiglipModel with the real vision tower and a TINY text tower: what Google's notebook loads
    (AutoModel -> SiglipModel, get_image_features), without 1.6 GB of text weights it never uses."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    v = vision_config(smoke=smoke).to_dict()
    text = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64)
    cfg = SiglipConfig(text_config=text, vision_config=v)
    cfg._attn_implementation = "sdpa"  # transformers' default, as the notebook gets it
    try:
        m = fast_random_init(_on_meta(SiglipModel, cfg), seed)
    except Exception:
        torch.manual_seed(seed)
        m = SiglipModel(cfg)
    return m.eval()


def save_random_checkpoint(out_dir: Path, *, smoke: bool = False, seed: int = 0) -> Path:
    """A vision-only random checkpoint folder (config, safetensors, preprocessor_config.json) that
    embed.encoder.load_encoder reads like the hub model. Saved in bf16 to halve the write."""
    import torch
    from transformers import SiglipImageProcessor

    m = random_vision_model(smoke=smoke, seed=seed).to(torch.bfloat16)
    m.config.woundscore_notice = "random weights - benchmark only"
    m.save_pretrained(out_dir, safe_serialization=True)
    s = m.config.image_size
    SiglipImageProcessor(size={"height": s, "width": s}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                         resample=2).to_json_file(Path(out_dir) / "preprocessor_config.json")
    return Path(out_dir)


# ----------------------------------------------------------------------------- images

def phone_jpeg(width: int, height: int, *, seed: int = 0, quality: int = 90, exif_orientation: int | None = None
               ) -> bytes:
    """A JPEG whose entropy resembles a photo (smooth shading + texture + edges), so decode cost is
    realistic: pure noise would be 3x larger and slower, a flat image far faster."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.int16)
    tex = rng.normal(0, 6, size=(height // 4 + 1, width // 4 + 1)).astype(np.float32)
    tex_img = Image.fromarray(np.clip(tex + 128, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    arr = arr + (np.asarray(tex_img, dtype=np.int16) - 128)[..., None]
    # a reddish "wound" ellipse with a sharp edge
    yy, xx = np.ogrid[:height, :width]
    mask = ((xx - width * 0.5) / (width * 0.2)) ** 2 + ((yy - height * 0.5) / (height * 0.08)) ** 2 < 1
    arr[mask] = (arr[mask] * 0.5 + np.array([110, 20, 25])).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    kw: dict[str, Any] = {"quality": quality}
    if exif_orientation:
        ex = Image.Exif()
        ex[0x0112] = exif_orientation
        kw["exif"] = ex.tobytes()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- output

def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (pasteable into RESULTS.md)."""
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            if x == 0:
                return "0"
            if abs(x) >= 100:
                return f"{x:,.0f}"
            if abs(x) >= 10:
                return f"{x:.1f}"
            if abs(x) >= 0.01:
                return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
            return f"{x:.2e}"
        return str(x)

    rows = [[fmt(c) for c in r] for r in rows]
    w = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def target(name: str, target: str, measured: str, met: bool | None, why: str = "") -> dict[str, Any]:
    return {"name": name, "target": target, "measured": measured, "met": met, "why": why}


def emit_summary(bench: str, targets: list[dict[str, Any]], **extra: Any) -> None:
    """The last line of a bench: run_all.py collects it into the final summary."""
    print("BENCH-SUMMARY " + json.dumps({"bench": bench, "targets": targets, **extra}, default=str), flush=True)


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)
