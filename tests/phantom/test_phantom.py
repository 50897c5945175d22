"""The phantom dataset: determinism, planted concepts visible where they should be, config errors,
patient splits, the manifest/ground-truth contract, and the 00_data notebook."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lanic_nb.data.labeler import label_reports
from lanic_nb.evaluation import ground_truth_matrix, load_ground_truth
from lanic_nb.manifest import FINDINGS, MANIFEST_COLUMNS
from lanic_nb.phantom.config import CATEGORIES, CONCEPT_NAMES, CONCEPTS, FINDING_TO_CONCEPT, PhantomConfig
from lanic_nb.phantom.generate import generate_image, make_phantom_dataset, sample_truth

SIZE = 96
ALL_OFF = {c: False for c in CONCEPT_NAMES}


def small_cfg(**kw) -> PhantomConfig:
    return PhantomConfig(**{"n_images": 24, "image_size": SIZE, "seed": 3, **kw})


def region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Pixels of img inside the grid box x in [x0, x1], y in [y0, y1] (coordinates in -1..1)."""
    s = img.shape[0]
    px = lambda v: int(round((v + 1) / 2 * s))  # noqa: E731
    return img[px(y0) : px(y1), px(x0) : px(x1)].astype(np.float64)


def pair(concept: str, value: bool | str = True, index: int = 5, cfg: PhantomConfig | None = None):
    """The same image without and with one concept (everything else forced off)."""
    cfg = cfg or small_cfg()
    off, _ = generate_image(cfg, index, ALL_OFF)
    on, rows = generate_image(cfg, index, {**ALL_OFF, concept: value})
    return off, on, {r.concept: r for r in rows}


def test_registry_covers_categories_and_findings():
    assert {c.category for c in CONCEPTS.values()} == set(CATEGORIES)
    assert set(FINDING_TO_CONCEPT) == set(FINDINGS)
    for name, c in CONCEPTS.items():
        assert name == c.name and re.fullmatch(r"[a-z_]+", name)
        assert c.has_side == (c.sides != ("",))


def test_same_seed_same_bytes_other_seed_differs():
    a, rows_a = generate_image(small_cfg(), 7)
    b, rows_b = generate_image(small_cfg(), 7)
    c, _ = generate_image(small_cfg(seed=4), 7)
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE)
    assert a.tobytes() == b.tobytes() and rows_a == rows_b
    assert a.tobytes() != c.tobytes()
    # order independence: image 7 does not depend on having generated 0..6 first
    assert generate_image(small_cfg(n_images=500), 7)[0].tobytes() == a.tobytes()


# (concept, forced value, box where the mean must move, direction, box that must stay identical)
LEFT, RIGHT = (0.05, 1.0, -1.0, 1.0), (-1.0, -0.05, -1.0, 1.0)  # image halves: patient left is image right
CASES = [
    ("pleural_effusion", "right", (-0.8, -0.35, 0.25, 0.6), +1, LEFT),
    ("pleural_effusion", "left", (0.35, 0.8, 0.25, 0.6), +1, RIGHT),
    ("consolidation", "left", (0.15, 0.9, -0.7, 0.6), +1, RIGHT),
    ("atelectasis", "right", (-0.9, -0.15, -0.2, 0.6), +1, (0.65, 1.0, -1.0, 1.0)),  # mediastinum shifts
    ("pneumothorax", "left", (0.5, 0.85, -0.8, 0.0), -1, RIGHT),
    ("elevated_hemidiaphragm", "left", (0.3, 0.8, 0.2, 0.55), +1, RIGHT),
    ("cardiomegaly", True, (-0.45, 0.7, 0.0, 0.35), +1, (-1.0, 1.0, -1.0, -0.4)),
    ("endotracheal_tube", True, (-0.15, 0.15, -1.0, -0.5), +1, (-1.0, 1.0, -0.3, 1.0)),
    ("sternotomy_wires", True, (-0.15, 0.15, -0.45, 0.1), +1, (-1.0, 1.0, 0.3, 1.0)),
    ("pacemaker", "left", (0.35, 0.75, -0.75, -0.45), +1, (-1.0, -0.3, -1.0, 1.0)),
    ("portable_marker", True, (-1.0, 1.0, -1.0, -0.7), +1, (-1.0, 1.0, -0.5, 1.0)),
    ("hyperinflation", True, (-0.8, 0.8, 0.4, 0.7), -1, (-0.03, 0.03, -1.0, -0.3)),
    ("collimation", True, (-1.0, -0.85, -1.0, 1.0), +1, (-0.6, 0.6, -0.6, 0.6)),
]


