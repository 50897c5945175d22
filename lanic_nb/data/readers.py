"""Dataset readers: each public chest X-ray release (and a generic folder + CSV) becomes a manifest.

Every reader returns ``lanic_nb.manifest.conform(...)``: the same columns for every dataset, labels
1 / 0 / -1 / NaN for the five findings, absolute image paths, ``status`` "ok" when the image file exists
and "missing" otherwise, splits that never put one patient in two splits, frontal views only unless
``frontal_only=False``. Tables are read with vectorized pandas (NIH has 112k rows, CheXpert 224k);
the only per-row work is the file-exists check, which ``check_files=False`` skips (status is then "ok"
for every row and an unreadable image is caught later by the embedding store). The Indiana University
reports' parsing and the labeler-vs-MeSH agreement live in ``lanic_nb.data.openi`` and are re-exported here.

The label tables may live apart from the images (``table=``): the tests read the real NIH and CheXpert
tables that torchxrayvision ships, with no images at all.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.data.openi import (  # noqa: F401 - re-exported: the data stage's public API
    MESH_FINDINGS,
    MESH_FINDINGS_STRICT,
    label_texts,
    labeler_agreement_with_mesh,
    mesh_labels,
    read_openi_reports,
)
from lanic_nb.manifest import FINDINGS, conform, split_by_patient
from lanic_nb.progress import progress

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


# ----------------------------------------------------------------------------- MIMIC-CXR-JPG


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
    keeps their FINDINGS + IMPRESSION sections (the whole text when neither header is present).
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
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        body = text[m.end() : nxt.start() if nxt else len(text)]
        out[m.group(1).strip()] = " ".join(body.split())
    return out


def _read_mimic_report(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    sec = report_sections(text)
    keep = [sec[k] for k in ("FINDINGS", "IMPRESSION") if sec.get(k)]
    return " ".join(keep) if keep else " ".join(text.split())


# ----------------------------------------------------------------------------- NIH ChestX-ray14


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


# ----------------------------------------------------------------------------- CheXpert


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
