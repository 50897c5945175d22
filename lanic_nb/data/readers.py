"""Dataset readers: each public chest X-ray release (and a generic folder + CSV) becomes a manifest.

Every reader returns ``lanic_nb.manifest.conform(...)``: the same columns for every dataset, labels
1 / 0 / -1 / NaN for the five findings, absolute image paths, ``status`` "ok" when the image file exists
and "missing" otherwise, splits that never put one patient in two splits, frontal views only unless
``frontal_only=False``. Tables are read with vectorized pandas (NIH has 112k rows, CheXpert 224k);
the only per-row work is the file-exists check, which ``check_files=False`` skips (status is then "ok"
for every row and an unreadable image is caught later by the embedding store). The Indiana University
reports' parsing and the labeler-vs-MeSH agreement live in ``lanic_nb.data.openi``; MIMIC-CXR, NIH and
CheXpert have a module each (``mimic``, ``nih``, ``chexpert``); this one holds OpenI images, a folder + CSV,
and the dispatch by name.

The label tables may live apart from the images (``table=``): the tests read the real NIH and CheXpert
tables that torchxrayvision ships, with no images at all.
"""


from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.data.chexpert import read_chexpert
from lanic_nb.data.common import (
    _frontal,
    _status,
    _three_way,
)
from lanic_nb.data.mimic import read_mimic_cxr
from lanic_nb.data.nih import read_nih
from lanic_nb.data.openi import label_texts, read_openi_reports
from lanic_nb.manifest import FINDINGS, conform

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- Indiana University / OpenI


def read_openi(
    source: str | Path,
    images_root: str | Path | None = None,
    *,
    dicom_metadata: str | Path | None = None,
    frontal_only: bool = True,
    labeler: Callable[[str], dict] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
) -> pd.DataFrame:
    """Indiana University chest X-rays (OpenI): reports from ``source`` (XML folder or NLMCXR .tgz).

    One row per image (``parentImage`` id); images are ``images_root/<id>.png`` (the NLMCXR_png release).
    Labels come from the report labeler (``lanic_nb.data.labeler.label_report`` unless ``labeler`` is given)
    on FINDINGS + IMPRESSION; the MeSH headings ride along in ``mesh_major`` / ``mesh_automatic``
    (pipe-joined). Each report is one patient and study. Views come from ``dicom_metadata`` (a CSV with
    ``imageid`` and ``View Position``, e.g. torchxrayvision's ``nlmcxr_dicom_metadata.csv.gz``); without
    it views are unknown and ``frontal_only`` cannot filter (a warning says so); with it, images whose
    view is unknown are dropped too (as torchxrayvision does).
    """
    reports = read_openi_reports(source)
    reports = reports[reports["image_ids"].map(len) > 0].reset_index(drop=True)
    labels = label_texts(reports["report"], labeler)
    rep = pd.concat([reports, labels], axis=1).explode("image_ids", ignore_index=True)
    ids = rep["image_ids"].astype(str)
    if dicom_metadata is not None:
        meta = pd.read_csv(dicom_metadata, usecols=["imageid", "View Position"], low_memory=False)
        view = ids.map(meta.drop_duplicates("imageid").set_index("imageid")["View Position"]).fillna("")
    else:
        view = pd.Series("", index=rep.index)
    if frontal_only:
        if dicom_metadata is None:
            log.warning("read_openi: no dicom_metadata, so views are unknown and laterals are kept")
        else:
            keep = _frontal(view)
            rep, ids, view = rep[keep], ids[keep], view[keep]
    iroot = Path(images_root).resolve() if images_root else Path(source).resolve().parent / "images"
    out = pd.DataFrame(
        {
            "image_id": ids,
            "image_path": str(iroot) + "/" + ids + ".png",
            "patient_id": rep["report_id"],
            "study_id": rep["report_id"],
            "view": view,
            "split": _three_way(rep["report_id"], val_fraction, test_fraction, seed),
            **{f: rep[f] for f in FINDINGS},
            "report": rep["report"],
            "dataset": "openi",
            "mesh_major": rep["mesh_major"].map("|".join),
            "mesh_automatic": rep["mesh_automatic"].map("|".join),
        }
    )
    out["status"] = _status(out["image_path"], check_files, iroot)
    return conform(out)


# ----------------------------------------------------------------------------- generic folder + CSV


