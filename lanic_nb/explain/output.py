"""What explaining writes: one JSON (and HTML page) per image, parquet tables for several, an index.

    <out>/<image_id>.json        status, reason, warnings, probabilities, the decomposition of each logit,
                                 its top patterns (named), the explanation text, nearest training images
    <out>/<image_id>.html        a self-contained page (status "ok" and html=True)
    <out>/explanations.parquet   one row per image and finding: status, reason, probability, the four terms
    <out>/contributions.parquet  one row per image, finding and top pattern (n_top), as notebook 06's table
    <out>/index.json             every image with its status, reason and files; counts; the run and encoder

The parquet tables are written when more than one image (or a folder) was given. Every file is written
atomically, so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.model import LoadedRun
from lanic_nb.explain.pipeline import ImageExplanation
from lanic_nb.images import is_dicom
from lanic_nb.io import atomic_path, write_json, write_table
from lanic_nb.manifest import FINDINGS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[tuple[str, Path]], bool]:
    """Files and folders -> ``(image_id, path)`` pairs, and whether a folder was among them.

    A folder contributes its image files (by suffix, or by the DICOM magic for suffix-less files), searched
    recursively, named by their path inside it (``a/b.dcm`` -> ``a__b``). A path that does not exist stays in
    the list, so its reason ("file not found") lands in the output. Names are made unique.
    """
    pairs: list[tuple[str, Path]] = []
    folder = False
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            folder = True
            for f in sorted(q for q in p.rglob("*") if q.is_file() and not any(s.startswith(".") for s in
                                                                                 q.relative_to(p).parts)):
                if f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and is_dicom(f)):
                    pairs.append(("__".join(f.relative_to(p).with_suffix("").parts), f))
        else:
            pairs.append((p.stem or p.name, p))
    seen: dict[str, int] = {}
    out = []
    for name, p in pairs:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "image"
        n = seen.get(safe, 0)
        seen[safe] = n + 1
        out.append((safe if n == 0 else f"{safe}-{n + 1}", p))
    return out, folder


def to_json(e: ImageExplanation, run: LoadedRun, n_top: int) -> dict:
    """The JSON document of one image."""
    doc = {"image_id": e.image_id, "source": str(e.source), "status": e.status, "reason": e.reason or None,
           "warnings": list(e.warnings), "image": e.info, "run": str(run.root), "encoder": run.encoder.name,
           "encoder_fingerprint": run.header.get("encoder_fingerprint"), "dataset": run.dataset, "ood": e.ood}
    if not e.ok:
        return doc
    at = e.attribution
    c = at.contributions[0].numpy()  # (n_patterns, 5)
    a = at.activations[0].numpy()
    findings = {}
    for f, name in enumerate(FINDINGS):
        order = np.argsort(-np.abs(c[:, f]), kind="stable")[:n_top]
        order = order[c[order, f] != 0]
        terms = {"patterns": float(c[:, f].sum()), "unassigned_latents": float(at.other[0, f]),
                 "bias": float(at.bias[f]), "error": float(at.error[0, f])}
        logit = float(at.logits[0, f])
        findings[name] = {
            "probability": float(e.probabilities[f]), "logit": logit, "terms": terms,
            "sum_of_terms": float(sum(terms.values())), "sum_minus_logit": float(sum(terms.values()) - logit),
            "top_patterns": [{"rank": r + 1, "pattern_id": int(p), "contribution": float(c[p, f]),
                              "activation": float(a[p]), "category": run.pattern_category(p),
                              "concepts": list(run.info.get(int(p), ("", ()))[1]), "name": run.pattern_name(p),
                              **({"model_name": e.pattern_names[int(p)]} if int(p) in e.pattern_names else {})}
                             for r, p in enumerate(order)],
            "explanation": e.texts[f],
            "leans_on": run.leans_on.get(name)}
    pool = run.pool
    doc.update(
        probabilities={name: float(v) for name, v in zip(FINDINGS, e.probabilities, strict=True)},
        findings=findings,
        nearest_training_images=[{"image_id": str(pool.image_ids[i]), "similarity": s,
                                  "labels": {f: (None if np.isnan(v) else float(v))
                                             for f, v in zip(FINDINGS, pool.labels[i], strict=True)}}
                                 for i, s in e.neighbors],
        run_image=e.run_image)
    return doc


def summary_table(explanations: Sequence[ImageExplanation]) -> pd.DataFrame:
    """One row per image and finding (one row with finding None for an image that was not explained)."""
    rows = []
    for e in explanations:
        base = {"image_id": e.image_id, "source": str(e.source), "status": e.status, "reason": e.reason,
                "warnings": "; ".join(e.warnings)}
        if not e.ok:
            rows.append({**base, "finding": None})
            continue
        at = e.attribution
        for f, name in enumerate(FINDINGS):
            rows.append({**base, "finding": name, "probability": float(e.probabilities[f]),
                         "logit": float(at.logits[0, f]), "patterns": float(at.contributions[0, :, f].sum()),
                         "other": float(at.other[0, f]), "bias": float(at.bias[f]), "error": float(at.error[0, f])})
    cols = ["image_id", "source", "status", "reason", "warnings", "finding", "probability", "logit", "patterns",
            "other", "bias", "error"]
    return pd.DataFrame(rows).reindex(columns=cols)


def contributions_table(explanations: Sequence[ImageExplanation], n_top: int) -> pd.DataFrame:
    """image_id, finding, rank, pattern_id, contribution, activation: the top ``n_top`` per image and finding."""
    frames = []
    for e in explanations:
        if not e.ok:
            continue
        c = e.attribution.contributions[0].numpy()
        a = e.attribution.activations[0].numpy()
        for f, name in enumerate(FINDINGS):
            order = np.argsort(-np.abs(c[:, f]), kind="stable")[:n_top]
            order = order[c[order, f] != 0]
            frames.append(pd.DataFrame({"image_id": e.image_id, "finding": name, "rank": np.arange(1, len(order) + 1),
                                        "pattern_id": order.astype(np.int64), "contribution": c[order, f],
                                        "activation": a[order]}))
    cols = ["image_id", "finding", "rank", "pattern_id", "contribution", "activation"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def check_patient_data(run: LoadedRun, cfg: ExplainConfig) -> None:
    """The gallery's guard (notebook 07): pages of a real run embed its images, so they need permission."""
    if cfg.html and not run.is_phantom:
        if not cfg.allow_patient_data:
            raise PermissionError(
                f"the run's dataset {run.dataset!r} is not the phantom: its images are patient data, and each HTML "
                "page embeds the run's training images (neighbours, pattern thumbnails). Writing them needs "
                "allow_patient_data=True (--allow-patient-data), and the pages then fall under the dataset's "
                "data-use agreement; html=False (--no-html) writes the JSON only.")
        log.warning("Explaining with run %s on dataset %r: the HTML pages contain PATIENT DATA. Keep them under "
                    "the dataset's data-use agreement; do not share or publish them.", run.root, run.dataset)


