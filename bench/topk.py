"""The choice of latents in every TopK step: lanic-nb's numba kernel (``lanic_nb.transcoder.select``) against
``torch.topk`` on the same pre-activations, at the demo's and MIMIC's shapes (members x batch rows x latents, k).
Medians of 30 timed calls after a warm-up, both on the same tensor in one run; the chosen values are checked equal.
The same line then times the demo's BatchTopK step (50 members x 128 rows x 256 latents, k 16 per row on average):
the batch threshold, the per-row choices and the sort of the choices by latent, each against the torch call it
replaced, on the same tensors.

    .venv/bin/python bench/topk.py          # under 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from lanic_nb.device import machine_line
from lanic_nb.transcoder.select import (
    at_least_indices,
    chosen_values,
    kernel_available,
    kth_largest,
    sort_by_key,
    topk_indices,
    torch_topk_indices,
)

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
    print(f"top-k choice (numba kernel used: {kernel_available(torch.zeros(1))}): " + "; ".join(parts)
          + " | " + batch_topk_line(args.repeats))


def batch_topk_line(repeats: int, n: int = 50, b: int = 128, d: int = 256, k: int = 16) -> str:
    """BatchTopK's three choices of a step, ours vs torch's, on one random pre-activation tensor."""
    pre = torch.randn(n, b, d, generator=torch.Generator().manual_seed(1))
    flat = pre.reshape(n, b * d)

    def threshold_ours():
        return kth_largest(flat, k * b)

    def threshold_torch():
        return flat.topk(k * b, dim=-1, sorted=False).values.amin(-1)

    t = threshold_torch()
    kmax = int((pre >= t.view(n, 1, 1)).sum(-1).max())
    keys = (torch.topk(pre, kmax, dim=-1).indices + d * torch.arange(n).view(n, 1, 1)).reshape(-1)
    same = (torch.equal(threshold_ours(), t)
            and torch.equal(torch.where(pre.gather(-1, at_least_indices(pre, t, kmax)) >= t.view(n, 1, 1),
                                        1, 0).sum(-1),
                            (pre >= t.view(n, 1, 1)).sum(-1))
            and torch.equal(sort_by_key(keys, n * d)[0], keys.sort(stable=True).indices))
    rows = [
        ("threshold", threshold_ours, threshold_torch),
        (f"rows (k_max {kmax})", lambda: at_least_indices(pre, t, kmax), lambda: pre.topk(kmax, dim=-1, sorted=False)),
        (f"sort {keys.numel():,} choices", lambda: sort_by_key(keys, n * d), lambda: keys.sort(stable=True)),
    ]
    parts = []
    for name, ours, ref in rows:
        a, r = median_ms(ours, repeats), median_ms(ref, repeats)
        parts.append(f"{name} {a:.2f} vs {r:.2f} ms ({r / a:.2f}x)")
    return f"BatchTopK step {n}x{b}x{d} k{k}, kernel vs torch: " + "; ".join(parts) + f"; same results {same}"


if __name__ == "__main__":
    main()
