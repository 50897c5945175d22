"""NIH ChestX-ray14 in its release layout (Data_Entry_2017.csv, images in images_NNN/ folders)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.data.common import NIH_FINDINGS, _carve_val, _first_existing, _frontal, _status, _three_way
from lanic_nb.manifest import conform

log = logging.getLogger(__name__)


def read_nih(
    root: str | Path,
    table: str | Path | None = None,
    *,
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
) -> pd.DataFrame:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or ``_v2020``), images in ``images/`` or ``images_XXX/images/``.

    Labels: a finding named in the pipe-separated "Finding Labels" is 1, otherwise 0 (NIH labels every
    image for all 14 findings; "Effusion" is our "Pleural Effusion"). Split: ``test_list.txt`` is the test
    set and ``train_val_list.txt`` is cut into train/val by patient (``val_fraction``, ``seed``); with no
    list files every patient is split at random (``val_fraction``, ``test_fraction``).
    """
    root = Path(root).resolve()
    table = (
        Path(table)
        if table
        else _first_existing(
            root,
            ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz"],
            "label table",
        )
    )
    df = pd.read_csv(
        table,
        usecols=[
            "Image Index",
            "Finding Labels",
            "Follow-up #",
            "Patient ID",
            "Patient Age",
            "Patient Gender",
            "View Position",
        ],
    )
    if frontal_only:
        df = df[_frontal(df["View Position"])].reset_index(drop=True)

    names = df["Image Index"].astype(str)
    patient = df["Patient ID"].astype("int64").astype(str).str.zfill(8)
    findings = "|" + df["Finding Labels"].fillna("").astype(str) + "|"
    labels = {
        ours: findings.str.contains(f"|{nih}|", regex=False).astype("float32")
        for nih, ours in NIH_FINDINGS.items()
    }

    test_list, trval_list = root / "test_list.txt", root / "train_val_list.txt"
    if test_list.is_file():
        is_test = names.isin(set(test_list.read_text().split())).to_numpy()
        if trval_list.is_file():  # images in neither list are not part of the release's split
            keep = is_test | names.isin(set(trval_list.read_text().split())).to_numpy()
            df, names, patient, is_test = df[keep], names[keep], patient[keep], is_test[keep]
            labels = {k: v[keep] for k, v in labels.items()}
        split = np.where(is_test, "test", _carve_val(patient, val_fraction, seed))
    else:
        split = _three_way(patient, val_fraction, test_fraction, seed)

    out = pd.DataFrame(
        {
            "image_id": names,
            "image_path": _nih_paths(root, names, check_files),
            "patient_id": patient,
            "study_id": names.str.replace(".png", "", regex=False),  # one image per NIH study
            "view": df["View Position"].astype(str),
            "split": split,
            **labels,
            "dataset": "nih",
            "age": pd.to_numeric(df["Patient Age"], errors="coerce"),
            "sex": df["Patient Gender"].astype(str),
        }
    )
    out["status"] = _status(out["image_path"], check_files, root)
    return conform(out)


def _nih_paths(root: Path, names: pd.Series, check_files: bool) -> pd.Series:
    """Image paths, found by listing the image folders once (NIH ships 12 ``images_XXX/images`` folders)."""
    default = str(root / "images") + "/" + names
    if not check_files:
        return default
    where: dict[str, str] = {}
    for d in [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]:
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    where.setdefault(e.name, e.path)
    return names.map(where).fillna(default)
