"""lanic-nb: chest X-ray classifiers that explain themselves.

A diagnostic classifier on image embeddings, an ensemble of sparse transcoders trained on it, the members'
latents merged into named, categorized patterns, and every prediction decomposed exactly into the patterns
that caused it. The notebooks call the stage functions below; a researcher can use every piece directly::

    from lanic_nb import TranscoderConfig, train_ensemble, MergeConfig, merge_latents, attribute

    cfg = TranscoderConfig(d_in=512, d_out=256, n_members=8, d_dict=1024, k=16)
    ensemble, log = train_ensemble(cfg, X, H)                  # X (n, 512) inputs, H (n, 256) targets
    patterns = merge_latents(ensemble.W_dec, MergeConfig())    # the directions many members learned
    attr = attribute(classifier, ensemble, patterns.latent_pattern, patterns.n_patterns, x)

Modules are named by domain (``lanic_nb.transcoder``, ``lanic_nb.patterns``, ...); the names below are the
stable surface. Nothing inside the package imports from this file, so ``import lanic_nb.io`` stays cheap to
reason about.
"""

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "MissingInputs": "lanic_nb.artifacts", "Run": "lanic_nb.artifacts", "load_pattern_table": "lanic_nb.artifacts",
    "Attribution": "lanic_nb.attribute.core", "attribute": "lanic_nb.attribute.core",
    "evidence_shares": "lanic_nb.attribute.evidence", "reliance_table": "lanic_nb.attribute.reliance",
    "deletion_test": "lanic_nb.attribute.faithfulness", "insertion_curves": "lanic_nb.attribute.faithfulness",
    "AttributionConfig": "lanic_nb.attribute.stage", "run_attribution": "lanic_nb.attribute.stage",
    "ClassifierConfig": "lanic_nb.classify.model",
    "DiagnosticClassifier": "lanic_nb.classify.model",
    "hidden_targets": "lanic_nb.classify.model",
    "load_classifier": "lanic_nb.classify.model",
    "train_classifier": "lanic_nb.classify.model",
    "ClassifyConfig": "lanic_nb.classify.stage", "run_classify": "lanic_nb.classify.stage",
    "AnnotationConfig": "lanic_nb.concepts.annotate", "annotate_units": "lanic_nb.concepts.annotate",
    "ConceptsConfig": "lanic_nb.concepts.space",
    "ConceptSpace": "lanic_nb.concepts.space",
    "concept_space": "lanic_nb.concepts.space",
    "DataConfig": "lanic_nb.data.stage", "run_data": "lanic_nb.data.stage",
    "pick_device": "lanic_nb.device", "seed_everything": "lanic_nb.device",
    "load_encoder": "lanic_nb.embed.encoders",
    "EmbedConfig": "lanic_nb.embed.stage", "run_embed": "lanic_nb.embed.stage",
    "load_embedded": "lanic_nb.embed.store",
    "EvaluationConfig": "lanic_nb.evaluation",
    "ExplainConfig": "lanic_nb.explain.config",
    "explain_paths": "lanic_nb.explain.stage",
    "open_explainer": "lanic_nb.explain.stage",
    "run_explain": "lanic_nb.explain.stage",
    "GalleryConfig": "lanic_nb.gallery.stage", "run_gallery": "lanic_nb.gallery.stage",
    "MammiConfig": "lanic_nb.mammi.stage", "run_mammi": "lanic_nb.mammi.stage",
    "MapsConfig": "lanic_nb.maps.stage", "run_maps": "lanic_nb.maps.stage",
    "PathologyConfig": "lanic_nb.pathology.stage", "run_pathology": "lanic_nb.pathology.stage",
    "MergeConfig": "lanic_nb.patterns.merge",
    "PatternSet": "lanic_nb.patterns.merge",
    "merge_latents": "lanic_nb.patterns.merge",
    "PatternsConfig": "lanic_nb.patterns.stage", "run_patterns": "lanic_nb.patterns.stage",
    "latent_alive": "lanic_nb.patterns.units",
    "latent_codes": "lanic_nb.patterns.units",
    "pattern_activations": "lanic_nb.patterns.units",
    "PhantomConfig": "lanic_nb.phantom.config",
    "Population": "lanic_nb.phantom.population", "POPULATIONS": "lanic_nb.phantom.population",
    "run_suite": "lanic_nb.benchmark.suite", "SUITE": "lanic_nb.benchmark.configs",
    "make_phantom_dataset": "lanic_nb.phantom.generate",
    "SettingError": "lanic_nb.settings",
    "read_params": "lanic_nb.settings",
    "settings_table": "lanic_nb.settings",
    "stage_config": "lanic_nb.settings",
    "STAGES": "lanic_nb.stages", "Stage": "lanic_nb.stages",
    "TranscoderConfig": "lanic_nb.transcoder.config",
    "TranscoderEnsemble": "lanic_nb.transcoder.model",
    "TranscodersConfig": "lanic_nb.transcoder.stage", "run_transcoders": "lanic_nb.transcoder.stage",
    "train_ensemble": "lanic_nb.transcoder.train",
}
"""Where each public name lives: imported on first use, so ``import lanic_nb`` (and every command-line entry
point) stays light."""

