"""The phantom's concept table (what can be planted, in which category, with which report words), its
configuration, and the record of one planted concept. Generation is in ``lanic_nb.phantom.generate``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lanic_nb.manifest import FINDINGS

log = logging.getLogger(__name__)


CATEGORIES: tuple[str, ...] = ("cardiac", "pulmonary", "pleural", "structural", "device", "artifact")


@dataclass(frozen=True)
class Concept:
    """One plantable concept."""

    name: str
    category: str
    description: str
    has_side: bool
    # Sides it may take when present ("" for concepts without laterality).
    sides: tuple[str, ...] = ("",)
    prevalence: float = 0.1


_LR = ("left", "right")
_LRB = ("left", "right", "bilateral")

# ``prevalence`` is each concept's base rate: its probability in a patient with none of the latent states
# below (an outpatient without cardiac or chronic lung history). The states raise it (see STATE_UPLIFT).
CONCEPTS: dict[str, Concept] = {
    c.name: c
    for c in (
        Concept("cardiomegaly", "cardiac", "enlarged heart, cardiothoracic ratio above 0.5", False, prevalence=0.08),
        Concept("pleural_effusion", "pleural", "fluid with a meniscus at a costophrenic angle", True, _LRB, 0.08),
        Concept("pneumothorax", "pleural", "apical/lateral air without lung markings, visceral pleural line", True,
                _LR, 0.04),
        Concept("edema", "pulmonary", "bilateral perihilar haze with interstitial (Kerley) lines", True,
                ("bilateral",), 0.04),
        Concept("consolidation", "pulmonary", "dense patchy airspace opacity in one lung", True, _LR, 0.08),
        Concept("atelectasis", "pulmonary", "plate-like basal opacity with volume loss", True, _LRB, 0.10),
        Concept("nodule", "pulmonary", "small round opacity", True, _LR, 0.06),
        Concept("endotracheal_tube", "device", "tube in the trachea ending above the carina", False, prevalence=0.01),
        Concept("nasogastric_tube", "device", "thin tube down the oesophagus into the stomach", False,
                prevalence=0.02),
        Concept("central_venous_catheter", "device", "line from the subclavian vein into the SVC", True, _LR, 0.04),
        Concept("pacemaker", "device", "generator in the upper chest with leads into the heart", True, _LR, 0.01),
        Concept("sternotomy_wires", "device", "loops of wire along the sternum", False, prevalence=0.02),
        Concept("ecg_electrodes", "device", "round electrode snaps on the chest wall", False, prevalence=0.08),
        Concept("laterality_marker", "artifact", "an L or R marker letter", True, _LR, 0.6),
        Concept("burned_in_text", "artifact", "patient ID text burned into the image", False, prevalence=0.3),
        Concept("collimation", "artifact", "unexposed bright borders from the collimator", False, prevalence=0.25),
        Concept("grid_lines", "artifact", "fine vertical anti-scatter grid lines", False, prevalence=0.15),
        Concept("motion_blur", "artifact", "blur from patient motion", False, prevalence=0.05),
        Concept("underexposure", "artifact", "pale, noisy, low-contrast film", False, prevalence=0.05),
        Concept("portable_marker", "artifact", "the word PORTABLE burned in (AP bedside film)", False,
                prevalence=0.03),
        Concept("scoliosis", "structural", "lateral curvature of the spine", False, prevalence=0.1),
        Concept("hyperinflation", "structural", "low flat diaphragms, tall lungs, narrow heart", False,
                prevalence=0.04),
        Concept("elevated_hemidiaphragm", "structural", "one hemidiaphragm raised", True, _LR, 0.1),
    )
}
CONCEPT_NAMES: tuple[str, ...] = tuple(CONCEPTS)

# The populations lanic_nb.phantom.population defines (named here so that a config checks its own value).
POPULATION_NAMES: tuple[str, ...] = ("teaching", "chexpert")

# The classified findings and the concept that plants each.
FINDING_TO_CONCEPT: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}
assert tuple(FINDING_TO_CONCEPT) == FINDINGS


@dataclass
class PhantomConfig:
    """Size, randomness and planting rates of a phantom dataset."""

    n_images: int = 3000
    """Number of images. Default: chosen on the phantom (enough films for 23 planted concepts, a few minutes of
    drawing and embedding on 2 cores)."""
    image_size: int = 224
    """Side of the square images in pixels. Default: BiomedCLIP's 224 px input."""
    seed: int = 0
    """Seed of everything random (images, reports, splits). Default: 0."""
    images_per_patient: int = 2
    """Consecutive images that share a patient (anatomy); splits never separate them. Default: chosen on the phantom
    (MIMIC-CXR has several studies per patient)."""
    prevalence: dict[str, float] = field(default_factory=dict)
    """Per-concept base-rate overrides (concept name -> [0, 1]): the rate in a patient with no latent state
    (``lanic_nb.phantom.population``); not for the shortcut concept, whose base is ``shortcut_base``. Default: none
    (the concept table's rates, lanic_nb.phantom.config)."""
    shortcut_concept: str = "portable_marker"
    """The concept planted to follow ``shortcut_finding`` beyond what the latent states explain (empty string: no
    planted shortcut; the states' confounding stays). Default: the PORTABLE marker, a technique artifact that real
    hospital films carry on the sickest patients."""
    shortcut_finding: str = "Pleural Effusion"
    """The finding the shortcut follows. Default: pleural effusion, the most frequent of the five findings in
    CheXpert."""
    shortcut_strength: float = 0.6
    """Extra probability (noisy-OR on top of its state-driven rate) that the shortcut concept is planted on an image
    with the finding. Default: chosen on the phantom (a shortcut a classifier learns, weaker than the finding
    itself)."""
    shortcut_absent: bool = False
    """The shortcut concept follows the finding's absence instead (planted with ``shortcut_strength`` on films without
    ``shortcut_finding``): a classifier that learns it lowers the finding's score where the concept is. Default: off
    (it follows the finding's presence)."""
    extra_shortcuts: list[dict] = field(default_factory=list)
    """More planted shortcuts, each ``{"concept": ..., "finding": ..., "strength": ..., "absent": false}`` (the same
    meaning as the ``shortcut_*`` settings; its base rate is the concept's own). Default: none (the benchmark suite
    plants two shortcuts at once with it)."""
    shortcut_base: float | None = None
    """The shortcut concept's base rate (None: its own, from the concept table). Default: none (the concept table's
    rate)."""
    population: str = "teaching"
    """Which population's rates generate the films (``lanic_nb.phantom.population``): "teaching" (strong confounding
    set by hand, the PORTABLE marker and the AP view one and the same) or "chexpert" (fitted to CheXpert's frontal
    films: prevalences, co-occurrence, devices and AP films with and without each finding within 0.05; technique
    drawn apart from the marker). Default: "teaching", the population every figure of the demo was first measured
    on; the benchmark suite uses "chexpert"."""
    latent_states: bool = True
    """Draw the patients' latent states (acuity, cardiac history, chronic lung disease) that make concepts co-occur as
    in hospital data; False plants every concept independently at its base rate (the phantom encoder's pretraining
    stream, where co-occurrence would only teach it to confuse concepts). Default: on (the co-occurrence of hospital
    data)."""
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Train / val / test fractions of patients. Default: 70 / 10 / 20, a common split by patient."""

    def __post_init__(self) -> None:
        for name in ("n_images", "image_size", "images_per_patient"):
            if not isinstance(getattr(self, name), int | np.integer) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name, p in self.prevalence.items():
            if name not in CONCEPTS:
                raise ValueError(
                    f"prevalence names unknown concept {name!r}; known: {', '.join(CONCEPT_NAMES)}"
                )
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"prevalence[{name!r}] must be in [0, 1], got {p}")
        if self.shortcut_concept and self.shortcut_concept not in CONCEPTS:
            raise ValueError(f"shortcut_concept {self.shortcut_concept!r} is not a known concept")
        if self.shortcut_concept and self.shortcut_concept in self.prevalence:
            raise ValueError(
                f"prevalence[{self.shortcut_concept!r}] cannot be set while it is the shortcut_concept; "
                "use shortcut_strength and shortcut_base"
            )
        if self.shortcut_concept in FINDING_TO_CONCEPT.values():
            raise ValueError(
                f"shortcut_concept must not be a classified finding, got {self.shortcut_concept!r}"
            )
        if self.shortcut_finding not in FINDING_TO_CONCEPT:
            raise ValueError(f"shortcut_finding must be one of {FINDINGS}, got {self.shortcut_finding!r}")
        self.extra_shortcuts = [self._check_extra(e) for e in self.extra_shortcuts]
        planted = [c for c, *_ in self.planted_shortcuts()]
        if len(planted) != len(set(planted)):
            raise ValueError(f"a concept may be planted as one shortcut only, got {planted}")
        for name in ("shortcut_strength", "shortcut_base"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.population not in POPULATION_NAMES:
            raise ValueError(f"population must be one of {POPULATION_NAMES}, got {self.population!r}")
        fr = tuple(float(f) for f in self.split_fractions)
        if len(fr) != 3 or min(fr) < 0 or not np.isclose(sum(fr), 1.0):
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fr}")
        self.split_fractions = fr

    @staticmethod
    def _check_extra(extra: dict) -> dict:
        if not isinstance(extra, dict) or set(extra) - {"concept", "finding", "strength", "absent"} or \
                not {"concept", "finding", "strength"} <= set(extra):
            raise ValueError("each of extra_shortcuts is {concept, finding, strength[, absent]}, got "
                             f"{extra!r}")
        if extra["concept"] not in CONCEPTS or extra["concept"] in FINDING_TO_CONCEPT.values():
            raise ValueError(f"extra_shortcuts: {extra['concept']!r} is not a plantable non-finding concept")
        if extra["finding"] not in FINDING_TO_CONCEPT:
            raise ValueError(f"extra_shortcuts: finding must be one of {FINDINGS}, got {extra['finding']!r}")
        if not 0.0 <= float(extra["strength"]) <= 1.0:
            raise ValueError(f"extra_shortcuts: strength must be in [0, 1], got {extra['strength']}")
        return {"concept": str(extra["concept"]), "finding": str(extra["finding"]),
                "strength": float(extra["strength"]), "absent": bool(extra.get("absent", False))}

    def planted_shortcuts(self) -> list[tuple[str, str, float, bool]]:
        """Every planted shortcut as (concept, finding, strength, absent): ``shortcut_*`` first, then the extras."""
        main = [(self.shortcut_concept, self.shortcut_finding, float(self.shortcut_strength),
                 bool(self.shortcut_absent))] if self.shortcut_concept else []
        return main + [(e["concept"], e["finding"], e["strength"], e["absent"]) for e in self.extra_shortcuts]

    def base_rate(self, concept: str, default: float | None = None) -> float:
        """The concept's rate in a patient with no latent state (before the states' uplifts): this config's override,
        else ``default`` (a population's base rate), else the concept table's."""
        if concept == self.shortcut_concept and self.shortcut_base is not None:
            return float(self.shortcut_base)
        fallback = CONCEPTS[concept].prevalence if default is None else default
        return float(self.prevalence.get(concept, fallback))


@dataclass(frozen=True)
class Planted:
    """The truth about one concept in one image."""

    concept: str
    present: bool
    side: str
    severity: float
