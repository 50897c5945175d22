"""Which k latents fire: the indices of the k largest pre-activations per row, faster than ``torch.topk`` on CPU.

Every TopK training step chooses k of d_dict latents for each (member, row). At the demo's shapes (20 members x
128 rows x 256 latents, k 16) ``torch.topk`` takes about a third of the step on 2 cores: its CPU kernel runs a
general nth_element over (value, index) pairs with a NaN-aware comparison per element. Here a small numba kernel
(numba is already installed for UMAP) bounds the answer first and then selects among few candidates:

- bound: split the row into k strided groups (group g holds g, g + k, g + 2k, ...); the smallest of the k group
  maxima, t0, is at most the row's k-th largest value, since the k maxima are k elements all >= t0. Where rows
  are long and k >= 32 the group maxima come from torch's vectorized ``amax`` (numba does not vectorize it);
- candidates: the elements >= t0, kept by a branch-free pass (about 48 of 256 at the demo's shapes, 120 of
  4,096 at MIMIC's);
- select: quickselect over the candidates with branch-free partitions (> pivot to the front, < pivot to the
  back, ties counted), taking whole sides until exactly k are chosen.

Figures: ``bench/peers.py`` and README (the kernel against ``torch.topk`` on the same tensors, one run). The result
is the set ``torch.topk`` returns (order within a row is not defined, as with ``sorted=False``); among equal
values at the k-th place either may be chosen, as with torch. NaN counts as -inf here (torch ranks it above
everything); a row always gets k distinct valid indices. Tensors on a GPU, other dtypes, or a machine without
numba use ``torch.topk``. tests/transcoder/test_select.py compares both on random, tied, masked (-inf) and NaN
rows of many shapes.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # numba comes with umap-learn, a dependency; the torch path stays for machines where it will not import
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

_kernel = None
TORCH_BOUND_MIN_WIDTH = 1024  # rows at least this long, with k >= 32, take their group maxima from torch's amax
TORCH_BOUND_MIN_K = 32


def _build():
    """The numba kernel, compiled on first use (cached on disk by numba; a few seconds the first time)."""

    @numba.njit(inline="always", boundscheck=False)
    def bound(row, k, full):  # min over the k strided groups of each group's max; NaN never enters a max
        t0 = np.float32(np.inf)
        if k % 8 == 0:  # eight accumulators in registers: about 3x the simple loop
            for g0 in range(0, k, 8):
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(-np.inf)
                for base in range(g0, full, k):
                    v = row[base]
                    a0 = v if v > a0 else a0
                    v = row[base + 1]
                    a1 = v if v > a1 else a1
                    v = row[base + 2]
                    a2 = v if v > a2 else a2
                    v = row[base + 3]
                    a3 = v if v > a3 else a3
                    v = row[base + 4]
                    a4 = v if v > a4 else a4
                    v = row[base + 5]
                    a5 = v if v > a5 else a5
                    v = row[base + 6]
                    a6 = v if v > a6 else a6
                    v = row[base + 7]
                    a7 = v if v > a7 else a7
                t0 = min(t0, min(min(min(a0, a1), min(a2, a3)), min(min(a4, a5), min(a6, a7))))
        else:
            for g in range(k):
                a = np.float32(-np.inf)
                for base in range(g, full, k):
                    v = row[base]
                    a = v if v > a else a
                t0 = min(t0, a)
        return t0

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def rows_topk(z, k, bounds, given, n_chunks, out):  # z (R, L) float32, bounds (R,) float32, out (R, k) int64
        n_rows, width = z.shape
        per = (n_rows + n_chunks - 1) // n_chunks
        full = (width // k) * k
        for c in numba.prange(n_chunks):
            a_i = np.empty(width, np.int64)
            a_v = np.empty(width, np.float32)
            b_i = np.empty(width, np.int64)
            b_v = np.empty(width, np.float32)
            for r in range(c * per, min(n_rows, (c + 1) * per)):
                row = z[r]
                o = out[r]
                t0 = bounds[r] if given else bound(row, k, full)
                n = 0
                for j in range(width):  # candidates: every element >= t0, branch-free
                    a_i[n] = j
                    n += row[j] >= t0
                if n < k:  # fewer than k candidates (NaN in the row): rank every element
                    for j in range(width):
                        a_i[j] = j
                    n = width
                for s in range(n):
                    v = row[a_i[s]]
                    a_v[s] = v if v == v else -np.inf  # NaN ranks as -inf
                got = 0
                need = k
                while n > need:
                    p0 = a_v[0]
                    p1 = a_v[n // 2]
                    p2 = a_v[n - 1]
                    p = max(min(p0, p1), min(max(p0, p1), p2))  # median of three
                    gt = 0
                    lt = 0
                    for s in range(n):  # > p to the front of b, < p to its back, branch-free
                        v = a_v[s]
                        b_i[gt] = a_i[s]
                        b_v[gt] = v
                        gt += v > p
                        b_i[n - 1 - lt] = a_i[s]
                        b_v[n - 1 - lt] = v
                        lt += v < p
                    if gt >= need:  # the answer lies among the larger side
                        for s in range(gt):
                            a_i[s] = b_i[s]
                            a_v[s] = b_v[s]
                        n = gt
                        continue
                    for s in range(gt):  # the whole larger side is in, then as many ties as still needed
                        o[got + s] = b_i[s]
                    got += gt
                    need -= gt
                    for s in range(n):
                        if need > 0 and a_v[s] == p:
                            o[got] = a_i[s]
                            got += 1
                            need -= 1
                    for s in range(lt):  # the rest comes from the smaller side
                        a_i[s] = b_i[n - lt + s]
                        a_v[s] = b_v[n - lt + s]
                    n = lt if need > 0 else 0
                for s in range(need):  # n == need: all of what is left
                    o[got + s] = a_i[s]

    return rows_topk


def kernel_available(x: torch.Tensor) -> bool:
    """Whether :func:`topk_indices` runs the numba kernel for ``x`` (a float32 CPU tensor, numba importable)."""
    return numba is not None and x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dimension  # (..., k) int64, unordered within a row.

    The same sets of values as ``x.topk(k, dim=-1, sorted=False)`` for finite and -inf values (see the module's
    notes on ties and NaN). No autograd: the choice of latents is not differentiated."""
    width = x.shape[-1]
    if not 0 < k <= width:
        raise ValueError(f"k must be in [1, {width}], got {k}")
    if not kernel_available(x):
        return torch_topk_indices(x, k)
    global _kernel
    if _kernel is None:
        _kernel = _build()
    z = x.detach().reshape(-1, width).contiguous()
    out = torch.empty(z.shape[0], k, dtype=torch.int64)
    given = width >= TORCH_BOUND_MIN_WIDTH and k >= TORCH_BOUND_MIN_K
    if given:  # torch's amax is vectorized; a NaN max only widens the candidates to the whole row
        full = (width // k) * k
        bounds = z[:, :full].view(z.shape[0], -1, k).amax(1).amin(1)
    else:
        bounds = z[:, 0]  # unused
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    _kernel(z.numpy(), k, bounds.contiguous().numpy(), given, threads, out.numpy())
    return out.view(*x.shape[:-1], k)


def torch_topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The plain reference: ``torch.topk``'s indices (the fallback off CPU or float32, the tests and the bench)."""
    return x.detach().topk(k, dim=-1, sorted=False).indices


def chosen_values(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The values an index set picks, sorted per row, NaN as -inf: two choices agree when these are equal."""
    return x.detach().nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf).gather(-1, idx).sort(-1).values
