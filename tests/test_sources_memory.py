"""Reading a release streams: peak memory does not grow with the file's size.

The real release is ~452 MB and each image's base64 is repeated in every record of that image.
The reader keeps one record plus each image's decoded bytes once, so its memory grows with the
unique image bytes (~1/12 of the files), never with the files themselves. Peak RSS is measured in
a fresh subprocess (``VmHWM`` of /proc/self/status, the high-water mark; ``ru_maxrss`` where there is
no /proc) after the imports, so the increase is what reading costs.

CI variant: a ~40 MB release; the increase must stay below half the files' size. The same
subprocess loading the files with ``json.load`` exceeds that bound, which shows the bound catches a
reader that holds a whole file. The full-size 450 MB check (reading adds < 1/4 of the files, well
under 1 GB, on top of what the imports hold: `import woundscore` loads torch and Keras, ~1 GB RSS)
is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from woundscore.embed.synthetic import make_large_release

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import json, resource, sys
from woundscore.embed.sources import open_source
import numpy
def rss_kb():
    # VmHWM: this process's peak RSS in KiB. ru_maxrss would do, except that Linux carries the
    # parent's RSS at fork into the child's ru_maxrss across exec, which can hide the reading.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
base = rss_kb()
if sys.argv[2] == "stream":
    samples = open_source(sys.argv[1]).samples()
    n_bytes = sum(len(s.read_bytes()) for s in samples)
    n = len(samples)
else:  # the naive way: a whole file in memory at once
    import pathlib
    kept = [json.load(open(f)) for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
    n, n_bytes = sum(len(k) for k in kept), 0
print(json.dumps({"base_kb": base, "peak_kb": rss_kb(), "n": n, "image_bytes": n_bytes}))
"""


def measure(release: Path, how: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(release), how],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(out.stdout)


def release_size(release: Path) -> int:
    return sum(f.stat().st_size for f in release.glob("*.json"))


def test_reading_memory_does_not_grow_with_file_size(tmp_path):
    release = make_large_release(tmp_path / "rel", 40, seed=1)
    size = release_size(release)
    assert size > 30e6
    stream = measure(release, "stream")
    increase = (stream["peak_kb"] - stream["base_kb"]) * 1024
    assert stream["image_bytes"] > 0
    # Holding the unique images is expected (~1/12 of the files); holding a file is not.
    assert increase < 0.5 * size, f"reading {size / 1e6:.0f} MB grew RSS by {increase / 1e6:.0f} MB"
    naive = measure(release, "naive")
    assert (naive["peak_kb"] - naive["base_kb"]) * 1024 > 0.5 * size  # the bound is meaningful


@pytest.mark.slow
def test_450mb_release_reads_in_under_a_quarter_of_its_size(tmp_path):
    release = make_large_release(tmp_path / "rel", 450, seed=2)
    size = release_size(release)
    assert size > 420e6
    stream = measure(release, "stream")
    assert stream["n"] > 0 and stream["image_bytes"] > 0, stream
    # The increase over the imports (torch + Keras, loaded by `import woundscore`) is the reader's.
    assert (stream["peak_kb"] - stream["base_kb"]) * 1024 < 0.25 * size, stream
