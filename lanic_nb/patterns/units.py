"""What a pattern does: its activations on inputs, its statistics over images, its effect on each finding.

A pattern's activation is the sum of its member latents' codes divided by the number of members: its share
of the ensemble-mean code, so contributions through the mean reconstruction add up exactly over patterns
(the attribution stage relies on that). Latent-level helpers (which latents ever fire, their codes on a
sample of inputs) feed the merge in ``lanic_nb.patterns.merge``; ``baseline_units`` gives the two unit sets
the patterns are compared with (one member's latents, raw embedding dimensions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from lanic_nb.patterns.merge import PatternSet
from lanic_nb.transcoder.inference import topk_codes


def rows_per_batch(ensemble, budget: int = 1 << 25) -> int:
    """Input rows per encode call so that z (n_members, rows, d_dict) holds about ``budget`` floats."""
    return max(1, budget // (ensemble.cfg.n_members * ensemble.cfg.d_dict))


@torch.no_grad()
def pattern_activations(ensemble, patterns: PatternSet, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """(batch, n_patterns): sum over a pattern's member latents of z, divided by n_members.

    Dividing by n_members (not by the pattern's size) makes the activations the pattern's share of the
    ensemble-mean code, so attribution through the mean reconstruction is additive over patterns.
    """
    device = next(ensemble.parameters()).device
    batch_size = batch_size or rows_per_batch(ensemble)
    lp = patterns.latent_pattern.to(device)  # (n_members, d_dict)
    n_pat = patterns.n_patterns
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(device).float()
        if ensemble.cfg.activation == "topk":  # only the k codes per member and row (transcoder.inference)
            vals, idx = topk_codes(ensemble, xb)  # (n_members, batch, k)
            pid = lp.gather(1, idx.reshape(idx.shape[0], -1)).view_as(idx)
            pid = torch.where(pid >= 0, pid, n_pat)  # latents in no pattern go to a spare column
            rows = idx.shape[1]
            act = torch.zeros(rows, n_pat + 1, device=device)
            act.scatter_add_(1, pid.permute(1, 0, 2).reshape(rows, -1), vals.permute(1, 0, 2).reshape(rows, -1))
            act = act[:, :n_pat]
        else:
            z = ensemble.encode(xb)  # (n_members, batch, d_dict)
            zf = z.permute(1, 0, 2).reshape(z.shape[1], -1)  # (batch, M)
            flat = lp.reshape(-1)
            keep = torch.nonzero(flat >= 0).squeeze(1)
            act = torch.zeros(zf.shape[0], n_pat, device=device)
            act.index_add_(1, flat[keep], zf[:, keep])
        out.append((act / patterns.n_members).cpu())
    if not out:
        return torch.zeros(0, n_pat)
    return torch.cat(out)


def latent_alive(ensemble, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """(n_members, d_dict) bool: latents that fire on at least one row of ``x`` (dead ones are not merged)."""
    device = next(ensemble.parameters()).device
    batch_size = batch_size or rows_per_batch(ensemble)
    alive = None
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device).float()
            if ensemble.cfg.activation == "topk":  # only the k codes per member and row (transcoder.inference)
                vals, idx = topk_codes(ensemble, xb)
                n, dd = ensemble.cfg.n_members, ensemble.cfg.d_dict
                fired = torch.zeros(n * dd, dtype=torch.bool, device=device)
                fired[(idx + dd * torch.arange(n, device=device).view(n, 1, 1))[vals > 0]] = True
                fired = fired.view(n, dd).cpu()
            else:
                fired = (ensemble.encode(xb) > 0).any(dim=1).cpu()
            alive = fired if alive is None else alive | fired
    return alive


def latent_codes(ensemble, x: torch.Tensor, n_rows: int = 2048, seed: int = 0) -> sparse.csr_matrix:
    """Codes of every latent on a sample of ``n_rows`` rows of ``x``: sparse (n_members * d_dict, n_rows),
    the input of the activation test in ``patterns.merge.merge_latents`` (top-k codes are sparse, so this stays small
    at 409,600 latents)."""
    device = next(ensemble.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(x.shape[0], generator=gen)[:n_rows].sort().values
    n_latents = ensemble.cfg.n_members * ensemble.cfg.d_dict
    parts, step = [], rows_per_batch(ensemble)
    with torch.no_grad():
        for s in range(0, len(pick), step):
            z = ensemble.encode(x[pick[s : s + step]].to(device).float()).cpu()  # (n_members, batch, d_dict)
            zt = z.permute(0, 2, 1).reshape(n_latents, -1)  # (M, batch)
            i, j = torch.nonzero(zt, as_tuple=True)
            parts.append(sparse.csr_matrix((zt[i, j].numpy(), (i.numpy(), j.numpy())), shape=zt.shape))
    return sparse.hstack(parts, format="csr") if parts else sparse.csr_matrix((n_latents, 0), dtype=np.float32)


# ------------------------------------------------------------------------------------------ per pattern


def pattern_stats(
    activations: torch.Tensor | np.ndarray, image_ids: np.ndarray | None = None, k_top: int = 20, n_quantiles: int = 5
) -> pd.DataFrame:
    """Per pattern: firing frequency, mean and max activation, top-k images, one image per activation quantile.

    activations: (n_images, n_patterns). ``quantile_images`` samples the images that fire the pattern at the
    middle of each of ``n_quantiles`` equal-count bands, so a gallery shows weak as well as strong examples.
    """
    act = np.asarray(activations, dtype=np.float32)
    ids = np.asarray(image_ids) if image_ids is not None else np.arange(act.shape[0])
    fires = act > 0
    rows = []
    for p in range(act.shape[1]):
        a = act[:, p]
        top = np.argsort(-a, kind="stable")[:k_top]
        top = top[a[top] > 0]
        on = np.nonzero(fires[:, p])[0]
        on = on[np.argsort(a[on], kind="stable")]  # ascending activation
        bands = [on[int((q + 0.5) * len(on) / n_quantiles)] for q in range(n_quantiles)] if len(on) else []
        rows.append(
            {
                "pattern_id": p,
                "firing_freq": float(fires[:, p].mean()) if len(a) else 0.0,
                "mean_act": float(a.mean()) if len(a) else 0.0,
                "max_act": float(a.max()) if len(a) else 0.0,
                "top_images": [str(i) for i in ids[top]],
                "quantile_images": [str(i) for i in ids[np.asarray(bands, dtype=np.int64)]],
            }
        )
    columns = ["pattern_id", "firing_freq", "mean_act", "max_act", "top_images", "quantile_images"]
    return pd.DataFrame(rows, columns=columns)


@torch.no_grad()
def logit_effects(classifier, patterns: PatternSet, findings: tuple[str, ...]) -> pd.DataFrame:
    """Effect of one unit of each pattern's canonical direction on each finding's logit: fc2.weight @ direction."""
    w = classifier.fc2.weight.detach().float().cpu()  # (n_findings, hidden)
    eff = (patterns.directions.float() @ w.T).numpy()  # (n_patterns, n_findings)
    return pd.DataFrame({f"effect_{f}": eff[:, i] for i, f in enumerate(findings)})


def baseline_units(ensemble, x: torch.Tensor, member: int = 0) -> dict[str, np.ndarray]:
    """Activations of the two comparison unit sets on ``x`` (n, d_in): one member's latents, and the raw
    embedding dimensions taken with both signs (a dimension may encode a concept by going negative)."""
    device, step = next(ensemble.parameters()).device, rows_per_batch(ensemble)
    with torch.no_grad():
        z = np.concatenate(
            [ensemble.encode(x[s : s + step].to(device).float())[member].cpu().numpy() for s in range(0, len(x), step)]
        ) if len(x) else np.zeros((0, ensemble.cfg.d_dict), np.float32)
    xn = x.float().cpu().numpy()
    return {"single transcoder": z, "embedding dims": np.concatenate([xn, -xn], axis=1)}
