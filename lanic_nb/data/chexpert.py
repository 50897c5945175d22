"""CheXpert (Stanford) in its release layout (train.csv / valid.csv beside the patientNNNNN folders)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.data.common import _carve_val, _label_columns, _no_finding_negative, _status
from lanic_nb.manifest import FINDINGS, conform

log = logging.getLogger(__name__)


def read_chexpert(
    root: str | Path,
    table: str | Path | Iterable[str | Path] | None = None,
    *,
    frontal_only: bool = True,
    no_finding_negative: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
) -> pd.DataFrame:
    """CheXpert v1.0 (or -small): ``root/train.csv`` and ``root/valid.csv`` (or the ``table`` file(s)).

    Columns: Path ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", its first component
    is the release folder = ``root``), Sex, Age, Frontal/Lateral, AP/PA and 14 label columns (1/0/-1/blank).
    Split: the public "valid" set (234 radiologist-labelled studies, disjoint patients) is our test set
    because CheXpert's own test set is not public; "train" rows are cut into train/val by patient.
    ``no_finding_negative`` applies torchxrayvision's convention (a "No Finding" study is negative for
    every unmentioned finding); off by default so labels are exactly the release's.
    """
    root = Path(root).resolve()
    if table is None:
        tables = [p for p in (root / "train.csv", root / "valid.csv") if p.is_file()]
        if not tables:
            raise FileNotFoundError(f"no train.csv or valid.csv in {root}")
    else:
        tables = [Path(table)] if isinstance(table, str | Path) else [Path(t) for t in table]
    df = pd.concat([pd.read_csv(t) for t in tables], ignore_index=True)
    if frontal_only:
        df = df[df["Frontal/Lateral"].eq("Frontal")].reset_index(drop=True)

    # The first component of Path is the release folder (= root): drop it.
    parts = (
        df["Path"]
        .astype(str)
        .str.extract(r"^[^/]+/(?P<rel>(?P<part>[^/]+)/(?P<patient>patient\d+)/(?P<study>study\d+)/.+)$")
    )
    rel = parts["rel"]
    if parts["patient"].isna().any():
        bad = df.loc[parts["patient"].isna(), "Path"].iloc[0]
        raise ValueError(f"CheXpert Path {bad!r} is not <release>/<part>/patientN/studyN/<file>")
    is_test = parts["part"].eq("valid").to_numpy()
    split = np.where(is_test, "test", _carve_val(parts["patient"], val_fraction, seed))
    out = pd.DataFrame(
        {
            "image_id": rel,
            "image_path": str(root) + "/" + rel,
            "patient_id": parts["patient"],
            "study_id": parts["patient"] + "/" + parts["study"],
            # CheXpert leaves AP/PA blank for laterals; the manifest's view is AP/PA/LATERAL.
            "view": df["AP/PA"].where(df["Frontal/Lateral"].eq("Frontal"), "LATERAL").fillna("").astype(str),
            "split": split,
            **_label_columns(df, {f: f for f in FINDINGS}),
            "dataset": "chexpert",
            "age": pd.to_numeric(df["Age"], errors="coerce"),
            "sex": df["Sex"].astype(str),
        }
    )
    if no_finding_negative:
        _no_finding_negative(out, df["No Finding"])
    out["status"] = _status(out["image_path"], check_files, root)
    return conform(out)
