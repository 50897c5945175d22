"""The pattern stage (notebook 04): merge the ensemble, describe and name every pattern, check them.

``run_patterns`` reads the ensemble, classifier and embeddings of a run and writes ``patterns/``:
directions.safetensors + patterns.json (the merge), patterns.parquet (one row per pattern: consistency,
statistics, logit effects, concepts, top report sentences), evaluation.csv and recovery_by_concept.csv
(phantom only: the planted truth is read by ``lanic_nb.patterns.evaluate`` after everything else is
computed), and ``metrics/04_patterns.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.classify import load_classifier
from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units, finding_groups
from lanic_nb.concepts.reports import mention_matrix, report_purity, top_sentences
from lanic_nb.concepts.space import ConceptSpace, concept_space
from lanic_nb.device import pick_device
from lanic_nb.embed.store import load_embedded
from lanic_nb.io import read_table, write_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.patterns.evaluate import evaluate_unit_sets, headline_metrics, recovery_by_concept
from lanic_nb.patterns.merge import MergeConfig, PatternSet, merge_latents
from lanic_nb.patterns.units import (
    baseline_units,
    latent_alive,
    latent_codes,
    logit_effects,
    pattern_activations,
    pattern_stats,
)
from lanic_nb.rundir import RunDir, record_metrics
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.stage import hidden_targets, merge_features

log = logging.getLogger(__name__)

PATTERN_TABLE = "patterns.parquet"
MAIN_SET = "ensemble patterns"


@dataclass
class PatternsConfig:
    """Parameters of notebook 04 (its demo defaults)."""

    device: str = "auto"
    """Where the ensemble encodes: "auto" (CUDA when present), "cpu", "cuda", ..."""
    sim_threshold: float = 0.5
    """Cosine between decoder directions for two latents to be one pattern."""
    act_threshold: float = 0.5
    """...and cosine between their codes on a sample of images (0: directions alone)."""
    act_rows: int = 2048
    """Images sampled for that activation test."""
    min_consistency: float = 0.25
    """Keep patterns held by at least this fraction of members (13 of the demo's 50)."""
    n_neighbors: int = 8
    """Neighbours per latent inside a coarse cell."""
    k_top: int = 20
    """Top-activating images stored per pattern (and read for report purity)."""
    n_quantiles: int = 5
    """Images sampled across activation quantiles."""
    mine_min_count: int = 5
    """A mined report phrase must occur in this many reports."""
    max_mined: int = 200
    """Mined phrases added to the vocabulary."""
    top_fraction: float = 0.93
    """MAMMI: representative images have activation > max - (1 - top_fraction)(max - min)."""
    beta: float = 0.95
    """MAMMI: keep concepts scoring at least beta times the best."""
    min_images: int = 10
    """At least this many representative images per pattern (MAMMI: 5). A pattern that fires on every film keeps
    about this many, its most extreme films, so few of them make a noisy sample of what it shows."""
    max_images: int = 200
    """At most this many representative images per pattern."""
    standardize: bool = True
    """z-score each concept's similarity across images (not in MAMMI; see concepts.annotate)."""
    contrast_neighbors: int = 20
    """Name a pattern by what its images show more than their silent look-alikes (0: plain MAMMI scoring).
    Confounded concepts (a portable film and the tubes of the same sick patients) share those look-alikes.
    With min_images 10 (from 5 and 10 look-alikes) the names of phantom B's patterns with a pure gallery went
    0.84 / 0.86 -> 0.89 / 0.94 (top-1 / category, 63 patterns), its monosemantic ones 0.94 / 0.94 -> 0.97 / 0.94,
    the demo's unchanged (0.91 / 0.91 and 0.88 / 0.91), both shortcuts still named."""
    report_weight: float = 1.0
    """With contrast: how much the reports' contrast counts beside the images' (``AnnotationConfig.report_weight``;
    0: images alone). On the demo it named the PORTABLE marker's pattern "portable film" instead of
    "costophrenic angle" and raised the names' top-1 accuracy from 0.63 to 0.90 (30 patterns)."""
    match_findings: bool = True
    """With contrast: look-alikes share the image's report-labelled findings (``concepts.annotate.finding_groups``),
    so a shortcut concept's finding cancels instead of naming its pattern."""
    own_auroc: float = 0.9
    """With match_findings: a finding whose report labels a pattern separates at this AUROC is its subject, not a
    context to match (``AnnotationConfig.own_auroc``; 1: off). It raised the names' top-1 accuracy on the
    monosemantic patterns from 0.76 to 0.91 (demo, 33 patterns) and 0.90 to 0.94 (phantom B, 31), on the patterns
    with a pure gallery 0.80 -> 0.88 and 0.83 -> 0.84; both shortcuts' names unchanged. A finding the pattern
    follows less closely than a device or technique that the reports mention stays a context to match
    (``AnnotationConfig.own_rivals``): in two of three draws of the demo's ensemble (seeds 100 and 200) the PORTABLE
    marker's detector separated effusion at 0.92 and was named "pleural effusion" without it."""
    n_sentences: int = 3
    """Top report sentences per pattern."""
    known_names_only: bool = True
    """Prompt a concept only by the names its reports use (a small CLIP knows no others)."""
    encoder: str = ""
    """VLM for the text side; empty: the encoder the embedding store was made with."""
    recover_at: float = 0.95
    """AUROC at which a planted concept counts as recovered."""
    monosemantic_at: float = 0.9
    """AUROC at which a unit counts as detecting a concept."""

    def __post_init__(self) -> None:
        self.merge_config()  # the merge and annotation configs check their own fields, by these names
        self.annotation_config()
        for name in ("act_rows", "k_top", "n_quantiles", "mine_min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_mined", "n_sentences"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("recover_at", "monosemantic_at"):
            if not 0.5 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be an AUROC in [0.5, 1], got {getattr(self, name)}")

    def merge_config(self) -> MergeConfig:
        return MergeConfig(sim_threshold=self.sim_threshold, min_consistency=self.min_consistency,
                           n_neighbors=self.n_neighbors, act_threshold=self.act_threshold)

    def annotation_config(self) -> AnnotationConfig:
        return AnnotationConfig(top_fraction=self.top_fraction, beta=self.beta, min_images=self.min_images,
                                max_images=self.max_images, standardize=self.standardize,
                                contrast_neighbors=self.contrast_neighbors, report_weight=self.report_weight,
                                own_auroc=self.own_auroc)


@dataclass
class StageInputs:
    """What the pattern stage reads from earlier stages of a run (readable images only)."""

    ensemble: TranscoderEnsemble
    classifier: torch.nn.Module
    store: object  # lanic_nb.embed.store.EmbeddingStore
    manifest: pd.DataFrame  # rows of the readable images, in embedding order
    x: torch.Tensor  # (n_images, d_in) image embeddings
    image_ids: np.ndarray  # (n_images,) str


def load_stage_inputs(run_dir: str | Path, device: str | torch.device = "cpu") -> StageInputs:
    """Ensemble, classifier, embedding store and manifest of a run (never the ground truth)."""
    rd = RunDir(Path(run_dir))
    emb = load_embedded(rd.root)
    return StageInputs(
        ensemble=TranscoderEnsemble.load(rd.transcoders, device),
        classifier=load_classifier(rd.classifier, device).eval(),
        store=emb.store,
        manifest=emb.manifest,
        x=torch.from_numpy(emb.x),
        image_ids=emb.image_ids,
    )


def load_pattern_table(folder: str | Path, patterns: PatternSet) -> pd.DataFrame:
    """patterns.parquet in pattern order (one row per pattern), or, before the pattern stage has named them,
    a bare table of ids and consistencies."""
    path = Path(folder) / PATTERN_TABLE
    if not path.exists():
        log.warning("%s not found: patterns have no concepts or categories", path)
        return pd.DataFrame({"pattern_id": np.arange(patterns.n_patterns), "category": "",
                             "consistency": patterns.consistency.numpy()})
    table = read_table(path).sort_values("pattern_id").reset_index(drop=True)
    if len(table) != patterns.n_patterns:
        raise ValueError(f"{path} has {len(table)} patterns, the pattern set {patterns.n_patterns}: rerun 04")
    return table


def assemble_pattern_table(
    patterns: PatternSet,
    stats: pd.DataFrame,
    effects: pd.DataFrame,
    annotations: pd.DataFrame | None = None,
    sentences: list[list[str]] | None = None,
) -> pd.DataFrame:
    """The pattern table (one row per pattern): consistency, size, stats, logit effects, concepts, sentences."""
    table = pd.DataFrame(
        {
            "pattern_id": np.arange(patterns.n_patterns),
            "consistency": patterns.consistency.numpy(),
            "n_latents": patterns.n_latents.numpy(),
        }
    )
    table = table.merge(stats, on="pattern_id", how="left")
    table = pd.concat([table, effects.reset_index(drop=True)], axis=1)
    if annotations is not None:
        table = table.merge(annotations.rename(columns={"unit": "pattern_id"}), on="pattern_id", how="left")
    if sentences is not None:
        table["top_sentences"] = sentences
    return table


@dataclass
class PatternsResult:
    """What notebook 04 shows; every table here is also written under ``patterns/`` (see the module doc)."""

    patterns: PatternSet
    n_alive: int  # latents that fire on at least one image (the others are not merged)
    n_latents: int  # all latents of the ensemble
    activations: np.ndarray  # (n_images, n_patterns)
    stats: pd.DataFrame  # pattern_stats
    concepts: ConceptSpace
    table: pd.DataFrame  # patterns.parquet
    purity: dict[str, pd.DataFrame]  # unit set -> report_purity table
    evaluation: pd.DataFrame  # evaluation.csv (empty without planted truth)
    per_unit: dict[str, pd.DataFrame]  # unit set -> best planted concept per unit (empty without truth)
    by_concept: pd.DataFrame  # recovery_by_concept.csv (empty without planted truth)
    metrics: dict = field(default_factory=dict)  # as written to metrics/04_patterns.json

    @property
    def purity_summary(self) -> pd.DataFrame:
        """Mean purity and lift of each unit set (rows in the order compared)."""
        return pd.DataFrame([{"units": name, "purity": float(p["purity"].mean()), "lift": float(p["lift"].mean())}
                             for name, p in self.purity.items()])


def run_patterns(run_dir: str | Path, config: PatternsConfig | None = None) -> PatternsResult:
    """Merge, describe, name and (on the phantom) evaluate the patterns of a run; write ``patterns/``."""
    cfg = config or PatternsConfig()
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    inp = load_stage_inputs(rd.root, dev)
    ens = inp.ensemble
    log.info("%d members x %d latents; %d images of dimension %d", ens.cfg.n_members, ens.cfg.d_dict,
             len(inp.x), inp.x.shape[1])

    # Merge: dead latents carry arbitrary directions, so only the alive ones; pairs must also co-fire.
    alive = latent_alive(ens, inp.x)
    codes = latent_codes(ens, inp.x, n_rows=cfg.act_rows)  # sparse (n_members * d_dict, act_rows)
    ps = merge_latents(ens.W_dec, cfg.merge_config(), alive=alive, codes=codes,
                       features=merge_features(rd.transcoders, ens))
    ps.save(rd.patterns)
    log.info("alive latents: %d of %d; patterns kept: %d", int(alive.sum()), alive.numel(), ps.n_patterns)

    act = pattern_activations(ens, ps, inp.x).numpy()  # (n_images, n_patterns)
    stats = pattern_stats(act, inp.image_ids, k_top=cfg.k_top, n_quantiles=cfg.n_quantiles)
    effects = logit_effects(inp.classifier, ps, FINDINGS)

    # Name every pattern from the text side of the VLM (no truth involved).
    space = concept_space(inp.store, inp.manifest, inp.x, encoder=cfg.encoder, mine_min_count=cfg.mine_min_count,
                          max_mined=cfg.max_mined, known_names_only=cfg.known_names_only)
    log.info("%d concepts (%d mined)", len(space.vocab), space.n_mined)
    ann_cfg = cfg.annotation_config()
    x_np = inp.x.numpy()
    # Which concepts each image's report mentions (no labeler, no truth): the reports' side of the contrast.
    mentions = mention_matrix(inp.manifest["report"].fillna("").astype(str).tolist(), space.vocab)
    # ...and look-alikes with the same report-labelled findings, so what a concept rides on cancels.
    groups = finding_groups(inp.manifest[list(FINDINGS)].to_numpy()) if cfg.match_findings else None
    annotations = annotate_units(act, space.similarity, space.vocab, ann_cfg, embeddings=x_np, mentions=mentions,
                                 groups=groups)
    sent_act = pattern_activations(ens, ps, torch.from_numpy(np.array(inp.store.sentence, dtype=np.float32)))
    sentences = top_sentences(sent_act.numpy(), inp.store.sentences["text"].astype(str).tolist(), k=cfg.n_sentences)
    table = assemble_pattern_table(ps, stats, effects, annotations, sentences)
    write_table(rd.patterns / PATTERN_TABLE, table)

    # Label-free check: do the reports of a unit's top images agree on one concept?
    baselines = baseline_units(ens, inp.x)
    all_units = {MAIN_SET: act, **baselines}
    purity = {name: report_purity(units, mentions, k=cfg.k_top) for name, units in all_units.items()}

    # Evaluation against the planted truth (phantom only; empty tables and no files on real data).
    unit_sets = {MAIN_SET: (act, annotations)}
    for name, units in baselines.items():
        unit_sets[name] = (units, annotate_units(units, space.similarity, space.vocab, ann_cfg, embeddings=x_np,
                                                 mentions=mentions, groups=groups))
    evaluation, per_unit = evaluate_unit_sets(rd.root, inp.image_ids, unit_sets, space.vocab, cfg.recover_at,
                                              cfg.monosemantic_at)
    h = hidden_targets(inp.classifier, inp.x.numpy(), dev).cpu().numpy()
    by_concept = recovery_by_concept(rd.root, inp.image_ids, inp.manifest["split"].to_numpy(), all_units,
                                     {"embedding": inp.x.numpy(), "classifier hidden": h}, cfg.recover_at)

    result = PatternsResult(ps, int(alive.sum()), alive.numel(), act, stats, space, table, purity, evaluation,
                            per_unit, by_concept)
    result.metrics = pattern_metrics(result, cfg.recover_at)
    record_metrics(rd.root, "04_patterns", result.metrics)
    return result


def _ceilings(by: pd.DataFrame, recover_at: float) -> dict:
    """What linear probes reach (the ceiling of any unit) and the patterns' recovery as a share of it."""
    hidden = float(by["probe_classifier_hidden"].ge(recover_at).mean())
    return {"probe_ceiling_embedding": float(by["probe_embedding"].ge(recover_at).mean()),
            "probe_ceiling_hidden": hidden,
            "recovery_of_hidden_ceiling": float(by["recovered"].mean()) / hidden if hidden else float("nan")}


def pattern_metrics(result: PatternsResult, recover_at: float) -> dict:
    """The figures of ``metrics/04_patterns.json`` (recovery and probe ceilings only with planted truth)."""
    ps, by = result.patterns, result.by_concept
    lift = {name: float(p["lift"].mean()) for name, p in result.purity.items()}
    return {
        "n_patterns": ps.n_patterns,
        "n_alive_latents": result.n_alive,
        "mean_consistency": float(ps.consistency.mean()) if ps.n_patterns else 0.0,
        "n_concepts": len(result.concepts.vocab),
        "n_mined": result.concepts.n_mined,
        **headline_metrics(result.evaluation, main=MAIN_SET),
        **(_ceilings(by, recover_at) if len(by) else {}),
        "report_lift": lift[MAIN_SET],
        "report_lift_single_transcoder": lift["single transcoder"],
        "report_lift_embedding_dims": lift["embedding dims"],
    }
