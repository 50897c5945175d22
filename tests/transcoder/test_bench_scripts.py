"""bench/gpu.py (prepared for a GPU) runs end to end on the CPU when asked, tiny and without the peers' libraries
(the tests never import those), and claims no GPU figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_tiny_on_cpu():
    r = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--shapes", "tiny", "--members", "2",
                        "--steps", "2", "--peers"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "measured on the CPU" in out and "no GPU figure" in out
    assert "one epoch over 377,110 rows" in out and "lanic-nb (batched)" in out
    for lib in ("sparsify", "overcomplete", "SAELens"):
        assert lib not in out
