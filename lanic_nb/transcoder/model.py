"""Sparse transcoders on the diagnostic classifier, trained as one batched ensemble.

A sparse autoencoder reconstructs its own input through a sparse code. A *transcoder* reads one thing and
predicts another: here it reads the classifier's input embedding x and predicts the classifier's hidden
layer h = relu(fc1(x)) through a sparse, overcomplete code z:

    z     = act(W_enc^T (x - b_pre) + b_enc)      # (batch, d_dict), few nonzeros
    h_hat = W_dec^T z + b_dec                      # (batch, d_out)

so every hidden unit of the classifier is rewritten as a sum of a few dictionary directions, each a
candidate "pattern" (CXR-LanIC; Matryoshka Transcoders, arXiv 2511.10094). One dictionary depends on its
seed (Paulo & Belrose, arXiv 2501.16615, find ~30% of latents shared across seeds), so we train N of them
(N=100 in CXR-LanIC) and later keep the directions that recur (``lanic_nb.patterns.merge``).

The N members live in stacked tensors with a leading member axis and train together with batched matrix
products (``torch.baddbmm`` / ``torch.bmm``), one optimizer step for all. Each member keeps its own
``torch.Generator`` for its initialization, its optional bootstrap sample and its batch order, and its
loss is summed (not averaged) with the others', so no gradient crosses members and AdamW (elementwise)
updates each member exactly as if it were trained alone: member i equals a single transcoder trained with
seed i on the same data (tests/test_transcoder.py checks this).

With TopK only k of the d_dict latents are nonzero per row, so by default (``sparse_topk``) the step does just
one dense product forward (the encoder, which must see every latent to choose k) and computes the decode, the
value gradients and the aux-k loss as gathers over the chosen latents; weight gradients are one product each
with the scattered codes. Same values and gradients as the dense formulation (tested), fewer products.

Activations are one switch: "topk" (k largest pre-activations, then ReLU, Gao et al. 2024:
exactly k nonzeros whenever the k-th pre-activation is positive), "batchtopk" (the k x batch
largest over the batch, Bussmann et al. 2024; a learned threshold at inference), "relu" (ReLU with an L1
penalty) and "jumprelu" (per-latent thresholds trained with straight-through estimators and an L0
penalty, Rajamanoharan et al. 2024). Decoder rows are kept at unit norm; an aux-k loss (Gao et al.)
teaches dead latents to predict the residual.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lanic_nb.checks import require_at_least_one
from lanic_nb.io import read_json, read_tensors, write_json, write_tensors
from lanic_nb.metrics import mean_auroc
from lanic_nb.progress import progress as progress_bar

log = logging.getLogger(__name__)

ACTIVATIONS = ("topk", "batchtopk", "relu", "jumprelu")
W_ENC_LAYOUT = "n_members,d_dict,d_in"
"""Written beside saved weights; files without it hold W_enc as (n_members, d_in, d_dict) and load transposed."""


@dataclass
class TranscoderConfig:
    """One flat config for a single transcoder (n_members=1) or an ensemble of them."""

    d_in: int
    """Width of the input x (the classifier's input embedding)."""
    d_out: int
    """Width of the target h (the classifier's hidden layer)."""
    d_dict: int = 2048
    """Number of latents per member (the largest, if dict_sizes differ)."""
    n_members: int = 1
    """Ensemble size; 1 is a single transcoder."""
    k: int = 32
    """Active latents per sample for "topk" / "batchtopk" (mean per sample for the latter)."""
    activation: str = "topk"
    """One of "topk", "batchtopk", "relu", "jumprelu"."""
    l1_coeff: float = 0.0
    """Sparsity penalty: L1 of z for "relu", L0 (straight-through) for "jumprelu"; unused by top-k."""
    aux_coeff: float = 1 / 8
    """Weight of the aux-k loss that trains dead latents on the residual (0 turns it off; Gao et al.: 1/32,
    but with a few thousand images the residual is small and dead latents need a louder signal)."""
    aux_k: int = 64
    """How many dead latents the aux-k loss may use per sample."""
    dead_steps: int = 100
    """A latent is dead after this many training steps without firing (100 x 128 rows: every image ~6x)."""
    jump_bandwidth: float = 0.05
    """Width of the rectangle kernel in JumpReLU's pseudo-derivatives (in units of pre-activation)."""
    jump_init_threshold: float = 0.05
    """Initial JumpReLU threshold."""
    lr: float = 2e-3
    """AdamW learning rate (constant after a linear warm-up)."""
    warmup_steps: int = 50
    """Linear learning-rate warm-up; independent of `steps`, so a resumed, longer run matches one long run."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    steps: int = 2000
    """Optimizer steps (every member sees one minibatch per step)."""
    batch_size: int = 256
    """Samples per member per step."""
    seed: int = 0
    """Member i uses seed + i unless `seeds` is given."""
    seeds: list[int] | None = None
    """Explicit per-member seeds (length n_members)."""
    bootstrap: bool = False
    """Each member trains on its own bootstrap resample of the rows (drawn with its own generator)."""
    dict_sizes: list[int] | None = None
    """Per-member dictionary sizes (<= d_dict); latents beyond a member's size are masked off."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (renormalized after every step)."""
    sparse_topk: bool = True
    """"topk" only: after the dense encoder product, touch just the k chosen latents per row (decode, both
    decoder gradients, the encoder gradient and the aux-k loss), as gathers and scatter-adds, instead of
    dense products over all d_dict latents. Same math, about d_dict / k less work outside the encoder."""
    checkpoint_every: int = 500
    """Steps between checkpoints when a checkpoint folder is given."""
    member_seeds: list[int] = field(init=False, repr=False)
    """Resolved per-member seeds (derived)."""

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            (
                "d_in", "d_out", "d_dict", "n_members", "k", "aux_k", "dead_steps", "steps", "batch_size",
                "checkpoint_every"
            ),
        )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.k > self.d_dict:
            raise ValueError(f"k must be <= d_dict={self.d_dict}, got {self.k}")
        for name in ("l1_coeff", "aux_coeff", "lr", "weight_decay", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        for name in ("jump_bandwidth", "jump_init_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.seeds is not None:
            if len(self.seeds) != self.n_members:
                raise ValueError(f"seeds must have n_members={self.n_members} entries, got {len(self.seeds)}")
            self.seeds = [int(s) for s in self.seeds]
        self.member_seeds = list(self.seeds) if self.seeds is not None else [
            self.seed + i for i in range(self.n_members)]
        if self.dict_sizes is not None:
            if len(self.dict_sizes) != self.n_members:
                raise ValueError(f"dict_sizes must have n_members={self.n_members} entries")
            if any(not self.k <= s <= self.d_dict for s in self.dict_sizes):
                raise ValueError(f"dict_sizes must lie in [k={self.k}, d_dict={self.d_dict}], got {self.dict_sizes}")
            self.dict_sizes = [int(s) for s in self.dict_sizes]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("member_seeds")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TranscoderConfig:
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})


