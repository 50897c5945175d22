"""The peers bench at the paper's scale, for a machine with a GPU: N=100 members at MIMIC shapes (d 512, 4,096
latents, k 32, batch 256), lanic-nb batched beside loops over 100 single models of each peer, and the time of
one epoch over MIMIC-CXR's 377,110 rows projected from it (an epoch: every member sees every row once, i.e.
ceil(377,110 / 256) = 1,474 steps). Same fairness rules and code as bench/peers.py (imported from it).

No GPU has been lent to this project so far, so no GPU figure has been measured; this script prints only what
it measures, on the device named in its first lines. Without CUDA (and without --device cpu) it says so and
stops, so `make bench` passes on a CPU-only machine.

    .venv/bin/python bench/gpu.py                                  # CUDA, N=100, about 2 minutes on one GPU
    .venv/bin/python bench/gpu.py --device cpu --shapes tiny --members 3 --steps 3   # the same code, tiny, on CPU
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch

# bench/ is not a package: run as a script, this file's folder is on sys.path and peers.py imports as a module.
from peers import SHAPES, compare, fastest_peer, ours, table

from lanic_nb.device import machine_line, matmul_gflops, pick_device

MIMIC_ROWS = 377_110


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to test this script, tiny)")
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per library (in 5 interleaved chunks)")
    ap.add_argument("--peers", nargs="*", default=["sparsify", "overcomplete", "saelens"],
                    choices=["sparsify", "overcomplete", "saelens"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shapes", default="mimic", choices=["mimic", "tiny"], help="tiny: a smoke test of this script")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, nothing measured (use --device cpu to run it on the CPU)")
        return
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sh = replace(SHAPES[args.shapes], members=args.members, steps=args.steps, chunks=min(5, args.steps))
    print(machine_line(), flush=True)
    if device.type == "cuda":
        print(f"measured on {torch.cuda.get_device_name(device)}: fp32 matmul "
              f"{matmul_gflops(4096, device=device):.0f} GFLOP/s", flush=True)
    else:
        print("measured on the CPU (asked for with --device cpu): no GPU figure", flush=True)
    t0 = time.perf_counter()
    res = compare(sh, args.lr, 0, device, args.peers, equal_time=False)
    print("\n".join(table(sh, args.lr, res)))
    steps = math.ceil(MIMIC_ROWS / sh.batch)
    print(f"one epoch over {MIMIC_ROWS:,} rows ({steps:,} steps of batch {sh.batch}) for N={sh.members} members, "
          f"projected on {device.type}: " + "; ".join(
              f"{r.name} {r.ms * sh.members * steps / 1e3:,.0f} s" for r in res))
    best = ours(res)
    print(f"lanic-nb ({best.name}) vs fastest peer on {device.type}, N={sh.members}: "
          f"{fastest_peer(res) / best.ms:.2f}x ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
