"""The choice of latents in every TopK step: lanic-nb's numba kernel (``lanic_nb.transcoder.select``) against
``torch.topk`` on the same pre-activations, at the demo's and MIMIC's shapes (members x batch rows x latents, k).
Medians of 30 timed calls after a warm-up, both on the same tensor in one run; the chosen values are checked equal.

    .venv/bin/python bench/topk.py
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from lanic_nb.device import machine_line
from lanic_nb.transcoder.select import chosen_values, kernel_available, topk_indices, torch_topk_indices

SHAPES = {"demo": (20, 128, 256, 16), "MIMIC": (10, 256, 4096, 32)}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    print(machine_line(), flush=True)
    parts = []
    for name in args.shapes:
        n, b, d, k = SHAPES[name]
        x = torch.randn(n, b, d, generator=torch.Generator().manual_seed(0))
        same = torch.equal(chosen_values(x, topk_indices(x, k)), chosen_values(x, torch_topk_indices(x, k)))
        ours = median_ms(functools.partial(topk_indices, x, k), args.repeats)
        ref = median_ms(functools.partial(torch_topk_indices, x, k), args.repeats)
        parts.append(f"{name} {n}x{b}x{d} k{k}: kernel {ours:.2f} ms, torch.topk {ref:.2f} ms ({ref / ours:.2f}x), "
                     f"same choices {same}")
    print(f"top-k choice (numba kernel used: {kernel_available(torch.zeros(1))}): " + "; ".join(parts))


if __name__ == "__main__":
    main()
