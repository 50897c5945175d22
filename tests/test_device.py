"""keep_freed_memory: a training step at MIMIC's widths, repeated, reuses the pages it freed instead of
faulting in fresh ones every step (glibc on Linux)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from lanic_nb.device import keep_freed_memory
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder import fused
from lanic_nb.transcoder.train import make_optimizer, train_step
fused.applies = lambda *a: False  # the step that forms both weights' gradients (the fused update forms neither)
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
# 4 members x 4,096 latents x 512: each weight's gradient is 32 MiB, just over glibc's largest mmap threshold
cfg = TranscoderConfig(d_in=512, d_out=512, d_dict=4096, k=32, batch_size=256, n_members=4, input_weight=0.0)
model = TranscoderEnsemble(cfg)
opt = make_optimizer(model)
x = torch.randn(4, 256, 512)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step(model, opt, x, x)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[4:]))  # the steady state, after the first steps have grown the heap
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_per_step():
    kept, with_keep = _faults("keep")
    _, without = _faults("plain")
    assert kept == "True"
    pages = 32 * 2**20 // 4096  # one gradient's pages
    assert without > 3 * pages  # glibc's default: fresh pages for the big blocks of every step (6 steps)
    assert with_keep < without / 3
