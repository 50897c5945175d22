"""The stable layout of one run directory. Every stage reads earlier stages' artifacts from here.

    runs/<name>/
      data/          manifest.parquet, images/, meta.json, ground_truth.parquet + states.parquet (EVALUATION ONLY)
      clip/          the small CLIP (open_clip config + safetensors + tokenizer/), metrics.json
      embed/         the embedding store (header.json, *.f32 memmaps, status.parquet)
      classifier/    model.safetensors, config.json, metrics.csv
      transcoders/   ensemble.safetensors, config.json, metrics.parquet, checkpoints/
      patterns/      patterns.parquet, directions.safetensors, evaluation.csv, maps/
      attribution/   attribution tables, faithfulness figures
      notebooks/     executed notebooks
      metrics/       <notebook>.json, the key figures each notebook records
      gallery.html
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanic_nb.io import read_json, write_json


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; creating the object creates nothing on disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> Path:
        """The folder of a stage, created on first use."""
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def data(self) -> Path:
        return self.stage("data")

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.parquet"

    @property
    def ground_truth(self) -> Path:
        # Only evaluation code may open this (tests enforce it): see lanic_nb.evaluation.
        return self.data / "ground_truth.parquet"

    @property
    def states(self) -> Path:
        # The phantom's latent states per image (acuity, histories, technique): evaluation only, as above.
        return self.data / "states.parquet"

    @property
    def clip(self) -> Path:
        return self.stage("clip")

    @property
    def embed(self) -> Path:
        return self.stage("embed")

    @property
    def classifier(self) -> Path:
        return self.stage("classifier")

    @property
    def transcoders(self) -> Path:
        return self.stage("transcoders")

    @property
    def patterns(self) -> Path:
        return self.stage("patterns")

    @property
    def attribution(self) -> Path:
        return self.stage("attribution")

    @property
    def metrics(self) -> Path:
        return self.stage("metrics")

    def metrics_file(self, notebook: str) -> Path:
        return self.metrics / f"{notebook}.json"


def record_metrics(run_dir: str | Path, stage: str, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` into ``<run_dir>/metrics/<stage>.json`` (the figures tests and README quote).

    ``stage`` is the notebook's name (e.g. "04_patterns"), so a reader finds a notebook's figures by its name.
    """
    path = RunDir(Path(run_dir)).metrics_file(stage)
    current = read_json(path) if path.exists() else {}
    current.update(metrics)
    return write_json(path, current)


def load_metrics(run_dir: str | Path, stage: str) -> dict[str, Any]:
    return read_json(RunDir(Path(run_dir)).metrics_file(stage))
