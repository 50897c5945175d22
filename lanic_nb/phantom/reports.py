"""Templated radiology reports (FINDINGS + IMPRESSION) for phantom images, written from their truth.

Each of the five findings gets one status per report, used by every sentence that mentions it:
present findings are stated (or, sometimes, hedged), absent ones are sometimes negated, rarely hedged,
otherwise not mentioned. Several phrasings per concept and a shuffled order keep the text from being
a one-to-one code of the truth. ``Report.intended`` records the statuses (1 / 0 / -1 / NaN) so tests
can check that the labeler reads back what was written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lanic_nb.manifest import FINDINGS

# P(stated as hedge | present); P(negated | absent); P(hedged | absent).
P_HEDGE_PRESENT, P_NEGATE_ABSENT, P_HEDGE_ABSENT = 0.15, 0.45, 0.04

_CONCEPT = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}

POSITIVE = {
    "pleural_effusion": [
        "{size} {side} pleural effusion.",
        "There is a {size} {side} pleural effusion.",
        "{Side} pleural fluid with blunting of the costophrenic angle.",
        "Blunting of the {side} costophrenic angle from a {size} effusion.",
    ],
    "cardiomegaly": [
        "The heart is {degree}ly enlarged.",
        "{Degree} cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "Cardiac enlargement is noted.",
    ],
    "edema": [
        "{Degree} pulmonary edema.",
        "Perihilar haziness and interstitial lines consistent with pulmonary edema.",
        "Pulmonary vascular congestion with {degree} interstitial edema.",
    ],
    "consolidation": [
        "Consolidation in the {side} {zone} lung.",
        "Dense {side} {zone} lung consolidation.",
        "Focal airspace consolidation in the {side} {zone} zone.",
    ],
    "atelectasis": [
        "Plate-like atelectasis at the {side} base.",
        "{Side} basilar atelectasis.",
        "Linear atelectasis in the {side} lower lung with volume loss.",
    ],
}
HEDGED = {
    "pleural_effusion": [
        "Possible small {side} pleural effusion.",
        "Cannot exclude a small {side} effusion.",
    ],
    "cardiomegaly": [
        "Borderline heart size.",
        "Possible mild cardiomegaly.",
        "The heart may be mildly enlarged.",
    ],
    "edema": ["Possible mild pulmonary edema.", "Questionable mild interstitial edema."],
    "consolidation": [
        "Possible {side} {zone} lung consolidation.",
        "Cannot exclude early consolidation in the {side} {zone} lung.",
    ],
    "atelectasis": [
        "{Side} basilar opacity may represent atelectasis.",
        "Likely {side} basilar atelectasis.",
    ],
}
NEGATED = {
    "pleural_effusion": [
        "No pleural effusion.",
        "No pleural effusions.",
        "The costophrenic angles are sharp.",
    ],
    "cardiomegaly": ["Heart size is normal.", "The heart is not enlarged.", "Normal heart size."],
    "edema": ["No pulmonary edema.", "No evidence of edema.", "There is no vascular congestion."],
    "consolidation": ["No focal consolidation.", "No consolidation.", "Lungs are clear of consolidation."],
    "atelectasis": ["No atelectasis.", "No evidence of atelectasis."],
}
SHORT_NEG = {
    "pleural_effusion": "pleural effusion",
    "edema": "pulmonary edema",
    "consolidation": "focal consolidation",
    "atelectasis": "atelectasis",
    "cardiomegaly": "cardiomegaly",
}
OTHER = {
    "pneumothorax": ["Small {side} apical pneumothorax.", "A {side} pneumothorax is present."],
    "nodule": ["{Size} nodule in the {side} lung.", "A {side} pulmonary nodule is noted."],
    "endotracheal_tube": [
        "Endotracheal tube in place, tip above the carina.",
        "ET tube terminates above the carina.",
    ],
    "nasogastric_tube": [
        "Nasogastric tube courses below the diaphragm.",
        "Enteric tube with tip in the stomach.",
    ],
    "central_venous_catheter": [
        "{Side} subclavian central venous catheter with tip in the SVC.",
        "{Side}-sided central line terminates in the superior vena cava.",
    ],
    "pacemaker": [
        "{Side}-sided pacemaker with leads in the right atrium and right ventricle.",
        "Cardiac pacemaker device in place.",
    ],
    "sternotomy_wires": ["Median sternotomy wires.", "Postsurgical changes of median sternotomy."],
    "ecg_electrodes": ["Overlying ECG leads.", "External monitoring leads project over the chest."],
    "scoliosis": ["Scoliosis of the thoracic spine.", "Thoracic scoliosis."],
    "hyperinflation": ["Hyperinflated lungs with flattened diaphragms.", "Lungs are hyperexpanded."],
    "elevated_hemidiaphragm": ["Elevation of the {side} hemidiaphragm.", "{Side} hemidiaphragm is elevated."],
    "motion_blur": ["Study is limited by patient motion.", "Motion artifact limits the examination."],
    "underexposure": ["Study is limited by underexposure.", "Underexposed film."],
}
# Technique that is not a planted concept but that radiologists mention.
ROTATED = ["Patient is rotated.", "Rotated positioning limits assessment of the mediastinum."]
# Never mentioned, as in real reports: laterality markers, burned-in text, grid lines and collimation are
# on nearly every film and say nothing about the patient.
NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."]


@dataclass(frozen=True)
class Report:
    """A report's text and the label it intends for each finding (1, 0, -1, NaN = not mentioned)."""

    text: str
    intended: dict[str, float]


