"""What the dataset readers share: view and label-name tables, file status, patient-level split helpers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.manifest import FINDINGS, split_by_patient

log = logging.getLogger(__name__)


# View positions that count as frontal (DICOM ViewPosition / NIH "View Position" / CheXpert "AP/PA").
FRONTAL_VIEWS: frozenset[str] = frozenset({"PA", "AP", "FRONTAL"})

# NIH ChestX-ray14 names -> our findings (NIH says "Effusion" for pleural effusion).
NIH_FINDINGS: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
}


# ----------------------------------------------------------------------------- shared helpers


def _first_existing(root: Path, names: Iterable[str], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {what} in {root} (looked for {', '.join(names)})")


def _status(paths: pd.Series, check_files: bool, root: Path | None = None) -> np.ndarray:
    if not check_files:
        return np.full(len(paths), "ok", dtype=object)
    if root is not None and not root.is_dir():  # labels without images: skip 100k+ stat calls
        return np.full(len(paths), "missing", dtype=object)
    exists = np.fromiter((os.path.exists(p) for p in paths), dtype=bool, count=len(paths))
    return np.where(exists, "ok", "missing")


def _frontal(view: pd.Series) -> pd.Series:
    return view.fillna("").astype(str).str.strip().str.upper().isin(FRONTAL_VIEWS)


def _carve_val(patients: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """Split a training pool into train/val by patient (no test share)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return split_by_patient(patients, (1.0 - val_fraction, val_fraction, 0.0), seed=seed)


def _three_way(patients: pd.Series, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    if not (0.0 <= val_fraction and 0.0 <= test_fraction and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 with sum < 1, got {val_fraction}, {test_fraction}"
        )
    return split_by_patient(patients, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), seed)


def _label_columns(df: pd.DataFrame, names: dict[str, str]) -> dict[str, pd.Series]:
    """Release label columns (1/0/-1/blank) -> float32 columns named by our findings."""
    return {
        ours: pd.to_numeric(df[theirs], errors="coerce").astype("float32") for theirs, ours in names.items()
    }


def _no_finding_negative(df: pd.DataFrame, no_finding: pd.Series) -> None:
    """torchxrayvision's convention: a study labelled "No Finding" is negative for every unmentioned finding."""
    healthy = pd.to_numeric(no_finding, errors="coerce").eq(1).to_numpy()
    for f in FINDINGS:
        df.loc[healthy & df[f].isna().to_numpy(), f] = 0.0
