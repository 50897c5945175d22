"""Choose the compute device once; every stage takes the result as a parameter."""

from __future__ import annotations

import ctypes
import logging
import random
import sys

import numpy as np
import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEPT: bool | None = None


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) gives CUDA when present, else CPU; anything else is passed to torch."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def keep_freed_memory() -> bool:
    """Let this process keep the memory it frees for its next allocations (glibc on Linux; elsewhere a no-op).

    A CPU training step allocates and frees tensors of tens of MB (the ensemble's gradients, the per-latent
    sums). glibc serves blocks over 32 MB with fresh ``mmap`` pages and returns them on free, so every step pays
    a page fault per 4 KiB touched, a large share of a wide step (docs/decisions.md#step-keep_freed_memory).
    Raising the mmap and trim thresholds to 1 GiB keeps those pages mapped and reused (in the steady state a
    step takes almost no faults; tested); peak memory is unchanged, but memory freed
    after the peak stays with the process until it exits. Called once by ``train_ensemble``; True when the
    settings were taken. PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc.
    """
    global _KEPT
    if _KEPT is None:
        _KEPT = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                # Not M_TOP_PAD as well: a large pad brings the faults back (docs/decisions.md#step-keep_freed_memory).
                settings = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30))
                _KEPT = all(libc.mallopt(opt, ctypes.c_int(val)) == 1 for opt, val in settings)
            except (OSError, AttributeError):  # not glibc (musl, say): nothing to tune
                _KEPT = False
        log.debug("keep_freed_memory: %s", _KEPT)
    return _KEPT


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median fp32 GFLOP/s of an ``n``-cubed matmul: the one-line machine speed printed beside timings.

    Machines of the same kind can differ widely in speed, so every timing the project reports names this
    figure (docs/decisions.md#machines-and-sessions).
    """
    import time

    dev = pick_device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    torch.mm(a, b)  # warm-up (thread pool, kernels)
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def machine_line(gflops: float | None = None) -> str:
    """One line naming the machine: CPU count, torch threads, GPU if any, measured matmul GFLOP/s."""
    import os
    import platform

    gflops = matmul_gflops() if gflops is None else gflops
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), {gpu}, "
            f"{platform.machine()}, 2048^3 fp32 matmul {gflops:.0f} GFLOP/s")
