"""Exact attribution: every logit of the classifier as a sum of pattern contributions.

The explained model is the classifier's head read through the transcoder ensemble. With ``z_m`` the
code of member ``m`` (of ``M``), the ensemble's reconstruction of the hidden layer is

    h_hat = (1/M) sum_m (W_dec_m^T z_m + b_dec_m)

and, because the head is linear (logit_c = fc2_c . h + b2_c), the logit splits exactly:

    logit_c = sum_p contribution(p, c) + other_c + bias_c + error_c

    contribution(p, c) = (1/M) sum_{(m, i) in p} z_mi (fc2_c . W_dec[m, i])   (activation x effect)
    other_c            = the same sum over latents that belong to no kept pattern
    bias_c             = fc2_c . mean_m b_dec_m + b2_c
    error_c            = fc2_c . (h - h_hat)   (the transcoders' reconstruction error, same path)

The sums run in float64 by default: with thousands of terms float32 rounding alone approaches the
1e-5 relative tolerance we promise, and the cost is a few small matrices.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.manifest import FINDINGS
from lanic_nb.progress import progress


def finding_name(c: int, n_classes: int) -> str:
    """The name of output column ``c``: the finding when the head has the five findings, else its index."""
    return FINDINGS[c] if n_classes == len(FINDINGS) else str(c)


class Attribution(NamedTuple):
    """The terms of the exact decomposition for a batch of images."""

    contributions: torch.Tensor  # (batch, n_patterns, n_classes)
    other: torch.Tensor  # (batch, n_classes): latents in no kept pattern
    bias: torch.Tensor  # (n_classes,)
    error: torch.Tensor  # (batch, n_classes): reconstruction error through the head
    logits: torch.Tensor  # (batch, n_classes): the classifier's own logits
    activations: torch.Tensor  # (batch, n_patterns): sum of member latents' z / n_members

    def recomposed(self) -> torch.Tensor:
        """Sum of all terms  # (batch, n_classes); equals ``logits`` up to rounding."""
        return self.contributions.sum(1) + self.other + self.bias + self.error

    def identity_error(self) -> float:
        """Largest |recomposed - logit| relative to max(|logit|, 1) over every image and finding."""
        if self.logits.numel() == 0:
            return 0.0
        diff = (self.recomposed() - self.logits).abs()
        return float((diff / self.logits.abs().clamp_min(1.0)).max())


def latent_effects(classifier: nn.Module, ensemble: nn.Module, dtype=torch.float64) -> torch.Tensor:
    """Effect of one unit of each latent on each logit: fc2 . W_dec[m, i]  # (n_members, d_dict, n_classes)."""
    W_dec = ensemble.W_dec.detach().to(dtype)  # (n_members, d_dict, d_out)
    return W_dec @ classifier.fc2.weight.detach().to(dtype=dtype, device=W_dec.device).T


def pattern_columns(latent_pattern: torch.Tensor, n_patterns: int) -> torch.Tensor:
    """Map each latent to its output column: its pattern id, or ``n_patterns`` (the "other" column)."""
    lp = torch.as_tensor(latent_pattern, dtype=torch.long)
    if lp.numel() and (int(lp.max()) >= n_patterns or int(lp.min()) < -1):
        raise ValueError(f"latent_pattern must hold -1 or ids in [0, n_patterns={n_patterns}), "
                         f"got range [{int(lp.min())}, {int(lp.max())}]")
    return torch.where(lp < 0, torch.full_like(lp, n_patterns), lp)  # (n_members, d_dict)


def _scatter_codes(z: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, n_cols: int) -> torch.Tensor:
    """sum over latents (m, i) of z[m, b, i] * weights[m, i, :] into column cols[m, i]  # (batch, n_cols, k).

    Codes are sparse, so only the non-zero entries are gathered (never a (batch, M*d_dict, k) tensor).
    """
    m, b, i = torch.nonzero(z, as_tuple=True)
    vals = z[m, b, i, None] * weights[m, i]  # (nnz, k)
    out = torch.zeros(z.shape[1], n_cols, weights.shape[-1], dtype=weights.dtype, device=z.device)
    out.index_put_((b, cols[m, i]), vals, accumulate=True)
    return out


