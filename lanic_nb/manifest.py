"""The manifest: the one table every dataset reader produces (torchxrayvision-style data contract).

One row per image, row order = embedding order. Labels follow the CheXpert convention:
1 positive, 0 negative (negated), -1 uncertain (hedged), NaN when the finding is not mentioned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

# The five findings we classify (the CheXpert competition five).
FINDINGS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Column -> pandas dtype. `image_path` is absolute, or relative to the folder holding the manifest.
# `status` is "ok" when the image file exists (readers check), "missing" otherwise.
MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "image_path": "string",
    "patient_id": "string",
    "study_id": "string",
    "view": "string",
    "split": "string",
    **{f: "float32" for f in FINDINGS},
    "report": "string",
    "dataset": "string",
    "status": "string",
}

LABEL_VALUES = (1.0, 0.0, -1.0)


class ManifestError(ValueError):
    """A manifest that breaks the contract."""


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in MANIFEST_COLUMNS.items()})


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the manifest columns, in order, with their dtypes (then validated).

    Missing optional text columns (report, view, study_id) are filled with empty strings; missing
    label columns with NaN. Extra columns are kept after the contract columns.
    """
    out = df.copy()
    for col, dtype in MANIFEST_COLUMNS.items():
        if col not in out:
            if col in FINDINGS:
                out[col] = np.nan
            elif col in ("report", "view", "study_id", "dataset"):
                out[col] = ""
            elif col == "status":
                out[col] = "ok"
            else:
                raise ManifestError(f"manifest is missing required column {col!r}")
        out[col] = out[col].astype(dtype)
    extra = [c for c in out.columns if c not in MANIFEST_COLUMNS]
    out = out[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)
    validate(out)
    return out


def validate(df: pd.DataFrame) -> None:
    """Raise ManifestError naming the first broken rule."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df]
    if missing:
        raise ManifestError(f"manifest is missing columns {missing}")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise ManifestError(f"image_id must be unique; {dup!r} repeats")
    bad_split = set(df["split"].dropna().unique()) - set(SPLITS)
    if bad_split:
        raise ManifestError(f"split must be one of {SPLITS}; found {sorted(bad_split)}")
    for f in FINDINGS:
        vals = df[f].dropna().unique()
        bad = [v for v in vals if float(v) not in LABEL_VALUES]
        if bad:
            raise ManifestError(f"label column {f!r} must hold 1, 0, -1 or NaN; found {bad[:5]}")
    crossing = df.groupby("patient_id")["split"].nunique()
    if (crossing > 1).any():
        raise ManifestError(f"patient {crossing[crossing > 1].index[0]!r} appears in more than one split")


def split_by_patient(
    patient_ids: pd.Series | np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> np.ndarray:
    """Assign each row a split so that no patient crosses splits; deterministic in ``seed``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = pd.Series(patient_ids).astype(str)
    uniq = np.array(sorted(ids.unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    bounds = np.cumsum(np.array(fractions) * len(uniq)).round().astype(int)
    lookup = {}
    for i, pid in enumerate(uniq):
        lookup[pid] = SPLITS[int(np.searchsorted(bounds, i, side="right"))] if i < bounds[-1] else SPLITS[-1]
    return ids.map(lookup).to_numpy()


def manifest_hash(df: pd.DataFrame) -> str:
    """A short content hash of the rows that identify images (id, path, split); stored in artifact headers."""
    h = hashlib.sha256()
    for col in ("image_id", "image_path", "split"):
        h.update("\x1f".join(df[col].astype(str).tolist()).encode())
    return h.hexdigest()[:16]


def resolve_image_path(manifest_path: str | Path, image_path: str) -> Path:
    p = Path(image_path)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def label_text(v: float) -> str:
    """A report label (1 / 0 / -1 / NaN) in words; the maps' tooltips use the same wording."""
    return {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}.get(float(v), "not mentioned")
