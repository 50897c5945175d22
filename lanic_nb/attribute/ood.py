"""Is an explained film like the run's own films? An out-of-distribution score from what the run already has.

Two signals, each turned into a tail probability against the run's validation films (which no model trained on):

* **embedding**: the Mahalanobis distance of the film's embedding from the training films' (their mean and a
  Ledoit-Wolf shrunk covariance; Lee et al., NeurIPS 2018, use it on a classifier's features). A film unlike the
  run's (another scanner, a photograph, an inverted or turned film) lies along directions the training films
  barely vary in, so it is far even when its nearest training film is not.
* **unexplained evidence**: the share of the film's logit evidence that the patterns do not carry (latents in no
  pattern, plus the transcoders' reconstruction error), summed over the findings. The patterns were learned on
  the run's films; a film they cannot explain should not be explained by them.

Each signal's p-value is the share of validation films at least as extreme ((count + 1) / (n + 1)); the film's p is
the smaller one, doubled (Bonferroni), and it is flagged when p < ``alpha``: on films like the validation films a
false alarm about ``alpha`` of the time (it needs at least 2 / alpha validation films to flag anything this way).
``images.sanity_problems`` (size, aspect ratio, colour, bit depth, contrast, blank or noise-like images) flags what
is not a radiograph like the run's films at all, whatever the embedding says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute.core import Attribution
from lanic_nb.io import read_json, read_tensors, write_json, write_tensors

REFERENCE_FILE = "ood_reference.json"
"""Written by the attribution stage under ``attribution/`` (with ``ood_reference.safetensors``: mean, precision)."""
SCORES_FILE = "ood_scores.parquet"
"""The validation and explained split's scores, under ``attribution/``."""


@dataclass
class OODReference:
    """What a new film's scores are compared with: the training films' embedding distribution and the
    validation films' scores."""

    alpha: float
    """Flag a film when its p-value is below this (the false-alarm rate on films like the validation films)."""
    distance_val: list[float]
    """The validation films' Mahalanobis distances, sorted."""
    unexplained_val: list[float]
    """The validation films' unexplained shares, sorted."""
    films: dict = field(default_factory=dict)
    """The training films' ``min_side``, ``max_side`` (pixels) and ``aspect`` range, for the sanity checks."""
    mean: np.ndarray | None = field(default=None, repr=False)
    """(d,) the training films' mean embedding."""
    precision: np.ndarray | None = field(default=None, repr=False)
    """(d, d) the inverse of their shrunk covariance."""

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_tensors(folder / REFERENCE_FILE.replace(".json", ".safetensors"),
                      {"mean": torch.from_numpy(np.asarray(self.mean, np.float64)),
                       "precision": torch.from_numpy(np.asarray(self.precision, np.float64))})
        return write_json(folder / REFERENCE_FILE, {k: v for k, v in asdict(self).items()
                                                    if k not in ("mean", "precision")})

    @classmethod
    def load(cls, folder: str | Path) -> OODReference | None:
        folder = Path(folder)
        if not (folder / REFERENCE_FILE).exists():
            return None
        t = read_tensors(folder / REFERENCE_FILE.replace(".json", ".safetensors"))
        return cls(**read_json(folder / REFERENCE_FILE), mean=t["mean"].numpy(), precision=t["precision"].numpy())

    @property
    def threshold(self) -> float:
        """The score (-log10 p) above which a film is flagged."""
        return -math.log10(self.alpha)

    def distance(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n,) Mahalanobis distance of each embedding row from the training films'."""
        d = np.asarray(x, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))


def unexplained_share(attr: Attribution) -> np.ndarray:
    """(n,) the share of each film's |evidence| (all terms but the bias, over all findings) that the patterns do
    not carry: latents in no pattern plus the reconstruction error."""
    patterns = attr.contributions.abs().sum(dim=(1, 2))
    rest = (attr.other.abs() + attr.error.abs()).sum(dim=1)
    return (rest / (patterns + rest).clamp_min(1e-12)).numpy().astype(np.float64)


