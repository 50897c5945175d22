"""Merge time of 409,600 latents (100 members x 4,096, d_out 256) vs one plain matmul pass over them.

Timed twice: by decoder direction alone, and with the activation test on (codes on 2,048 sample inputs,
planted so that copies of a direction co-fire), as the demo runs it. The baseline is the cost of
comparing every latent with ONE member's dictionary (409,600 x 4,096 x 256), the smallest dense step
any all-pairs merge would repeat ~100 times. Wall time depends on what else runs on the machine, so
the merge's CPU time is printed beside it.

    .venv/bin/python bench/patterns.py      # about 2 minutes on 2 cores
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from lanic_nb.device import machine_line
from lanic_nb.patterns.merge import MergeConfig, merge_latents

# The planted-pattern fixtures are test helpers (the library never ships them): borrow them from tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import plant_codes, plant_decoders  # noqa: E402 (tests/helpers.py)

N, D_DICT, D_OUT, N_TRUE, N_ROWS = 100, 4096, 256, 5000, 2048


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.manual_seed(0)
    W, truth = plant_decoders(N, D_DICT, D_OUT, N_TRUE, share=0.7, noise=0.3, seed=0)
    flat = W.reshape(-1, D_OUT)

    t0 = time.perf_counter()
    for s in range(0, flat.shape[0], 16384):
        (flat[s : s + 16384] @ W[0].T).max(dim=1)
    t_base = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    ps = merge_latents(W, MergeConfig(sim_threshold=0.8, min_consistency=0.5))
    t_merge, cpu_merge = time.perf_counter() - t0, time.process_time() - c0

    codes = plant_codes(truth, N_ROWS, seed=0)
    t0 = time.perf_counter()
    ps_act = merge_latents(W, MergeConfig(sim_threshold=0.5, act_threshold=0.5, min_consistency=0.5), codes=codes)
    t_act = time.perf_counter() - t0

    # Recovery: planted directions that came out as one pattern holding all their latents.
    def exact(p) -> int:
        lp, tr = p.latent_pattern.reshape(-1), truth.reshape(-1)
        hit = 0
        for t in torch.unique(tr[tr >= 0]).tolist()[:500]:
            got = lp[tr == t]
            hit += int((got >= 0).all() and (got == got[0]).all())
        return hit

    n_checked = min(500, N_TRUE)
    print(
        f"merge {N}x{D_DICT} latents (d_out {D_OUT}): {t_merge:.1f} s wall ({cpu_merge:.1f} s CPU), "
        f"with activations on {N_ROWS} rows {t_act:.1f} s; one matmul pass {t_base:.1f} s; "
        f"ratio {t_merge / t_base:.2f} / {t_act / t_base:.2f}; patterns {ps.n_patterns} / {ps_act.n_patterns} "
        f"(planted {N_TRUE}); exact recovery {exact(ps)}/{n_checked} / {exact(ps_act)}/{n_checked} | {machine_line()}"
    )


if __name__ == "__main__":
    main()
