"""MIMIC-CXR-JPG 2.x in its release layout, with the MIMIC-CXR reports (EXAMINATION, FINDINGS, IMPRESSION)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from lanic_nb.data.common import _first_existing, _frontal, _label_columns, _no_finding_negative, _status
from lanic_nb.manifest import FINDINGS, conform
from lanic_nb.progress import progress

log = logging.getLogger(__name__)


def read_mimic_cxr(
    root: str | Path,
    reports_root: str | Path | None = None,
    *,
    tables_root: str | Path | None = None,
    frontal_only: bool = True,
    no_finding_negative: bool = False,
    check_files: bool = True,
) -> pd.DataFrame:
    """MIMIC-CXR-JPG 2.x: ``root/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg`` plus its three tables.

    Tables (``.csv`` or the released ``.csv.gz``, in ``tables_root`` or ``root``):
    ``mimic-cxr-2.0.0-chexpert.csv`` (subject_id, study_id, 14 CheXpert labeler columns),
    ``mimic-cxr-2.0.0-metadata.csv`` (dicom_id, subject_id, study_id, ViewPosition, ...),
    ``mimic-cxr-2.0.0-split.csv`` (dicom_id, study_id, subject_id, split in train/validate/test).
    The official split is kept ("validate" -> "val"); images absent from it are dropped.
    Reports come from MIMIC-CXR (not -JPG): ``reports_root/files/pXX/pSUBJECT/sSTUDY.txt``; the manifest
    keeps their EXAMINATION line ("CHEST (PORTABLE AP)": how the film was taken, which the naming reads as the
    phantom's "Portable AP chest radiograph.") and their FINDINGS and IMPRESSION sections, each on a line of its
    own after its header, as the phantom's reports are written (the whole text when neither FINDINGS nor
    IMPRESSION is present).
    """
    root = Path(root).resolve()
    troot = Path(tables_root).resolve() if tables_root else root
    prefix = "mimic-cxr-2.0.0-"
    meta = pd.read_csv(
        _first_existing(troot, [f"{prefix}metadata.csv", f"{prefix}metadata.csv.gz"], "metadata")
    )
    labels = pd.read_csv(
        _first_existing(troot, [f"{prefix}chexpert.csv", f"{prefix}chexpert.csv.gz"], "labels")
    )
    split = pd.read_csv(_first_existing(troot, [f"{prefix}split.csv", f"{prefix}split.csv.gz"], "split"))

    df = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    df = df.merge(labels, on=["subject_id", "study_id"], how="left")
    if df["split"].isna().any():
        log.warning(
            "MIMIC-CXR: dropping %d images absent from the split table", int(df["split"].isna().sum())
        )
        df = df[df["split"].notna()]
    if frontal_only:
        df = df[_frontal(df["ViewPosition"])]
    df = df.reset_index(drop=True)

    subj = df["subject_id"].astype("int64").astype(str)
    study = "s" + df["study_id"].astype("int64").astype(str)
    rel = "files/p" + subj.str[:2] + "/p" + subj + "/" + study
    out = pd.DataFrame(
        {
            "image_id": df["dicom_id"].astype(str),
            "image_path": str(root) + "/" + rel + "/" + df["dicom_id"].astype(str) + ".jpg",
            "patient_id": subj,
            "study_id": study,
            "view": df["ViewPosition"].fillna("").astype(str),
            "split": df["split"].replace({"validate": "val"}),
            **_label_columns(df, {f: f for f in FINDINGS}),
            "dataset": "mimic_cxr",
        }
    )
    if no_finding_negative:
        _no_finding_negative(out, df["No Finding"])
    if reports_root is not None:
        rroot = Path(reports_root).resolve()
        studies = rel.unique()
        texts = {
            r: _read_mimic_report(rroot / f"{r}.txt")
            for r in progress(studies, desc="MIMIC-CXR reports", disable=len(studies) < 1000)
        }
        out["report"] = rel.map(texts)
    out["status"] = _status(out["image_path"], check_files, root)
    return conform(out)


_SECTION = re.compile(r"^\s*([A-Z][A-Z /&]+):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Split a free-text report at its upper-case headers ("FINDINGS:", "IMPRESSION:", ...)."""
    marks = list(_SECTION.finditer(text))
    out = {}
    for m, nxt in zip(marks, [*marks[1:], None][: len(marks)], strict=True):
        body = text[m.end() : nxt.start() if nxt else len(text)]
        out[m.group(1).strip()] = " ".join(body.split())
    return out


EXAMINATION_HEADERS = ("EXAMINATION", "EXAM", "TYPE OF EXAMINATION")
"""Headers of the line naming the examination, in the order they are looked for."""


def _read_mimic_report(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return mimic_report_text(text)


def mimic_report_text(text: str) -> str:
    """What the manifest keeps of a MIMIC-CXR report: "EXAMINATION: ...", "FINDINGS: ...", "IMPRESSION: ..." lines
    (those present), or the whole text on one line when it has neither FINDINGS nor IMPRESSION."""
    sec = report_sections(text)
    body = [f"{k}: {sec[k]}" for k in ("FINDINGS", "IMPRESSION") if sec.get(k)]
    if not body:
        return " ".join(text.split())
    exam = next((sec[k] for k in EXAMINATION_HEADERS if sec.get(k)), "")
    return "\n".join(([f"EXAMINATION: {exam}"] if exam else []) + body)
