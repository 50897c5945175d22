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
one dense product (the encoder's forward, which must see every latent to choose k); the decode, the aux-k loss
and every gradient work on the chosen latents only, the weight gradients as per-latent sums over the rows that
chose them (``lanic_nb.transcoder.sparse``). Same values and gradients as the dense formulation (tested).
Both choose the k latents with ``lanic_nb.transcoder.select.topk_indices`` (a numba kernel on CPU, faster than
``torch.topk``: docs/decisions.md#step-top-k-kernel; tests/transcoder/test_select.py checks it against
``torch.topk``), so ties at the k-th place (common in bfloat16) fall the same way in both formulations.

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
from pathlib import Path

import torch
from torch import nn

from lanic_nb.io import read_json, read_tensors, write_json, write_tensors
from lanic_nb.transcoder.autograd import _aux_error, _dead_topk, _JumpReLU, _Step, encoder_product
from lanic_nb.transcoder.config import W_ENC_LAYOUT, TranscoderConfig, TranscoderOutput
from lanic_nb.transcoder.fused import Sink
from lanic_nb.transcoder.select import at_least_indices, kth_largest, topk_indices
from lanic_nb.transcoder.sparse import _GatherPre, _SparseDecode, choose

log = logging.getLogger(__name__)



def _tied(cfg: TranscoderConfig) -> bool:
    """Whether members start with W_enc = W_dec (``TranscoderConfig.tied_init``)."""
    return cfg.tied_init and cfg.d_in == cfg.d_out and cfg.activation in ("topk", "batchtopk")


def _member_init(cfg: TranscoderConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random initial weights of one member, from its own generator (so it is the same alone or stacked)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(cfg.d_dict, cfg.d_out, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    if _tied(cfg):
        return {"W_enc": w_dec.clone(), "W_dec": w_dec}
    w_enc = torch.randn(cfg.d_in, cfg.d_dict, generator=g) / math.sqrt(cfg.d_in)
    return {"W_enc": w_enc.T.contiguous(), "W_dec": w_dec}


class TranscoderEnsemble(nn.Module):
    """N transcoders in stacked tensors; every method works on all members at once."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        if cfg.d_in is None or cfg.d_out is None:
            raise ValueError("TranscoderConfig.d_in and d_out must be set to build an ensemble "
                             "(cfg.with_dims(d_in, d_out))")
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
        self.sink: Sink | None = None  # set by train_step for one step whose weight update is fused (fused.py)

    # ------------------------------------------------------------ core maps

    def _x3(self, x: torch.Tensor) -> torch.Tensor:
        """Accept x shared by all members (batch, d_in) or per member (n_members, batch, d_in)."""
        return x.unsqueeze(0).expand(self.cfg.n_members, -1, -1) if x.dim() == 2 else x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        xc = self._x3(x) - self.b_pre.unsqueeze(1)  # (n_members, batch, d_in)
        if self._rounded:
            return self._masked(encoder_product(xc, self.W_enc, "bfloat16") + self.b_enc.unsqueeze(1))
        return self._masked(torch.baddbmm(self.b_enc.unsqueeze(1), xc, self.W_enc.transpose(1, 2)))

    @property
    def _rounded(self) -> bool:
        """The encoder's forward product in bfloat16 (``encoder_precision``; training only)."""
        return self.training and self.cfg.encoder_precision == "bfloat16"

    def _masked(self, pre: torch.Tensor) -> torch.Tensor:
        """Latents beyond a member's dict size can never fire  # (n_members, batch, d_dict)."""
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
            idx = topk_indices(pre, cfg.k)  # the same choice as the sparse path (ties included); select.py
            return torch.zeros_like(pre).scatter_(-1, idx, pre.gather(-1, idx).relu())
        if cfg.activation == "batchtopk":
            if not self.training:
                # where, not multiply: masked latents hold -inf, and -inf * 0 is NaN
                return torch.where(pre > self.threshold[:, None, None], pre, torch.zeros_like(pre))
            # where, not a scatter of the top values: ties at the threshold (a row drawn twice) are all kept
            return torch.where(pre >= self._batch_threshold(pre), pre, 0.0).relu()
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
        """TopK always, BatchTopK while training (at inference it is a threshold, not a choice)."""
        act = self.cfg.activation
        return self.cfg.sparse_topk and (act == "topk" or (act == "batchtopk" and self.training))

    @torch.no_grad()
    def _batch_threshold(self, pre: torch.Tensor) -> torch.Tensor:
        """BatchTopK in training: each member keeps the pre-activations at or above the (k x batch)-th largest of
        its batch (ties included)  # (n_members, 1, 1). Also moves the inference threshold towards it."""
        n, b, d = pre.shape
        t = kth_largest(pre.reshape(n, b * d), min(self.cfg.k * b, b * d))  # (n_members,)
        self.threshold.lerp_(t.clamp_min(0), 0.01 if self.steps_done > 0 else 1.0)
        return t.view(n, 1, 1)

    def _batch_choices(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BatchTopK as per-row choices: (idx, keep), each (n_members, batch, kmax). Every row's top kmax (kmax: the
        most any row holds at or above the batch threshold) contains its kept latents; ``keep`` marks them."""
        t = self._batch_threshold(pre)
        kmax = max(1, int((pre >= t).sum(-1).max()))
        idx = at_least_indices(pre, t.view(-1), kmax)  # the values >= t, padded (select.py)
        return idx, pre.gather(-1, idx) >= t

    def _losses(self, h_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: squared error per sample, variance of h per sample, FVU  # each (n_members,)."""
        err = (h_hat - h).square().sum((1, 2)) / h.shape[1]
        # Centred by hand: torch's var over the middle axis of (n_members, batch, d_out) is much slower on CPU
        # (docs/decisions.md#step-batch-variance-centred-by-hand).
        var = (h - h.mean(1, keepdim=True)).square().mean(1).sum(-1).clamp_min(1e-12)
        return err, var, err / var

    def _forward_sparse(self, x: torch.Tensor, h: torch.Tensor | None) -> TranscoderOutput:
        """TopK (and BatchTopK in training) through the chosen latents only (``sparse_topk``): the same values and
        gradients as the dense path. The encoder's forward product stays dense (it chooses the latents); everything
        after it, backward included, works on the k (plus aux-k) choices per row, sorted by latent once
        (``sparse.choose``)."""
        cfg = self.cfg
        x3 = self._x3(x)  # (n_members, batch, d_in)
        backward = torch.is_grad_enabled()
        with torch.no_grad():
            xc = x3 - self.b_pre.unsqueeze(1)  # (n_members, batch, d_in), kept for W_enc's gradient
            if self._rounded:
                pre = self._masked(encoder_product(xc, self.W_enc, "bfloat16").add_(self.b_enc.unsqueeze(1)))
            else:
                pre = self._masked(torch.baddbmm(self.b_enc.unsqueeze(1), xc, self.W_enc.transpose(1, 2)))
            if cfg.activation == "topk":
                idx, keep = topk_indices(pre, cfg.k), None  # (n_members, batch, k); numba on CPU (select.py)
            else:  # batchtopk: a varying number per row, padded to the most any row holds (keep marks the real ones)
                idx, keep = self._batch_choices(pre)
            k = idx.shape[-1]
            aux_on = self.training and h is not None and cfg.aux_coeff > 0
            dead = (self.steps_since_fired >= cfg.dead_steps) & self.latent_mask  # (n_members, d_dict)
            aux_on = aux_on and bool(dead.any())
            valid = keep
            if aux_on:
                idx_aux, aux_ok = _dead_topk(pre, dead, cfg.aux_k)
                idx = torch.cat([idx, idx_aux], dim=-1)  # (n_members, batch, k + aux_k')
                valid = torch.cat([torch.ones_like(idx[..., :k], dtype=torch.bool) if keep is None else keep, aux_ok],
                                  dim=-1)
            ch = choose(idx, cfg.d_dict, k, backward, max(cfg.d_in, cfg.d_out), valid, self.sink if backward else None)
        both = _GatherPre.apply(pre, ch, xc, x3, self.W_enc, self.b_enc, self.b_pre)
        vals = both[..., :k] if keep is None else torch.where(keep, both[..., :k], 0.0)
        vals = vals.relu()  # (n_members, batch, k)
        v = vals
        if aux_on:  # padding choices (members with fewer dead latents) count as zero
            v = torch.cat([vals, torch.where(aux_ok, both[..., k:], 0.0).relu()], dim=-1)
        h_part, e_hat = _SparseDecode.apply(v, self.W_dec, ch)
        h_hat = h_part + self.b_dec.unsqueeze(1)
        # Codes for callers, written over pre (no longer needed: its choices are gathered), saving a fresh
        # (n_members, batch, d_dict) allocation every step.
        codes = pre.zero_().scatter_(-1, idx[..., :k], vals.detach())
        zero = h_hat.new_zeros(cfg.n_members)
        l1 = vals.sum(-1).mean(-1)
        if h is None:
            return TranscoderOutput(h_hat, codes, zero.sum(), zero, zero, l1, zero)
        h = self._x3(h)
        err, var, fvu = self._losses(h_hat, h)
        aux = _aux_error(e_hat, h - h_hat.detach(), dead, var) if aux_on else zero
        loss = (fvu + cfg.aux_coeff * aux).sum()  # summed over members, as in the dense path
        fired = None  # training only (train_step's bookkeeping): from the choices, not a pass over the dense codes
        if self.training:  # only train_step reads it (docs/decisions.md#step-fired-latents-from-the-choices)
            fired = vals.new_zeros(cfg.n_members * cfg.d_dict).index_add_(
                0, ch.flat[:, :k].reshape(-1), vals.detach().reshape(-1)).gt(0).view(cfg.n_members, -1)  # codes >= 0
        return TranscoderOutput(h_hat, codes, loss, err / cfg.d_out, aux, l1, fvu, fired)

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
        """Data-based init: scale each member's encoder so its first predictions fit h.

        Codes of top-k and ReLU are linear in the encoder's scale (with b_enc = 0), so one factor per member
        sets it. A tied encoder (``tied_init``) already predicts along h: the factor is the least-squares fit.
        A random one predicts noise, whose best fit is nearly zero: there the factor makes the predictions carry
        the energy of h instead, since embeddings are small (unit norm) while h may not be, and top-k latents of
        an encoder that must first grow by orders of magnitude die in that race.
        x (n_members, n, d_in), h (n_members, n, d_out): each member's own rows.
        """
        pred = torch.bmm(self.encode(x), self.W_dec)  # (n_members, n, d_out)
        want = h - self.b_dec.unsqueeze(1)
        got = pred.pow(2).sum((1, 2)).clamp_min(1e-12)  # (n_members,)
        scale = (want.pow(2).sum((1, 2)) / got).sqrt()
        if _tied(self.cfg):
            fit = (pred * want).sum((1, 2)) / got
            scale = torch.where(fit > 0, fit, scale)
        self.W_enc.mul_(scale[:, None, None])  # codes are linear in W_enc

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def keep_outputs(self, cfg: TranscoderConfig) -> TranscoderEnsemble:
        """A copy whose decoder keeps only the first ``cfg.d_out`` output columns (an ensemble trained on a
        widened target, ``TranscoderConfig.input_weight``, back to its transcoder x -> h). Its h_hat equals the
        first columns of this one's, exactly; cfg must match this one but for d_out."""
        if cfg.d_out > self.cfg.d_out or {**cfg.to_dict(), "d_out": 0} != {**self.cfg.to_dict(), "d_out": 0}:
            raise ValueError("keep_outputs needs this ensemble's config with a smaller d_out")
        kept = TranscoderEnsemble(cfg).to(self.W_dec.device)
        state = self.state_dict()
        state["W_dec"] = state["W_dec"][..., : cfg.d_out].clone()
        state["b_dec"] = state["b_dec"][..., : cfg.d_out].clone()
        kept.load_state_dict(state)
        kept._steps_done = getattr(self, "_steps_done", 0)
        return kept.train(self.training)

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
