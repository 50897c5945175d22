"""Figure-caption-style descriptions of phantom images: the pretraining text of the phantom encoder.

BiomedCLIP learned from PubMed figure captions, which describe what a figure shows, markers and overlays
included, not from the clinical reports of one hospital. The phantom encoder is pretrained the same way:
each image is paired either with its clinical report (which leaves detector artifacts unmentioned, as real
reports do) or with a caption that names everything visible, phrased with the names of the concept
vocabulary (``lanic_nb/resources/concepts.csv``) and their synonyms. Captions are generated only for the
encoder's pretraining stream, never for a run's dataset, so no stage of the pipeline reads them.

The language-gap encoder's captions use other words: paraphrases, abbreviations and report-style wording from
``lanic_nb/resources/caption_paraphrases.csv``, kept apart from the vocabulary, none of which contains its concept's
vocabulary name or synonyms or is itself a vocabulary entry. Naming then asks that encoder about words it never saw
for its concepts, as it asks BiomedCLIP.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lanic_nb.concepts.vocabulary import load_vocabulary, match_concept
from lanic_nb.phantom.config import CONCEPT_NAMES, CONCEPTS

# How a caption introduces a list of findings: the annotation prompt ("A chest x-ray image of a ...") is one
# of them, so naming patterns later asks the text tower a question in the form it was trained on.
LEADS = ("A chest x-ray image of a {}.", "Chest radiograph showing {}.", "Frontal chest x-ray with {}.",
         "{}.", "Radiograph of the chest: {}.")


def vocabulary_names() -> dict[str, list[str]]:
    """Phantom concept -> the vocabulary's name and synonyms for it (the caption's words)."""
    vocab = load_vocabulary()
    out = {}
    for concept in CONCEPT_NAMES:
        name = match_concept(concept, vocab)
        if name is None:
            raise ValueError(f"phantom concept {concept!r} has no entry in the concept vocabulary")
        row = vocab.loc[vocab["concept"] == name].iloc[0]
        out[concept] = [name, *row["synonyms"]]
    return out


PARAPHRASES = Path(__file__).resolve().parent.parent / "resources" / "caption_paraphrases.csv"
CAPTION_WORDS: tuple[str, ...] = ("vocabulary", "paraphrase")


def paraphrase_names(path: str | Path = PARAPHRASES) -> dict[str, list[str]]:
    """Phantom concept -> its paraphrases (the language-gap encoder's caption words)."""
    with open(path, newline="", encoding="utf-8") as f:
        table = {row["concept"]: [p.strip() for p in row["paraphrases"].split("|") if p.strip()]
                 for row in csv.DictReader(f)}
    if missing := [c for c in CONCEPT_NAMES if not table.get(c)]:
        raise ValueError(f"{path} has no paraphrases for {missing}")
    return {c: table[c] for c in CONCEPT_NAMES}


def caption_names(words: str = "vocabulary") -> dict[str, list[str]]:
    """The caption words of ``words``: "vocabulary" (the concept vocabulary's names and synonyms) or "paraphrase"."""
    if words not in CAPTION_WORDS:
        raise ValueError(f"words must be one of {CAPTION_WORDS}, got {words!r}")
    return vocabulary_names() if words == "vocabulary" else paraphrase_names()


def _qualifier(concept: str, side: str, severity: float, rng: np.random.Generator) -> str:
    """Size or degree for disease (not for devices and artifacts), then side, each some of the time."""
    words = []
    if CONCEPTS[concept].category in ("cardiac", "pulmonary", "pleural") and rng.random() < 0.5:
        sizes = ("mild", "moderate", "marked") if concept in ("cardiomegaly", "edema") else ("small", "moderate",
                                                                                               "large")
        words.append(sizes[0] if severity < 0.4 else sizes[1] if severity < 0.75 else sizes[2])
    if side and rng.random() < 0.7:
        words.append(side)
    return " ".join(words)


def _fits_side(name: str, side: str) -> bool:
    """A laterality synonym that names a letter ("l marker") must name the marker's own side."""
    letter = {"l marker": "left", "r marker": "right"}.get(name)
    return letter is None or letter == side


def describe(rows: Iterable, rng: np.random.Generator, names: dict[str, list[str]], rotated: bool = False) -> str:
    """One caption naming every planted concept of an image (rows: objects with concept, present, side,
    severity), in shuffled order, each by the first of its ``names`` (60%; the vocabulary's name) or another."""
    phrases = []
    for r in rows:
        if not r.present:
            continue
        options = [n for n in names[r.concept] if _fits_side(n, r.side)]
        name = options[0] if rng.random() < 0.6 or len(options) == 1 else options[int(rng.integers(1, len(options)))]
        qual = _qualifier(r.concept, r.side, r.severity, rng)
        phrases.append(f"{qual} {name}".strip())
    if rotated:
        phrases.append("rotated patient")
    if not phrases:
        phrases = ["no abnormality" if rng.random() < 0.5 else "a normal chest"]
    rng.shuffle(phrases)
    if len(phrases) > 1 and rng.random() < 0.5:  # sometimes a subset: one or two findings per caption
        phrases = phrases[: int(rng.integers(1, min(3, len(phrases)) + 1))]
    body = ", ".join(phrases[:-1]) + (" and " if len(phrases) > 1 else "") + phrases[-1]
    lead = LEADS[int(rng.integers(len(LEADS)))]
    text = lead.format(body)
    return text[0].upper() + text[1:]