def tail_p(reference: list[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of the reference at or beyond each value, (count + 1) / (n + 1): a conservative p-value."""
    ref = np.asarray(reference, dtype=np.float64)
    beyond = len(ref) - np.searchsorted(ref, np.asarray(values, dtype=np.float64), side="left")
    return (beyond + 1) / (len(ref) + 1)


def ood_table(distance: np.ndarray, unexplained: np.ndarray, ref: OODReference,
              problems: list[list[str]] | None = None) -> pd.DataFrame:
    """One row per film: both signals, their p-values, the combined p and score (-log10 p, infinite for a film
    that fails the sanity checks) and whether it is flagged."""
    p_dist, p_unex = tail_p(ref.distance_val, distance), tail_p(ref.unexplained_val, unexplained)
    p = np.minimum(1.0, 2.0 * np.minimum(p_dist, p_unex))
    problems = problems or [[] for _ in range(len(p))]
    insane = np.array([bool(x) for x in problems], dtype=bool)
    return pd.DataFrame({"distance": distance, "distance_p": p_dist, "unexplained": unexplained,
                         "unexplained_p": p_unex, "p": np.where(insane, 0.0, p),
                         "score": np.where(insane, np.inf, -np.log10(p)), "flagged": insane | (p < ref.alpha),
                         "problems": ["; ".join(x) for x in problems]})


def pool_rows(split: np.ndarray, ok: np.ndarray, max_images: int) -> np.ndarray:
    """Readable train-split rows, evenly spaced, at most ``max_images``: the films the reference is fitted on (the
    explainer's pool of neighbours and thumbnails is chosen the same way)."""
    rows = np.flatnonzero(np.asarray(ok, bool) & (np.asarray(split).astype(str) == "train"))
    if len(rows) > max_images:
        rows = rows[np.linspace(0, len(rows) - 1, max_images).round().astype(int)]
    return rows


def film_shapes(paths: list, n: int = 200) -> dict:
    """The run's films' smallest and largest side and range of aspect ratios, from the headers of up to ``n``."""
    from lanic_nb.images import image_size

    take = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)] if paths else []
    sizes = np.array([image_size(p) for p in take], dtype=np.float64).reshape(-1, 2)
    if not len(sizes):
        return {}
    aspect = sizes[:, 0] / np.maximum(sizes[:, 1], 1)
    return {"min_side": int(sizes.min()), "max_side": int(sizes.max()),
            "aspect": [float(aspect.min()), float(aspect.max())]}


def build_reference(x_train: np.ndarray, x_val: np.ndarray, attr_val: Attribution, alpha: float = 0.01,
                    films: dict | None = None) -> OODReference:
    """The reference: the training films' embedding distribution, and the validation films' two signals."""
    from sklearn.covariance import LedoitWolf

    fit = LedoitWolf().fit(np.asarray(x_train, dtype=np.float64))
    ref = OODReference(alpha=float(alpha), distance_val=[], films=films or {}, mean=fit.location_,
                       precision=fit.precision_, unexplained_val=sorted(unexplained_share(attr_val).tolist()))
    ref.distance_val = sorted(ref.distance(x_val).tolist())
    return ref


def explain_ood(ood: pd.Series | dict) -> str:
    """One sentence for a flagged film: why it is outside what the run knows."""
    if ood["problems"]:
        return f"not like the run's films: {ood['problems']}"
    if ood["distance_p"] <= ood["unexplained_p"]:
        why = (f"its embedding lies farther from the training films' than {100 * (1 - ood['distance_p']):.1f}% of "
               "the validation films'")
    else:
        why = (f"the patterns leave {100 * ood['unexplained']:.0f}% of its evidence unexplained, more than for "
               f"{100 * (1 - ood['unexplained_p']):.1f}% of the validation films")
    return f"outside what the run knows (p = {ood['p']:.3g}): {why}"
