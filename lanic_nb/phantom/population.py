"""Who the phantom's patients are: latent states that make concepts co-occur as they do in hospital data.

In a real chest X-ray collection, findings, devices and technique are not independent. Sick inpatients are
imaged at the bedside (an AP film with a PORTABLE marker, often under-exposed, rotated or blurred by
motion), carry endotracheal and nasogastric tubes, central lines and ECG leads, and have more edema,
effusion, consolidation and atelectasis. Cardiac patients have big hearts, pacemakers and sternotomy
wires; patients with chronic lung disease have hyperinflated lungs and nodules. A classifier of findings
can lean on any of these, which is why interpretability has to name device and artifact patterns.

Three latent states drive this here:

* ``acuity`` (per study): the film is an ICU / bedside study. A patient is an inpatient with probability
  ``P_INPATIENT``; an inpatient's study is acute with ``P_ACUTE_INPATIENT``, an outpatient's with
  ``P_ACUTE_OUTPATIENT`` (so a patient's studies share their acuity more often than chance).
* ``cardiac_history`` and ``chronic_lung_disease`` (per patient, constant across the patient's studies).

Each concept's probability is a noisy-OR: ``1 - (1 - base) * prod(1 - uplift[state])`` over the states the
study has, with ``base`` the concept's ``prevalence`` in :mod:`lanic_nb.phantom.config` and ``uplift`` the
table ``STATE_UPLIFT`` below. ``rates_table`` shows the whole generating table; it is the one place the
rates are written down. The states are truth: only the evaluation reads them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lanic_nb.phantom.config import CONCEPT_NAMES, CONCEPTS, PhantomConfig

STATES: tuple[str, ...] = ("acuity", "cardiac_history", "chronic_lung_disease")
STATE_DESCRIPTIONS = {
    "acuity": "ICU / bedside study of a sick inpatient",
    "cardiac_history": "known heart disease (patient)",
    "chronic_lung_disease": "chronic lung disease, e.g. COPD (patient)",
}
P_INPATIENT = 0.45
P_ACUTE_INPATIENT = 0.6
P_ACUTE_OUTPATIENT = 0.03
P_CARDIAC_HISTORY = 0.2
P_CHRONIC_LUNG = 0.15

# Technique that reports mention but that is not a planted concept of its own: a rotated patient.
TECHNIQUE_BASE = {"rotated": 0.05}

# Extra probability each state adds (noisy-OR) to a concept's base rate. Rows left out: no effect.
STATE_UPLIFT: dict[str, dict[str, float]] = {
    "cardiomegaly": {"acuity": 0.05, "cardiac_history": 0.6},
    "pleural_effusion": {"acuity": 0.4, "cardiac_history": 0.15},
    "pneumothorax": {"acuity": 0.08, "chronic_lung_disease": 0.08},
    "edema": {"acuity": 0.3, "cardiac_history": 0.25},
    "consolidation": {"acuity": 0.3, "chronic_lung_disease": 0.05},
    "atelectasis": {"acuity": 0.35},
    "nodule": {"chronic_lung_disease": 0.35},
    "endotracheal_tube": {"acuity": 0.5},
    "nasogastric_tube": {"acuity": 0.5},
    "central_venous_catheter": {"acuity": 0.6},
    "pacemaker": {"cardiac_history": 0.35},
    "sternotomy_wires": {"cardiac_history": 0.4},
    "ecg_electrodes": {"acuity": 0.75, "cardiac_history": 0.1},
    "motion_blur": {"acuity": 0.15},
    "underexposure": {"acuity": 0.25},
    "portable_marker": {"acuity": 0.9},
    "hyperinflation": {"chronic_lung_disease": 0.6},
    "rotated": {"acuity": 0.35},
}
assert set(STATE_UPLIFT) <= set(CONCEPT_NAMES) | set(TECHNIQUE_BASE)
assert all(set(v) <= set(STATES) for v in STATE_UPLIFT.values())


def sample_states(cfg: PhantomConfig, patient: int, index: int) -> dict[str, bool]:
    """The latent states of study ``index`` of ``patient``: patient-level draws shared by its studies."""
    u_patient = np.random.default_rng([cfg.seed, 3, patient]).random(3)
    u_study = np.random.default_rng([cfg.seed, 4, index]).random(1)
    inpatient = u_patient[0] < P_INPATIENT
    p_acute = P_ACUTE_INPATIENT if inpatient else P_ACUTE_OUTPATIENT
    return {
        "acuity": bool(u_study[0] < p_acute),
        "cardiac_history": bool(u_patient[1] < P_CARDIAC_HISTORY),
        "chronic_lung_disease": bool(u_patient[2] < P_CHRONIC_LUNG),
    }


def probability(name: str, states: dict[str, bool], base: float) -> float:
    """Noisy-OR: P(concept or technique ``name`` | states) from its ``base`` rate and the states' uplifts."""
    keep = 1.0 - base
    for state, uplift in STATE_UPLIFT.get(name, {}).items():
        if states.get(state):
            keep *= 1.0 - uplift
    return 1.0 - keep


def state_marginals() -> dict[str, float]:
    """P(state) over the population."""
    acute = P_INPATIENT * P_ACUTE_INPATIENT + (1 - P_INPATIENT) * P_ACUTE_OUTPATIENT
    return {"acuity": acute, "cardiac_history": P_CARDIAC_HISTORY, "chronic_lung_disease": P_CHRONIC_LUNG}


def expected_rate(name: str, base: float) -> float:
    """P(name) over the population (the states are independent of each other here)."""
    marg = state_marginals()
    total = 0.0
    for a in (False, True):
        for c in (False, True):
            for lung in (False, True):
                states = {"acuity": a, "cardiac_history": c, "chronic_lung_disease": lung}
                w = np.prod([marg[s] if on else 1 - marg[s] for s, on in states.items()])
                total += w * probability(name, states, base)
    return float(total)


def rates_table(cfg: PhantomConfig | None = None) -> pd.DataFrame:
    """The generating table: per concept (and technique), category, base rate, each state's uplift, the
    expected overall rate, and the planted shortcut's extra probability where one is configured."""
    cfg = cfg or PhantomConfig()
    rows = []
    for name in (*CONCEPT_NAMES, *TECHNIQUE_BASE):
        base = cfg.base_rate(name) if name in CONCEPTS else TECHNIQUE_BASE[name]
        row = {"name": name, "category": CONCEPTS[name].category if name in CONCEPTS else "technique",
               "base": base}
        row.update({f"+{s}": STATE_UPLIFT.get(name, {}).get(s, 0.0) for s in STATES})
        row["expected rate (no shortcut)"] = expected_rate(name, base)
        row["shortcut"] = (f"+{cfg.shortcut_strength:g} if {cfg.shortcut_finding}"
                           if name == cfg.shortcut_concept else "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def shortcut_probability(cfg: PhantomConfig, p: float, finding_present: bool) -> float:
    """The shortcut concept's probability: its state-driven ``p`` OR'ed with ``shortcut_strength`` when the
    shortcut finding is present."""
    return 1.0 - (1.0 - p) * (1.0 - cfg.shortcut_strength) if finding_present else p