@torch.no_grad()
def attribute(
    classifier: nn.Module,
    ensemble: nn.Module,
    latent_pattern: torch.Tensor,
    n_patterns: int,
    x: torch.Tensor,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
) -> Attribution:
    """Decompose the classifier's logits on ``x`` (batch, d_in) into pattern contributions.

    ``latent_pattern`` (n_members, d_dict) gives each latent's pattern id (-1: in no kept pattern).
    Terms come back on CPU in ``dtype``.
    """
    classifier.eval()
    device = ensemble.W_dec.device
    n_members = ensemble.W_dec.shape[0]
    cols = pattern_columns(latent_pattern, n_patterns).to(device)
    eff = latent_effects(classifier, ensemble, dtype) / n_members  # (n_members, d_dict, n_classes)
    ones = torch.ones(*eff.shape[:2], 1, dtype=dtype, device=device) / n_members
    W2 = classifier.fc2.weight.detach().to(device=device, dtype=dtype)  # (n_classes, hidden)
    b2 = classifier.fc2.bias.detach().to(device=device, dtype=dtype)
    b_dec = ensemble.b_dec.detach().to(dtype).mean(0)  # (d_out,)
    W_dec = ensemble.W_dec.detach().to(dtype)
    bias = W2 @ b_dec + b2  # (n_classes,)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("contrib", "act", "error", "logits")}
    x = torch.as_tensor(x)
    starts = range(0, len(x), batch_size)
    for s in progress(starts, desc="attribution", disable=len(starts) < 4, mininterval=2.0):
        xb = x[s : s + batch_size].to(device=device, dtype=torch.float32)
        z = ensemble.encode(xb).to(dtype)  # (n_members, batch, d_dict)
        h = classifier.hidden(xb).to(dtype)  # (batch, hidden)
        h_hat = torch.bmm(z, W_dec).mean(0) + b_dec  # (batch, d_out) = mean_m (W_dec_m^T z_m + b_dec_m)
        parts["contrib"].append(_scatter_codes(z, cols, eff, n_patterns + 1).cpu())
        parts["act"].append(_scatter_codes(z, cols, ones, n_patterns + 1)[..., 0].cpu())
        parts["error"].append(((h - h_hat) @ W2.T).cpu())
        parts["logits"].append((h @ W2.T + b2).cpu())
    n_cls = W2.shape[0]
    if not parts["contrib"]:
        zero = torch.zeros(0, n_cls, dtype=dtype)
        return Attribution(torch.zeros(0, n_patterns, n_cls, dtype=dtype), zero, bias.cpu(), zero, zero,
                           torch.zeros(0, n_patterns, dtype=dtype))
    contrib = torch.cat(parts["contrib"])  # (batch, n_patterns + 1, n_classes)
    act = torch.cat(parts["act"])
    return Attribution(contributions=contrib[:, :n_patterns], other=contrib[:, n_patterns], bias=bias.cpu(),
                       error=torch.cat(parts["error"]), logits=torch.cat(parts["logits"]),
                       activations=act[:, :n_patterns])


def patterns_for_mass(contributions: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """How many patterns (largest |contribution| first) hold ``mass`` of the total |contribution|.

    contributions (batch, n_patterns, n_classes) -> counts (batch, n_classes); 0 where all are zero.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if contributions.shape[1] == 0:
        return torch.zeros(contributions.shape[0], contributions.shape[2], dtype=torch.long)
    a = contributions.abs().sort(dim=1, descending=True).values
    cum = a.cumsum(1)
    total = cum[:, -1:]
    # A small relative slack keeps exact ties at the threshold from costing one more pattern.
    n = (cum < mass * total * (1 - 1e-12)).sum(1) + 1
    return torch.where(total[:, 0] > 0, n, torch.zeros_like(n))


def mass_summary(counts: torch.Tensor, mass: float = 0.9) -> pd.DataFrame:
    """Per finding: quantiles of the patterns-for-``mass`` counts (batch, n_classes) from ``patterns_for_mass``."""
    c = counts.numpy().astype(np.float64)
    rows = []
    for j in range(c.shape[1]):
        q = np.quantile(c[:, j], [0.1, 0.25, 0.5, 0.75, 0.9]) if len(c) else [np.nan] * 5
        rows.append(dict(finding=finding_name(j, c.shape[1]), mass=mass,
                         q10=q[0], q25=q[1], median=q[2], q75=q[3], q90=q[4], mean=float(c[:, j].mean())))
    return pd.DataFrame(rows)


def attribution_table(attr: Attribution, image_ids: list[str] | np.ndarray, pattern_ids: np.ndarray,
                      top: int = 50) -> pd.DataFrame:
    """Long table of the ``top`` largest |contributions| per image and finding.

    Columns: image_id, finding, rank, pattern_id, contribution, activation.
    """
    n, n_pat, n_cls = attr.contributions.shape
    k = min(top, n_pat)
    idx = attr.contributions.abs().topk(k, dim=1).indices  # (n, k, C)
    vals = attr.contributions.gather(1, idx)
    acts = attr.activations.gather(1, idx.permute(0, 2, 1).reshape(n, -1)).reshape(n, n_cls, k).permute(0, 2, 1)
    ids = np.asarray(image_ids)
    pid = np.asarray(pattern_ids)
    frames = []
    for c in range(n_cls):
        frames.append(pd.DataFrame({
            "image_id": np.repeat(ids, k),
            "finding": finding_name(c, n_cls),
            "rank": np.tile(np.arange(1, k + 1), n),
            "pattern_id": pid[idx[:, :, c].reshape(-1).numpy()],
            "contribution": vals[:, :, c].reshape(-1).numpy(),
            "activation": acts[:, :, c].reshape(-1).numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def summary_table(attr: Attribution, image_ids: list[str] | np.ndarray, mass: float = 0.9) -> pd.DataFrame:
    """One row per image and finding: logit, probability, the four terms and the patterns-for-mass count."""
    n, _, n_cls = attr.contributions.shape
    n90 = patterns_for_mass(attr.contributions, mass)
    total = attr.contributions.sum(1)
    frames = []
    for c in range(n_cls):
        frames.append(pd.DataFrame({
            "image_id": np.asarray(image_ids),
            "finding": finding_name(c, n_cls),
            "logit": attr.logits[:, c].numpy(),
            "probability": torch.sigmoid(attr.logits[:, c]).numpy(),
            "patterns": total[:, c].numpy(),
            "other": attr.other[:, c].numpy(),
            "bias": np.full(n, float(attr.bias[c])),
            "error": attr.error[:, c].numpy(),
            "n_patterns_90": n90[:, c].numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def term_sizes(summary: pd.DataFrame) -> pd.DataFrame:
    """Per finding, the mean |value| of the logit and of each term, from ``summary_table``.

    A large ``error`` column means the transcoders explain the model poorly.
    """
    return summary.groupby("finding")[["logit", "patterns", "other", "bias", "error"]].agg(lambda s: s.abs().mean())