class TranscoderOutput(NamedTuple):
    h_hat: torch.Tensor  # (n_members, batch, d_out)
    codes: torch.Tensor  # (n_members, batch, d_dict)
    loss: torch.Tensor  # scalar: summed over members, so gradients never mix
    mse: torch.Tensor  # (n_members,) mean squared error per element
    aux_loss: torch.Tensor  # (n_members,)
    l1: torch.Tensor  # (n_members,) mean L1 of z per sample
    fvu: torch.Tensor  # (n_members,) fraction of variance of h unexplained


class _JumpReLU(torch.autograd.Function):
    """z = pre * [pre > theta]; pseudo-derivative for theta from a rectangle kernel (arXiv 2407.14435)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        g_theta = (-(theta / bw) * near * grad).sum(dim=1, keepdim=True)
        return grad * (pre > theta), g_theta, None


class _Step(torch.autograd.Function):
    """[pre > theta], the L0 count, with the same kernel's pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        return None, (-(1.0 / bw) * near * grad).sum(dim=1, keepdim=True), None


def _flat_latents(idx: torch.Tensor, d_dict: int) -> torch.Tensor:
    """Member-local latent indices (n_members, batch, k) -> rows of the flattened (n_members * d_dict, .) weights."""
    n, b, k = idx.shape
    return (idx + d_dict * torch.arange(n, device=idx.device).view(n, 1, 1)).reshape(n * b, k)


