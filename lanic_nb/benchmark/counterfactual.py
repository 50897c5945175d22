"""What the classifier truly depends on, from the planted truth: the same test films drawn with a concept and
without it (``phantom.generate``'s ``force``: the same patient, pose, noise and other concepts), embedded
with the run's own encoder and classified; the mean change of each finding's logit over the films without the
finding (by the planted truth). It is the reference the reliance figure (``attribute.reliance``, which reads no
truth) is checked against: a shortcut the classifier did not learn cannot be first by reliance, and then the figure
is right not to rank it so.

Phantom runs only (it redraws the films); 80 films and 16 concepts take about half a minute on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.classify.model import load_classifier
from lanic_nb.embed.store import EmbeddingStore
from lanic_nb.evaluation import finding_concept, ground_truth_matrix, load_ground_truth
from lanic_nb.explain.model import load_run_encoder
from lanic_nb.io import read_json
from lanic_nb.manifest import FINDINGS
from lanic_nb.phantom.config import CONCEPTS, FINDING_TO_CONCEPT, PhantomConfig
from lanic_nb.phantom.generate import generate_image
from lanic_nb.rundir import RunDir

COUNTERFACTUAL_CATEGORIES: tuple[str, ...] = ("device", "artifact", "structural")


def run_phantom_config(run_dir: str | Path) -> PhantomConfig:
    """The phantom configuration a run's data stage generated (from ``data/meta.json``)."""
    cfg = dict(read_json(RunDir(Path(run_dir)).data / "meta.json")["config"])
    cfg["split_fractions"] = tuple(cfg["split_fractions"])
    return PhantomConfig(**cfg)


@torch.no_grad()
def embed_films(encoder, cfg: PhantomConfig, indices: list[int], force: dict[str, bool] | None = None
                ) -> torch.Tensor:
    """The films ``indices`` of the phantom ``cfg`` (with ``force`` applied), embedded as stage 01 embeds their
    PNGs: (n, d)."""
    x = [encoder.preprocess_array(torch.from_numpy(generate_image(cfg, i, force)[0]).float().div_(255.0))
         for i in indices]
    return encoder.encode_images(torch.stack(x))


@torch.no_grad()
def counterfactual_effects(run_dir: str | Path, n_films: int = 80, categories=COUNTERFACTUAL_CATEGORIES,
                           seed: int = 0) -> pd.DataFrame:
    """Per (finding, concept): the mean change of the finding's logit when the concept is drawn onto ``n_films``
    test films instead of left off, over those without the finding (planted truth), and its rank among the concepts of
    ``categories`` for that finding (1: the largest rise). Columns: finding, concept, category, effect, rank,
    n_films."""
    rd = RunDir(Path(run_dir))
    cfg = run_phantom_config(rd.root)
    manifest = pd.read_parquet(rd.manifest)
    test = manifest[manifest["split"] == "test"]
    rows = np.random.default_rng(seed).choice(len(test), size=min(n_films, len(test)), replace=False)
    films = test.iloc[np.sort(rows)]
    indices = [int(str(i)[2:]) for i in films["image_id"]]  # "ph000123" -> 123
    store = EmbeddingStore.open(rd.embed)
    encoder = load_run_encoder(rd.root.resolve(), store.header, torch.device("cpu"))
    classifier = load_classifier(rd.classifier, torch.device("cpu")).eval()
    concepts = [c for c, k in CONCEPTS.items() if k.category in categories]

    def logits(force: dict[str, bool] | None) -> np.ndarray:
        return classifier(embed_films(encoder, cfg, indices, force)).numpy()

    truth = ground_truth_matrix(load_ground_truth(rd.root), films["image_id"].astype(str).tolist())
    absent = ~np.stack([truth[finding_concept(f)].to_numpy(bool) for f in FINDINGS], 1)  # (n, C)
    out = []
    for concept in concepts:
        change = logits({concept: True}) - logits({concept: False})  # (n, C)
        for c, finding in enumerate(FINDINGS):
            negative = absent[:, c]
            out.append({"finding": finding, "concept": concept, "category": CONCEPTS[concept].category,
                        "effect": float(change[negative, c].mean()) if negative.any() else float("nan"),
                        "n_films": int(negative.sum())})
    table = pd.DataFrame(out)
    table["rank"] = table.groupby("finding")["effect"].rank(ascending=False, method="first").astype(int)
    return table.sort_values(["finding", "rank"]).reset_index(drop=True)


def planted_effect_rank(effects: pd.DataFrame, concept: str, finding: str, absent: bool = False) -> tuple[float, int]:
    """(the planted concept's effect on its finding's logit, its rank in the shortcut's direction)."""
    g = effects[effects["finding"] == finding]
    score = (-1 if absent else 1) * g["effect"]
    order = g.assign(score=score).sort_values("score", ascending=False)["concept"].tolist()
    row = g[g["concept"] == concept]
    return float(row["effect"].iloc[0]), order.index(concept) + 1


assert set(FINDING_TO_CONCEPT.values()).isdisjoint(c for c, k in CONCEPTS.items()
                                                   if k.category in COUNTERFACTUAL_CATEGORIES)