def read_folder(
    root: str | Path,
    csv: str | Path | None = None,
    *,
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
    dataset: str = "folder",
) -> pd.DataFrame:
    """Any folder of PNG/JPEG/DICOM images described by one CSV (``csv``, default ``root/labels.csv``).

    Required columns: ``path`` (relative to ``root`` or absolute) and ``patient_id``. Optional:
    ``image_id`` (default: ``path``), ``study_id``, ``view`` (PA/AP/FRONTAL count as frontal; with
    ``frontal_only`` rows with another non-blank view are dropped, blank views are kept), ``split``
    (train/val/test; "valid"/"validate" mean val; blank rows are split by patient), ``report`` and the
    finding columns by their exact names (Atelectasis, Cardiomegaly, Consolidation, Edema,
    Pleural Effusion) holding 1/0/-1/blank.
    """
    root = Path(root).resolve()
    csv = Path(csv) if csv else root / "labels.csv"
    df = pd.read_csv(csv, dtype={"path": str, "patient_id": str, "study_id": str, "image_id": str})
    for col in ("path", "patient_id"):
        if col not in df:
            raise ValueError(f"read_folder: {csv} needs a {col!r} column")
    if frontal_only and "view" in df:
        v = df["view"].fillna("").astype(str).str.strip()
        df = df[v.eq("") | _frontal(v)].reset_index(drop=True)
    paths = df["path"].astype(str)
    absolute = paths.str.startswith("/")
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str) if "image_id" in df else paths,
            "image_path": paths.where(absolute, str(root) + "/" + paths),
            "patient_id": df["patient_id"].astype(str),
            "dataset": dataset,
        }
    )
    for col in ("study_id", "view", "report"):
        if col in df:
            out[col] = df[col].fillna("").astype(str)
    for f in FINDINGS:
        if f in df:
            out[f] = pd.to_numeric(df[f], errors="coerce").astype("float32")
    given = (
        df["split"].fillna("").astype(str).str.strip().str.lower()
        if "split" in df
        else pd.Series("", index=df.index)
    )
    given = given.replace({"valid": "val", "validate": "val", "validation": "val"})
    drawn = _three_way(out["patient_id"], val_fraction, test_fraction, seed)
    out["split"] = np.where(given.eq(""), drawn, given)
    out["status"] = _status(out["image_path"], check_files)  # absolute paths may lie outside root
    return conform(out)


# ----------------------------------------------------------------------------- dispatch

READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "mimic_cxr": read_mimic_cxr,
    "nih": read_nih,
    "chexpert": read_chexpert,
    "openi": read_openi,
    "folder": read_folder,
}


def read_dataset(kind: str, *args, **kwargs) -> pd.DataFrame:
    """``READERS[kind](*args, **kwargs)``, with a clear error for an unknown kind."""
    if kind not in READERS:
        raise ValueError(f"kind must be one of {sorted(READERS)}, got {kind!r}")
    return READERS[kind](*args, **kwargs)


def manifest_summary(manifest: pd.DataFrame) -> dict:
    """Counts and label rates of any manifest (what notebook 00 records for a real dataset)."""
    return {
        "n_images": int(len(manifest)),
        "n_patients": int(manifest["patient_id"].nunique()),
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        "status_counts": {k: int(v) for k, v in manifest["status"].value_counts().items()},
        "with_report": float((manifest["report"].fillna("").str.len() > 0).mean()),
        "label_positive_rate": {f: float((manifest[f] == 1).mean()) for f in FINDINGS},
        "label_uncertain_rate": {f: float((manifest[f] == -1).mean()) for f in FINDINGS},
        "label_missing_rate": {f: float(manifest[f].isna().mean()) for f in FINDINGS},
    }


def build_manifest(run_dir: str | Path, kind: str, *args, **kwargs) -> pd.DataFrame:
    """Read a real dataset with ``read_dataset(kind, ...)`` and install its manifest in the run.

    Later stages read only ``<run_dir>/data/manifest.parquet``; a real manifest keeps absolute image
    paths, so the images stay where the release put them (nothing is copied out of the data-use area).
    """
    from lanic_nb.io import write_json, write_table
    from lanic_nb.rundir import RunDir

    manifest = read_dataset(kind, *args, **kwargs)
    if manifest.empty:
        raise ValueError(f"the {kind!r} reader found no images under {args or kwargs}; check the paths")
    rd = RunDir(Path(run_dir))
    write_table(rd.manifest, manifest)
    write_json(rd.data / "meta.json", {"dataset": kind, **manifest_summary(manifest)})
    return manifest