def _aux_error(e_hat: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Aux-k loss per member: the dead latents' prediction of the residual, relative to h's variance; members
    without dead latents get exactly zero  # (n_members,)."""
    return dead.any(-1).to(e_hat.dtype) * (e_hat - residual).pow(2).sum(-1).mean(-1) / var


def _dead_topk(pre: torch.Tensor, dead: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k dead latents with the largest pre-activations: (indices, valid), each (n, batch, k').

    Only dead columns are searched: they are gathered first (padded to the member with most), so the top-k runs
    over a few columns, and is skipped when every dead latent fits. ``valid`` is False on padding (members with
    fewer dead latents than k'), whose values must count as zero.
    """
    n, b, _ = pre.shape
    n_dead = dead.sum(-1)  # (n_members,)
    m = int(n_dead.max())
    cols = dead.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :m]  # dead latents first
    ok = (torch.arange(m, device=pre.device) < n_dead.unsqueeze(1)).unsqueeze(1).expand(n, b, m)
    cols = cols.unsqueeze(1).expand(n, b, m)
    if m <= k:
        return cols, ok
    cand = pre.gather(-1, cols).masked_fill(~ok, -torch.inf)  # (n_members, batch, m)
    top = cand.topk(k, dim=-1, sorted=False).indices
    return cols.gather(-1, top), ok.gather(-1, top)


class _SparseDecode(torch.autograd.Function):
    """h = sum_j vals[..., j] * W_dec[member, idx[..., j]] without a dense (n_members, batch, d_dict) product.

    Forward: ``F.embedding_bag`` (mode "sum", per-sample weights) gathers the k decoder rows per sample.
    Backward: the k value gradients are k dot products (embedding_bag's own per-sample-weight gradient);
    the decoder gradient is one product of the scattered codes with the output gradient (on CPU a dense
    product beats scatter-adding b x k rows, which needs a global sort of the indices).
    """

    @staticmethod
    def forward(ctx, idx, vals, w_dec):  # (n, batch, k), (n, batch, k), (n, d_dict, d_out)
        ctx.save_for_backward(idx, vals, w_dec)
        n, b, k = idx.shape
        d_dict, d_out = w_dec.shape[1:]
        out = F.embedding_bag(_flat_latents(idx, d_dict), w_dec.reshape(n * d_dict, d_out),
                              per_sample_weights=vals.reshape(n * b, k), mode="sum")
        return out.view(n, b, d_out)

    @staticmethod
    def backward(ctx, g):  # g (n, batch, d_out)
        idx, vals, w_dec = ctx.saved_tensors
        n, b, k = idx.shape
        d_dict, d_out = w_dec.shape[1:]
        g_vals = g_w = None
        if ctx.needs_input_grad[1]:
            with torch.enable_grad():
                p = vals.detach().reshape(n * b, k).requires_grad_()
                out = F.embedding_bag(_flat_latents(idx, d_dict), w_dec.reshape(n * d_dict, d_out),
                                      per_sample_weights=p, mode="sum")
                (g_vals,) = torch.autograd.grad(out, p, g.reshape(n * b, d_out))
            g_vals = g_vals.view(n, b, k)
        if ctx.needs_input_grad[2]:
            z = vals.new_zeros(n, b, d_dict).scatter_add_(-1, idx, vals)
            g_w = torch.bmm(z.transpose(1, 2), g)  # (n, d_dict, d_out)
        return None, g_vals, g_w


class _GatherPre(torch.autograd.Function):
    """The encoder's pre-activations at chosen latents, pre[m, i, idx[m, i, j]], with a lean backward.

    ``pre`` was computed without a graph (one dense product, needed to choose the latents); its values at idx
    are W_enc[m, idx] . (x - b_pre)[m, i] + b_enc[m, idx]. The backward scatters the k gradients per sample
    into a (n, batch, d_dict) matrix G once and needs one product for W_enc (G^T (x - b_pre)); b_enc and
    b_pre get column sums, and x (only if it asks) one more product.
    """

    @staticmethod
    def forward(ctx, pre, idx, x, w_enc, b_enc, b_pre):
        ctx.save_for_backward(idx, x, w_enc, b_pre)
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx, g):  # g (n, batch, k)
        idx, x, w_enc, b_pre = ctx.saved_tensors
        n, b, _ = idx.shape
        G = g.new_zeros(n, b, w_enc.shape[1]).scatter_add_(-1, idx, g)  # (n, batch, d_dict)
        g_b = G.sum(1)  # (n, d_dict)
        g_w = torch.bmm(G.transpose(1, 2), x - b_pre.unsqueeze(1)) if ctx.needs_input_grad[3] else None
        g_pre_bias = -torch.bmm(g_b.unsqueeze(1), w_enc).squeeze(1) if ctx.needs_input_grad[5] else None
        g_x = torch.bmm(G, w_enc) if ctx.needs_input_grad[2] else None
        return None, None, g_x, g_w, g_b, g_pre_bias


def _member_init(cfg: TranscoderConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random initial weights of one member, from its own generator (so it is the same alone or stacked)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(cfg.d_dict, cfg.d_out, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    w_enc = torch.randn(cfg.d_in, cfg.d_dict, generator=g) / math.sqrt(cfg.d_in)
    return {"W_enc": w_enc.T.contiguous(), "W_dec": w_dec}


class TranscoderEnsemble(nn.Module):
    """N transcoders in stacked tensors; every method works on all members at once."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        n, di, do, dd = cfg.n_members, cfg.d_in, cfg.d_out, cfg.d_dict
        inits = [_member_init(cfg, s) for s in cfg.member_seeds]
        # Both weights are latent-major, one row per latent, so the sparse path gathers and scatters whole rows.
        self.W_enc = nn.Parameter(torch.stack([m["W_enc"] for m in inits]))  # (n_members, d_dict, d_in)
        self.b_enc = nn.Parameter(torch.zeros(n, dd))  # (n_members, d_dict)
        self.W_dec = nn.Parameter(torch.stack([m["W_dec"] for m in inits]))  # (n_members, d_dict, d_out)
        self.b_dec = nn.Parameter(torch.zeros(n, do))  # (n_members, d_out)
        self.b_pre = nn.Parameter(torch.zeros(n, di))  # (n_members, d_in)
        if cfg.activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((n, dd), math.log(cfg.jump_init_threshold)))
        sizes = cfg.dict_sizes or [dd] * n
        self.register_buffer("latent_mask", torch.arange(dd)[None, :] < torch.tensor(sizes)[:, None])
        # BatchTopK's inference threshold: running mean of the smallest kept pre-activation.
        self.register_buffer("threshold", torch.zeros(n))
        # Steps since each latent last fired (for the aux-k loss and the dead fraction).
        self.register_buffer("steps_since_fired", torch.zeros(n, dd, dtype=torch.long))

    # ------------------------------------------------------------ core maps

    def _x3(self, x: torch.Tensor) -> torch.Tensor:
        """Accept x shared by all members (batch, d_in) or per member (n_members, batch, d_in)."""
        return x.unsqueeze(0).expand(self.cfg.n_members, -1, -1) if x.dim() == 2 else x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = self._x3(x)  # (n_members, batch, d_in)
        pre = torch.baddbmm(self.b_enc.unsqueeze(1), x - self.b_pre.unsqueeze(1), self.W_enc.transpose(1, 2))
        if self.cfg.dict_sizes is None:  # nothing masked: skip a pass over (n_members, batch, d_dict)
            return pre
        return pre.masked_fill(~self.latent_mask.unsqueeze(1), -torch.inf if self._is_topk else 0.0)

    @property
    def _is_topk(self) -> bool:
        return self.cfg.activation in ("topk", "batchtopk")

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Sparse codes from pre-activations  # (n_members, batch, d_dict)."""
        cfg = self.cfg
        if cfg.activation == "topk":
            vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        if cfg.activation == "batchtopk":
            if not self.training:
                # where, not multiply: masked latents hold -inf, and -inf * 0 is NaN
                return torch.where(pre > self.threshold[:, None, None], pre, torch.zeros_like(pre))
            n, b, d = pre.shape
            flat = pre.reshape(n, b * d)
            vals, idx = flat.topk(min(cfg.k * b, b * d), dim=-1, sorted=False)
            with torch.no_grad():
                kept_min = vals.clamp_min(0).min(dim=-1).values  # (n_members,)
                self.threshold.lerp_(kept_min, 0.01 if self.steps_done > 0 else 1.0)
            return torch.zeros_like(flat).scatter_(-1, idx, vals.relu()).reshape(n, b, d)
        if cfg.activation == "relu":
            return pre.relu()
        theta = self.log_threshold.exp().unsqueeze(1)  # (n_members, 1, d_dict)
        return _JumpReLU.apply(pre, theta, cfg.jump_bandwidth)

    def _mask(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.cfg.dict_sizes is None else z * self.latent_mask.unsqueeze(1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, d_in) or (n_members, batch, d_in) -> z (n_members, batch, d_dict)."""
        return self._mask(self.activate(self.pre_activations(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (n_members, batch, d_dict) -> h_hat (n_members, batch, d_out)."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), z, self.W_dec)

    @property
    def steps_done(self) -> int:
        return int(getattr(self, "_steps_done", 0))

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> TranscoderOutput:
        """Codes and prediction; with a target h (shared or per member) also the losses, per member."""
        cfg = self.cfg
        if self._sparse:
            return self._forward_sparse(x, h)
        pre = self.pre_activations(x)
        z = self._mask(self.activate(pre))
        h_hat = self.decode(z)
        zero = h_hat.new_zeros(cfg.n_members)
        l1 = z.sum(-1).mean(-1)  # codes are never negative (ReLU inside every activation), so |z| = z
        if h is None:
            return TranscoderOutput(h_hat, z, zero.sum(), zero, zero, l1, zero)
        h = self._x3(h)
        err, var, fvu = self._losses(h_hat, h)
        mse = err / cfg.d_out
        if cfg.activation == "relu":
            sparsity = l1
        elif cfg.activation == "jumprelu":
            theta = self.log_threshold.exp().unsqueeze(1)
            sparsity = self._mask(_Step.apply(pre, theta, cfg.jump_bandwidth)).sum(-1).mean(-1)
        else:
            sparsity = zero
        aux = self._aux_loss(pre, h - h_hat.detach(), var) if self.training and cfg.aux_coeff > 0 else zero
        # Summed over members: each member's gradient is that of its own loss alone.
        loss = (fvu + cfg.l1_coeff * sparsity + cfg.aux_coeff * aux).sum()
        return TranscoderOutput(h_hat, z, loss, mse, aux, l1, fvu)

    @property
    def _sparse(self) -> bool:
        return self.cfg.activation == "topk" and self.cfg.sparse_topk

    def _losses(self, h_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: squared error per sample, variance of h per sample, FVU  # each (n_members,)."""
        err = (h_hat - h).pow(2).sum(-1).mean(-1)
        var = (h - h.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).clamp_min(1e-12)
        return err, var, err / var

    def _forward_sparse(self, x: torch.Tensor, h: torch.Tensor | None) -> TranscoderOutput:
        """TopK through gathers (``sparse_topk``): the same values and gradients as the dense path. The
        encoder's forward product stays dense (it chooses the latents); the main and the aux-k latents share
        one gather, so one product gives W_enc's gradient for both."""
        cfg = self.cfg
        x3 = self._x3(x)  # (n_members, batch, d_in)
        with torch.no_grad():
            pre = self.pre_activations(x3)  # (n_members, batch, d_dict), no graph: its backward would be dense
            idx = pre.topk(cfg.k, dim=-1, sorted=False).indices  # (n_members, batch, k)
            aux_on = self.training and h is not None and cfg.aux_coeff > 0
            dead = (self.steps_since_fired >= cfg.dead_steps) & self.latent_mask  # (n_members, d_dict)
            aux_on = aux_on and bool(dead.any())
            if aux_on:
                idx_aux, aux_ok = _dead_topk(pre, dead, cfg.aux_k)
                idx = torch.cat([idx, idx_aux], dim=-1)
        both = _GatherPre.apply(pre, idx, x3, self.W_enc, self.b_enc, self.b_pre)
        vals = both[..., : cfg.k].relu()  # (n_members, batch, k)
        h_hat = _SparseDecode.apply(idx[..., : cfg.k], vals, self.W_dec) + self.b_dec.unsqueeze(1)
        codes = torch.zeros_like(pre).scatter_(-1, idx[..., : cfg.k], vals.detach())  # for callers; no graph
        zero = h_hat.new_zeros(cfg.n_members)
        l1 = vals.sum(-1).mean(-1)
        if h is None:
            return TranscoderOutput(h_hat, codes, zero.sum(), zero, zero, l1, zero)
        h = self._x3(h)
        err, var, fvu = self._losses(h_hat, h)
        aux = zero
        if aux_on:
            v_aux = torch.where(aux_ok, both[..., cfg.k :], torch.zeros_like(both[..., cfg.k :])).relu()
            e_hat = _SparseDecode.apply(idx[..., cfg.k :], v_aux, self.W_dec)
            aux = _aux_error(e_hat, h - h_hat.detach(), dead, var)
        loss = (fvu + cfg.aux_coeff * aux).sum()  # summed over members, as in the dense path
        return TranscoderOutput(h_hat, codes, loss, err / cfg.d_out, aux, l1, fvu)

    def _aux_loss(self, pre: torch.Tensor, residual: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Aux-k (Gao et al. 2024): the top dead latents, decoded without bias, predict the residual."""
        dead = (self.steps_since_fired >= self.cfg.dead_steps) & self.latent_mask  # (n_members, d_dict)
        if not dead.any():
            return pre.new_zeros(self.cfg.n_members)
        k = min(self.cfg.aux_k, self.cfg.d_dict)
        masked = pre.masked_fill(~dead.unsqueeze(1), -torch.inf)
        vals, idx = masked.topk(k, dim=-1, sorted=False)
        vals = torch.where(torch.isfinite(vals), vals, torch.zeros_like(vals)).relu()
        e_hat = torch.bmm(torch.zeros_like(pre).scatter_(-1, idx, vals), self.W_dec)
        return _aux_error(e_hat, residual, dead, var)

    # ------------------------------------------------------------ housekeeping

    @torch.no_grad()
    def init_biases(self, x_mean: torch.Tensor, h_mean: torch.Tensor) -> None:
        """Data-based init: b_pre = mean of x, b_dec = mean of h, per member  # (n_members, d_in/d_out)."""
        self.b_pre.copy_(x_mean)
        self.b_dec.copy_(h_mean)

    @torch.no_grad()
    def init_encoder_scale(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """Data-based init: scale each member's encoder so its first predictions carry the energy of h.

        Embeddings are small (unit norm) while h may not be; without this the encoder must first grow
        by orders of magnitude, and top-k latents that lose that race die. Codes of top-k and ReLU are
        linear in the encoder's scale (with b_enc = 0), so one factor per member sets it.
        x (n_members, n, d_in), h (n_members, n, d_out): each member's own rows.
        """
        z = self.encode(x)
        got = torch.bmm(z, self.W_dec).pow(2).sum(-1).mean(-1)  # (n_members,)
        want = (h - self.b_dec.unsqueeze(1)).pow(2).sum(-1).mean(-1)
        self.W_enc.mul_((want / got.clamp_min(1e-12)).sqrt()[:, None, None])  # codes are linear in W_enc

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    def save(self, folder: str | Path) -> Path:
        """``folder/ensemble.safetensors`` (parameters and buffers) + ``folder/config.json``."""
        folder = Path(folder)
        write_tensors(folder / "ensemble.safetensors", self.state_dict())
        write_json(folder / "config.json", {**self.cfg.to_dict(), "w_enc_layout": W_ENC_LAYOUT})
        return folder

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> TranscoderEnsemble:
        folder = Path(folder)
        meta = read_json(folder / "config.json")
        model = cls(TranscoderConfig.from_dict(meta))
        state = read_tensors(folder / "ensemble.safetensors")
        if meta.get("w_enc_layout") != W_ENC_LAYOUT:  # saved before W_enc became latent-major
            state["W_enc"] = state["W_enc"].transpose(1, 2).contiguous()
        model.load_state_dict(state)
        return model.to(device).eval()


# ---------------------------------------------------------------- training


class _MemberSampler:
    """Per-member row sampling: an optional bootstrap resample, then minibatches, each from its own generator."""

    def __init__(self, n_rows: int, cfg: TranscoderConfig):
        # A stream of its own per member, distinct from the one its initialization drew from.
        self.gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([s, 1]).generate_state(1)[0]))
                     for s in cfg.member_seeds]
        self.rows = [torch.randint(n_rows, (n_rows,), generator=g) if cfg.bootstrap else torch.arange(n_rows)
                     for g in self.gens]
        self.batch_size = cfg.batch_size

    def next(self) -> torch.Tensor:
        """Row indices for one step  # (n_members, batch)."""
        return torch.stack([r[torch.randint(len(r), (self.batch_size,), generator=g)]
                            for r, g in zip(self.rows, self.gens, strict=True)])

    def state(self) -> torch.Tensor:
        return torch.stack([g.get_state() for g in self.gens])  # (n_members, state bytes) uint8

    def set_state(self, states: torch.Tensor) -> None:
        for g, s in zip(self.gens, states, strict=True):
            g.set_state(s.clone())


def _save_checkpoint(folder: Path, model: TranscoderEnsemble, opt: torch.optim.Optimizer,
                     sampler: _MemberSampler, step: int, log_rows: list[dict]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, val in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(val).reshape(-1) if key == "step" else val
    tensors["rng"] = sampler.state()
    write_tensors(folder / "checkpoint.safetensors", tensors)
    # The JSON goes last: a checkpoint counts only once its JSON names the step (both writes are atomic).
    write_json(folder / "checkpoint.json", {"step": step, "config": model.cfg.to_dict(), "log": log_rows})


def _load_checkpoint(folder: Path, model: TranscoderEnsemble, opt: torch.optim.Optimizer,
                     sampler: _MemberSampler) -> tuple[int, list[dict]] | None:
    meta_path = folder / "checkpoint.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    saved = {k: v for k, v in meta["config"].items() if k != "steps"}
    ours = {k: v for k, v in model.cfg.to_dict().items() if k != "steps"}
    if saved != ours:
        log.warning("checkpoint in %s has a different config; starting afresh", folder)
        return None
    tensors = read_tensors(folder / "checkpoint.safetensors")
    device = model.W_enc.device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for name, p in params.items():
        st = {key.rsplit(".", 1)[1]: v.to(device) for key, v in tensors.items()
              if key.startswith(f"opt.{name}.") and key.count(".") == name.count(".") + 2}
        if st:
            st["step"] = st["step"].reshape(())  # fused AdamW keeps its step count on the parameter's device
            opt.state[p] = st
    sampler.set_state(tensors["rng"])
    return int(meta["step"]), list(meta["log"])


def _subset_means(t: torch.Tensor, rows: list[torch.Tensor], bootstrap: bool) -> torch.Tensor:
    """Column means over each member's rows  # (n_members, width); without bootstrap all share the same rows."""
    if not bootstrap:
        return t.mean(0).expand(len(rows), -1)
    return torch.stack([t[r.to(t.device)].mean(0) for r in rows])


def make_optimizer(model: TranscoderEnsemble) -> torch.optim.AdamW:
    """AdamW over all members' stacked parameters (elementwise, so members stay independent)."""
    # fused: one pass per tensor (same elementwise arithmetic); on 2 CPU cores about 8x faster than the
    # default, which for 100 members is the difference between Adam costing a tenth or half of a step.
    return torch.optim.AdamW(model.parameters(), lr=model.cfg.lr, weight_decay=model.cfg.weight_decay,
                             fused=True)


def train_step(model: TranscoderEnsemble, opt: torch.optim.Optimizer, x: torch.Tensor,
               h: torch.Tensor) -> TranscoderOutput:
    """One optimizer step for all members on their own minibatches x (n_members, batch, d_in), h (..., d_out)."""
    out = model(x, h)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    with torch.no_grad():
        fired = (out.codes > 0).any(dim=1)  # (n_members, d_dict)
        model.steps_since_fired.add_(1).masked_fill_(fired, 0)
        if model.cfg.normalize_decoder:
            model.normalize_decoder_()
    return out


def train_ensemble(
    cfg: TranscoderConfig, X: torch.Tensor | np.ndarray, H: torch.Tensor | np.ndarray, device="cpu",
    checkpoint_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
) -> tuple[TranscoderEnsemble, pd.DataFrame]:
    """Train all members at once on inputs X (n, d_in) and targets H (n, d_out).

    With ``checkpoint_dir`` the full state (weights, optimizer moments, every member's RNG state, step,
    log) is written every ``cfg.checkpoint_every`` steps and at the end; with ``resume`` a later call
    continues from it, and the result equals one uninterrupted run (``steps`` may be raised to go on).
    The log has one row per logging step: step, and per-member means of loss terms, FVU and L0.
    """
    device = torch.device(device)
    X = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)
    H = torch.as_tensor(np.asarray(H, dtype=np.float32)).to(device)
    if X.shape[1] != cfg.d_in or H.shape[1] != cfg.d_out or len(X) != len(H):
        raise ValueError(f"X must be (n, d_in={cfg.d_in}) and H (n, d_out={cfg.d_out}); got {tuple(X.shape)}, "
                         f"{tuple(H.shape)}")
    model = TranscoderEnsemble(cfg).to(device)
    sampler = _MemberSampler(len(X), cfg)
    model.init_biases(_subset_means(X, sampler.rows, cfg.bootstrap), _subset_means(H, sampler.rows, cfg.bootstrap))
    # 512 rows fix one scale factor per member well enough; more would cost (n_members, rows, d_dict) memory.
    init_rows = torch.stack([r[:512] for r in sampler.rows]).to(device)  # (n_members, <=512)
    model.init_encoder_scale(X[init_rows], H[init_rows])
    opt = make_optimizer(model)
    step, log_rows = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and (loaded := _load_checkpoint(ckpt, model, opt, sampler)) is not None:
        step, log_rows = loaded
        log.info("resumed transcoder training at step %d", step)
    log_every = max(1, cfg.steps // 50)
    model.train()
    bar = progress_bar(range(step, cfg.steps), desc="transcoders", disable=not progress, initial=step, total=cfg.steps)
    for step in bar:
        model._steps_done = step
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        idx = sampler.next().to(device)  # (n_members, batch)
        out = train_step(model, opt, X[idx], H[idx])
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            l0 = (out.codes > 0).sum(-1).float().mean(-1)
            log_rows.append(dict(step=step + 1, loss=out.loss.item() / cfg.n_members, fvu=out.fvu.mean().item(),
                                 aux=out.aux_loss.mean().item(), l0=l0.mean().item(),
                                 dead=((model.steps_since_fired >= cfg.dead_steps) & model.latent_mask).float()
                                 .sum(-1).div(model.latent_mask.sum(-1)).mean().item()))
            bar.set_postfix(fvu=f"{log_rows[-1]['fvu']:.3f}", l0=f"{log_rows[-1]['l0']:.1f}")
        if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save_checkpoint(ckpt, model, opt, sampler, step + 1, log_rows)
    model._steps_done = cfg.steps
    model.eval()
    return model, pd.DataFrame(log_rows)


# ---------------------------------------------------------------- metrics


@torch.no_grad()
def ensemble_metrics(
    model: TranscoderEnsemble, classifier: nn.Module, X: torch.Tensor | np.ndarray,
    H: torch.Tensor | np.ndarray | None, Y: np.ndarray, batch_size: int = 1024,
) -> pd.DataFrame:
    """One row per member on held-out rows: FVU of h, L0, dead fraction, original and spliced mean AUROC.

    ``classifier`` must expose ``hidden`` and ``head`` (lanic_nb.classify.DiagnosticClassifier). The spliced
    AUROC runs ``head`` on the member's h_hat instead of h; ``H`` defaults to ``classifier.hidden(X)``.
    A latent is dead here if it fires on none of the rows.
    """

    model.eval()
    classifier.eval()
    device = model.W_enc.device
    X = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)
    H = classifier.hidden(X) if H is None else torch.as_tensor(np.asarray(H, dtype=np.float32)).to(device)
    n = model.cfg.n_members
    err = torch.zeros(n, device=device)
    l0 = torch.zeros(n, device=device)
    fired = torch.zeros(n, model.cfg.d_dict, dtype=torch.bool, device=device)
    spliced = []
    for i in range(0, len(X), batch_size):
        out = model(X[i : i + batch_size])
        err += (out.h_hat - H[i : i + batch_size]).pow(2).sum((1, 2))
        nz = out.codes > 0
        l0 += nz.sum((1, 2))
        fired |= nz.any(1)
        spliced.append(classifier.head(out.h_hat).cpu())  # (n_members, batch, 5)
    var = (H - H.mean(0)).pow(2).sum()
    S = torch.cat(spliced, dim=1).numpy()
    Y = np.asarray(Y, dtype=np.float32)
    orig = mean_auroc(Y, classifier.head(H).cpu().numpy())
    sizes = model.latent_mask.sum(-1)
    df = pd.DataFrame(dict(
        member=np.arange(n), seed=model.cfg.member_seeds, dict_size=sizes.cpu().numpy(),
        fvu=(err / var).cpu().numpy(), l0=(l0 / len(X)).cpu().numpy(),
        dead_frac=((~fired & model.latent_mask).sum(-1) / sizes).cpu().numpy(),
        auroc_original=orig, auroc_spliced=[mean_auroc(Y, S[m]) for m in range(n)],
    ))
    df["auroc_delta"] = df["auroc_spliced"] - df["auroc_original"]
    return df
