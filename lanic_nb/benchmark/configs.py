"""The suite's phantom configurations: one per kind of shortcut, each with its own seed, on the population calibrated
to CheXpert (``phantom.population.CHEXPERT``). Only the phantom changes between them; every stage setting is the
demo's (``notebooks/params/demo.yaml``), frozen.

The strengths are hypotheses about what a classifier picks up on 3,000 films, chosen before the suite ran; none was
tuned on the suite's results."""

from __future__ import annotations

from dataclasses import dataclass, field

from lanic_nb.phantom.config import PhantomConfig


@dataclass(frozen=True)
class SuiteEntry:
    """One configuration of the suite."""

    name: str
    what: str
    phantom: dict = field(default_factory=dict)
    """``00_data.phantom`` settings on top of the demo's (population, seed, shortcuts)."""

    def phantom_config(self) -> PhantomConfig:
        return PhantomConfig(**self.phantom)


def _entry(name: str, what: str, seed: int, **phantom) -> SuiteEntry:
    base = {"population": "chexpert", "seed": seed, "shortcut_concept": "", "shortcut_strength": 0.6}
    return SuiteEntry(name, what, {**base, **phantom})


SUITE: tuple[SuiteEntry, ...] = (
    _entry("marker", "the PORTABLE marker on bedside films follows effusion (the demo's shortcut)", 101,
           shortcut_concept="portable_marker", shortcut_finding="Pleural Effusion", shortcut_strength=0.6),
    _entry("reported_device", "a central line, which reports mention, follows edema", 102,
           shortcut_concept="central_venous_catheter", shortcut_finding="Edema", shortcut_strength=0.5),
    _entry("unreported_artifact", "burned-in text, which no report mentions, follows atelectasis", 103,
           shortcut_concept="burned_in_text", shortcut_finding="Atelectasis", shortcut_strength=0.6),
    _entry("structural", "scoliosis, a structural change, follows cardiomegaly", 104,
           shortcut_concept="scoliosis", shortcut_finding="Cardiomegaly", shortcut_strength=0.5),
    _entry("rare_marker",
           "the PORTABLE marker only on bedside edema films, three in ten of them: its detector fires on few films",
           105, shortcut_concept="portable_marker", shortcut_finding="Edema", shortcut_strength=0.3, shortcut_base=0.0),
    _entry("two_shortcuts", "grid lines follow cardiomegaly and a nasogastric tube follows consolidation", 106,
           shortcut_concept="grid_lines", shortcut_finding="Cardiomegaly", shortcut_strength=0.6,
           extra_shortcuts=[{"concept": "nasogastric_tube", "finding": "Consolidation", "strength": 0.5}]),
    _entry("absence", "collimation follows the absence of effusion", 107,
           shortcut_concept="collimation", shortcut_finding="Pleural Effusion", shortcut_strength=0.5,
           shortcut_absent=True),
    _entry("none", "no planted shortcut: only the population's own confounding", 108),
)
assert len({e.name for e in SUITE}) == len(SUITE) and len({e.phantom["seed"] for e in SUITE}) == len(SUITE)
