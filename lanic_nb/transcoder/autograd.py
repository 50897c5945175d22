"""Custom autograd for the transcoder ensemble: JumpReLU and step with straight-through pseudo-derivatives, and
the helpers of the aux-k loss. The sparse TopK step's own functions live in ``lanic_nb.transcoder.sparse``.

Each is checked against the dense formulation in tests/."""

from __future__ import annotations

import logging

import torch

from lanic_nb.transcoder.config import PRECISIONS

log = logging.getLogger(__name__)



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


def encoder_product(xc: torch.Tensor, w_enc: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """xc (n_members, batch, d_in) times W_enc (n_members, d_dict, d_in) transposed  # (n_members, batch, d_dict),
    float32. In "bfloat16" both factors are rounded to bfloat16 for the product (float32 accumulation inside), whose
    bfloat16 result is returned as float32 (a relative rounding of at most 2^-8); only the forward is rounded: the
    gradients (``_RoundedProduct``) are the exact float32 ones of the product, as the sparse step's own backward
    (``sparse._GatherPre``) computes them."""
    if precision == "float32":
        return torch.bmm(xc, w_enc.transpose(1, 2))
    if precision != "bfloat16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if torch.is_grad_enabled() and (xc.requires_grad or w_enc.requires_grad):
        return _RoundedProduct.apply(xc, w_enc)
    return _rounded_product(xc, w_enc)


def _rounded_product(xc: torch.Tensor, w_enc: torch.Tensor) -> torch.Tensor:
    return torch.bmm(xc.to(torch.bfloat16), w_enc.to(torch.bfloat16).transpose(1, 2)).float()


class _RoundedProduct(torch.autograd.Function):
    """The encoder product rounded to bfloat16 in the forward, with the float32 product's gradients."""

    @staticmethod
    def forward(ctx, xc, w_enc):
        ctx.save_for_backward(xc, w_enc)
        return _rounded_product(xc, w_enc)

    @staticmethod
    def backward(ctx, g):  # g (n_members, batch, d_dict)
        xc, w_enc = ctx.saved_tensors
        g_x = torch.bmm(g, w_enc) if ctx.needs_input_grad[0] else None
        g_w = torch.bmm(g.transpose(1, 2), xc) if ctx.needs_input_grad[1] else None
        return g_x, g_w


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
