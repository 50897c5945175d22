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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.io import read_json, read_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import unit_aurocs
from lanic_nb.progress import progress
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)


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


@dataclass
class RunInputs:
    """What attribution needs from a run directory, for the readable images of one split."""

    classifier: nn.Module
    ensemble: nn.Module
    patterns: object  # lanic_nb.patterns.merge.PatternSet
    x: torch.Tensor  # (n, d_in) image embeddings
    rows: np.ndarray  # (n,) manifest row of each embedding
    manifest: pd.DataFrame  # the rows themselves


def load_run(run_dir: str | Path, split: str = "test", device: str | torch.device = "cpu",
             max_images: int | None = None) -> RunInputs:
    """Load the classifier, ensemble, patterns and the split's embeddings from a run directory."""
    from lanic_nb.classify import load_classifier
    from lanic_nb.embed.store import EmbeddingStore
    from lanic_nb.patterns.merge import PatternSet
    from lanic_nb.transcoder.model import TranscoderEnsemble

    rd = RunDir(Path(run_dir))
    manifest = read_table(rd.manifest)
    store = EmbeddingStore.open(rd.embed)
    if len(store.ok) != len(manifest):
        raise ValueError(f"embedding store has {len(store.ok)} rows but the manifest {len(manifest)}")
    rows = np.flatnonzero((manifest["split"] == split).to_numpy() & store.ok)[:max_images]
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no readable images in {rd.root}")
    return RunInputs(
        classifier=load_classifier(rd.classifier, device),
        ensemble=TranscoderEnsemble.load(rd.transcoders, device),
        patterns=PatternSet.load(rd.patterns),
        x=torch.from_numpy(np.array(store.image[rows], dtype=np.float32)),
        rows=rows,
        manifest=manifest.iloc[rows].reset_index(drop=True),
    )


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
        rows.append(dict(finding=FINDINGS[j] if c.shape[1] == len(FINDINGS) else str(j), mass=mass,
                         q10=q[0], q25=q[1], median=q[2], q75=q[3], q90=q[4], mean=float(c[:, j].mean())))
    return pd.DataFrame(rows)


