"""Two-dimensional layouts of embeddings: UMAP over exact nearest neighbours (the maps of 05 and the tile map of 09).

Below 4,096 rows UMAP itself computes exact neighbours through sklearn's ``pairwise_distances`` with its numba
metric called once per pair, which is slow; here they come from chunked matrix products (``exact_knn``) and are
handed to UMAP as ``precomputed_knn``: the same neighbours at a fraction of the cost (above 4,096 rows, exact
ones where UMAP would search approximately; docs/decisions.md#stages-umap-over-exact-neighbours).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

log = logging.getLogger(__name__)


def umap_coords(
    x: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine", seed: int = 0
) -> np.ndarray:
    """(n, 2) UMAP layout of the rows of ``x`` (n_neighbors is clipped for tiny inputs).

    Fewer than 8 rows are laid out by their first two principal components instead (UMAP's neighbour graph
    needs more points than that to mean anything).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < 3:
        return np.zeros((x.shape[0], 2), np.float32)  # nothing to lay out
    if x.shape[0] < 8:
        log.warning("only %d rows: using PCA instead of UMAP", x.shape[0])
        centered = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T if len(vt) else np.zeros((len(x), 0), np.float32)
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    import umap  # imported here: its first use in a process compiles (numba) for about a minute

    k = min(n_neighbors, x.shape[0] - 1)
    knn = exact_knn(x, k, metric)  # exact neighbours, handed to UMAP (module docstring)
    reducer = umap.UMAP(
        n_neighbors=k, min_dist=min_dist, metric=metric, random_state=seed,
        n_components=2, init="random" if x.shape[0] < 50 else "spectral", precomputed_knn=(*knn, None),
    )
    with warnings.catch_warnings():  # no search index: UMAP warns that transform() is unavailable; unused here
        warnings.filterwarnings("ignore", message="precomputed_knn")
        return reducer.fit_transform(x)


def exact_knn(x: np.ndarray, k: int, metric: str = "cosine", chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (n, k), of every row's k nearest rows, itself first at distance 0, nearest
    first, as UMAP's own exact search orders them. metric: "cosine" (1 - cosine similarity) or "euclidean"."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if metric == "cosine":
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sq = t.square().sum(1)
    idx, dist = [], []
    for lo in range(0, len(t), chunk):
        block = t[lo : lo + chunk]
        if metric == "cosine":
            d = (1.0 - block @ t.T).clamp_min(0.0)
        else:
            d = (sq[lo : lo + chunk, None] + sq[None, :] - 2.0 * block @ t.T).clamp_min(0.0)
        rows = torch.arange(len(block))
        d[rows, rows + lo] = -1.0  # itself first, whatever duplicates there are
        v, i = d.topk(k, dim=1, largest=False, sorted=True)
        v[:, 0] = 0.0
        idx.append(i)
        dist.append(v.sqrt() if metric == "euclidean" else v)
    return torch.cat(idx).numpy(), torch.cat(dist).numpy().astype(np.float32)
