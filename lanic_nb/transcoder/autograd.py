"""Custom autograd for the transcoder ensemble: JumpReLU and step with straight-through pseudo-derivatives,
and the sparse TopK decode and pre-activation gather that compute only the k chosen latents of each row.

Each is checked against the dense formulation in tests/transcoder/."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

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
