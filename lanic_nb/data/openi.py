"""Indiana University chest X-ray reports (OpenI, "ecgen-radiology" XML) and their MeSH headings.

The reports ship in torchxrayvision's wheel (NLMCXR_reports.tgz, 3,955 reports, CC BY-NC-ND 4.0: read at
run time, never copied into this project). Their manual MeSH "major" headings give an independent check
of the report labeler: ``labeler_agreement_with_mesh`` measures, per finding, how often the two agree.
``lanic_nb.data.readers.read_openi`` turns the same reports into a manifest.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.manifest import FINDINGS

# MeSH major headings (Indiana University reports) that name each finding. An entry "Heading" matches
# any term whose first component is Heading ("Pulmonary Atelectasis/base/left"); "Heading/qualifier"
# also needs that qualifier among the later components ("Cardiac Shadow/enlarged/mild"). The strict
# map is the findings' own headings; the CheXpert map adds what the CheXpert labeler counts as the
# finding: an enlarged cardiac silhouette, pulmonary (vascular) congestion, blunted costophrenic angles.
MESH_FINDINGS_STRICT: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Pulmonary Atelectasis", "Atelectasis"),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Pulmonary Edema", "Edema"),
    "Pleural Effusion": ("Pleural Effusion",),
}
MESH_FINDINGS: dict[str, tuple[str, ...]] = {
    **MESH_FINDINGS_STRICT,
    "Cardiomegaly": ("Cardiomegaly", "Cardiac Shadow/enlarged"),
    "Edema": ("Pulmonary Edema", "Edema", "Pulmonary Congestion"),
    "Pleural Effusion": ("Pleural Effusion", "Costophrenic Angle/blunted"),
}


def read_openi_reports(source: str | Path) -> pd.DataFrame:
    """One row per Indiana University report (``ecgen-radiology/*.xml``, a folder or the NLMCXR .tgz).

    Columns: report_id ("CXR1"), findings, impression, report (FINDINGS + IMPRESSION), mesh_major and
    mesh_automatic (lists of MeSH strings as written, e.g. "Pulmonary Atelectasis/base/left"), image_ids.
    """
    source = Path(source)
    rows = []
    if source.is_dir():
        for p in sorted(source.rglob("*.xml")):
            rows.append(_parse_openi_xml(p.read_bytes(), p.name))
    else:
        with tarfile.open(source) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".xml"):
                    fh = tf.extractfile(m)
                    if fh is not None:
                        rows.append(_parse_openi_xml(fh.read(), m.name))
    if not rows:
        raise FileNotFoundError(f"no Indiana University report XML files in {source}")
    return pd.DataFrame(rows)


def _parse_openi_xml(data: bytes, name: str) -> dict:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"report {name} is not valid XML: {e}") from None
    sec = {a.get("Label", ""): " ".join((a.text or "").split()) for a in root.iter("AbstractText")}
    uid = root.find("uId")
    findings, impression = sec.get("FINDINGS", ""), sec.get("IMPRESSION", "")
    return {
        "report_id": uid.get("id") if uid is not None else Path(name).stem,
        "findings": findings,
        "impression": impression,
        "report": " ".join(t for t in (findings, impression) if t),
        "mesh_major": [(m.text or "").strip() for m in root.iterfind("MeSH/major")],
        "mesh_automatic": [(m.text or "").strip() for m in root.iterfind("MeSH/automatic")],
        "image_ids": [p.get("id") for p in root.iterfind("parentImage")],
    }


def mesh_labels(mesh_major: pd.Series, mapping: dict[str, tuple[str, ...]] = MESH_FINDINGS) -> pd.DataFrame:
    """1.0 where a report's MeSH major headings (lists of strings) name the finding per ``mapping``, else 0.0."""
    terms = mesh_major.map(lambda ts: [[c.strip().lower() for c in t.split("/")] for t in ts])

    def hit(parts_list: list[list[str]], entries: tuple[str, ...]) -> bool:
        for entry in entries:
            head, _, qual = entry.lower().partition("/")
            if any(p[0] == head and (not qual or qual in p[1:]) for p in parts_list):
                return True
        return False

    return pd.DataFrame(
        {f: terms.map(lambda t, e=entries: hit(t, e)).astype("float32") for f, entries in mapping.items()},
        index=mesh_major.index,
    )


def label_texts(texts: pd.Series, labeler: Callable[[str], dict] | None = None) -> pd.DataFrame:
    """Run the report labeler over ``texts``: one float32 column per finding, 1 / 0 / -1 / NaN."""
    if labeler is None:
        from lanic_nb.data.labeler import label_report as labeler
    rows = [labeler(t) for t in texts.fillna("").astype(str)]
    return pd.DataFrame(
        {f: [np.nan if r.get(f) is None else float(r[f]) for r in rows] for f in FINDINGS},
        index=texts.index,
        dtype="float32",
    )


def labeler_agreement_with_mesh(
    reports_df: pd.DataFrame,
    labeler: Callable[[str], dict] | None = None,
    *,
    uncertain_as_positive: bool = False,
    mapping: dict[str, tuple[str, ...]] = MESH_FINDINGS,
) -> pd.DataFrame:
    """Per finding, how well the report labeler agrees with the reports' manual MeSH major headings.

    ``reports_df`` has ``report`` and ``mesh_major`` (as from ``read_openi_reports``). A report is
    MeSH-positive when a major heading names the finding (``mapping``: MESH_FINDINGS, or the stricter
    MESH_FINDINGS_STRICT); labeler-positive when the
    labeler says 1 (or -1 too, with ``uncertain_as_positive``). Columns: n_reports, n_mesh_pos,
    n_labeler_pos, n_labeler_uncertain, tp, precision, recall, f1, agreement (accuracy), kappa (Cohen's)
    and f1_chance (the F1 of a labeler independent of MeSH with the same positive rate).
    """
    mesh = mesh_labels(reports_df["mesh_major"], mapping).to_numpy() == 1  # (n_reports, 5)
    lab = label_texts(reports_df["report"], labeler).to_numpy()  # (n_reports, 5)
    pred = (lab == 1) | ((lab == -1) if uncertain_as_positive else False)
    n = len(reports_df)
    rows = []
    for j, f in enumerate(FINDINGS):
        m, p = mesh[:, j], pred[:, j]
        tp = int((m & p).sum())
        prec = tp / p.sum() if p.sum() else np.nan
        rec = tp / m.sum() if m.sum() else np.nan
        f1 = 2 * tp / (m.sum() + p.sum()) if (m.sum() + p.sum()) else np.nan
        acc = float((m == p).mean())
        pm, pp = m.mean(), p.mean()
        chance_acc = pm * pp + (1 - pm) * (1 - pp)
        kappa = (acc - chance_acc) / (1 - chance_acc) if chance_acc < 1 else np.nan
        rows.append(
            {
                "finding": f,
                "n_reports": n,
                "n_mesh_pos": int(m.sum()),
                "n_labeler_pos": int(p.sum()),
                "n_labeler_uncertain": int((lab[:, j] == -1).sum()),
                "tp": tp,
                "precision": prec,
                "recall": rec,
                "f1": f1,
                "agreement": acc,
                "kappa": kappa,
                "f1_chance": 2 * pm * pp / (pm + pp) if (pm + pp) else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("finding")
