"""The sparse step's weight update in one pass per latent (CPU): the per-latent gradient sums, AdamW and the
decoder's normalization of each W_enc / W_dec row together, while the row is in cache.

After the sparse backward (``sparse.py``) the gradient of latent j's weight row is a sum over the few rows that
chose it. Formed as tensors, each weight's gradient is written to memory, AdamW reads it back with the weight
and both moments and writes three of them, the decoder's normalization reads and writes W_dec once more, and
b_pre's gradient reads W_enc once more. At wide shapes (MIMIC's: 4,096 latents x 512 per member) these passes
are memory-bound. So where ``applies`` holds, the backward leaves the sums to the update (``Sink``: the
choices' rows and weights in the order of the latent sort) and ``apply`` forms each row's gradient in a small
buffer, adds the row's share of b_pre's gradient, updates the row with the arithmetic of torch's AdamW
(decoupled weight decay, bias-corrected moments, eps outside the square root) and normalizes a decoder row at
once; the value gradients read each chosen decoder row once for all the rows that chose it (``sorted_dots``).
Timings against the unfused step: docs/decisions.md#step-fused-cpu-weight-update-fused_min_weights.
The step's graph holds the sink, so ``apply`` empties it: a sink still holding a tensor of the graph would close a
reference cycle through C++ edges the garbage collector cannot see, and every step's tensors would stay alive.

The moments live in the optimizer's own state, so checkpoints and a resume on another device read them as
usual; biases stay with torch's AdamW. tests/transcoder/test_fused.py trains the same ensemble both ways (TopK,
BatchTopK, aux-k, masked latents, weight decay, warm-up, with and without the decoder's normalization) and
compares weights, moments and step counts to 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lanic_nb.transcoder.select import _jit, _prange, numba

FUSED_MIN_WEIGHTS = 1 << 20
"""Fuse the update where one member's d_dict x max(d_in, d_out) weights reach this (MIMIC: 4,096 x 512 = 2.1 M).
The demo's ensemble (256 latents x 512) stays below on purpose, though the fused step would be faster there too:
its rounding differs from torch's AdamW in the last bits, which moves a trained ensemble, and the phantoms'
reference figures come from torch's AdamW (docs/decisions.md#step-fused-cpu-weight-update-fused_min_weights)."""

_BLOCK = 32  # latents per parallel task (one gradient buffer each)


@dataclass
class Sums:
    """One weight's gradient as per-latent sums: grad[j] = sum over e in [starts[j], starts[j + 1]) (the last run
    ends with the choices) of weights[order[e]] * source[rows[e]]."""

    rows: torch.Tensor  # (n_choices,) int64 rows of source, in the latent-sorted order
    weights: torch.Tensor  # (n_members * batch * slots,) float32, one per choice in the unsorted order
    order: torch.Tensor  # (n_choices,) int64 the sorted order: positions in weights
    source: torch.Tensor  # (n_source_rows, width) float32
    starts: torch.Tensor  # (n_members * d_dict,) int64 start of each latent's run (``sparse.Choices.offsets``)
    bias: torch.Tensor | None = None  # (n_members * d_dict,) W_enc only: b_enc's gradient, for b_pre's


@dataclass
class Sink:
    """Where the sparse backward leaves W_enc's and W_dec's gradients instead of forming them."""

    enc: Sums | None = None
    dec: Sums | None = None


def applies(model: torch.nn.Module, opt: torch.optim.Optimizer) -> bool:
    """Whether ``train_step`` fuses this step's W_enc / W_dec update: a CPU model on the sparse path at
    ``FUSED_MIN_WEIGHTS`` or more, numba importable, and torch's Adam/AdamW without amsgrad, maximize or
    capturable steps (Adam's own L2 weight decay goes into the gradient, which is never formed here: not fused)."""
    cfg = model.cfg
    w = model.W_enc
    if numba is None or w.device.type != "cpu" or w.dtype != torch.float32 or not model.training:
        return False
    if not model._sparse or cfg.d_dict * max(cfg.d_in, cfg.d_out) < FUSED_MIN_WEIGHTS:
        return False
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or len(opt.param_groups) != 1:
        return False
    g = opt.param_groups[0]
    l2 = type(opt) is torch.optim.Adam and g["weight_decay"] != 0
    return not (l2 or g.get("amsgrad") or g.get("maximize") or g.get("capturable") or g.get("differentiable"))


def sums(rows: torch.Tensor, weights: torch.Tensor, order: torch.Tensor, source: torch.Tensor,
         offsets: torch.Tensor) -> Sums:
    """The per-latent sums of ``sparse.per_latent_sum`` (weights taken through ``order``, offsets: start of each
    latent's run), left undone."""
    return Sums(rows.contiguous(), weights.contiguous(), order.contiguous(), source.contiguous(), offsets.contiguous())


