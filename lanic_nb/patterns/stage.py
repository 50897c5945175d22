"""The pattern stage (notebook 04): merge the ensemble, describe and name every pattern, check them.

``run_patterns`` reads the ensemble, classifier and embeddings of a run and writes ``patterns/``:
directions.safetensors + patterns.json (the merge), patterns.parquet (one row per pattern: consistency,
statistics, logit effects, concepts, top report sentences), evaluation.csv and recovery_by_concept.csv
(phantom only: the planted truth is read by ``lanic_nb.patterns.evaluate`` after everything else is
computed), and ``metrics/04_patterns.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.artifacts import PATTERN_TABLE, load_stage_inputs, merge_features, stage_function
from lanic_nb.checks import require_at_least_one
from lanic_nb.classify.model import hidden_targets
from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units, finding_groups
from lanic_nb.concepts.reports import mention_matrix, report_purity, top_sentences
from lanic_nb.concepts.space import ConceptsConfig, ConceptSpace, concept_space
from lanic_nb.device import pick_device
from lanic_nb.evaluation import EvaluationConfig
from lanic_nb.io import write_table
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

log = logging.getLogger(__name__)

MAIN_SET = "ensemble patterns"


@dataclass
class PatternsConfig:
    """Settings of the pattern stage (notebook 04)."""

    device: str = "auto"
    """Where the ensemble encodes: "auto" (CUDA when present, else CPU), "cpu", "cuda", ... Default: auto."""
    act_rows: int = 2048
    """Images sampled for the merge's co-firing test (``merge.act_threshold``). Default: engineering (enough rows
    for a stable cosine of two latents' codes)."""
    k_top: int = 20
    """Top-activating images stored per pattern (its gallery) and read for report purity. Default: Matryoshka
    Transcoders keep the top 20 images per feature."""
    n_quantiles: int = 5
    """Images sampled across each pattern's activation quantiles (besides its top ones). Default: engineering."""
    n_sentences: int = 3
    """Top report sentences stored per pattern. Default: engineering (what a card shows)."""
    match_findings: bool = True
    """With contrast (``annotation.contrast_neighbors`` > 0): look-alikes share the image's report-labelled
    findings (``concepts.annotate.finding_groups``), so a shortcut concept's finding cancels instead of naming its
    pattern. Default: on, chosen on the phantom (docs/decisions.md)."""
    merge: MergeConfig = field(default_factory=MergeConfig)
    """How the members' latents become patterns."""
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    """How a pattern is named from its representative images (MAMMI-style, with the phantom's extensions)."""
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    """The concept vocabulary and the VLM that names the patterns."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Scoring against the planted truth (phantom runs only)."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("act_rows", "k_top", "n_quantiles"))
        if self.n_sentences < 0:
            raise ValueError(f"n_sentences must be >= 0, got {self.n_sentences}")


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


@stage_function("04_patterns")
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
    ps = merge_latents(ens.W_dec, cfg.merge, alive=alive, codes=codes,
                       features=merge_features(rd.transcoders, ens))
    ps.save(rd.patterns)
    log.info("alive latents: %d of %d; patterns kept: %d", int(alive.sum()), alive.numel(), ps.n_patterns)

    act = pattern_activations(ens, ps, inp.x).numpy()  # (n_images, n_patterns)
    stats = pattern_stats(act, inp.image_ids, k_top=cfg.k_top, n_quantiles=cfg.n_quantiles)
    effects = logit_effects(inp.classifier, ps, FINDINGS)

    # Name every pattern from the text side of the VLM (no truth involved).
    space = concept_space(inp.store, inp.manifest, inp.x, **asdict(cfg.concepts))
    log.info("%d concepts (%d mined)", len(space.vocab), space.n_mined)
    ann_cfg = cfg.annotation
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
    evaluation, per_unit = evaluate_unit_sets(rd.root, inp.image_ids, unit_sets, space.vocab, cfg.evaluation.recover_at,
                                              cfg.evaluation.monosemantic_at)
    h = hidden_targets(inp.classifier, inp.x.numpy(), dev).cpu().numpy()
    by_concept = recovery_by_concept(rd.root, inp.image_ids, inp.manifest["split"].to_numpy(), all_units,
                                     {"embedding": inp.x.numpy(), "classifier hidden": h}, cfg.evaluation.recover_at)

    result = PatternsResult(ps, int(alive.sum()), alive.numel(), act, stats, space, table, purity, evaluation,
                            per_unit, by_concept)
    result.metrics = pattern_metrics(result, cfg.evaluation.recover_at)
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
