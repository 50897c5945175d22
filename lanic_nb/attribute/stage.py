"""The attribution stage of a run (notebook 06): decompose every logit of a split, test it, save it.

Reads ``classifier/``, ``transcoders/``, ``patterns/`` and the embedding store; writes into ``attribution/``
``contributions.parquet`` (top contributions per image and finding), ``summary.parquet`` (the four terms
per image and finding), ``evidence.parquet`` (per finding, how much evidence comes from device/artifact patterns
and how much from the finding's own concept), ``patterns_for_90.parquet`` / ``.png``, ``deletion.parquet``,
``insertion.parquet`` / ``.png``, ``reliance.parquet`` / ``.png`` (what each finding leans on: ``attribute.reliance``),
and ``metrics/06_attribution.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.artifacts import load_pattern_table, load_split, stage_function
from lanic_nb.attribute.core import (
    Attribution,
    attribute,
    attribution_table,
    mass_summary,
    patterns_for_mass,
    summary_table,
    term_sizes,
)
from lanic_nb.attribute.evidence import CONFOUNDER_CATEGORIES, evidence_shares
from lanic_nb.attribute.faithfulness import deletion_test, insertion_curves
from lanic_nb.attribute.ood import (
    SCORES_FILE,
    OODReference,
    build_reference,
    film_shapes,
    ood_table,
    pool_rows,
    unexplained_share,
)
from lanic_nb.attribute.reliance import SHORTCUT_CATEGORIES, concept_rank, leans_on, reliance_table, shortcut_rank
from lanic_nb.attribute.shortcut import is_named, shortcut_check
from lanic_nb.attribute.views import plot_insertion, plot_mass_distribution, plot_reliance
from lanic_nb.checks import check_selection, require_at_least_one
from lanic_nb.concepts.vocabulary import load_vocabulary
from lanic_nb.device import pick_device
from lanic_nb.embed.store import load_embedded
from lanic_nb.evaluation import planted_shortcuts
from lanic_nb.images import image_properties, sanity_problems
from lanic_nb.io import write_figure, write_table
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)


@dataclass
class AttributionConfig:
    """Parameters of the attribution stage (notebook 06)."""

    device: str = "auto"
    """Where the decomposition runs ("auto": CUDA when present, else CPU). Default: auto."""
    split: str = "test"
    """Which images to explain. Default: the test split (the images no model trained on)."""
    max_images: int | None = None
    """At most this many of the split's readable images (None: all of them). Default: all of them."""
    mass: float = 0.9
    """Counts "how many patterns explain this share of the logit's |contribution|". Default: 90%, the share CXR-
    LanIC's '20-50 patterns per prediction' is read against."""
    k: int = 5
    """Patterns switched off in the deletion test. Default: chosen for the test: a handful of the largest patterns."""
    n_random: int = 10
    """Random draws for the deletion baseline (and the random insertion order). Default: engineering (enough draws for
    a stable baseline)."""
    top_table: int = 50
    """Contributions kept per image and finding in contributions.parquet. Default: engineering (what the galleries
    read)."""
    insertion_ks: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 5, 10, 20, 50, 100, 200])
    """Numbers of inserted patterns at which the insertion curves are evaluated. Default: a log-like grid up to 200
    patterns."""
    shortcut_top: int = 5
    """The shortcut pattern must rank among this many top contributions (phantom evaluation). Default: the five
    patterns an explanation names (ExplainConfig.n_shown)."""
    ood_alpha: float = 0.01
    """Out-of-distribution check: flag a film whose p-value against the validation films is below this, in
    (0, 1): the false-alarm rate on films like them (``attribute.ood``). Default: 1%, a convention."""
    reliance_boot: int = 200
    """Bootstrap resamples of the films behind each reliance band (``attribute.reliance``). Default: engineering,
    chosen on the phantom (another bootstrap seed flags the same patterns; docs/decisions.md)."""
    reliance_level: float = 0.95
    """Coverage of the reliance bands; a device or artifact pattern is flagged when its band clears the runner-up's.
    Default: 95%, a convention."""
    ood_pool: int = 5000
    """At most this many training films (evenly spaced) that the embedding distribution is fitted on. Default:
    engineering (enough for a shrunk covariance at BiomedCLIP's 512 dimensions)."""

    def __post_init__(self) -> None:
        check_selection(self.split, self.max_images)
        if not 0 < self.mass <= 1:
            raise ValueError(f"mass must be in (0, 1], got {self.mass}")
        require_at_least_one(self, ("k", "n_random", "top_table", "shortcut_top", "ood_pool", "reliance_boot"))
        if not 0 < self.reliance_level < 1:
            raise ValueError(f"reliance_level must be in (0, 1), got {self.reliance_level}")
        if not 0 < self.ood_alpha < 1:
            raise ValueError(f"ood_alpha must be in (0, 1), got {self.ood_alpha}")
        ks = list(self.insertion_ks)
        if not ks or any(int(k) != k or k < 0 for k in ks):
            raise ValueError(f"insertion_ks must be a non-empty list of integers >= 0, got {self.insertion_ks}")
        self.insertion_ks = [int(k) for k in ks]


