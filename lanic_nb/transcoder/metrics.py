"""How well each member stands in for the classifier's hidden layer: FVU, dead latents, spliced AUROC."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.metrics import mean_auroc
from lanic_nb.transcoder.model import TranscoderEnsemble

log = logging.getLogger(__name__)





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