def plot_mass_distribution(counts: torch.Tensor, mass: float = 0.9):
    """Box plot per finding of how many patterns carry ``mass`` of a logit's |contribution|."""
    import matplotlib.pyplot as plt

    c = counts.numpy()
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    ax.boxplot([c[:, j] for j in range(c.shape[1])], showfliers=False)
    ax.set_xticks(range(1, c.shape[1] + 1), list(FINDINGS)[: c.shape[1]], fontsize=8, rotation=15)
    ax.set_ylabel(f"patterns for {mass:.0%} of |contribution|")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- faithfulness


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

    For each image and finding, the top-``k`` patterns (largest |contribution| to that logit) are deleted, i.e. all their member latents are zeroed; the baseline deletes ``k`` patterns drawn at
    random among the image's active ones (``n_random`` draws). Returns one row per finding with the mean
    |logit change| of both and their ratio.
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
            # deleted codes; only those few are gathered (a dense decode per draw costs ~100x more).
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
        rows.append(dict(finding=FINDINGS[c] if n_cls == len(FINDINGS) else str(c), k=k, n_images=n,
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
        name = FINDINGS[c] if n_cls == len(FINDINGS) else str(c)
        for k in ks:
            k = int(min(max(k, 0), n_pat))
            for label, cum in (("top", top_cum), ("random", rnd_cum)):
                val = attr.bias[c] + (cum[:, k - 1] if k > 0 else 0.0)
                rows.append(dict(finding=name, k=k, order=label, mean_logit=float(torch.as_tensor(val).mean())))
    return pd.DataFrame(rows)


def plot_insertion(curves: pd.DataFrame):
    """One panel per finding: mean logit vs number of inserted patterns, top-first vs random order."""
    import matplotlib.pyplot as plt

    findings = list(dict.fromkeys(curves["finding"]))
    fig, axes = plt.subplots(1, len(findings), figsize=(3.2 * len(findings), 3.0), squeeze=False)
    for ax, f in zip(axes[0], findings, strict=True):
        d = curves[curves["finding"] == f]
        for label, style in (("top", "-o"), ("random", "--s")):
            e = d[d["order"] == label].sort_values("k")
            ax.plot(e["k"], e["mean_logit"], style, ms=3, label=f"{label} first" if label == "top" else label)
        ax.set_title(f, fontsize=9)
        ax.set_xlabel("patterns inserted")
    axes[0, 0].set_ylabel("mean logit")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- shortcut check (evaluation)


def top_pattern_hits(attr: Attribution, finding: int, pattern: int, rows: np.ndarray, top: int = 5) -> np.ndarray:
    """For the images ``rows`` (bool or index), whether ``pattern`` is among the ``top`` largest
    contributions toward ``finding`` (signed: patterns pushing the logit up)."""
    contrib = attr.contributions[torch.from_numpy(np.array(rows)), :, finding]  # (n_rows, P)
    idx = contrib.topk(min(top, contrib.shape[1]), dim=1).indices
    return (idx == pattern).any(1).numpy()


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
            "finding": FINDINGS[c] if n_cls == len(FINDINGS) else str(c),
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
            "finding": FINDINGS[c] if n_cls == len(FINDINGS) else str(c),
            "logit": attr.logits[:, c].numpy(),
            "probability": torch.sigmoid(attr.logits[:, c]).numpy(),
            "patterns": total[:, c].numpy(),
            "other": attr.other[:, c].numpy(),
            "bias": np.full(n, float(attr.bias[c])),
            "error": attr.error[:, c].numpy(),
            "n_patterns_90": n90[:, c].numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def shortcut_check(run_dir: str | Path, attr: Attribution, image_ids: np.ndarray, top: int = 5) -> dict | None:
    """EVALUATION on the phantom: does attribution expose the planted shortcut?

    The pattern that best detects the shortcut concept (highest AUROC of its activation against the
    ground truth) is looked up among the ``top`` largest contributions toward the shortcut finding on
    every image where the finding is truly present. Returns None when the run plants no shortcut.
    """
    meta_path = RunDir(Path(run_dir)).data / "meta.json"
    cfg = read_json(meta_path).get("config", {}) if meta_path.exists() else {}
    concept, finding = cfg.get("shortcut_concept"), cfg.get("shortcut_finding")
    if not concept or finding not in FINDINGS:
        return None
    from lanic_nb.evaluation import ground_truth_matrix, load_ground_truth
    from lanic_nb.phantom.generate import FINDING_TO_CONCEPT

    truth = ground_truth_matrix(load_ground_truth(run_dir), [str(i) for i in image_ids])
    has_concept = truth[concept].to_numpy(bool)
    has_finding = truth[FINDING_TO_CONCEPT[finding]].to_numpy(bool)
    if attr.activations.shape[1] == 0:
        log.warning("shortcut check: the run has no patterns")
        return {"concept": concept, "finding": finding, "pattern": None, "share": float("nan")}
    au = unit_aurocs(attr.activations, has_concept)
    best = int(np.argmax(au))
    c = FINDINGS.index(finding)
    hits = top_pattern_hits(attr, c, best, np.flatnonzero(has_finding), top)
    both = has_finding & has_concept
    hits_both = top_pattern_hits(attr, c, best, np.flatnonzero(both), top)
    return {
        "concept": concept, "finding": finding, "pattern": best, "pattern_auroc": float(au[best]),
        "top": top, "n_positive": int(has_finding.sum()),
        "share": float(hits.mean()) if len(hits) else float("nan"),
        "n_positive_with_concept": int(both.sum()),
        "share_with_concept": float(hits_both.mean()) if len(hits_both) else float("nan"),
        "mean_contribution": float(attr.contributions[torch.from_numpy(has_finding.copy()), best, c].mean())
        if has_finding.any() else float("nan"),
    }
