"""The sparse TopK step's autograd: the encoder's pre-activations at the chosen latents and the decode from them,
with backward passes that touch only the chosen (member, row, latent) triples.

Per member, k of d_dict latents fire per row, so both weight gradients are sums, per latent, over the rows that
chose it: grad W_enc[j] = sum_i g_ij (x_i - b_pre) and grad W_dec[j] = sum_i z_ij dL/dh_i. Formed densely (the
k values scattered into a (n_members, batch, d_dict) matrix, then a product) each costs 2 batch d_dict d flops
and a fresh matrix of that size. Here the step's chosen latents, main and aux-k together, are sorted once
(``Choices``) and ``F.embedding_bag`` sums each latent's rows straight from the inputs: batch k d multiply-adds,
d_dict / k times less arithmetic, shared by the encoder's and the decoder's gradient and by all members (a
loop over single models, sparsify's for one, forms batch x k x d products per member before an index-add).

Where one member's weights are tiny (``DENSE_MAX_WEIGHTS``: d_dict x width, the test shapes) the per-choice
kernels and the sort cost more than products over all latents, so there the backward scatters the choices
into (n_members, rows, d_dict) and multiplies. The value gradients, one dot product dL/dh_i . W_dec[j] per
choice, follow the same rule: the dense product and a gather, or embedding_bag's own per-sample-weight
gradient. BatchTopK pads every row to the most any row keeps, so many slots are padding: the padding is left
out of the sorted sums, and the main choices' decode and value gradients run on the real ones only, one ragged
bag per row (``Ragged``; docs/decisions.md#step-batchtopk-kernels-and-padding-free-sums). Every path is checked
against the dense formulation in tests/transcoder/.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lanic_nb.transcoder.autograd import _flat_latents
from lanic_nb.transcoder.fused import Sink, sorted_dots, sums
from lanic_nb.transcoder.select import sort_by_key

log = logging.getLogger(__name__)

DENSE_MAX_WEIGHTS = 1 << 15
"""Backward through products over all latents while one member's d_dict x max(d_in, d_out) is at most this.
Chosen by weight size rather than latents per choice: once freed memory is kept (``device.keep_freed_memory``)
the per-latent sums win from the demo's shapes up, and the dense products only at the test shapes
(docs/decisions.md#step-dense_max_weights)."""


class Choices(NamedTuple):
    """One step's chosen latents, sorted by latent once for every backward that sums rows per latent."""

    idx: torch.Tensor  # (n_members, batch, kk) member-local latents; the first k per row are the code, the rest aux-k
    flat: torch.Tensor  # (n_members * batch, kk) the same as rows of the flattened (n_members * d_dict, .) weights
    k: int  # main choices per row
    order: torch.Tensor | None = None  # (n_choices,) positions in flat.reshape(-1), sorted by latent
    rows: torch.Tensor | None = None  # (n_choices,) input row (of the flattened (n_members * batch, .) inputs)
    offsets: torch.Tensor | None = None  # (n_members * d_dict,) start of each latent's run (runs may be empty)
    main: Ragged | None = None  # the main choices without their padding (BatchTopK), or None: every one is real
    sink: Sink | None = None  # where the weight gradients' sums go undone (``fused``), or None: formed here


class Ragged(NamedTuple):
    """The real main choices of padded rows (BatchTopK pads every row to the most any row holds, and about half
    the slots are padding): as ``F.embedding_bag``'s 1-D input with one bag per row, so the decode and the value
    gradients skip the padding instead of multiplying it by zero."""

    mask: torch.Tensor  # (n_members * batch, k) bool: the real ones among the main slots
    latents: torch.Tensor  # (n_real,) rows of the flattened weights, row-major
    offsets: torch.Tensor  # (n_members * batch,) start of each row's bag
    bag: torch.Tensor  # (n_real,) the row of each


def choose(idx: torch.Tensor, d_dict: int, k: int, backward: bool = True, width: int = 0,
           valid: torch.Tensor | None = None, sink: Sink | None = None) -> Choices:
    """The choices idx (n_members, batch, kk), sorted by latent (stably, so sums run in row order) when a backward
    will sum rows per latent (not without a backward, nor where it goes through dense products: weights of
    d_dict x ``width``, the larger of d_in and d_out, within ``DENSE_MAX_WEIGHTS``). ``valid`` (n_members, batch,
    kk) marks real choices where some are padding (their values are zero): padding is left out of the per-latent
    sums, and of the main choices' decode and value gradients (``Ragged``). With a ``sink`` the sorted path's
    backward leaves the W_enc and W_dec sums to the fused update (``fused.apply``) instead of forming them."""
    n, b, kk = idx.shape
    flat = _flat_latents(idx, d_dict)  # (n * b, kk)
    main = None
    if valid is not None and not bool(valid[..., :k].all()):
        mask = valid[..., :k].reshape(n * b, k)
        counts = mask.sum(1)
        main = Ragged(mask, flat[:, :k][mask], counts.cumsum(0) - counts,
                      torch.arange(n * b, device=idx.device).repeat_interleave(counts))
    if not backward or d_dict * width <= DENSE_MAX_WEIGHTS:
        return Choices(idx, flat, k, main=main)
    keys = flat.reshape(-1)
    if valid is not None:  # padding sorts last, past every latent, and is cut off
        keys = keys.masked_fill(~valid.reshape(-1), n * d_dict)
    order, counts = sort_by_key(keys, n * d_dict + 1)  # a counting sort: the keys are latents (select.py)
    counts = counts[: n * d_dict]
    order = order[: int(counts.sum())]
    return Choices(idx, flat, k, order, order.div(kk, rounding_mode="floor"), counts.cumsum(0) - counts, main, sink)


def per_latent_sum(ch: Choices, rows: torch.Tensor, source: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum over the choices of latent j of weights * source[rows], for every latent  # (n_members * d_dict, width).

    rows and weights are in the sorted order of ``ch``; latents nobody chose get zeros."""
    return F.embedding_bag(rows, source, ch.offsets, mode="sum", per_sample_weights=weights)


class _GatherPre(torch.autograd.Function):
    """pre[m, i, idx[m, i, j]] with gradients for W_enc, b_enc, b_pre (and x if it asks) from the choices only.

    ``pre`` = W_enc (x - b_pre) + b_enc came from one dense product without a graph (it has to see every latent
    to choose k); ``xc`` = x - b_pre is that product's input, kept for the W_enc gradient.
    """

    @staticmethod
    def forward(ctx, pre, ch, xc, x, w_enc, b_enc, b_pre):
        ctx.ch = ch
        ctx.save_for_backward(xc, w_enc)
        return pre.gather(-1, ch.idx)

    @staticmethod
    def backward(ctx, g):  # g (n_members, batch, kk)
        xc, w_enc = ctx.saved_tensors
        ch = ctx.ch
        n, b, kk = g.shape
        d_dict, d_in = w_enc.shape[1:]
        g_x = g_w = g_b = g_pre_bias = None
        if ch.order is None:  # few latents: through the scattered (n, batch, d_dict) gradient and products
            G = g.new_zeros(n, b, d_dict).scatter_add_(-1, ch.idx, g)
            g_x = torch.bmm(G, w_enc) if ctx.needs_input_grad[3] else None
            g_w = torch.bmm(G.transpose(1, 2), xc) if ctx.needs_input_grad[4] else None
            g_b = G.sum(1)
        else:
            g_flat = g.reshape(-1)
            if ctx.needs_input_grad[3]:
                g_x = F.embedding_bag(ch.flat, w_enc.reshape(n * d_dict, d_in), mode="sum",
                                      per_sample_weights=g.reshape(n * b, kk)).view(n, b, d_in)
            if ctx.needs_input_grad[4] and ch.sink is not None:
                ch.sink.enc = sums(ch.rows, g_flat, ch.order, xc.reshape(n * b, d_in), ch.offsets)
            elif ctx.needs_input_grad[4]:
                g_w = per_latent_sum(ch, ch.rows, xc.reshape(n * b, d_in),
                                     g_flat.index_select(0, ch.order)).view(n, d_dict, d_in)
            if ctx.needs_input_grad[5] or ctx.needs_input_grad[6]:
                g_b = g.new_zeros(n * d_dict).index_add_(0, ch.flat.reshape(-1), g_flat).view(n, d_dict)
        if ctx.needs_input_grad[6] and ch.sink is not None and ch.sink.enc is not None:
            ch.sink.enc.bias = g_b.reshape(-1)  # the fused pass over W_enc forms b_pre's gradient on its way
        elif ctx.needs_input_grad[6]:
            g_pre_bias = -torch.bmm(g_b.unsqueeze(1), w_enc).squeeze(1)  # x - b_pre: minus what x would get
        return None, None, None, g_x, g_w, g_b if ctx.needs_input_grad[5] else None, g_pre_bias


def _embedding_sums(weight: torch.Tensor, flat: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """sum_j vals[r, j] * weight[flat[r, j]] per row r  # (rows, width)."""
    return F.embedding_bag(flat, weight, mode="sum", per_sample_weights=vals)


class _SparseDecode(torch.autograd.Function):
    """(h, e): h[m, i] = sum over the first k choices of vals * W_dec[m, latent], e the same over the aux-k rest
    (zeros without aux-k), gathered row by row with ``F.embedding_bag`` instead of a (.., d_dict) product."""

    @staticmethod
    def forward(ctx, vals, w_dec, ch):  # vals (n_members, batch, kk), w_dec (n_members, d_dict, d_out)
        n, b, kk = vals.shape
        d_dict, d_out = w_dec.shape[1:]
        k = ch.k
        w = w_dec.reshape(n * d_dict, d_out)
        if ch.main is None:
            h = _embedding_sums(w, ch.flat[:, :k], vals[..., :k].reshape(n * b, k)).view(n, b, d_out)
        else:  # the real main choices only, one bag per row
            h = F.embedding_bag(ch.main.latents, w, ch.main.offsets, mode="sum",
                                per_sample_weights=vals[..., :k].reshape(n * b, k)[ch.main.mask]).view(n, b, d_out)
        e = (_embedding_sums(w, ch.flat[:, k:], vals[..., k:].reshape(n * b, kk - k)).view(n, b, d_out)
             if kk > k else h.new_zeros(()).expand(n, b, d_out))  # no aux-k: a zero view, nothing allocated
        ctx.set_materialize_grads(False)  # an unused e gets no (n, batch, d_out) zeros either
        ctx.ch = ch
        ctx.save_for_backward(vals, w_dec)
        return h, e

    @staticmethod
    def backward(ctx, g_h, g_e):  # each (n_members, batch, d_out)
        vals, w_dec = ctx.saved_tensors
        ch = ctx.ch
        n, b, kk = vals.shape
        d_dict, d_out = w_dec.shape[1:]
        k = ch.k
        if g_h is None:
            g_h = vals.new_zeros(n, b, d_out)
        if kk > k and g_e is None:
            g_e = torch.zeros_like(g_h)
        # Stack the two outputs' gradients so one per-latent sum serves main and aux-k choices alike.
        g_rows = torch.cat([g_h, g_e], dim=1) if kk > k else g_h  # (n, b or 2b, d_out)
        g_vals = g_w = rows = None
        if ch.order is not None:
            rows = ch.rows
            if kk > k:  # aux-k choices read the e rows, which follow the h rows of their member
                member = rows.div(b, rounding_mode="floor")
                rows = rows + b * (member + (ch.order % kk >= k))
        if ctx.needs_input_grad[0] and ch.sink is not None:  # the fused CPU step: one pass over the chosen rows
            g_vals = sorted_dots(g_rows.reshape(-1, d_out), w_dec.reshape(n * d_dict, d_out), rows, ch.order,
                                 ch.offsets, n * b * kk).view(n, b, kk)
        elif ctx.needs_input_grad[0]:
            g_vals = _choice_dots(ch, g_rows, w_dec)
        if ctx.needs_input_grad[1] and ch.order is None:  # few latents: the codes scattered, one product
            z = vals.new_zeros(n, g_rows.shape[1], d_dict)  # (n, b or 2b, d_dict): main codes, then aux-k ones
            z[:, :b].scatter_add_(-1, ch.idx[..., :k], vals[..., :k])
            if kk > k:
                z[:, b:].scatter_add_(-1, ch.idx[..., k:], vals[..., k:])
            g_w = torch.bmm(z.transpose(1, 2), g_rows)
        elif ctx.needs_input_grad[1]:
            if ch.sink is not None:
                ch.sink.dec = sums(rows, vals.detach().reshape(-1), ch.order, g_rows.reshape(-1, d_out), ch.offsets)
            else:
                weights = vals.reshape(-1).index_select(0, ch.order)
                g_w = per_latent_sum(ch, rows, g_rows.reshape(-1, d_out), weights).view(n, d_dict, d_out)
        return g_vals, g_w, None


def _choice_dots(ch: Choices, g_rows: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """dL/dvals: for every choice (m, i, j), the output gradient of its row dotted with W_dec[m, latent]  # (n, b, kk).

    g_rows (n, b, d_out) holds dL/dh; with aux-k choices (n, 2b, d_out), dL/de below it."""
    n, b, kk = ch.idx.shape
    d_dict, d_out = w_dec.shape[1:]
    k = ch.k
    if ch.order is None:
        full = torch.bmm(g_rows, w_dec.transpose(1, 2))  # (n, b or 2b, d_dict)
        if kk == k:
            return full.gather(-1, ch.idx)
        return torch.cat([full[:, :b].gather(-1, ch.idx[..., :k]), full[:, b:].gather(-1, ch.idx[..., k:])], -1)
    w = w_dec.reshape(n * d_dict, d_out)
    if ch.main is None:
        out = [_dots(ch.flat[:, :k], w, g_rows[:, :b])]
    else:  # padding gets zero: its values are zero in the forward whatever their gradient
        real = _bag_dots(g_rows[:, :b], w, ch.main.latents, ch.main.offsets, ch.main.bag)
        out = [g_rows.new_zeros(n * b, k).masked_scatter_(ch.main.mask, real)]
    if kk > k:
        out.append(_dots(ch.flat[:, k:], w, g_rows[:, b:]))
    return torch.cat(out, -1).view(n, b, kk) if kk > k else out[0].view(n, b, k)


def _dots(flat: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g[r] . w[flat[r, j]] for every row r and slot j  # (rows, slots).

    This is embedding_bag's gradient for its per-sample weights (mode 0: sum), called directly: the bags are the
    rows, each of ``slots`` entries, so the bag of every entry (offset2bag) is known without running the forward
    again (through autograd it would, and that forward costs a third of the dots)."""
    rows, slots = flat.shape
    offsets = torch.arange(0, rows * slots, slots, device=flat.device)
    bag = torch.arange(rows, device=flat.device).repeat_interleave(slots)
    return _bag_dots(g, w, flat.reshape(-1), offsets, bag).view(rows, slots)


def _bag_dots(g: torch.Tensor, w: torch.Tensor, latents: torch.Tensor, offsets: torch.Tensor,
              bag: torch.Tensor) -> torch.Tensor:
    """g[bag[e]] . w[latents[e]] for every entry e of bags given as ``F.embedding_bag``'s 1-D input  # (entries,)."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        g.reshape(len(offsets), -1).contiguous(), w, latents.contiguous(), offsets, bag, 0, -1)
