"""Planted-pattern fixtures: synthetic ensemble decoders (and codes) whose true patterns are known.

Test helpers, not library code: the merge tests and ``bench/patterns.py`` (which puts tests/ on sys.path)
use them to check that ``merge_latents`` recovers exactly the planted directions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse


def plant_decoders(
    n_members: int, d_dict: int, d_out: int, n_true: int, share: float = 0.8, noise: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic ensemble decoder with known patterns.

    ``n_true`` random unit directions; each member holds each one with probability ``share`` (at a random
    latent, plus a Gaussian jitter of norm about ``noise``); remaining latents are random
    member-specific directions. Returns W_dec (n_members, d_dict, d_out) with unit rows and the truth
    (n_members, d_dict) int64: the planted direction of each latent or -1.
    """
    gen = torch.Generator().manual_seed(seed)
    true = F.normalize(torch.randn(n_true, d_out, generator=gen), dim=1)
    W = F.normalize(torch.randn(n_members, d_dict, d_out, generator=gen), dim=2)
    truth = torch.full((n_members, d_dict), -1, dtype=torch.long)
    for m in range(n_members):
        held = torch.nonzero(torch.rand(n_true, generator=gen) < share).squeeze(1)[:d_dict]
        slots = torch.randperm(d_dict, generator=gen)[: len(held)]
        jitter = torch.randn(len(held), d_out, generator=gen) * (noise / math.sqrt(d_out))  # norm ~ noise
        W[m, slots] = F.normalize(true[held] + jitter, dim=1)
        truth[m, slots] = held
    return W, truth


def plant_codes(truth: torch.Tensor, n_rows: int, fire: float = 0.01, keep: float = 0.9, seed: int = 0) -> sparse.csr_matrix:
    """Codes on ``n_rows`` inputs that agree with :func:`plant_decoders`' truth: sparse (n_members * d_dict, n_rows).

    Each planted direction fires on its own random rows (probability ``fire``); a latent holding it fires on
    each of them with probability ``keep`` (activation uniform in [0.5, 1.5]); every other latent fires on
    rows of its own. So copies of one direction co-fire, and everything else does not.
    """
    gen = np.random.default_rng(seed)
    flat = truth.reshape(-1).numpy()
    n_true = int(flat.max()) + 1 if (flat >= 0).any() else 0
    planted = [np.nonzero(gen.random(n_rows) < fire)[0] for _ in range(n_true)]
    rows, cols = [], []
    for i, t in enumerate(flat):
        on = planted[t][gen.random(len(planted[t])) < keep] if t >= 0 else np.nonzero(gen.random(n_rows) < fire)[0]
        rows.append(np.full(len(on), i))
        cols.append(on)
    r, c = np.concatenate(rows), np.concatenate(cols)
    vals = gen.uniform(0.5, 1.5, len(r)).astype(np.float32)
    return sparse.csr_matrix((vals, (r, c)), shape=(len(flat), n_rows))
