"""Which k latents fire: the indices of the k largest pre-activations per row, faster than ``torch.topk`` on CPU.

Every TopK training step chooses k of d_dict latents for each (member, row), and on CPU ``torch.topk`` is a large
share of a small step: its CPU kernel runs a general nth_element over (value, index) pairs with a NaN-aware
comparison per element (docs/decisions.md#step-top-k-kernel). Here a small numba kernel (numba is already
installed for UMAP) bounds the answer first and then selects among few candidates:

- bound: split the row into k strided groups (group g holds g, g + k, g + 2k, ...); the smallest of the k group
  maxima, t0, is at most the row's k-th largest value, since the k maxima are k elements all >= t0. Where rows
  are long and k >= 32 the group maxima come from torch's vectorized ``amax`` (numba does not vectorize it);
- candidates: the elements >= t0, kept by a branch-free pass (a small fraction of the row when k << d_dict);
- select: quickselect over the candidates with branch-free partitions (> pivot to the front, < pivot to the
  back, ties counted), taking whole sides until exactly k are chosen.

Two more kernels serve the same step: BatchTopK's choices (``at_least_indices``: a row's values at or above
its member's batch threshold, in one pass instead of a selection; the threshold itself, the (k x batch)-th
largest of a member's batch, comes from ``topk_indices`` through ``kth_largest``) and the sort of a step's choices
by latent for the per-latent gradient sums (``sort_by_key``: a counting sort, since the keys are latents).
Like the padding-free BatchTopK decode (``sparse.Ragged``), they change the cost of a step, not its result
(docs/decisions.md#step-batchtopk-kernels-and-padding-free-sums).

The kernels are module-level functions so numba's disk cache finds them in the next process; a kernel compiled
inside a function is a closure, which numba compiles afresh in every process.

Timings: ``bench/topk.py`` (the kernels against the torch calls they replace, on the same tensors). The result
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

TORCH_BOUND_MIN_WIDTH = 1024  # rows at least this long, with k >= 32, take their group maxima from torch's amax
TORCH_BOUND_MIN_K = 32


def _no_numba(*args, **kwargs):  # pragma: no cover - only where numba is missing
    raise RuntimeError("numba is not importable")


# Module-level functions, so numba's on-disk cache finds them again in the next process (a kernel built inside a
# function is a closure, which numba compiles afresh in every process).
_jit = numba.njit if numba is not None else (lambda *a, **k: (lambda f: _no_numba))
_prange = numba.prange if numba is not None else range


@_jit(inline="always", boundscheck=False, cache=True)
def _bound(row, k, full):  # min over the k strided groups of each group's max; NaN never enters a max
    t0 = np.float32(np.inf)
    if k % 8 == 0:  # eight independent accumulators in registers (docs/decisions.md#step-top-k-kernel)
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


@_jit(parallel=True, nogil=True, boundscheck=False, cache=True)
def _rows_topk(z, k, bounds, given, n_chunks, out):  # z (R, L) float32, bounds (R,) float32, out (R, k) int64
    n_rows, width = z.shape
    per = (n_rows + n_chunks - 1) // n_chunks
    full = (width // k) * k
    for c in _prange(n_chunks):
        a_i = np.empty(width, np.int64)
        a_v = np.empty(width, np.float32)
        b_i = np.empty(width, np.int64)
        b_v = np.empty(width, np.float32)
        for r in range(c * per, min(n_rows, (c + 1) * per)):
            row = z[r]
            o = out[r]
            t0 = bounds[r] if given else _bound(row, k, full)
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


@_jit(parallel=True, nogil=True, boundscheck=False, cache=True)
def _rows_at_least(z, t, per_t, n_chunks, out):  # z (R, L) float32, t (R // per_t,) float32, out (R, m) int64
    n_rows, width = z.shape
    m = out.shape[1]
    per = (n_rows + n_chunks - 1) // n_chunks
    for c in _prange(n_chunks):
        buf = np.empty(width, np.int64)
        for r in range(c * per, min(n_rows, (c + 1) * per)):
            row = z[r]
            o = out[r]
            tr = t[r // per_t]
            n = 0
            for j in range(width):  # every element >= t, branch-free
                buf[n] = j
                n += row[j] >= tr
            n = min(n, m)
            for s in range(n):
                o[s] = buf[s]
            j = 0
            while n < m:  # padding: the first elements below t (distinct from the kept ones)
                if not row[j] >= tr:
                    o[n] = j
                    n += 1
                j += 1


@_jit(nogil=True, boundscheck=False, cache=True)
def _counting_sort(keys, counts, order):  # keys (N,) int64 in [0, len(counts)); counts, order: outputs
    for i in range(keys.shape[0]):
        counts[keys[i]] += 1
    pos = np.empty(counts.shape[0], np.int64)
    s = 0
    for j in range(counts.shape[0]):
        pos[j] = s
        s += counts[j]
    for i in range(keys.shape[0]):
        j = keys[i]
        order[pos[j]] = i
        pos[j] += 1


def sort_by_key(keys: torch.Tensor, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, counts): ``keys.sort(stable=True).indices`` and ``torch.bincount(keys, minlength=n_keys)`` for int64
    keys in [0, n_keys). A counting sort on CPU: the keys are latents, so few distinct values and one linear pass
    beats a comparison sort (tests/transcoder/test_select.py checks it equals torch's)."""
    if numba is None or keys.device.type != "cpu" or keys.dtype != torch.int64:
        return keys.sort(stable=True).indices, torch.bincount(keys, minlength=n_keys)
    keys = keys.contiguous()
    counts = torch.zeros(n_keys, dtype=torch.int64)
    order = torch.empty_like(keys)
    _counting_sort(keys.numpy(), counts.numpy(), order.numpy())
    return order, counts


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
    z = x.detach().reshape(-1, width).contiguous()
    out = torch.empty(z.shape[0], k, dtype=torch.int64)
    given = width >= TORCH_BOUND_MIN_WIDTH and k >= TORCH_BOUND_MIN_K
    if given:  # torch's amax is vectorized; a NaN max only widens the candidates to the whole row
        full = (width // k) * k
        bounds = z[:, :full].view(z.shape[0], -1, k).amax(1).amin(1)
    else:
        bounds = z[:, 0]  # unused
    _rows_topk(z.numpy(), k, bounds.contiguous().numpy(), given, _threads(), out.numpy())
    return out.view(*x.shape[:-1], k)


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row of x (..., L)  # (...,). The same whatever the tie-break, so the kernel
    serves. It gives BatchTopK's batch threshold (docs/decisions.md#step-batchtopk-kernels-and-padding-free-sums)."""
    return x.gather(-1, topk_indices(x, k)).amin(dim=-1)


def at_least_indices(x: torch.Tensor, t: torch.Tensor, m: int) -> torch.Tensor:
    """Per row of x (..., L): the indices of its elements >= t, padded to m with indices of elements below t
    # (..., m) int64; ``keep = x.gather(-1, idx) >= t`` marks the real ones. t holds one threshold per leading
    index of x (shape (x.shape[0],)); m must be at least the most elements any row holds at or above t.

    BatchTopK's per-row choices: any top-m set of a row holds all its values >= t, so this is the same choice as
    ``topk(m)`` followed by that mask (tests/transcoder/test_select.py), in one pass instead of a selection."""
    width = x.shape[-1]
    if not 0 < m <= width:
        raise ValueError(f"m must be in [1, {width}], got {m}")
    if not kernel_available(x):
        return torch_topk_indices(x, m)
    z = x.detach().reshape(-1, width).contiguous()
    out = torch.empty(z.shape[0], m, dtype=torch.int64)
    _rows_at_least(z.numpy(), t.detach().float().contiguous().numpy(), z.shape[0] // t.numel(), _threads(),
                   out.numpy())
    return out.view(*x.shape[:-1], m)


def _threads() -> int:
    """numba's thread count set to torch's (the kernels split rows into this many chunks)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def torch_topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The plain reference: ``torch.topk``'s indices (the fallback off CPU or float32, the tests and the bench)."""
    return x.detach().topk(k, dim=-1, sorted=False).indices


def chosen_values(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The values an index set picks, sorted per row, NaN as -inf: two choices agree when these are equal."""
    return x.detach().nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf).gather(-1, idx).sort(-1).values
