"""bench/gpu.py (prepared for a GPU) runs end to end on the CPU when asked, tiny and without the peers' libraries
(the tests never import those), and claims no GPU figure; bench/activations.py runs tiny and matches its dense
reference; bench/topk.py chooses what torch.topk chooses; every benchmark says in its --help how long it takes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def test_gpu_bench_runs_tiny_on_cpu():
    r = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--shapes", "tiny", "--members", "2",
                        "--steps", "2", "--peers"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "measured on the CPU" in out and "no GPU figure" in out
    assert "one epoch over 377,110 rows" in out and "lanic-nb (batched)" in out
    for lib in ("sparsify", "overcomplete", "SAELens"):
        assert lib not in out


def test_activations_bench_runs_tiny_and_agrees_with_its_reference():
    r = subprocess.run([sys.executable, "bench/activations.py", "--members", "2", "--d-dict", "256", "--d-in", "32",
                        "--k", "8", "--rows", "64", "--patterns", "20"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("pattern activations, 2 x 256 latents") and "dense reference" in line
    assert float(line.rsplit("max |difference| ", 1)[1]) < 1e-5


def test_topk_bench_runs_and_agrees_with_torch():
    r = subprocess.run([sys.executable, "bench/topk.py", "--repeats", "2", "--shapes", "demo"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("top-k choice") and "torch.topk" in line and "same choices True" in line
    assert "BatchTopK step" in line and "same results True" in line


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "scale_data.py"))
def test_every_benchmark_states_its_expected_time_in_its_help(script):
    doc = ast.get_docstring(ast.parse((BENCH / script).read_text())) or ""
    says_time = re.search(r"\b(\d+|a|one)(-\d+)? ?(minutes?|min|hours?)\b|under \d+ minutes?", doc)
    assert says_time or script == "record.py", f"bench/{script}: its --help omits its time"
    assert "description=__doc__" in (BENCH / script).read_text() or script == "record.py"