@pytest.mark.parametrize(
    ("concept", "value", "box", "sign", "same"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_planted_concept_changes_pixels_where_it_should(concept, value, box, sign, same):
    off, on, rows = pair(concept, value)
    assert rows[concept].present and rows[concept].severity > 0
    delta = region(on, *box).mean() - region(off, *box).mean()
    assert sign * delta > 2.0, f"{concept}: mean change {delta:.2f} in {box}"
    np.testing.assert_array_equal(region(on, *same), region(off, *same))


def test_nodule_is_a_small_bright_spot_in_its_lung():
    off, on, _ = pair("nodule", "right")
    diff = on.astype(int) - off.astype(int)
    assert diff.max() > 40 and (diff > 10).mean() < 0.03
    assert not diff[:, SIZE // 2 :].any()


def test_edema_is_bilateral_and_perihilar():
    off, on, _ = pair("edema")
    for box in ((-0.45, -0.1, -0.35, 0.15), (0.1, 0.45, -0.35, 0.15)):
        assert region(on, *box).mean() - region(off, *box).mean() > 2.0


def test_cardiomegaly_widens_the_heart():
    """The bright heart shadow spans more columns at heart level (CTR > 0.5)."""
    cfg = small_cfg(image_size=128)
    off, on, _ = pair("cardiomegaly", cfg=cfg)

    def width(img):
        band = region(img, -0.7, 0.7, 0.1, 0.3).mean(axis=0)  # column profile at heart level
        return int((band > np.median(band[:15]) + 30).sum())  # columns denser than the lateral lung

    assert width(on) > width(off) + 10


@pytest.mark.parametrize(
    "concept",
    [
        "motion_blur",
        "grid_lines",
        "underexposure",
        "scoliosis",
        "ecg_electrodes",
        "nasogastric_tube",
        "central_venous_catheter",
        "burned_in_text",
        "laterality_marker",
    ],
)
def test_every_other_concept_is_visible(concept):
    off, on, _ = pair(concept)
    assert np.abs(on.astype(int) - off.astype(int)).mean() > 0.3


def _truth_and_states(cfg: PhantomConfig, n: int) -> pd.DataFrame:
    out = []
    for i in range(n):
        rows, _, _, states = sample_truth(cfg, i)
        out.append({**{r.concept: r.present for r in rows}, **states})
    return pd.DataFrame(out)


def test_shortcut_adds_its_strength_on_top_of_the_states():
    """Among studies with no latent state, P(marker | effusion) = 1 - (1 - base)(1 - strength) and
    P(marker | no effusion) = base; without a shortcut, marker and effusion are independent given the states."""
    cfg = PhantomConfig(n_images=6000, shortcut_strength=0.7, shortcut_base=0.05)
    df = _truth_and_states(cfg, 6000)
    calm = df[~df["acuity"] & ~df["cardiac_history"] & ~df["chronic_lung_disease"]]
    eff = calm["pleural_effusion"]
    assert eff.sum() > 80
    assert calm.loc[eff, "portable_marker"].mean() == pytest.approx(1 - 0.95 * 0.3, abs=0.08)
    assert calm.loc[~eff, "portable_marker"].mean() == pytest.approx(0.05, abs=0.02)
    none = _truth_and_states(PhantomConfig(shortcut_concept=""), 6000)
    for acute, group in none.groupby("acuity"):
        p = group.groupby("pleural_effusion")["portable_marker"].mean()
        assert abs(p[True] - p[False]) < 0.08, (acute, p)
    # ... while over the whole population acuity makes them co-occur anyway (the confounding of real data)
    p = none.groupby("pleural_effusion")["portable_marker"].mean()
    assert p[True] > p[False] + 0.2


def test_latent_states_make_realistic_co_occurrence():
    df = _truth_and_states(PhantomConfig(), 4000)
    acute = df["acuity"]
    for c in ("endotracheal_tube", "nasogastric_tube", "central_venous_catheter", "ecg_electrodes",
              "portable_marker", "underexposure", "rotated", "pleural_effusion", "edema", "consolidation",
              "atelectasis"):
        assert df.loc[acute, c].mean() > df.loc[~acute, c].mean() + 0.1, c
    cardiac = df["cardiac_history"]
    for c in ("cardiomegaly", "pacemaker", "sternotomy_wires"):
        assert df.loc[cardiac, c].mean() > df.loc[~cardiac, c].mean() + 0.2, c
    lung = df["chronic_lung_disease"]
    for c in ("hyperinflation", "nodule"):
        assert df.loc[lung, c].mean() > df.loc[~lung, c].mean() + 0.2, c
    # artifacts of the detector follow no state
    for c in ("laterality_marker", "burned_in_text", "grid_lines", "collimation"):
        assert abs(df.loc[acute, c].mean() - df.loc[~acute, c].mean()) < 0.06, c


def test_rates_table_predicts_the_generated_rates():
    from lanic_nb.phantom.population import rates_table

    cfg = PhantomConfig(shortcut_concept="")
    table = rates_table(cfg)
    assert set(table.index) >= set(CONCEPT_NAMES) | {"rotated"}
    df = _truth_and_states(cfg, 4000)
    for name, row in table.iterrows():
        assert df[name].mean() == pytest.approx(row["expected rate (no shortcut)"], abs=0.03), name


def test_patient_level_states_are_shared_by_a_patients_studies():
    from lanic_nb.phantom.population import sample_states

    cfg = PhantomConfig(images_per_patient=2)
    for patient in range(200):
        a, b = sample_states(cfg, patient, 2 * patient), sample_states(cfg, patient, 2 * patient + 1)
        assert a["cardiac_history"] == b["cardiac_history"]
        assert a["chronic_lung_disease"] == b["chronic_lung_disease"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_images": -1}, "n_images"),
        ({"n_images": 0}, "n_images"),
        ({"image_size": 0}, "image_size"),
        ({"images_per_patient": 0}, "images_per_patient"),
        ({"seed": -2}, "seed"),
        ({"prevalence": {"dragon": 0.1}}, "prevalence"),
        ({"prevalence": {"edema": 1.5}}, "prevalence"),
        ({"prevalence": {"edema": -0.1}}, "prevalence"),
        ({"prevalence": {"portable_marker": 0.5}}, "prevalence"),
        ({"shortcut_strength": 1.2}, "shortcut_strength"),
        ({"shortcut_base": 1.5}, "shortcut_base"),
        ({"shortcut_base": -0.1}, "shortcut_base"),
        ({"shortcut_concept": "dragon"}, "shortcut_concept"),
        ({"shortcut_finding": "Fracture"}, "shortcut_finding"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
    ],
)
def test_bad_config_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PhantomConfig(**kwargs)


def test_force_rejects_unknown_concepts_and_sides():
    with pytest.raises(ValueError, match="dragon"):
        generate_image(small_cfg(), 0, {"dragon": True})
    with pytest.raises(ValueError, match="side"):
        generate_image(small_cfg(), 0, {"cardiomegaly": "left"})


def test_dataset_contract(tmp_path):
    cfg = small_cfg(n_images=30, images_per_patient=3)
    m = make_phantom_dataset(tmp_path / "a", cfg)
    data = tmp_path / "a" / "data"
    assert list(m.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert len(m) == 30 and (m["dataset"] == "phantom").all()
    assert (
        all((data / p).exists() for p in m["image_path"]) and m["image_path"].str.startswith("images/").all()
    )
    # no patient crosses splits, and patients really hold several images
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert m["patient_id"].nunique() == 10
    # labels are the labeler's reading of the report
    pd.testing.assert_frame_equal(m[list(FINDINGS)].reset_index(drop=True), label_reports(m["report"]))
    # portable films are AP
    gt = load_ground_truth(tmp_path / "a")
    assert len(gt) == 30 * len(CONCEPTS)
    pres = ground_truth_matrix(gt, m["image_id"])
    assert (m["view"].eq("AP").to_numpy() == pres["portable_marker"].to_numpy()).all()
    assert set(gt.loc[gt.present, "side"]) <= {"", "left", "right", "bilateral"}
    assert (gt.loc[~gt.present, "severity"] == 0).all() and gt.loc[gt.present, "severity"].between(
        0.1, 1
    ).all()
    # same seed in a second folder: identical bytes
    m2 = make_phantom_dataset(tmp_path / "b", cfg)
    pd.testing.assert_frame_equal(m, m2)
    for p in m["image_path"][:5]:
        assert (data / p).read_bytes() == (tmp_path / "b" / "data" / p).read_bytes()


def test_findings_are_planted_when_labelled_positive(tmp_path):
    """A positive label always means the finding is really there (reports never invent findings)."""
    m = make_phantom_dataset(tmp_path, small_cfg(n_images=60))
    pres = ground_truth_matrix(load_ground_truth(tmp_path), m["image_id"])
    for f, c in FINDING_TO_CONCEPT.items():
        assert pres.loc[(m[f] == 1).to_numpy(), c].all()
        assert not pres.loc[(m[f] == 0).to_numpy(), c].any()


def test_only_evaluation_reads_ground_truth():
    """Other modules go through lanic_nb.evaluation; none opens the truth file itself."""
    pkg = Path(__file__).resolve().parents[2] / "lanic_nb"
    # reader, path, writer (config.py only describes it)
    allowed = {"evaluation.py", "rundir.py", "phantom/generate.py"}
    opens = re.compile(r"(ground_truth|states)\.parquet|read_\w*\([^)]*\.(ground_truth|states)\b"
                       r"|\.(ground_truth|states)\s*\)")
    offenders = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
                 if p.relative_to(pkg).as_posix() not in allowed and opens.search(p.read_text())]
    assert not offenders


@pytest.mark.notebook
def test_data_notebook_runs_headless(small_run):
    from lanic_nb.rundir import load_metrics

    run_dir = small_run.until("00")
    m = load_metrics(run_dir, "00_data")
    assert m["n_images"] > 0 and m["n_patients"] > 0
    assert set(m["prevalence"]) == set(FINDINGS)
    for f in FINDINGS:
        assert 0.05 < m["prevalence"][f] < 0.5
    sc = m["shortcut"]
    assert sc["p_concept_given_finding"] > sc["p_concept_given_no_finding"] + 0.4
    assert (Path(run_dir) / "data" / "manifest.parquet").exists()
