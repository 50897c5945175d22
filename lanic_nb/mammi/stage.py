"""The MAMMI stage (notebook 08): name the neurons of three unit sets three ways, and compare.

``run_mammi`` trains the small CNN on the run's images (train split), captures the activations of its last
conv layer, of the diagnostic classifier's hidden units and of the transcoder patterns (stage 04), names
every unit with MAMMI, CLIP-Dissect and top-k mean in the shared concept space (``concepts.space``), and
writes ``mammi/neurons.parquet``; on the phantom also ``mammi/summary.csv`` and ``mammi/vlm_ceiling.csv``
(the planted truth is read by ``lanic_nb.mammi.evaluate`` only after every unit is named), and
``metrics/08_mammi.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.artifacts import StageInputs, load_stage_inputs, stage_function
from lanic_nb.checks import require_at_least_one
from lanic_nb.classify.model import hidden_targets
from lanic_nb.concepts.annotate import AnnotationConfig
from lanic_nb.concepts.space import ConceptsConfig, ConceptSpace, concept_space
from lanic_nb.device import pick_device
from lanic_nb.evaluation import EvaluationConfig
from lanic_nb.io import write_table
from lanic_nb.mammi.annotate import annotate_neurons, neuron_table
from lanic_nb.mammi.cnn import (
    CNNConfig,
    FindingCNN,
    capture_activations,
    cnn_auroc,
    image_batches,
    load_images,
    train_cnn,
)
from lanic_nb.mammi.evaluate import ceiling_metrics, evaluate_stage, flat_metrics
from lanic_nb.manifest import FINDINGS
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.patterns.units import pattern_activations
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)

UNIT_SETS = ("cnn last conv", "classifier hidden", "transcoder patterns")


@dataclass
class MammiConfig:
    """Settings of the MAMMI stage (notebook 08)."""

    device: str = "auto"
    """Where the CNN trains and the models run: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    Default: auto."""
    k_top: int = 20
    """Top images of a unit for the CLIP-Dissect and top-k mean baselines. Default: Matryoshka Transcoders' top-20
    images per feature (CLIP-Dissect, arXiv 2204.10965, uses a top-k of the same order)."""
    cnn: CNNConfig = field(default_factory=CNNConfig)
    """The small CNN whose last conv layer's units are named (the paper's DenseNet-121 stands in)."""
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    """How MAMMI chooses representative images and keeps concepts (its released defaults)."""
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    """The concept vocabulary and the VLM that names the units."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Scoring against the planted truth (phantom runs only; this stage reads ``monosemantic_at``)."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("k_top",))


@dataclass
class MammiResult:
    """What notebook 08 shows; the tables are also written under ``mammi/`` (see the module doc)."""

    cnn: FindingCNN
    cnn_log: pd.DataFrame  # epoch, loss
    cnn_auroc: float  # test mean AUROC over the five findings (NaN when no finding has both classes)
    activations: dict[str, np.ndarray]  # unit set -> (n_images, n_units)
    concepts: ConceptSpace
    annotations: dict[str, pd.DataFrame]  # unit set -> annotate_neurons table
    summary: pd.DataFrame  # summary.csv: one row per unit set (empty without planted truth)
    per_unit: dict[str, pd.DataFrame]  # unit set (and "vlm ceiling") -> truth table (empty without truth)
    neurons: pd.DataFrame  # neurons.parquet
    metrics: dict = field(default_factory=dict)  # as written to metrics/08_mammi.json

    @property
    def ceiling(self) -> pd.DataFrame | None:
        """vlm_ceiling.csv: per planted concept, the zero-shot AUROC of its vocabulary entry (None without truth)."""
        return self.per_unit.get("vlm ceiling")


def unit_activations(
    inp: StageInputs, patterns: PatternSet, cnn: FindingCNN, images: torch.Tensor, device="cpu"
) -> dict[str, np.ndarray]:
    """(n_images, n_units) activations of the three unit sets compared: the CNN's last conv channels, the
    diagnostic classifier's hidden units, and the transcoder patterns."""
    return {
        "cnn last conv": capture_activations(cnn, cnn.last_conv, image_batches(images, cnn.cfg.image_size), device),
        "classifier hidden": hidden_targets(inp.classifier, inp.x.numpy(), device).cpu().numpy(),
        "transcoder patterns": pattern_activations(inp.ensemble, patterns, inp.x).numpy(),
    }


@stage_function("08_mammi")
def run_mammi(run_dir: str | Path, config: MammiConfig | None = None) -> MammiResult:
    """Train the CNN, name the units of the three sets three ways, evaluate on the phantom; write ``mammi/``."""
    cfg = config or MammiConfig()
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    inp = load_stage_inputs(rd.root, dev)
    patterns = PatternSet.load(rd.patterns)
    images, ok = load_images(inp.manifest, rd.data, cfg.cnn.image_size)
    log.info("%d images (%d readable), %d patterns", len(images), int(ok.sum()), patterns.n_patterns)

    split = inp.manifest["split"].astype(str).to_numpy()
    labels = inp.manifest[list(FINDINGS)].to_numpy(dtype=np.float32)
    train, test = (split == "train") & ok, (split == "test") & ok
    cnn, cnn_log = train_cnn(images[train], labels[train], cfg.cnn, dev)
    auc = cnn_auroc(cnn, images[test], labels[test], dev)
    log.info("CNN test mean AUROC over the five findings: %.3f", auc)

    acts = unit_activations(inp, patterns, cnn, images, dev)
    space = concept_space(inp.store, inp.manifest, inp.x, **asdict(cfg.concepts))
    log.info("%d concepts (%d mined)", len(space.vocab), space.n_mined)
    ann_cfg = cfg.annotation
    annotations = {name: annotate_neurons(a, space.similarity, space.vocab, ann_cfg, k=cfg.k_top)
                   for name, a in acts.items()}

    # Against the planted truth (phantom only): read after every unit is named.
    sets = {name: (acts[name], annotations[name]) for name in acts}
    summary, per_unit = evaluate_stage(rd.root, inp.image_ids, sets, space.vocab, cfg.evaluation.monosemantic_at,
                                       similarity=space.similarity)
    neurons = pd.concat([neuron_table(name, ann, per_unit.get(name)) for name, ann in annotations.items()],
                        ignore_index=True)
    out = rd.stage("mammi")
    write_table(out / "neurons.parquet", neurons)
    if len(summary):
        write_table(out / "summary.csv", summary)
    result = MammiResult(cnn, cnn_log, auc, acts, space, annotations, summary, per_unit, neurons)
    if result.ceiling is not None:
        write_table(out / "vlm_ceiling.csv", result.ceiling)
    result.metrics = {
        "cnn_auroc": auc,
        "n_units": {name: int(a.shape[1]) for name, a in acts.items()},
        **flat_metrics(summary),
        **ceiling_metrics(result.ceiling),
    }
    record_metrics(rd.root, "08_mammi", result.metrics)
    return result
