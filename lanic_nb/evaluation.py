"""Evaluation-only access to planted truth.

The phantom's ground-truth table (every planted concept: presence, side, severity, category) is what
later stages are benchmarked against. Training stages must never see it, so this module is the ONLY
place in the package that opens ``ground_truth.parquet`` (and ``states.parquet``, the latent states behind the
concepts' co-occurrence); evaluation code calls ``load_ground_truth`` / ``load_states``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lanic_nb.io import read_json, read_table
from lanic_nb.rundir import RunDir

GROUND_TRUTH_COLUMNS = ("image_id", "concept", "category", "present", "side", "severity")


@dataclass
class EvaluationConfig:
    """How units are scored against the planted truth (phantom runs only; nothing else reads these)."""

    recover_at: float = 0.95
    """A planted concept counts as recovered when some unit separates its films at this AUROC or more.
    Default: chosen for this benchmark (a near-perfect single-unit detector)."""
    monosemantic_at: float = 0.9
    """A unit counts as detecting a planted concept when its AUROC for it reaches this (its name is then checked
    against that concept). Default: chosen for this benchmark."""

    def __post_init__(self) -> None:
        for name in ("recover_at", "monosemantic_at"):
            if not 0.5 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be an AUROC in [0.5, 1], got {getattr(self, name)}")


def has_ground_truth(run_dir: str | Path) -> bool:
    """Whether the run's data has planted truth (phantom runs do, real datasets do not)."""
    return RunDir(Path(run_dir)).ground_truth.exists()


def load_ground_truth(run_dir: str | Path) -> pd.DataFrame:
    """The long truth table of a run: one row per (image, concept)."""
    path = RunDir(Path(run_dir)).ground_truth
    if not path.exists():
        raise FileNotFoundError(f"no ground truth at {path}: only phantom runs have planted truth")
    gt = read_table(path)
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in gt]
    if missing:
        raise ValueError(f"ground truth at {path} lacks columns {missing}")
    return gt


def load_states(run_dir: str | Path) -> pd.DataFrame:
    """The phantom's latent states per image (acuity, cardiac history, chronic lung disease, rotated)."""
    path = RunDir(Path(run_dir)).states
    if not path.exists():
        raise FileNotFoundError(f"no latent states at {path}: only phantom runs have them")
    return read_table(path)


def ground_truth_matrix(gt: pd.DataFrame, image_ids: Sequence[str], value: str = "present") -> pd.DataFrame:
    """(n_images, n_concepts) table of ``value`` ("present" bool or "severity"), rows in ``image_ids`` order.

    Raises KeyError naming an image that the truth table does not cover.
    """
    if value not in ("present", "severity"):
        raise ValueError(f"value must be 'present' or 'severity', got {value!r}")
    wide = gt.pivot(index="image_id", columns="concept", values=value)
    missing = pd.Index(image_ids).difference(wide.index)
    if len(missing):
        raise KeyError(f"image {missing[0]!r} has no ground truth")
    wide = wide.loc[list(image_ids)]
    wide.columns.name = None
    return wide.astype(bool) if value == "present" else wide.astype("float32")


def concept_categories(gt: pd.DataFrame) -> dict[str, str]:
    """Concept name -> its category (cardiac, pulmonary, pleural, structural, device, artifact)."""
    return dict(gt.drop_duplicates("concept")[["concept", "category"]].itertuples(index=False, name=None))


def load_tile_truth(folder: str | Path) -> pd.DataFrame:
    """The pathology phantom's planted truth (tissue fractions, nuclei counts, dominant type) of a tile folder."""
    path = Path(folder) / "truth.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no tile truth at {path}: only the pathology phantom has planted truth")
    return read_table(path)


def planted_shortcut(run_dir: str | Path) -> tuple[str, str] | None:
    """(concept, finding) of the main shortcut the phantom planted in a run (the first of ``planted_shortcuts``);
    None for a run that plants none, or a real dataset."""
    planted = planted_shortcuts(run_dir)
    return (planted[0]["concept"], planted[0]["finding"]) if planted else None


def planted_shortcuts(run_dir: str | Path) -> list[dict]:
    """Every shortcut the phantom planted in a run: ``{"concept", "finding", "absent"}`` (``absent``: the concept
    follows the finding's absence), the main one first; empty for a run that plants none or a real dataset."""
    path = RunDir(Path(run_dir)).data / "meta.json"
    cfg = read_json(path).get("config", {}) if path.exists() else {}
    out = []
    if cfg.get("shortcut_concept") and cfg.get("shortcut_finding"):
        out.append({"concept": str(cfg["shortcut_concept"]), "finding": str(cfg["shortcut_finding"]),
                    "absent": bool(cfg.get("shortcut_absent", False))})
    out += [{"concept": str(e["concept"]), "finding": str(e["finding"]), "absent": bool(e.get("absent", False))}
            for e in cfg.get("extra_shortcuts", [])]
    return out


def finding_concept(finding: str) -> str:
    """The planted concept of a classified finding: its name in snake case ("Pleural Effusion" -> "pleural_effusion").

    That is how the phantom names the concept it plants for each finding; the truth table's columns use it.
    """
    return finding.strip().lower().replace(" ", "_")