@dataclass
class AttributionResult:
    """What notebook 06 shows: the decomposition, its tables and the faithfulness checks."""

    attribution: Attribution  # on the explained images
    image_ids: np.ndarray  # (n,) str, rows of the attribution
    n_patterns: int
    identity_error: float  # largest relative |sum of terms - logit|
    summary: pd.DataFrame  # the four terms per image and finding (summary.parquet)
    terms: pd.DataFrame  # per finding: mean |term| (from summary)
    counts: torch.Tensor  # (n, n_classes) patterns carrying ``mass`` of each logit's |contribution|
    mass_table: pd.DataFrame  # quantiles of counts per finding (patterns_for_90.parquet)
    deletion: pd.DataFrame  # deletion.parquet
    insertion: pd.DataFrame  # insertion.parquet
    shortcut: dict | None  # the phantom's shortcut check (None: the run plants none)
    evidence: pd.DataFrame  # per finding: shares of positive evidence from confounders / its own concept
    reliance: pd.DataFrame  # per (finding, pattern): the lift of the finding's logit on films without it
    ood: pd.DataFrame  # out-of-distribution scores of the validation and explained films (ood_scores.parquet)
    ood_reference: OODReference  # what new films are scored against (ood_reference.json)
    metrics: dict = field(default_factory=dict)  # as recorded in metrics/06_attribution.json


