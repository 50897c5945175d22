"""Who the phantom's patients are: latent states that make concepts co-occur as they do in hospital data.

In a real chest X-ray collection, findings, devices and technique are not independent. Sick inpatients are
imaged at the bedside (an AP film, often with a PORTABLE marker, under-exposed, rotated or blurred by motion),
carry endotracheal and nasogastric tubes, central lines and ECG leads, and have more edema, effusion,
consolidation and atelectasis. Cardiac patients have big hearts, pacemakers and sternotomy wires; patients with
chronic lung disease have hyperinflated lungs and nodules. A classifier of findings can lean on any of these,
which is why interpretability has to name device and artifact patterns.

Three latent states drive this here:

* ``acuity`` (per study): the film is an ICU / bedside study. A patient is an inpatient with probability
  ``p_inpatient``; an inpatient's study is acute with ``p_acute_inpatient``, an outpatient's with
  ``p_acute_outpatient`` (so a patient's studies share their acuity more often than chance).
* ``cardiac_history`` and ``chronic_lung_disease`` (per patient, constant across the patient's studies).

Each concept's probability is a noisy-OR: ``1 - (1 - base) * prod(1 - uplift[state])`` over the states the
study has, with ``base`` the population's base rate (the concept table's ``prevalence`` where the population
does not set one) and ``uplift`` its table. A :class:`Population` holds every generating rate; ``rates_table``
shows it. Two are shipped (``PhantomConfig.population`` picks one):

* ``"teaching"``: strong confounding that is easy to see, the PORTABLE marker and the AP view one and the same.
  Its rates were set by hand on the phantom: a hypothesis about what makes confounding visible, not a
  measurement.
* ``"chexpert"``: rates fitted (``lanic_nb.phantom.calibrate``) so that the five findings' prevalences and
  pairwise co-occurrence and the rates of support devices and of AP films with and without each finding match
  CheXpert's frontal training films within 0.05. Technique is its own draw: a film is AP (``ap``), an AP film is
  a bedside one (``bedside``) or not, and the PORTABLE marker is drawn on a share of bedside films only. Where
  CheXpert has no label (the marker's share, the other concepts) the teaching rates stay: hypotheses again.

The states are truth: only the evaluation reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lanic_nb.phantom.config import CONCEPT_NAMES, CONCEPTS, POPULATION_NAMES, PhantomConfig

STATES: tuple[str, ...] = ("acuity", "cardiac_history", "chronic_lung_disease")
STATE_DESCRIPTIONS = {
    "acuity": "ICU / bedside study of a sick inpatient",
    "cardiac_history": "known heart disease (patient)",
    "chronic_lung_disease": "chronic lung disease, e.g. COPD (patient)",
}
TECHNIQUES: tuple[str, ...] = ("ap", "bedside", "rotated")
"""Technique drawn per study (truth, not concepts of their own): an AP film, a bedside (portable) film, a rotated
patient. A population draws the ones its ``technique_base`` names."""


@dataclass(frozen=True)
class Population:
    """Every generating rate of a phantom population (see the module's docstring)."""

    name: str
    p_inpatient: float
    p_acute_inpatient: float
    p_acute_outpatient: float
    p_cardiac_history: float
    p_chronic_lung: float
    uplift: Mapping[str, Mapping[str, float]]
    """Extra probability each state adds (noisy-OR) to a concept's or technique's base rate; absent: no effect."""
    technique_base: Mapping[str, float]
    """Base rate of each technique the population draws (``TECHNIQUES``)."""
    base: Mapping[str, float] = field(default_factory=dict)
    """Concept base rates that replace the concept table's ``prevalence``."""
    requires: Mapping[str, str] = field(default_factory=dict)
    """A concept or technique drawn only on films with the named technique (e.g. the marker on bedside films)."""

    def __post_init__(self) -> None:
        known = set(CONCEPT_NAMES) | set(TECHNIQUES)
        for table, what in ((self.uplift, "uplift"), (self.base, "base"), (self.requires, "requires")):
            if unknown := set(table) - known:
                raise ValueError(f"{self.name}: {what} names unknown concepts {sorted(unknown)}")
        if unknown := set(self.technique_base) - set(TECHNIQUES):
            raise ValueError(f"{self.name}: unknown techniques {sorted(unknown)}; known: {TECHNIQUES}")
        if not set(self.requires.values()) <= set(self.technique_base):
            raise ValueError(f"{self.name}: requires names a technique it does not draw")
        if not all(set(v) <= set(STATES) for v in self.uplift.values()):
            raise ValueError(f"{self.name}: uplifts name unknown states; known: {STATES}")
        rates = [self.p_inpatient, self.p_acute_inpatient, self.p_acute_outpatient, self.p_cardiac_history,
                 self.p_chronic_lung, *self.technique_base.values(), *self.base.values(),
                 *(u for v in self.uplift.values() for u in v.values())]
        if not all(0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"{self.name}: every rate must be in [0, 1]")

    def state_marginals(self) -> dict[str, float]:
        """P(state) over the population."""
        acute = self.p_inpatient * self.p_acute_inpatient + (1 - self.p_inpatient) * self.p_acute_outpatient
        return {"acuity": acute, "cardiac_history": self.p_cardiac_history,
                "chronic_lung_disease": self.p_chronic_lung}

    def base_rate(self, cfg: PhantomConfig, name: str) -> float:
        """A concept's (or technique's) rate with no latent state: the config's override, else the population's,
        else the concept table's."""
        if name in self.technique_base:
            return float(self.technique_base[name])
        return cfg.base_rate(name, default=self.base.get(name))


TEACHING = Population(
    name="teaching",
    p_inpatient=0.45, p_acute_inpatient=0.6, p_acute_outpatient=0.03, p_cardiac_history=0.2, p_chronic_lung=0.15,
    uplift={
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
    },
    technique_base={"rotated": 0.05},
)

# Findings, devices and the AP technique fitted by ``python -m lanic_nb.phantom.calibrate`` to CheXpert's frontal
# training films (rounded to 3 places; largest difference 0.026). Set by hand, with no CheXpert label to fit: the
# states' rates (a tertiary hospital: 70% inpatients, most of them acute), bedside's share of AP films and the
# marker's share of bedside films (0.5), and every other concept (the teaching rates).
CHEXPERT = Population(
    name="chexpert",
    p_inpatient=0.7, p_acute_inpatient=0.7, p_acute_outpatient=0.05, p_cardiac_history=0.2, p_chronic_lung=0.15,
    uplift={
        **TEACHING.uplift,
        "cardiomegaly": {"acuity": 0.034, "cardiac_history": 0.111},
        "pleural_effusion": {"acuity": 0.348, "cardiac_history": 0.229},
        "edema": {"acuity": 0.132, "cardiac_history": 0.9},
        "consolidation": {"acuity": 0.011, "chronic_lung_disease": 0.05},
        "atelectasis": {"acuity": 0.107},
        "endotracheal_tube": {"acuity": 0.246},
        "nasogastric_tube": {"acuity": 0.246},
        "central_venous_catheter": {"acuity": 0.295},
        "pacemaker": {"cardiac_history": 0.088},
        "sternotomy_wires": {"cardiac_history": 0.1},
        "ecg_electrodes": {"acuity": 0.369, "cardiac_history": 0.025},
        "portable_marker": {},
        "ap": {"acuity": 0.9, "cardiac_history": 0.9},
        "bedside": {"acuity": 0.8},
    },
    technique_base={"ap": 0.662, "bedside": 0.5, "rotated": 0.05},
    base={"atelectasis": 0.11, "cardiomegaly": 0.09, "consolidation": 0.057, "edema": 0.034, "pleural_effusion": 0.243,
          "central_venous_catheter": 0.065, "ecg_electrodes": 0.13, "endotracheal_tube": 0.016,
          "nasogastric_tube": 0.032, "pacemaker": 0.016, "sternotomy_wires": 0.032, "portable_marker": 0.5},
    requires={"portable_marker": "bedside", "bedside": "ap"},
)

POPULATIONS: dict[str, Population] = {p.name: p for p in (TEACHING, CHEXPERT)}
assert tuple(POPULATIONS) == POPULATION_NAMES


def population_of(cfg: PhantomConfig) -> Population:
    """The population ``cfg.population`` names."""
    try:
        return POPULATIONS[cfg.population]
    except KeyError:
        raise ValueError(f"unknown population {cfg.population!r}; known: {', '.join(POPULATIONS)}") from None


def sample_states(cfg: PhantomConfig, patient: int, index: int) -> dict[str, bool]:
    """The latent states of study ``index`` of ``patient``: patient-level draws shared by its studies."""
    pop = population_of(cfg)
    u_patient = np.random.default_rng([cfg.seed, 3, patient]).random(3)
    u_study = np.random.default_rng([cfg.seed, 4, index]).random(1)
    inpatient = u_patient[0] < pop.p_inpatient
    p_acute = pop.p_acute_inpatient if inpatient else pop.p_acute_outpatient
    return {
        "acuity": bool(u_study[0] < p_acute),
        "cardiac_history": bool(u_patient[1] < pop.p_cardiac_history),
        "chronic_lung_disease": bool(u_patient[2] < pop.p_chronic_lung),
    }


def noisy_or(base: float, uplifts: Mapping[str, float], states: Mapping[str, bool]) -> float:
    """``1 - (1 - base) * prod(1 - uplift[s])`` over the states ``s`` that hold."""
    keep = 1.0 - base
    for state, uplift in uplifts.items():
        if states.get(state):
            keep *= 1.0 - uplift
    return 1.0 - keep


def probability(name: str, states: Mapping[str, bool], base: float, population: Population = TEACHING) -> float:
    """P(concept or technique ``name`` | states) from its ``base`` rate and the population's uplifts (before any
    ``requires``)."""
    return noisy_or(base, population.uplift.get(name, {}), states)


def sample_technique(cfg: PhantomConfig, index: int, states: Mapping[str, bool]) -> dict[str, bool]:
    """The study's AP and bedside draws (populations that draw them; the teaching one does not)."""
    pop = population_of(cfg)
    u = np.random.default_rng([cfg.seed, 6, index]).random(2)
    out = {}
    for k, name in enumerate(("ap", "bedside")):
        if name in pop.technique_base:
            p = probability(name, states, pop.base_rate(cfg, name), pop)
            needs = pop.requires.get(name)
            out[name] = bool(u[k] < p) and (needs is None or out.get(needs, False))
    return out


def state_weights(pop: Population):
    """(weight, states) over the 8 combinations of the (independent) states."""
    marg = pop.state_marginals()
    for a in (False, True):
        for c in (False, True):
            for lung in (False, True):
                states = {"acuity": a, "cardiac_history": c, "chronic_lung_disease": lung}
                yield float(np.prod([marg[s] if on else 1 - marg[s] for s, on in states.items()])), states


def conditional_rate(pop: Population, cfg: PhantomConfig, name: str, states: Mapping[str, bool]) -> float:
    """P(name | states), ``requires`` included (the required technique's own chain multiplied in)."""
    p = probability(name, states, pop.base_rate(cfg, name), pop)
    needs = pop.requires.get(name)
    return p * conditional_rate(pop, cfg, needs, states) if needs else p


def expected_rate(name: str, population: Population = TEACHING, cfg: PhantomConfig | None = None) -> float:
    """P(name) over the population without a planted shortcut (base rates: ``cfg``'s overrides on the population's)."""
    cfg = cfg or PhantomConfig(population=population.name)
    return float(sum(w * conditional_rate(population, cfg, name, states) for w, states in state_weights(population)))


def rates_table(cfg: PhantomConfig | None = None) -> pd.DataFrame:
    """The generating table: per concept (and technique), category, base rate, each state's uplift, the technique a
    film needs for it, the expected overall rate, and the planted shortcut's extra probability where configured."""
    cfg = cfg or PhantomConfig()
    pop = population_of(cfg)
    rows = []
    for name in (*CONCEPT_NAMES, *(t for t in TECHNIQUES if t in pop.technique_base)):
        base = pop.base_rate(cfg, name)
        row = {"name": name, "category": CONCEPTS[name].category if name in CONCEPTS else "technique",
               "base": base}
        row.update({f"+{s}": pop.uplift.get(name, {}).get(s, 0.0) for s in STATES})
        row["only on"] = pop.requires.get(name, "")
        row["expected rate (no shortcut)"] = expected_rate(name, pop, cfg)
        row["shortcut"] = "; ".join(f"+{strength:g} if {'no ' if absent else ''}{finding}"
                                    for c, finding, strength, absent in cfg.planted_shortcuts() if c == name)
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def or_strength(p: float, strength: float, on: bool) -> float:
    """A shortcut concept's probability: its state-driven ``p`` OR'ed with the shortcut's ``strength`` where the
    shortcut is ``on`` (its finding present, or absent for a shortcut that follows absence)."""
    return 1.0 - (1.0 - p) * (1.0 - strength) if on else p

