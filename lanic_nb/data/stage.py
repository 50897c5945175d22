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

from lanic_nb.data.readers import build_manifest, manifest_summary
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import make_phantom_dataset
from lanic_nb.phantom.views import data_metrics
from lanic_nb.rundir import record_metrics

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Parameters of notebook 00 (its demo defaults)."""

    device: str = "auto"
    """Unused by this stage (nothing is computed on a GPU); kept so every notebook takes one."""
    dataset: str = "phantom"
    """"phantom" (the embedded default) or a reader: "mimic_cxr", "nih", "chexpert", "openi", "folder"."""
    data_root: str = ""
    """Real datasets: the release's root folder (images and tables in the release's layout)."""
    reader_options: dict = field(default_factory=dict)
    """Real datasets: extra keyword arguments of the reader, e.g. {"reports_root": "..."}."""
    n_images: int = 3000
    """Phantom only: images, their size and the seed."""
    image_size: int = 224
    seed: int = 0
    shortcut_concept: str = "portable_marker"
    """Phantom only: the concept planted to follow ``shortcut_finding`` beyond the latent states' confounding
    ("" for none)."""
    shortcut_finding: str = "Pleural Effusion"
    shortcut_strength: float = 0.6
    """Extra probability of the shortcut concept on images with the finding (noisy-OR on its own rate)."""
    shortcut_base: float | None = None
    """The shortcut concept's base rate (None: the concept table's)."""

    @property
    def phantom(self) -> bool:
        return self.dataset == "phantom"

    def phantom_config(self) -> PhantomConfig:
        return PhantomConfig(n_images=self.n_images, image_size=self.image_size, seed=self.seed,
                             shortcut_concept=self.shortcut_concept, shortcut_finding=self.shortcut_finding,
                             shortcut_strength=self.shortcut_strength, shortcut_base=self.shortcut_base)


@dataclass
class DataResult:
    manifest: pd.DataFrame
    metrics: dict
    """What ``metrics/00_data.json`` records."""
    phantom: PhantomConfig | None
    """The phantom's configuration (None for a real dataset)."""


def run_data(run_dir: str | Path, cfg: DataConfig | None = None) -> DataResult:
    """Generate the phantom (or read the real release) into the run and record its key figures."""
    cfg = cfg or DataConfig()
    if cfg.phantom:
        phantom = cfg.phantom_config()
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