@stage_function("06_attribution")
def run_attribution(run_dir: str | Path, config: AttributionConfig | None = None) -> AttributionResult:
    """Decompose the classifier's logits on ``config.split`` into pattern contributions and test them.

    Writes every table and figure of ``attribution/`` and ``metrics/06_attribution.json`` (see the module
    docstring); returns them for display.
    """
    cfg = config or AttributionConfig()
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    run = load_split(rd.root, split=cfg.split, device=dev, max_images=cfg.max_images)
    ps = run.patterns
    latent_pattern = ps.latent_pattern.to(dev)
    image_ids = run.manifest["image_id"].astype(str).to_numpy()
    log.info("%d %s images, %d patterns from %d members", len(image_ids), cfg.split, ps.n_patterns, ps.n_members)

    attr = attribute(run.classifier, run.ensemble, latent_pattern, ps.n_patterns, run.x)
    identity_error = attr.identity_error()
    log.info("identity: max relative error %.2e", identity_error)
    summary = summary_table(attr, image_ids, mass=cfg.mass)
    counts = patterns_for_mass(attr.contributions, cfg.mass)
    mass_table = mass_summary(counts, cfg.mass)
    deletion = deletion_test(run.classifier, run.ensemble, latent_pattern, attr, run.x, k=cfg.k,
                             n_random=cfg.n_random)
    curves = insertion_curves(attr, cfg.insertion_ks, n_random=cfg.n_random)
    table = load_pattern_table(rd.patterns, ps)
    shortcut = shortcut_check(rd.root, attr, image_ids, top=cfg.shortcut_top, patterns=table)
    evidence = evidence_shares(attr, table)
    labels = run.manifest[list(FINDINGS)].to_numpy(np.float64)
    reliance = reliance_table(attr, labels, table, n_boot=cfg.reliance_boot, level=cfg.reliance_level)
    shortcuts = []
    for k, planted in enumerate(planted_shortcuts(rd.root)):
        check = shortcut if k == 0 else shortcut_check(rd.root, attr, image_ids, top=cfg.shortcut_top, patterns=table,
                                                       planted=(planted["concept"], planted["finding"]))
        if check is None:
            continue
        check["absent"] = planted["absent"]
        if check.get("pattern") is not None:
            check["reliance"] = planted_reliance(reliance, check["finding"], check["pattern"],
                                                 -1 if planted["absent"] else 1, concept=planted["concept"])
        shortcuts.append(check)
    ood_ref, ood = score_split(rd, run, attr, cfg, dev)

    import matplotlib.pyplot as plt  # pyplot only when figures are drawn

    out = rd.attribution
    write_table(out / "contributions.parquet",
                attribution_table(attr, image_ids, np.arange(ps.n_patterns), top=cfg.top_table))
    write_table(out / "summary.parquet", summary)
    write_table(out / "patterns_for_90.parquet", mass_table)
    write_table(out / "deletion.parquet", deletion)
    write_table(out / "insertion.parquet", curves)
    write_table(out / "evidence.parquet", evidence)
    write_table(out / "reliance.parquet", reliance)
    ood_ref.save(out)
    write_table(out / SCORES_FILE, ood)
    for name, fig in (("patterns_for_90.png", plot_mass_distribution(counts, cfg.mass)),
                      ("insertion.png", plot_insertion(curves)), ("reliance.png", plot_reliance(reliance))):
        write_figure(out / name, fig)
        plt.close(fig)
    metrics = {
        "n_images": len(image_ids),
        "n_patterns": ps.n_patterns,
        "identity_max_error": identity_error,
        "patterns_for_90": {r.finding: {"median": r.median, "q25": r.q25, "q75": r.q75, "q10": r.q10, "q90": r.q90}
                            for r in mass_table.itertuples()},
        "deletion_k": cfg.k,
        "deletion_ratio": dict(zip(deletion["finding"], deletion["ratio"], strict=True)),
        "deletion_ratio_min": float(deletion["ratio"].min()),
        "shortcut": shortcut,
        "shortcuts": shortcuts,
        "shortcut_share": None if shortcut is None else shortcut["share"],
        "shortcut_named": None if shortcut is None else shortcut.get("shortcut_named"),
        "shortcut_category_correct": None if shortcut is None else shortcut.get("category_correct"),
        "evidence": {r.finding: {"confounder_share": r.confounder_share, "own_share": r.own_share,
                                 "n_images": r.n_images, "top_confounder": r.top_confounder}
                     for r in evidence.itertuples()},
        "reliance": leans_on(reliance),
        "reliance_flagged": int(reliance["flagged"].sum()),
        "ood": {"alpha": ood_ref.alpha, "n_val": len(ood_ref.distance_val),
                "false_alarm_rate": float(ood[ood.split == cfg.split].flagged.mean()),
                "flagged_val": float(ood[ood.split == "val"].flagged.mean())},
    }
    record_metrics(rd.root, "06_attribution", metrics)
    return AttributionResult(attribution=attr, image_ids=image_ids, n_patterns=ps.n_patterns,
                             identity_error=identity_error, summary=summary, terms=term_sizes(summary),
                             counts=counts, mass_table=mass_table, deletion=deletion, insertion=curves,
                             shortcut=shortcut, evidence=evidence, reliance=reliance, ood=ood, ood_reference=ood_ref,
                             metrics=metrics)


