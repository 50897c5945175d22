"""The data stage of a run (notebook 00): the embedded phantom, or a real release read in its own layout.

``run_data`` writes ``data/manifest.parquet`` (one row per image: path, patient, view, split by patient,
the five labels, the report) and ``metrics/00_data.json``; on the phantom also the images and, apart from
the manifest, the truth table (read only by ``lanic_nb.evaluation``). A run folder that already holds
the same phantom configuration is reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lanic_nb.artifacts import stage_function
from lanic_nb.data.readers import build_manifest, manifest_summary
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import make_phantom_dataset
from lanic_nb.phantom.views import data_metrics
from lanic_nb.rundir import record_metrics

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Settings of the data stage (notebook 00)."""

    dataset: str = "phantom"
    """"phantom" (the embedded default) or the reader of a real release: "mimic_cxr", "nih", "chexpert", "openi",
    "folder" (``lanic_nb.data.readers``). Default: the phantom, the one dataset that needs no credentials."""
    data_root: str = ""
    """Real datasets only: the release's root folder, holding its images and tables in the release's own layout.
    Default: none (the phantom needs none)."""
    reader_options: dict = field(default_factory=dict)
    """Real datasets only: keyword arguments of the reader, e.g. {"reports_root": "...", "frontal_only": true}.
    Default: none (each reader's own defaults)."""
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    """The phantom's size, seed and planted shortcut (``dataset="phantom"`` only)."""

    def __post_init__(self) -> None:
        if not isinstance(self.reader_options, dict):
            raise ValueError(f"reader_options must be a mapping of keyword -> value, got {self.reader_options!r}")

    @property
    def is_phantom(self) -> bool:
        return self.dataset == "phantom"


@dataclass
class DataResult:
    manifest: pd.DataFrame
    metrics: dict
    """What ``metrics/00_data.json`` records."""
    phantom: PhantomConfig | None
    """The phantom's configuration (None for a real dataset)."""


@stage_function("00_data")
def run_data(run_dir: str | Path, config: DataConfig | None = None) -> DataResult:
    """Generate the phantom (or read the real release) into the run and record its key figures."""
    cfg = config or DataConfig()
    if cfg.is_phantom:
        phantom = cfg.phantom
        manifest = make_phantom_dataset(run_dir, phantom)
        metrics = data_metrics(run_dir)
    else:
        if not cfg.data_root:
            raise ValueError(f"dataset={cfg.dataset!r} needs data_root: the release's root folder")
        phantom = None
        manifest = build_manifest(run_dir, cfg.dataset, cfg.data_root, **cfg.reader_options)
        metrics = manifest_summary(manifest)
    record_metrics(run_dir, "00_data", metrics)
    log.info("%s: %d images of %d patients", cfg.dataset, len(manifest), manifest["patient_id"].nunique())
    return DataResult(manifest, metrics, phantom)
