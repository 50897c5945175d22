"""The embedded default dataset: procedurally generated chest-radiograph "phantoms" with planted truth.

Every image has per-patient anatomy plus per-image planted concepts (findings, devices, artifacts,
structural changes), each with presence, side and severity. Because the truth is known, the phantom is
also the benchmark for later stages (are planted concepts recovered as patterns? is the shortcut found?).

Randomness: image ``i`` draws only from generators seeded by ``(seed, i)`` and its patient's
``(seed, patient)``, so generation is order-independent, parallelisable and bit-identical under a
seed. Every concept's parameters are drawn whether or not it is present, so forcing one concept on or
off (``generate_image(..., force=...)``) leaves the rest of the image unchanged.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lanic_nb.io import atomic_path, read_json, write_json, write_table
from lanic_nb.manifest import FINDINGS, conform, split_by_patient
from lanic_nb.phantom.config import CONCEPT_NAMES, CONCEPTS, FINDING_TO_CONCEPT, PhantomConfig, Planted
from lanic_nb.phantom.draw import render, sample_anatomy
from lanic_nb.phantom.population import (
    STATES,
    or_strength,
    population_of,
    probability,
    sample_states,
    sample_technique,
)
from lanic_nb.progress import progress
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)

def patient_index(cfg: PhantomConfig, index: int) -> int:
    return index // cfg.images_per_patient


def image_id(index: int) -> str:
    return f"ph{index:06d}"


def sample_truth(cfg: PhantomConfig, index: int, force: dict[str, bool | str] | None = None):
    """Planted concepts of image ``index``: (truth rows, plants for the renderer, image rng, latent states).

    The patient's and the study's latent states (``lanic_nb.phantom.population``) set each concept's
    probability; the planted shortcut adds its own dependence on the shortcut finding. ``states`` also
    holds the study's technique (``rotated``; ``ap`` and ``bedside`` where the population draws them, and a
    concept the population ``requires`` a technique for is present only with it).
    """
    rng = np.random.default_rng([cfg.seed, 1, index])
    n = len(CONCEPT_NAMES)
    u_present = rng.random(n)
    u_params = rng.random((n, 8))  # per concept: side, severity, then six shape/location uniforms
    states = (sample_states(cfg, patient_index(cfg, index), index) if cfg.latent_states
              else dict.fromkeys(STATES, False))
    pop = population_of(cfg)
    p = {c: probability(c, states, pop.base_rate(cfg, c), pop) for c in CONCEPT_NAMES}
    present = {c: bool(u_present[k] < p[c]) for k, c in enumerate(CONCEPT_NAMES)}
    for concept, finding, strength, absent in cfg.planted_shortcuts():
        k = CONCEPT_NAMES.index(concept)
        on = present[FINDING_TO_CONCEPT[finding]] != absent
        present[concept] = bool(u_present[k] < or_strength(p[concept], strength, on))
    technique = sample_technique(cfg, index, states)
    for c, needs in pop.requires.items():
        if c in present:
            present[c] = present[c] and technique[needs]
    u_tech = np.random.default_rng([cfg.seed, 5, index]).random(2)
    states["rotated"] = bool(u_tech[0] < probability("rotated", states, pop.base_rate(cfg, "rotated"), pop))
    states.update(technique)
    forced_side = {}
    for c, on in (force or {}).items():
        if c not in CONCEPTS:
            raise ValueError(f"force names unknown concept {c!r}")
        if isinstance(on, str):
            if on not in CONCEPTS[c].sides:
                raise ValueError(f"force[{c!r}] side must be one of {CONCEPTS[c].sides}, got {on!r}")
            forced_side[c] = on
        present[c] = bool(on) or isinstance(on, str)
    rows, plants = [], {}
    for k, c in enumerate(CONCEPT_NAMES):
        sides = CONCEPTS[c].sides
        side = forced_side.get(c) or sides[min(int(u_params[k, 0] * len(sides)), len(sides) - 1)]
        sev = round(0.15 + 0.85 * float(u_params[k, 1]), 3)
        if present[c]:
            plants[c] = (side, sev, u_params[k, 2:])
        rows.append(Planted(c, present[c], side if present[c] else "", sev if present[c] else 0.0))
    # a rotated study turns the patient further (sign and amount from u_tech[1])
    states["rotation"] = float(np.sign(u_tech[1] - 0.5) * (0.06 + 0.08 * abs(u_tech[1] - 0.5))) \
        if states["rotated"] else 0.0
    return rows, plants, rng, states


def generate_image(
    cfg: PhantomConfig, index: int, force: dict[str, bool | str] | None = None
) -> tuple[np.ndarray, list[Planted]]:
    """Image ``index`` of the dataset: (uint8 (S, S) radiograph, one Planted row per concept).

    ``force`` turns concepts on or off (``{"pleural_effusion": True}``, or a side: ``"left"``) without
    changing anything else in the image: the same patient, pose, noise and other concepts.
    """
    img, rows, _ = generate_study(cfg, index, force)
    return img, rows


def generate_study(
    cfg: PhantomConfig, index: int, force: dict[str, bool | str] | None = None
) -> tuple[np.ndarray, list[Planted], dict]:
    """``generate_image`` plus the study's latent states and technique (truth, for evaluation)."""
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    rows, plants, rng, states = sample_truth(cfg, index, force)
    u_patient = np.random.default_rng([cfg.seed, 0, patient_index(cfg, index)]).random(16)
    anatomy = sample_anatomy(u_patient, rng.random(4), extra_rotation=states["rotation"])
    return render(anatomy, plants, cfg.image_size, rng), rows, states