def rank_categories(concept: str, vocab: pd.DataFrame) -> tuple[str, ...]:
    """The categories a planted concept is ranked among: a device or artifact among the device and artifact patterns
    (the ones a flag may single out), a structural concept among those and the structural patterns."""
    category = vocab.loc[vocab["concept"] == concept, "category"]
    return SHORTCUT_CATEGORIES if len(category) and category.iloc[0] == "structural" else CONFOUNDER_CATEGORIES


def planted_reliance(reliance: pd.DataFrame, finding: str, pattern: int, direction: int = 1,
                     concept: str | None = None) -> dict:
    """Where the planted shortcut's pattern stands in its finding's reliance: its reliance and band, its rank among
    the device and artifact patterns (0: the pattern is of another category), whether it is flagged, and its rank
    among the device, artifact and structural patterns in the shortcut's ``direction`` (``shortcut_rank``). With
    ``concept``: also the concept's rank by name (``concept_rank``: the best of the patterns named for it, as a user
    reads the table) among the patterns of its own kind (``rank_categories``), the pattern that carries it and
    whether that one is flagged."""
    row = reliance[(reliance["finding"] == finding) & (reliance["pattern"] == pattern)]
    if row.empty:
        return {}
    r = row.iloc[0]
    out = {"reliance": float(r.reliance), "lo": float(r.lo), "hi": float(r.hi), "rank": int(r["rank"]),
           "confounder_rank": int(r.confounder_rank), "flagged": bool(r.flagged),
           "shortcut_rank": shortcut_rank(reliance, finding, pattern, direction)}
    if concept is not None:
        vocab = load_vocabulary()
        names = {n for n in reliance["name"].astype(str).unique() if is_named(n, concept, vocab)}
        rank, carrier = concept_rank(reliance, finding, names, direction, rank_categories(concept, vocab))
        hit = reliance[(reliance["finding"] == finding) & (reliance["pattern"] == carrier)]
        out |= {"concept_rank": rank, "concept_pattern": carrier,
                "concept_flagged": bool(hit["flagged"].iloc[0]) if len(hit) else False}
    return out


def score_split(rd: RunDir, run, attr: Attribution, cfg: AttributionConfig, device) -> tuple[OODReference,
                                                                                               pd.DataFrame]:
    """The out-of-distribution reference (the training films' embeddings, the validation films' signals), and the
    scores of the validation films and of the explained split's (``attribute.ood``)."""
    emb = load_embedded(rd.root)
    rows = pool_rows(emb.manifest["split"].to_numpy(), np.ones(len(emb.rows), bool), cfg.ood_pool)
    val = load_split(rd.root, "val", device)
    attr_val = attribute(val.classifier, val.ensemble, val.patterns.latent_pattern, val.patterns.n_patterns, val.x)
    films = film_shapes([resolve_image_path(rd.manifest, p) for p in emb.manifest["image_path"].iloc[rows]])
    ref = build_reference(emb.x[rows], val.x.numpy(), attr_val, cfg.ood_alpha, films)
    if len(ref.distance_val) + 1 < 2 / ref.alpha:
        log.warning("%d validation films: too few to flag a film at alpha %.3g by its signals alone (it takes %d); "
                    "only the image checks flag", len(ref.distance_val), ref.alpha, int(np.ceil(2 / ref.alpha)) - 1)
    tables = []
    for split, x, a, manifest in (("val", val.x.numpy(), attr_val, val.manifest),
                                  (cfg.split, run.x.numpy(), attr, run.manifest)):
        paths = [resolve_image_path(rd.manifest, p) for p in manifest["image_path"]]
        problems = [sanity_problems(image_properties(p), ref.films) for p in paths]
        t = ood_table(ref.distance(x), unexplained_share(a), ref, problems)
        tables.append(t.assign(split=split, image_id=manifest["image_id"].astype(str).to_numpy()))
    return ref, pd.concat(tables, ignore_index=True)
