"""Where and how torch runs: device, dtype, batch size, quiet transformers, memory, notices.

One implementation of each, used by the encoder, the fine-tune, zero-shot and the report.
torch and transformers are imported inside the functions: resolving a CLI option should not cost
their import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from woundscore.cache.errors import WoundscoreError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("embed")

DEFAULT_MODEL = "google/medsiglip-448"


class EncoderLoadError(WoundscoreError):
    """The encoder could not be loaded; the message says exactly what to do."""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (x86 AVX-512 BF16 or AMX; ARM BF16).

    Without it torch emulates bf16 and it is slower than float32. ``WOUNDSCORE_CPU_BF16=0`` (or 1)
    overrides the detection: the test suite sets 0 so that its float32 references hold on any CPU.
    """
    forced = os.environ.get("WOUNDSCORE_CPU_BF16", "")
    if cpuinfo is None and forced in ("0", "1"):
        return forced == "1"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False  # not Linux: stay on float32 (safe default)
    flags = {f for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features"))
             for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda[:LOCAL_RANK]" when a GPU is visible, else "cpu"."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderLoadError(f"--device {device} requested but no CUDA GPU is visible to torch")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):  # under torchrun: one GPU per rank
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu" if device == "auto" else device


def resolve_dtype(dtype: str, device: str, *, cuda_capability: tuple[int, int] | None = None,
                  cpu_bf16: bool | None = None) -> "torch.dtype":
    """--dtype -> torch dtype. auto: bfloat16 on GPUs with it (compute capability >= 8) and on
    CPUs with native bf16 matmul; float16 on older GPUs (T4: 7.5); float32 otherwise."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    if dtype != "auto":
        if dtype not in names:  # the CLIs' --dtype choices check too; library callers get this
            raise EncoderLoadError(f"unknown dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
        # A half-precision matmul on a CPU without native support is emulated: measured 100-700x
        # slower than float32 on an AVX2-only CPU (bench/RESULTS.md), minutes per image.
        if device == "cpu" and dtype != "float32" and not native:
            log.warning("--dtype %s on a CPU without native bf16/fp16 matmul is emulated and can be "
                        "100x slower than float32; use --dtype auto (float32 here)", dtype)
        return names[dtype]
    if device.startswith("cuda"):
        cap = cuda_capability or torch.cuda.get_device_capability(torch.device(device))
        return torch.bfloat16 if cap >= (8, 0) else torch.float16
    return torch.bfloat16 if device == "cpu" and native else torch.float32


def default_batch_size(device: str) -> int:
    """A batch that fills a GPU without running out of memory at 448 px; small on CPU, where a
    bigger batch does not speed up the matmuls but delays the first durable write."""
    return 32 if device.startswith("cuda") else 4


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Errors only and no progress bars from transformers while a checkpoint loads or saves: the
    'UNEXPECTED text_model.*' / 'MISSING classifier' load reports are the point, and a per-tensor
    bar is noise in a CLI."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def peak_memory(device: str) -> tuple[float, str]:
    """(MiB, what was measured): the GPU's max allocated on CUDA, else the process's max RSS."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20, "GPU max_memory_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / 1024.0, "process max RSS (whole process, includes the model load)"


def checkpoint_notice(folder: Path) -> str | None:
    """A checkpoint may declare itself not-for-clinical-use (the tiny test model does)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    n = cfg.get("woundscore_notice")
    return str(n) if n else None
