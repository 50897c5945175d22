"""Faithfulness of an attribution: does switching off the top patterns move the logit more than random ones?

``deletion_test`` zeroes the member latents of the top-k patterns and re-runs the head on the ensemble's
reconstruction (against k random active patterns); ``insertion_curves`` adds patterns to the bias one at a
time, largest |contribution| first or in random order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.attribute.core import Attribution, finding_name, pattern_columns
from lanic_nb.progress import progress


@torch.no_grad()
def deletion_test(
    classifier: nn.Module,
    ensemble: nn.Module,
    latent_pattern: torch.Tensor,
    attr: Attribution,
    x: torch.Tensor,
    k: int = 5,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Switch off patterns and re-run the head on the reconstructed hidden layer.

    For each image and finding, the top-``k`` patterns (largest |contribution| to that logit) are deleted, i.e.
    all their member latents are zeroed; the baseline deletes ``k`` patterns drawn at random among the image's
    active ones (``n_random`` draws). Returns one row per finding with the mean |logit change| of both and their
    ratio.
    """
    if k < 1 or n_random < 1:
        raise ValueError(f"k and n_random must be >= 1, got k={k}, n_random={n_random}")
    classifier.eval()
    device = ensemble.W_dec.device
    n_patterns = attr.contributions.shape[1]
    n_members = ensemble.W_dec.shape[0]
    cols = pattern_columns(latent_pattern, n_patterns).to(device)
    scores = attr.contributions.abs()
    gen = torch.Generator().manual_seed(seed)
    n, n_cls = attr.logits.shape
    top_drop = torch.zeros(n, n_cls, dtype=torch.float64)
    rand_drop = torch.zeros(n, n_cls, dtype=torch.float64)
    x = torch.as_tensor(x)
    starts = range(0, n, batch_size)
    for s in progress(starts, desc=f"deletion k={k}", disable=len(starts) < 2, mininterval=2.0):
        xb = x[s : s + batch_size].to(device=device, dtype=torch.float32)
        z = ensemble.encode(xb)  # (n_members, batch, d_dict)
        h_full = ensemble.decode(z).mean(0)  # (batch, d_out): the ensemble's own reconstruction
        full = classifier.head(h_full).double().cpu()
        active = attr.activations[s : s + len(xb)] > 0  # (batch, n_patterns)

        m_nz, b_nz, i_nz = torch.nonzero(z, as_tuple=True)  # the few active codes
        col_nz = cols[m_nz, i_nz]

        def drop(chosen: torch.Tensor, c: int, h_full=h_full, full=full, nz=(m_nz, b_nz, i_nz, col_nz), z=z):
            # chosen (batch, n_patterns) bool -> |logit_c change| after zeroing those patterns' latents.
            # decode is linear in z, so the reconstruction from the masked codes is h_full minus the decoded
            # deleted codes; only those few are gathered instead of a dense decode of every latent per draw
            # (docs/decisions.md#attribution-sparse-deletion-test).
            m, b, i, col = nz
            sel = torch.cat([chosen, torch.zeros(len(chosen), 1, dtype=torch.bool)], 1).to(device)
            hit = sel[b, col]
            m, b, i = m[hit], b[hit], i[hit]
            removed = torch.zeros_like(h_full).index_add_(0, b, z[m, b, i, None] * ensemble.W_dec[m, i]) / n_members
            out = classifier.head(h_full - removed).double().cpu()
            return (full[:, c] - out[:, c]).abs()

        for c in range(n_cls):
            sc = scores[s : s + len(xb), :, c].masked_fill(~active, -torch.inf)
            top = torch.zeros_like(active)
            idx = sc.topk(min(k, n_patterns), dim=1).indices
            top.scatter_(1, idx, True)
            top_drop[s : s + len(xb), c] = drop(top & active, c)
            acc = torch.zeros(len(xb), dtype=torch.float64)
            for _ in range(n_random):
                noise = torch.rand(active.shape, generator=gen).masked_fill(~active, -1.0)
                rnd = torch.zeros_like(active)
                rnd.scatter_(1, noise.topk(min(k, n_patterns), dim=1).indices, True)
                acc += drop(rnd & active, c)
            rand_drop[s : s + len(xb), c] = acc / n_random
    rows = []
    for c in range(n_cls):
        t, r = float(top_drop[:, c].mean()), float(rand_drop[:, c].mean())
        rows.append(dict(finding=finding_name(c, n_cls), k=k, n_images=n,
                         drop_top=t, drop_random=r,
                         ratio=t / r if r > 0 else (float("inf") if t > 0 else float("nan"))))
    return pd.DataFrame(rows)


def insertion_curves(attr: Attribution, ks: list[int] | np.ndarray, n_random: int = 5, seed: int = 0
                     ) -> pd.DataFrame:
    """Logit as patterns are added to the bias, largest |contribution| first vs random order (image mean).

    Uses the exact linearity of the head on h_hat (the deletion test checks it against ``decode``):
    logit after inserting a set S = bias + sum_{p in S} contribution(p). Returns rows of
    finding, k, order ("top" / "random"), mean_logit, and the full-pattern logit as ``k = n_patterns``.
    """
    scores = attr.contributions.abs()  # (batch, P, C)
    n, n_pat, n_cls = scores.shape
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(n_cls):
        order = scores[:, :, c].argsort(dim=1, descending=True)
        top_cum = attr.contributions[:, :, c].gather(1, order).cumsum(1)  # (batch, P)
        rnd_cum = torch.zeros_like(top_cum)
        for _ in range(n_random):
            perm = torch.rand(n, n_pat, generator=gen).argsort(dim=1)
            rnd_cum += attr.contributions[:, :, c].gather(1, perm).cumsum(1) / n_random
        name = finding_name(c, n_cls)
        for k in ks:
            k = int(min(max(k, 0), n_pat))
            for label, cum in (("top", top_cum), ("random", rnd_cum)):
                val = attr.bias[c] + (cum[:, k - 1] if k > 0 else 0.0)
                rows.append(dict(finding=name, k=k, order=label, mean_logit=float(torch.as_tensor(val).mean())))
    return pd.DataFrame(rows)