__version__ = "0.1.0"

__all__ = [
    # the pipeline: stages, their settings, a finished run
    "STAGES", "Stage", "stage_config", "read_params", "settings_table", "SettingError", "Run", "MissingInputs",
    "run_data", "DataConfig", "PhantomConfig", "make_phantom_dataset", "Population", "POPULATIONS",
    "run_suite", "SUITE",
    "run_embed", "EmbedConfig", "load_encoder", "load_embedded",
    "run_classify", "ClassifyConfig", "ClassifierConfig", "DiagnosticClassifier", "train_classifier",
    "load_classifier", "hidden_targets",
    "run_transcoders", "TranscodersConfig", "TranscoderConfig", "TranscoderEnsemble", "train_ensemble",
    "run_patterns", "PatternsConfig", "MergeConfig", "PatternSet", "merge_latents", "latent_alive", "latent_codes",
    "pattern_activations", "AnnotationConfig", "annotate_units", "ConceptsConfig", "ConceptSpace", "concept_space",
    "EvaluationConfig", "load_pattern_table",
    "run_maps", "MapsConfig",
    "run_attribution", "AttributionConfig", "Attribution", "attribute", "deletion_test", "insertion_curves",
    "evidence_shares", "reliance_table",
    "run_gallery", "GalleryConfig",
    "run_explain", "ExplainConfig", "open_explainer", "explain_paths",
    "run_mammi", "MammiConfig",
    "run_pathology", "PathologyConfig",
    "pick_device", "seed_everything",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lanic_nb' has no attribute {name!r}; the public names are lanic_nb.__all__")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from lanic_nb.artifacts import MissingInputs, Run, load_pattern_table
    from lanic_nb.attribute.core import Attribution, attribute
    from lanic_nb.attribute.evidence import evidence_shares
    from lanic_nb.attribute.faithfulness import deletion_test, insertion_curves
    from lanic_nb.attribute.reliance import reliance_table
    from lanic_nb.attribute.stage import AttributionConfig, run_attribution
    from lanic_nb.benchmark.configs import SUITE
    from lanic_nb.benchmark.suite import run_suite
    from lanic_nb.classify.model import (
        ClassifierConfig,
        DiagnosticClassifier,
        hidden_targets,
        load_classifier,
        train_classifier,
    )
    from lanic_nb.classify.stage import ClassifyConfig, run_classify
    from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units
    from lanic_nb.concepts.space import ConceptsConfig, ConceptSpace, concept_space
    from lanic_nb.data.stage import DataConfig, run_data
    from lanic_nb.device import pick_device, seed_everything
    from lanic_nb.embed.encoders import load_encoder
    from lanic_nb.embed.stage import EmbedConfig, run_embed
    from lanic_nb.embed.store import load_embedded
    from lanic_nb.evaluation import EvaluationConfig
    from lanic_nb.explain.config import ExplainConfig
    from lanic_nb.explain.stage import explain_paths, open_explainer, run_explain
    from lanic_nb.gallery.stage import GalleryConfig, run_gallery
    from lanic_nb.mammi.stage import MammiConfig, run_mammi
    from lanic_nb.maps.stage import MapsConfig, run_maps
    from lanic_nb.pathology.stage import PathologyConfig, run_pathology
    from lanic_nb.patterns.merge import MergeConfig, PatternSet, merge_latents
    from lanic_nb.patterns.stage import PatternsConfig, run_patterns
    from lanic_nb.patterns.units import latent_alive, latent_codes, pattern_activations
    from lanic_nb.phantom.config import PhantomConfig
    from lanic_nb.phantom.generate import make_phantom_dataset
    from lanic_nb.phantom.population import POPULATIONS, Population
    from lanic_nb.settings import SettingError, read_params, settings_table, stage_config
    from lanic_nb.stages import STAGES, Stage
    from lanic_nb.transcoder.config import TranscoderConfig
    from lanic_nb.transcoder.model import TranscoderEnsemble
    from lanic_nb.transcoder.stage import TranscodersConfig, run_transcoders
    from lanic_nb.transcoder.train import train_ensemble