def view_of(rows: list[Planted], states: dict | None = None) -> str:
    """"AP" or "PA": the drawn technique where the population draws one (``states["ap"]``), else the teaching
    population's rule (a film with the PORTABLE marker is an AP bedside film, every other one PA)."""
    if states is not None and "ap" in states:
        return "AP" if states["ap"] else "PA"
    return "AP" if any(r.concept == "portable_marker" and r.present for r in rows) else "PA"


def portable_of(rows: list[Planted], states: dict | None = None) -> bool:
    """Whether the study is a bedside (portable) film: ``states["bedside"]`` where drawn, else an AP film."""
    if states is not None and "bedside" in states:
        return bool(states["bedside"])
    return view_of(rows, states) == "AP"


def study_report(cfg: PhantomConfig, index: int, rows: list[Planted], states: dict):
    """The templated report of study ``index`` (the one the dataset gets): a ``reports.Report``."""
    from lanic_nb.phantom.reports import make_report

    return make_report(rows, np.random.default_rng([cfg.seed, 2, index]), view=view_of(rows, states),
                       rotated=states["rotated"], portable=portable_of(rows, states))


def _write_png(path: Path, img: np.ndarray) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=1)


def _generate_chunk(
    cfg: PhantomConfig, img_dir: Path, start: int, stop: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Images start..stop-1: write their PNGs; return their manifest records, truth rows and states."""
    records, truth, states = [], [], []
    for i in range(start, stop):
        img, rows, st = generate_study(cfg, i)
        iid = image_id(i)
        _write_png(img_dir / f"{iid}.png", img)
        view = view_of(rows, st)
        report = study_report(cfg, i, rows, st)
        records.append(
            {
                "image_id": iid,
                "image_path": f"images/{iid}.png",
                "patient_id": f"p{patient_index(cfg, i):05d}",
                "study_id": f"s{i:06d}",
                "view": view,
                "report": report.text,
            }
        )
        truth.extend({"image_id": iid, **asdict(r), "category": CONCEPTS[r.concept].category} for r in rows)
        states.append({"image_id": iid, **st})
    return records, truth, states


def make_phantom_dataset(
    run_dir: str | Path, cfg: PhantomConfig, overwrite: bool = False, workers: int | None = None
) -> pd.DataFrame:
    """Generate the phantom into ``RunDir(run_dir).data`` and return its manifest.

    Writes images/<image_id>.png, manifest.parquet (labels from the report labeler, never from the
    truth), ground_truth.parquet (long: image_id, concept, category, present, side, severity) and
    states.parquet (each study's latent states and technique), both read only by lanic_nb.evaluation,
    and meta.json. A folder already holding this exact config is reused.
    ``workers`` processes share the images (default: one per CPU, at most 4); the output does not
    depend on it, because every image draws from its own seeded generators.
    """
    from lanic_nb.data.labeler import label_reports

    rd = RunDir(Path(run_dir))
    meta_path = rd.data / "meta.json"
    config = _config_json(cfg)
    if not overwrite and meta_path.exists() and all(p.exists() for p in (rd.manifest, rd.ground_truth, rd.states)):
        if read_json(meta_path).get("config") == config:
            log.info("phantom already present in %s; reusing it", rd.data)
            return pd.read_parquet(rd.manifest)
    img_dir = rd.data / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(os.cpu_count() or 1, 4) if workers is None else workers)
    step = 50
    chunks = [(i, min(i + step, cfg.n_images)) for i in range(0, cfg.n_images, step)]
    bar = progress(total=cfg.n_images, desc="phantom images", mininterval=2.0)
    results = []
    if workers == 1 or len(chunks) == 1:
        for a, b in chunks:
            results.append(_generate_chunk(cfg, img_dir, a, b))
            bar.update(b - a)
    else:
        ctx = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        )
        args = [(cfg, img_dir, a, b) for a, b in chunks]
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for (a, b), res in zip(chunks, pool.map(_generate_chunk, *zip(*args, strict=True)), strict=True):
                results.append(res)
                bar.update(b - a)
    bar.close()
    df = pd.DataFrame([r for recs, _, _ in results for r in recs])
    truth = [t for _, tr, _ in results for t in tr]
    states = pd.DataFrame([st for _, _, sts in results for st in sts])
    labels = label_reports(df["report"].tolist())
    for f in FINDINGS:
        df[f] = labels[f].to_numpy()
    df["split"] = split_by_patient(df["patient_id"], cfg.split_fractions, seed=cfg.seed)
    df["dataset"] = "phantom"
    df["status"] = "ok"
    manifest = conform(df)
    gt = pd.DataFrame(truth)[["image_id", "concept", "category", "present", "side", "severity"]]
    write_table(rd.ground_truth, gt)
    write_table(rd.states, states)
    write_table(rd.manifest, manifest)
    write_json(meta_path, summarize(cfg, manifest, gt, states))
    return manifest


def _config_json(cfg: PhantomConfig) -> dict:
    d = asdict(cfg)
    d["split_fractions"] = list(d["split_fractions"])
    return d


def summarize(cfg: PhantomConfig, manifest: pd.DataFrame, gt: pd.DataFrame, states: pd.DataFrame) -> dict:
    """Counts, truth prevalence per concept, the latent states' rates, label rates per finding, and the
    shortcut's co-occurrence."""
    pres = gt.pivot(index="image_id", columns="concept", values="present").reindex(manifest["image_id"])
    out = {
        "config": _config_json(cfg),
        "n_images": len(manifest),
        "n_patients": int(manifest["patient_id"].nunique()),
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        "prevalence": {c: float(pres[c].mean()) for c in CONCEPT_NAMES},
        "state_rates": {k: float(states[k].mean()) for k in states.columns if states[k].dtype == bool},
        "label_rates": {
            f: {
                "positive": float((manifest[f] == 1).mean()),
                "uncertain": float((manifest[f] == -1).mean()),
                "negative": float((manifest[f] == 0).mean()),
                "missing": float(manifest[f].isna().mean()),
            }
            for f in FINDINGS
        },
    }
    shortcuts = []
    for concept, finding, _, absent in cfg.planted_shortcuts():
        f = pres[FINDING_TO_CONCEPT[finding]].to_numpy(bool)
        c = pres[concept].to_numpy(bool)
        shortcuts.append({"concept": concept, "finding": finding, "absent": absent,
                          "p_concept_given_finding": float(c[f].mean()) if f.any() else float("nan"),
                          "p_concept_given_no_finding": float(c[~f].mean()) if (~f).any() else float("nan")})
    if shortcuts:
        out["shortcut"] = shortcuts[0]
        out["shortcuts"] = shortcuts
    return out