def _fill(template: str, side: str, severity: float, rng: np.random.Generator) -> str:
    size = "small" if severity < 0.4 else "moderate" if severity < 0.75 else "large"
    degree = "mild" if severity < 0.4 else "moderate" if severity < 0.75 else "marked"
    zone = ("upper", "mid", "lower")[int(rng.integers(3))]
    side_word = {"bilateral": "bilateral", "left": "left", "right": "right"}.get(side, "")
    text = template.format(
        size=size,
        Size=size.capitalize(),
        degree=degree,
        Degree=degree.capitalize(),
        side=side_word,
        Side=side_word.capitalize(),
        zone=zone,
    )
    text = " ".join(text.split())
    return text[0].upper() + text[1:]


def _pick(options: list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def make_report(truth: Iterable, rng: np.random.Generator, view: str = "PA", rotated: bool = False,
                portable: bool | None = None) -> Report:
    """An EXAMINATION/FINDINGS/IMPRESSION report for one image from its truth rows (objects with concept, present,
    side, severity) and its technique (``view``: "AP" or "PA"; ``portable``: a bedside film, None: every AP film is
    one; ``rotated``). The same ``rng`` state gives the same text."""
    rows = {r.concept: r for r in truth}
    findings_sentences: list[str] = []
    impression: list[str] = []
    negated: list[str] = []
    intended: dict[str, float] = {}
    stated: set[str] = set()  # positive (not hedged) sentences
    for finding in FINDINGS:
        c = _CONCEPT[finding]
        r = rows[c]
        u = rng.random()
        if r.present:
            status = -1.0 if u < P_HEDGE_PRESENT else 1.0
        else:
            status = 0.0 if u < P_NEGATE_ABSENT else -1.0 if u > 1 - P_HEDGE_ABSENT else math.nan
        intended[finding] = status
        side = r.side if r.present else ("left", "right")[int(rng.integers(2))]
        if status == 1.0:
            findings_sentences.append(_fill(_pick(POSITIVE[c], rng), side, r.severity, rng))
            stated.add(findings_sentences[-1])
            if rng.random() < 0.7:
                impression.append(_fill(_pick(POSITIVE[c], rng), side, r.severity, rng))
        elif status == -1.0:
            s = _fill(_pick(HEDGED[c], rng), side, r.severity, rng)
            findings_sentences.append(s)
            if rng.random() < 0.5:
                impression.append(s)
        elif status == 0.0:
            negated.append(c)
    devices = []
    for c, options in OTHER.items():
        r = rows.get(c)
        if r is not None and r.present and rng.random() < 0.9:
            devices.append(_fill(_pick(options, rng), r.side, r.severity, rng))
    if rotated and rng.random() < 0.8:
        devices.append(_pick(ROTATED, rng))
    rng.shuffle(findings_sentences)
    # Negations: sometimes folded into a positive sentence ("... without evidence of X."), sometimes
    # one list sentence, single sentences for the rest.
    rng.shuffle(negated)
    positives = [i for i, s in enumerate(findings_sentences) if s in stated]
    if negated and positives and rng.random() < 0.3:
        i = positives[int(rng.integers(len(positives)))]
        findings_sentences[i] = (
            findings_sentences[i][:-1] + f" without evidence of {SHORT_NEG[negated.pop()]}."
        )
    neg_sentences = []
    if len(negated) >= 2 and rng.random() < 0.5:
        k = int(rng.integers(2, len(negated) + 1))
        words = [SHORT_NEG[c] for c in negated[:k]]
        if not rows["pneumothorax"].present and rng.random() < 0.5:
            words.append("pneumothorax")
        neg_sentences.append(
            "No " + ", ".join(words[:-1]) + (", or " if len(words) > 2 else " or ") + words[-1] + "."
        )
        negated = negated[k:]
    neg_sentences += [_pick(NEGATED[c], rng) for c in negated]
    body = devices + findings_sentences + neg_sentences
    if not impression:
        impression = (
            [_pick(NORMAL_IMPRESSION, rng)]
            if not any(v == 1.0 or v == -1.0 for v in intended.values())
            else [findings_sentences[0]]
        )
    portable = view == "AP" if portable is None else portable and view == "AP"
    exam = "Portable AP chest radiograph." if portable else "AP chest radiograph." if view == "AP" else \
        "PA chest radiograph."
    text = f"EXAMINATION: {exam}\nFINDINGS: {' '.join(body) or 'Lungs are clear.'}\nIMPRESSION: {' '.join(impression)}"
    return Report(text, intended)
