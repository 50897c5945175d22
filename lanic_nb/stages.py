"""The pipeline's stages in one table: each stage's notebook, config, stage function, what it reads and writes.

A stage is named after its notebook (``04_patterns``). It reads the outputs of the stages in ``reads`` from the
run directory and writes its own; ``outputs`` are the files that show it finished (relative to the run
directory). The settings loader (``lanic_nb.settings``), the artifacts layer (``lanic_nb.artifacts``: what a
stage whose inputs are missing says) and the notebook runner all read this table, so a new stage is added here
once. Classes and functions are named by import path, so reading the table imports no stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    """The notebook's name without ``.ipynb``, e.g. "04_patterns"."""
    config: str
    """Import path of its config dataclass, "module:Class"."""
    run: str
    """Import path of its stage function ``run_<stage>(run_dir, config=None)``, "module:function"."""
    reads: tuple[str, ...]
    """Stages whose outputs it reads."""
    outputs: tuple[str, ...]
    """Files (relative to the run directory) that exist once it has finished."""
    what: str
    """One line: what it does."""
    uses: tuple[str, ...] = ()
    """Stages whose outputs it reads where they exist, without needing them (the gallery and the explainer show
    06's out-of-distribution scores and reliance when 06 has run): a change there reruns it, their absence does not
    stop it."""
    writes: tuple[str, ...] = ()
    """Everything it writes (files and folders, relative to the run directory), besides ``metrics/<name>.json``;
    a folder of another stage's nested inside one of these belongs to that stage."""

    @property
    def prefix(self) -> str:
        """The notebook's number, e.g. "04" (what ``run_notebooks --only`` takes)."""
        return self.name[:2]

    def config_class(self) -> type:
        return _resolve(self.config)

    def run_function(self):
        return _resolve(self.run)


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_ALL_BEFORE_04 = ("00_data", "01_embed", "02_classifier", "03_transcoders")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("00_data", "lanic_nb.data.stage:DataConfig", "lanic_nb.data.stage:run_data",
          reads=(), outputs=("data/manifest.parquet",), writes=("data",),
          what="the phantom (or a real release) as a manifest of images, labels, reports"),
    Stage("01_embed", "lanic_nb.embed.stage:EmbedConfig", "lanic_nb.embed.stage:run_embed",
          reads=("00_data",), outputs=("embed/header.json", "embed/status.parquet"), writes=("embed", "clip"),
          what="image, report and sentence embeddings"),
    Stage("02_classifier", "lanic_nb.classify.stage:ClassifyConfig", "lanic_nb.classify.stage:run_classify",
          reads=("00_data", "01_embed"), outputs=("classifier/model.safetensors", "classifier/config.json"),
          writes=("classifier",), what="the diagnostic MLP head on the embeddings, with baselines"),
    Stage("03_transcoders", "lanic_nb.transcoder.stage:TranscodersConfig",
          "lanic_nb.transcoder.stage:run_transcoders", reads=("00_data", "01_embed", "02_classifier"),
          outputs=("transcoders/ensemble.safetensors", "transcoders/config.json"), writes=("transcoders",),
          what="the ensemble of sparse transcoders trained on the classifier"),
    Stage("04_patterns", "lanic_nb.patterns.stage:PatternsConfig", "lanic_nb.patterns.stage:run_patterns",
          reads=_ALL_BEFORE_04, outputs=("patterns/directions.safetensors", "patterns/patterns.json"),
          writes=("patterns",), what="the members' latents merged into patterns, named and categorized"),
    Stage("05_maps", "lanic_nb.maps.stage:MapsConfig", "lanic_nb.maps.stage:run_maps",
          reads=("00_data", "01_embed", "04_patterns"),
          outputs=("patterns/maps/pattern_coords.parquet", "patterns/maps/image_coords.parquet"),
          writes=("patterns/maps",), what="UMAP maps of the patterns and the images"),
    Stage("06_attribution", "lanic_nb.attribute.stage:AttributionConfig",
          "lanic_nb.attribute.stage:run_attribution", reads=(*_ALL_BEFORE_04, "04_patterns"),
          outputs=("attribution/summary.parquet", "attribution/contributions.parquet"), writes=("attribution",),
          what="every logit decomposed exactly into pattern contributions, and tested"),
    Stage("07_gallery", "lanic_nb.gallery.stage:GalleryConfig", "lanic_nb.gallery.stage:run_gallery",
          reads=(*_ALL_BEFORE_04, "04_patterns"), uses=("06_attribution",), outputs=("gallery.html",),
          writes=("gallery.html",),
          what="pattern galleries and per-image explanations, and the static HTML page"),
    Stage("08_mammi", "lanic_nb.mammi.stage:MammiConfig", "lanic_nb.mammi.stage:run_mammi",
          reads=(*_ALL_BEFORE_04, "04_patterns"), outputs=("mammi/neurons.parquet",), writes=("mammi",),
          what="MAMMI neuron naming of a CNN, the hidden units and the patterns, with baselines"),
    Stage("09_pathology", "lanic_nb.pathology.stage:PathologyConfig", "lanic_nb.pathology.stage:run_pathology",
          reads=(), outputs=("pathology/feature_gene.parquet",), writes=("pathology",),
          what="SAE features of pathology tiles against genes and morphology"),
    Stage("10_explain", "lanic_nb.explain.config:ExplainConfig", "lanic_nb.explain.stage:run_explain",
          reads=(*_ALL_BEFORE_04, "04_patterns"), uses=("06_attribution",), outputs=("metrics/10_explain.json",),
          writes=("explain",),
          what="new images explained with the finished run"),
)}


def stage(name: str) -> Stage:
    """The stage called ``name`` (its notebook's name, or just its number: "04"); KeyError names the known ones."""
    if name in STAGES:
        return STAGES[name]
    found = [s for s in STAGES.values() if s.prefix == str(name)[:2] and str(name).isdigit()]
    if len(found) == 1:
        return found[0]
    raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")


def upstream(name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or through others, in pipeline order."""
    seen: set[str] = set()
    todo = list(stage(name).reads)
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(STAGES[s].reads)
    return [s for s in STAGES if s in seen]


def downstream(name: str) -> list[str]:
    """Every stage that reads ``name``'s outputs, directly or through others, in pipeline order."""
    return [s for s in STAGES if name in upstream(s)]


# ------------------------------------------------------------------------------------------ stages' state in a run

STAGE_STATE = "stages"
"""Folder of the run holding ``<stage>.running`` while a stage writes and ``<stage>.json`` once it finished."""


def running_marker(run_dir: str | Path, name: str) -> Path:
    """Present while stage ``name`` writes (and after it was killed): its files may be half-written."""
    return Path(run_dir) / STAGE_STATE / f"{name}.running"


def stage_record(run_dir: str | Path, name: str) -> Path:
    """Written when stage ``name`` finished: when, in how long, with which settings."""
    return Path(run_dir) / STAGE_STATE / f"{name}.json"


def interrupted(run_dir: str | Path, name: str) -> bool:
    """Whether stage ``name`` started writing and did not finish (killed, or stopped by an error)."""
    return running_marker(run_dir, name).exists()


def missing_stages(run_dir: str | Path, names: list[str]) -> list[str]:
    """The stages among ``names`` whose outputs are not (all) in the run directory, or that were interrupted."""
    root = Path(run_dir)
    return [n for n in names if interrupted(root, n) or not all((root / f).exists() for f in STAGES[n].outputs)]