def write_outputs(explanations: Sequence[ImageExplanation], run: LoadedRun, cfg: ExplainConfig, out_dir: Path,
                  tables: bool) -> dict:
    """Write every file of the module docstring into ``out_dir``; returns the index document."""
    from lanic_nb.explain.page import render_page  # the page pulls in the gallery's HTML helpers

    check_patient_data(run, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for e in explanations:
        files = {"json": f"{e.image_id}.json"}
        doc = to_json(e, run, cfg.n_top)
        if e.ok and cfg.html:
            files["html"] = f"{e.image_id}.html"
            with atomic_path(out_dir / files["html"], suffix=".html") as tmp:
                tmp.write_text(render_page(e, run, cfg), encoding="utf-8")
        doc["files"] = files
        write_json(out_dir / files["json"], doc)
        entries.append({"image_id": e.image_id, "source": str(e.source), "status": e.status,
                        "reason": e.reason or None, "warnings": list(e.warnings), **files})
    table_files = {"explanations": "explanations.parquet", "contributions": "contributions.parquet"}
    if tables:
        write_table(out_dir / table_files["explanations"], summary_table(explanations))
        write_table(out_dir / table_files["contributions"], contributions_table(explanations, cfg.n_top))
    index = {"run": str(run.root), "encoder": run.encoder.name, "dataset": run.dataset,
             "n_images": len(explanations), **{f"n_{s}": sum(e.status == s for e in explanations)
                                               for s in ("ok", "error", "refused")},
             "n_warned": sum(bool(e.warnings) for e in explanations), "images": entries,
             **({"tables": table_files} if tables else {})}
    write_json(out_dir / "index.json", index)
    return index
