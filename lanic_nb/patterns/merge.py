"""Merge the latents of a transcoder ensemble into patterns, and describe each pattern.

Why merge: independently trained sparse coders disagree (only about a third of features are shared across
seeds, Paulo & Belrose 2025), so one member's latent is weak evidence of a real feature. A *pattern* is a
decoder direction that many members learned independently; its *consistency* is the fraction of members
that hold it. CXR-LanIC keeps the consistent ones.

The merge never forms the dense (N*d_dict)^2 similarity matrix. It works like an inverted-file index:

1. spherical k-means on a sample of unit decoder directions gives ~sqrt(M) coarse cells;
2. every latent is stored in its nearest cell and *queries* its two nearest cells (multi-probe, so a
   pattern straddling a cell border is not cut in two);
3. inside a cell, each query keeps its top-k neighbours from *other* members with cosine >= threshold;
4. optionally (``act_threshold`` > 0 and codes on a sample of inputs given), a candidate pair must also fire
   on the same inputs: the cosine of the two latents' codes over the sample must reach ``act_threshold``.
   Two members can write nearly the same direction for different reasons (a shortcut such as a portable
   marker riding on effusion), and their codes tell them apart; the directions alone cannot;
5. union-find over those edges; a component in which a member appears twice is re-built edge by edge in
   descending similarity (the mean of the two cosines when codes are used), refusing any union that would
   put two latents of one member in one pattern.

Cost is about 3 * M * sqrt(M) * d multiply-adds instead of M^2 * d.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import sparse
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lanic_nb.io import read_json, read_tensors, write_json, write_tensors

log = logging.getLogger(__name__)

DIRECTIONS_FILE = "directions.safetensors"
PATTERNS_JSON = "patterns.json"


@dataclass
class MergeConfig:
    """How latents of different members are joined into patterns."""

    sim_threshold: float = 0.5
    """Minimum cosine between two members' decoder directions (whole rows, with an input decoder) for them to be
    one pattern, in [-1, 1]. Default: chosen on the phantom (CXR-LanIC's merge is not public; docs/decisions.md)."""
    min_consistency: float = 0.25
    """Keep patterns held by at least this fraction of members, in [0, 1]. Default: chosen on the phantom (13 of
    the demo's 50 members; docs/decisions.md)."""
    block_size: int = 4096
    """Rows per similarity block; bounds memory at block_size x cell size floats. Default: engineering (memory
    only, no effect on results)."""
    n_neighbors: int = 8
    """Neighbours (from other members, above the threshold) each latent links to inside a cell. Default:
    engineering (the union-find needs few links; more only cost time)."""
    n_cells: int = 0
    """Coarse k-means cells of the inverted-file index; 0 picks about sqrt(number of latents). Default: the
    square-root rule of inverted-file indexes."""
    kmeans_iters: int = 6
    """Spherical k-means iterations for the coarse cells. Default: engineering (cells need not be optimal:
    every latent queries its two nearest)."""
    kmeans_sample: int = 20000
    """Latents sampled to fit the coarse cells. Default: engineering."""
    seed: int = 0
    """Seed of the k-means sample and initialization. Default: 0."""
    act_threshold: float = 0.5
    """Minimum cosine between two latents' codes on a sample of inputs for them to join, when codes are given to
    ``merge_latents``, in [0, 1]; 0 (or no codes) merges by decoder direction alone. Two members can write nearly
    the same direction for different reasons (a shortcut marker riding on its finding); their codes tell them
    apart. Default: chosen on the phantom (docs/decisions.md)."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.sim_threshold <= 1.0:
            raise ValueError(f"sim_threshold must be a cosine in [-1, 1], got {self.sim_threshold}")
        if not 0.0 <= self.min_consistency <= 1.0:
            raise ValueError(f"min_consistency must be in [0, 1], got {self.min_consistency}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        if self.n_cells < 0:
            raise ValueError(f"n_cells must be >= 0 (0 = automatic), got {self.n_cells}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if self.kmeans_sample < 1:
            raise ValueError(f"kmeans_sample must be >= 1, got {self.kmeans_sample}")
        if not 0.0 <= self.act_threshold <= 1.0:
            raise ValueError("act_threshold must be a cosine in [0, 1] (codes are non-negative), "
                             f"got {self.act_threshold}")


@dataclass
class PatternSet:
    """Patterns of one ensemble: which latent belongs where, and each pattern's summary."""

    latent_pattern: torch.Tensor  # (n_members, d_dict) int64, pattern id or -1 (dropped)
    directions: torch.Tensor  # (n_patterns, d_out) unit canonical directions (normalized member mean)
    consistency: torch.Tensor  # (n_patterns,) fraction of members holding the pattern
    n_latents: torch.Tensor  # (n_patterns,) member latents in the pattern (= members, one each)
    config: MergeConfig

    @property
    def n_members(self) -> int:
        return self.latent_pattern.shape[0]

    @property
    def n_patterns(self) -> int:
        return self.directions.shape[0]

    def members_of(self, pattern: int) -> list[tuple[int, int]]:
        """(member, latent) pairs of one pattern."""
        m, j = torch.nonzero(self.latent_pattern == pattern, as_tuple=True)
        return list(zip(m.tolist(), j.tolist(), strict=True))

    def save(self, folder: str | Path) -> Path:
        """``folder/directions.safetensors`` (tensors) + ``folder/patterns.json`` (config and sizes)."""
        folder = Path(folder)
        write_tensors(
            folder / DIRECTIONS_FILE,
            {
                "latent_pattern": self.latent_pattern,
                "directions": self.directions,
                "consistency": self.consistency,
                "n_latents": self.n_latents,
            },
        )
        write_json(
            folder / PATTERNS_JSON,
            {"config": asdict(self.config), "n_members": self.n_members, "n_patterns": self.n_patterns},
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> PatternSet:
        folder = Path(folder)
        t = read_tensors(folder / DIRECTIONS_FILE, device=device)
        meta = read_json(folder / PATTERNS_JSON)
        return cls(t["latent_pattern"], t["directions"], t["consistency"], t["n_latents"],
                   MergeConfig(**meta["config"]))


def _spherical_kmeans(x: torch.Tensor, n_cells: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Unit centroids (n_cells, d) of unit rows ``x`` (n, d) by cosine k-means."""
    cent = x[torch.randperm(x.shape[0], generator=gen)[:n_cells]].clone()
    for _ in range(iters):
        assign = (x @ cent.T).argmax(dim=1)  # (n,)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_cells)
        empty = counts == 0
        if empty.any():  # re-seed empty cells with random points so every cell is used
            cent[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=gen)]
        cent[~empty] = F.normalize(sums[~empty], dim=1)
    return cent


def _top2_cells(x: torch.Tensor, cent: torch.Tensor, block: int) -> torch.Tensor:
    """Nearest and second-nearest cell of every row  # (n, 2)."""
    out = torch.empty(x.shape[0], min(2, cent.shape[0]), dtype=torch.long)
    for s in range(0, x.shape[0], block):
        out[s : s + block] = (x[s : s + block] @ cent.T).topk(out.shape[1], dim=1).indices
    return out


@contextlib.contextmanager
def _single_thread():
    """Run torch on one thread for the duration: the per-cell similarity blocks are too small to repay OpenMP's
    hand-off between threads, which stalls on a busy CPU
    (docs/decisions.md#merge-co-firing-test-act_threshold-sim_threshold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cell_edges(
    d: torch.Tensor, member: torch.Tensor, cells: torch.Tensor, cfg: MergeConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (i, j, cosine) between latents of different members, found inside coarse cells."""
    n_cells = int(cells.max()) + 1
    home = cells[:, 0]
    order = torch.argsort(home)
    bounds = torch.searchsorted(home[order], torch.arange(n_cells + 1))
    q_order = torch.argsort(cells[:, -1])  # queries of a cell = its own latents + those probing it second
    q_bounds = torch.searchsorted(cells[q_order, -1], torch.arange(n_cells + 1))
    src, dst, sim = [], [], []
    with _single_thread():
        for c in range(n_cells):
            stored = order[bounds[c] : bounds[c + 1]]
            if len(stored) < 2 and cells.shape[1] == 1:
                continue
            probing = q_order[q_bounds[c] : q_bounds[c + 1]]
            queries = torch.cat([stored, probing]) if cells.shape[1] > 1 else stored
            if len(stored) == 0 or len(queries) == 0:
                continue
            ds, ms = d[stored], member[stored]
            k = min(cfg.n_neighbors, len(stored))
            for s in range(0, len(queries), cfg.block_size):
                q = queries[s : s + cfg.block_size]
                sims = d[q] @ ds.T  # (block, n_stored)
                sims.masked_fill_(member[q][:, None] == ms[None, :], -2.0)  # never link two latents of one member
                val, idx = sims.topk(k, dim=1)
                keep = val >= cfg.sim_threshold
                rows = q[:, None].expand_as(idx)[keep]
                src.append(rows)
                dst.append(stored[idx[keep]])
                sim.append(val[keep])
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return torch.cat(src).numpy(), torch.cat(dst).numpy(), torch.cat(sim).numpy()


def _constrained_union(
    nodes: np.ndarray, src: np.ndarray, dst: np.ndarray, sim: np.ndarray, member: np.ndarray
) -> dict[int, int]:
    """Kruskal in descending similarity, refusing unions that would repeat a member; node -> root."""
    parent = {int(n): int(n) for n in nodes}
    members = {int(n): 1 << int(member[n]) for n in nodes}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in np.argsort(-sim, kind="stable"):
        a, b = find(int(src[e])), find(int(dst[e]))
        if a == b or members[a] & members[b]:
            continue
        parent[b] = a
        members[a] |= members[b]
    return {n: find(n) for n in parent}


def _unit_code_rows(codes: torch.Tensor | sparse.spmatrix, n_latents: int) -> sparse.csr_matrix:
    """Codes as unit rows, one per latent: (M, n_rows) CSR from a (M, n_rows) sparse matrix or a dense
    (n_members, n_rows, d_dict) tensor (see ``patterns.units.latent_codes``)."""
    if isinstance(codes, torch.Tensor):
        z = codes.detach().float().cpu().permute(0, 2, 1).reshape(n_latents, -1)  # (M, n_rows)
        idx = torch.nonzero(z).T
        codes = sparse.csr_matrix((z[idx[0], idx[1]].numpy(), (idx[0].numpy(), idx[1].numpy())), shape=z.shape)
    codes = sparse.csr_matrix(codes, dtype=np.float32)
    if codes.shape[0] != n_latents:
        raise ValueError(f"codes must have one row per latent ({n_latents}), got {codes.shape[0]}")
    norm = np.sqrt(np.asarray(codes.multiply(codes).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.maximum(norm, 1e-12)).astype(np.float32) @ codes


def _code_cosines(rows: sparse.csr_matrix, src: np.ndarray, dst: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Cosine of the codes of each pair (src[e], dst[e]), in chunks of pairs (rows are unit)."""
    out = np.empty(len(src), np.float32)
    for s in range(0, len(src), chunk):
        a, b = rows[src[s : s + chunk]], rows[dst[s : s + chunk]]
        out[s : s + chunk] = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    return out


def merge_latents(
    W_dec: torch.Tensor,
    cfg: MergeConfig | None = None,
    alive: torch.Tensor | None = None,
    codes: torch.Tensor | sparse.spmatrix | None = None,
    features: torch.Tensor | None = None,
) -> PatternSet:
    """Cluster all latents of all members by decoder direction (and, with codes, co-firing) into patterns.

    W_dec: (n_members, d_dict, d_out) decoder rows; alive: optional (n_members, d_dict) bool, latents that
    ever fire (dead latents carry arbitrary directions and are left out); codes: optional activations on a
    sample of inputs, (n_members, n_rows, d_dict) or sparse (n_members * d_dict, n_rows) as from
    ``patterns.units.latent_codes``, used when ``cfg.act_threshold`` > 0; features: optional (n_members, d_dict, f)
    rows that the similarity is measured on instead of W_dec (e.g. the whole decoder of an ensemble trained with
    ``input_weight``); the pattern directions always average W_dec.
    """
    cfg = cfg or MergeConfig()
    n_members, d_dict, d_out = W_dec.shape
    d = F.normalize(W_dec.detach().float().cpu().reshape(-1, d_out), dim=1)  # (M, d_out)
    if features is not None and features.shape[:2] != W_dec.shape[:2]:
        raise ValueError(f"features must be (n_members, d_dict, f) = {tuple(W_dec.shape[:2])} + (f,), "
                         f"got {tuple(features.shape)}")
    f = d if features is None else F.normalize(features.detach().float().cpu().reshape(d.shape[0], -1), dim=1)
    member = torch.arange(n_members).repeat_interleave(d_dict)  # (M,)
    ids = torch.arange(d.shape[0])
    if alive is not None:
        ids = ids[alive.reshape(-1).cpu()]
    if len(ids) == 0:
        log.warning("merge: no alive latents, so no patterns")
        return PatternSet(torch.full((n_members, d_dict), -1, dtype=torch.long), torch.zeros(0, d_out),
                          torch.zeros(0), torch.zeros(0, dtype=torch.long), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, mem = f[ids], member[ids]  # what the similarity is measured on

    n_cells = cfg.n_cells or max(1, int(math.sqrt(len(ids))))
    n_cells = min(n_cells, max(1, len(ids)))
    sample = x[torch.randperm(len(ids), generator=gen)[: cfg.kmeans_sample]]
    cent = _spherical_kmeans(sample, min(n_cells, len(sample)), cfg.kmeans_iters, gen)
    cells = _top2_cells(x, cent, cfg.block_size)
    src, dst, sim = _cell_edges(x, mem, cells, cfg)
    log.info("merge: %d latents, %d cells, %d edges", len(ids), cent.shape[0], len(src))
    if codes is not None and cfg.act_threshold > 0:
        rows = _unit_code_rows(codes, n_members * d_dict)[ids.numpy()]  # (n alive, n_rows)
        act = _code_cosines(rows, src, dst)
        keep = act >= cfg.act_threshold
        src, dst, sim = src[keep], dst[keep], (sim[keep] + act[keep]) / 2
        log.info("merge: %d edges also co-fire (code cosine >= %.2f)", len(src), cfg.act_threshold)

    n = len(ids)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    mem_np = mem.numpy()
    # A component holding one member twice chained two patterns together (or one member split a feature):
    # rebuild only those components edge by edge.
    dup = pd.DataFrame({"c": comp, "m": mem_np}).duplicated().to_numpy()
    bad = np.unique(comp[dup])
    if len(bad):
        in_bad = np.isin(comp, bad)
        lo, hi = np.minimum(src, dst)[in_bad[src]], np.maximum(src, dst)[in_bad[src]]
        _, first_of = np.unique(lo * n + hi, return_index=True)  # each undirected edge once
        roots = _constrained_union(np.nonzero(in_bad)[0], lo[first_of], hi[first_of], sim[in_bad[src]][first_of],
                                   mem_np)
        nodes = np.fromiter(roots.keys(), np.int64)
        comp = comp.copy()
        comp[nodes] = comp.max() + 1 + np.fromiter(roots.values(), np.int64)
    _, comp = np.unique(comp, return_inverse=True)

    sizes = np.bincount(comp)
    min_members = math.ceil(cfg.min_consistency * n_members - 1e-9)
    kept = np.nonzero(sizes >= max(min_members, 1))[0]
    # Order patterns by consistency, then by the first latent that holds them (deterministic ids).
    first = np.full(len(sizes), n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    kept = kept[np.lexsort((first[kept], -sizes[kept]))]
    new_id = np.full(len(sizes), -1, np.int64)
    new_id[kept] = np.arange(len(kept))

    latent_pattern = torch.full((n_members * d_dict,), -1, dtype=torch.long)
    latent_pattern[ids] = torch.from_numpy(new_id[comp])
    pid = latent_pattern[ids]
    ok = pid >= 0
    sums = torch.zeros(len(kept), d_out).index_add_(0, pid[ok], d[ids][ok])
    counts = torch.from_numpy(sizes[kept]).long()
    return PatternSet(
        latent_pattern=latent_pattern.reshape(n_members, d_dict),
        directions=F.normalize(sums, dim=1),
        consistency=counts.float() / n_members,
        n_latents=counts,
        config=cfg,
    )