@torch.no_grad()
def apply(model: torch.nn.Module, opt: torch.optim.Optimizer, sink: Sink) -> bool:
    """Update W_enc and W_dec from the sink's sums, as ``opt.step()`` would with those gradients, and normalize
    the decoder's rows if the config asks; runs before ``opt.step()``, since b_pre's gradient, -sum_j g(b_enc)_j
    W_enc[j], is formed from the encoder's rows before their update (``b_pre.grad``). Returns whether the
    decoder was done (its normalization with it)."""
    group = opt.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    wd = group["weight_decay"] if isinstance(opt, torch.optim.AdamW) else 0.0  # Adam's L2 decay: see applies
    for p, s, normalize in ((model.W_enc, sink.enc, False), (model.W_dec, sink.dec, model.cfg.normalize_decoder)):
        if s is None:
            continue
        state = opt.state[p]
        if not state:  # as torch's AdamW creates it (fused or not: a float32 step on the parameter's device)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        f32 = np.float32
        n, d_dict, width = p.shape
        tasks = n * -(-d_dict // _BLOCK)
        bias = s.bias.contiguous() if s.bias is not None else p.new_zeros(0)
        partial = p.new_empty(tasks if s.bias is not None else 0, width)  # per task: sum of bias_j W[j]
        _adam_rows(p.detach().view(-1, width).numpy(), state["exp_avg"].view(-1, width).numpy(),
                   state["exp_avg_sq"].view(-1, width).numpy(), s.source.numpy(), s.weights.numpy(),
                   s.order.numpy(), s.rows.numpy(), s.starts.numpy(), f32(lr / (1 - beta1**step)),
                   f32(math.sqrt(1 - beta2**step)), f32(beta1), f32(1 - beta1), f32(beta2), f32(1 - beta2),
                   f32(eps), f32(1 - lr * wd), normalize, d_dict, bias.numpy(), partial.numpy())
        if s.bias is not None:
            model.b_pre.grad = -partial.view(n, -1, width).sum(1)  # x - b_pre: minus what x would get
    done = sink.dec is not None
    # The step's graph holds the sink (through its choices): emptied, it holds none of the step's tensors, so no
    # reference cycle through the graph keeps a step's tensors alive after the step.
    sink.enc = sink.dec = None
    return done


def sorted_dots(g: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor,
                size: int) -> torch.Tensor:
    """The value gradients of the fused step: out[order[e]] = g[rows[e]] . w[j] for every choice e of latent j
    (the latent-sorted order of ``sparse.Choices``), zeros where no choice is (padding)  # (size,).

    Latent by latent, each chosen weight row is read once for all the rows that chose it, where torch's
    per-sample-weight backward of embedding_bag (``sparse._bag_dots``) dots choice by choice on one thread
    (docs/decisions.md#step-fused-cpu-weight-update-fused_min_weights)."""
    out = g.new_zeros(size)
    _sorted_dots(g.contiguous().numpy(), w.detach().contiguous().numpy(), rows.contiguous().numpy(),
                 order.contiguous().numpy(), offsets.contiguous().numpy(), out.numpy())
    return out

# Reassociation and fused multiply-adds only (no reciprocal or NaN-free shortcuts): they let LLVM vectorize the
# sums, and the decoder row's squared norm, a reduction it keeps scalar otherwise.
@_jit(parallel=True, fastmath={"reassoc", "contract", "nsz"}, boundscheck=False, cache=True)
def _adam_rows(w, exp_avg, exp_avg_sq, source, weights, order, rows, starts, step_size, bc2_sqrt, beta1,
               one_m_beta1, beta2, one_m_beta2, eps, decay, normalize, d_dict, bias,
               partial):  # pragma: no cover - numba-compiled
    width = w.shape[1]
    per_member = (d_dict + _BLOCK - 1) // _BLOCK  # tasks never straddle two members (partial sums per member)
    for task in _prange(w.shape[0] // d_dict * per_member):
        grad = np.empty(width, np.float32)
        first = task // per_member * d_dict + task % per_member * _BLOCK
        last = min(first + _BLOCK, task // per_member * d_dict + d_dict)
        if len(bias):
            for t in range(width):
                partial[task, t] = 0.0
        for j in range(first, last):
            if len(bias):  # b_pre's gradient reads the row before its update
                for t in range(width):
                    partial[task, t] += bias[j] * w[j, t]
            for t in range(width):
                grad[t] = 0.0
            end = starts[j + 1] if j + 1 < len(starts) else len(rows)
            for e in range(starts[j], end):  # in row order, as embedding_bag sums
                a = weights[order[e]]
                r = rows[e]
                for t in range(width):
                    grad[t] += a * source[r, t]
            ss = np.float32(0.0)
            for t in range(width):
                g = grad[t]
                m = exp_avg[j, t]
                m = m + one_m_beta1 * (g - m)  # torch's lerp(m, g, 1 - beta1)
                v = exp_avg_sq[j, t] * beta2 + one_m_beta2 * g * g
                exp_avg[j, t] = m
                exp_avg_sq[j, t] = v
                p = w[j, t] * decay - step_size * (m / (np.sqrt(v) / bc2_sqrt + eps))
                w[j, t] = p
                ss += p * p
            if normalize:
                norm = max(np.sqrt(ss), np.float32(1e-8))
                for t in range(width):
                    w[j, t] /= norm


@_jit(parallel=True, fastmath={"reassoc", "contract", "nsz"}, boundscheck=False, cache=True)
def _sorted_dots(g, w, rows, order, starts, out):  # pragma: no cover - numba-compiled
    width = w.shape[1]
    n_rows = w.shape[0]
    for blk in _prange((n_rows + _BLOCK - 1) // _BLOCK):
        for j in range(blk * _BLOCK, min(n_rows, (blk + 1) * _BLOCK)):
            end = starts[j + 1] if j + 1 < len(starts) else len(rows)
            for e in range(starts[j], end):
                r = rows[e]
                acc = np.float32(0.0)
                for t in range(width):
                    acc += g[r, t] * w[j, t]
                out[order[e]] = acc
