"""The report labeler (positive 1, negated 0, hedged -1, unmentioned NaN) and the templated reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lanic_nb.data.labeler import label_report, label_reports, split_sentences
from lanic_nb.manifest import FINDINGS
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import sample_truth, study_report
from lanic_nb.phantom.reports import make_report

A, C, CO, E, P = FINDINGS
NAN = math.nan

SENTENCES = [
    ("Small left pleural effusion.", {P: 1}),
    ("No pleural effusion.", {P: 0}),
    ("Possible small right pleural effusion.", {P: -1}),
    ("Cannot exclude a small left effusion.", {P: -1}),
    ("Blunting of the left costophrenic angle.", {P: 1}),
    ("The costophrenic angles are sharp.", {P: 0}),
    ("Small pericardial effusion.", {}),
    ("The previously seen effusion has resolved.", {P: 0}),
    ("No change in the small left pleural effusion.", {P: 1}),
    ("Mild cardiomegaly.", {C: 1}),
    ("The heart is mildly enlarged.", {C: 1}),
    ("Heart size is normal.", {C: 0}),
    ("The heart is not enlarged.", {C: 0}),
    ("Heart size and pulmonary vascularity appear within normal limits.", {C: 0}),
    ("Heart size is upper limits of normal.", {C: -1}),
    ("There is no pneumothorax and the heart is enlarged.", {C: 1}),
    ("Mild pulmonary edema without pleural effusion.", {E: 1, P: 0}),
    ("Pulmonary vascular congestion.", {E: 1}),
    ("No evidence of edema.", {E: 0}),
    ("No focal consolidation, pleural effusion, or pneumothorax.", {CO: 0, P: 0}),
    ("No focal airspace disease.", {}),  # CheXpert: lung opacity, not consolidation
    ("No focal airspace consolidation.", {CO: 0}),
    ("The heart is large.", {C: 1}),
    ("Heart size is upper limits normal or mildly enlarged.", {C: -1}),
    ("No cardiomegaly with bilateral small pleural effusions.", {C: 0, P: 1}),
    ("Lungs are clear of consolidation.", {CO: 0}),
    ("Consolidation is not seen.", {CO: 0}),
    ("Atelectasis versus consolidation at the left base.", {A: -1, CO: -1}),
    ("Atelectasis vs. consolidation at the left base.", {A: -1, CO: -1}),
    ("Bibasilar opacities may represent atelectasis.", {A: -1}),
    ("Streaky opacities, likely atelectasis.", {A: -1}),
    ("No evidence of pneumonia, though atelectasis cannot be excluded.", {A: -1}),
    ("Plate-like atelectasis at the right base.", {A: 1}),
    ("No acute cardiopulmonary process.", {}),
    ("Stable cardiomegaly. No edema.", {C: 1, E: 0}),
    ("Possible effusion. Definite effusion on the left.", {P: 1}),  # positive outranks uncertain
    ("No effusion on the right. Possible effusion on the left.", {P: -1}),  # uncertain outranks negative
    # Hedges CheXpert treats as uncertain: "question", "difficult to (entirely) exclude", "suspected",
    # "favored", "suspicion for", "limits evaluation for".
    ("Question of mild edema or early pneumonia?", {E: -1}),
    ("Question small left effusion.", {P: -1}),
    ("A small effusion is difficult to completely exclude.", {P: -1}),
    ("Basilar opacity, atelectasis hard to entirely exclude.", {A: -1}),
    ("Small bilateral effusions suspected.", {P: -1}),
    ("Patchy basilar opacity favored to be atelectasis.", {A: -1}),
    ("Suspicion for a small right effusion.", {P: -1}),
    ("The lateral view limits evaluation for effusion.", {P: -1}),
    # Hedges reach across "which" and "and": a differential list hedges every item in it ...
    ("Increased markings which may be compatible with mild edema.", {E: -1}),
    ("Differential includes infection and mild pulmonary edema.", {E: -1}),
    # ... but stop at "with" and a contrast: the new finding keeps its own label.
    ("Probable small effusion with left basilar atelectasis.", {A: 1, P: -1}),
    ("Cardiomegaly with basilar infiltrate versus atelectasis.", {A: -1, C: 1}),
    ("Mild atelectasis, though infection cannot be excluded.", {A: 1}),
    # Negation stops at with / but / however / ";".
    ("The heart is not enlarged, but there is a small right effusion.", {C: 0, P: 1}),
    ("No edema; small left effusion.", {E: 0, P: 1}),
    ("No edema, however a small left effusion is present.", {E: 0, P: 1}),
    ("No consolidation with a moderate right effusion.", {CO: 0, P: 1}),
    # Resolved findings are negative (CheXpert: "clearing of", "has cleared", "interval resolution").
    ("Almost complete clearing of the left basal atelectasis.", {A: 0}),
    ("The effusion, consolidation and atelectasis have all cleared in the interval.", {A: 0, CO: 0, P: 0}),
    ("The consolidation has since resolved.", {CO: 0}),
    ("Right basilar atelectasis with interval resolution.", {A: 0}),
    # Only lung edema: chest-wall / soft-tissue edema is not the finding.
    ("Subcutaneous edema along the chest wall.", {}),
    ("Soft tissue edema over the right shoulder.", {}),
    # CheXpert counts vascular prominence / indistinctness as Edema, but only as uncertain.
    ("Mild central vascular prominence.", {E: -1}),
    ("Prominent central pulmonary vasculature.", {E: -1}),
    ("No vascular prominence.", {E: 0}),
    # CheXpert's atelectasis is "atelecta*" / "collapse", not volume loss.
    ("Postoperative volume loss in the left hemithorax.", {}),
    # De-identified reports mask "angle" as "xxxx".
    ("Right costophrenic xxxx is blunted.", {P: 1}),
    ("Normal heart size. Cardiomediastinal silhouette otherwise unremarkable.", {C: 0}),
]


@pytest.mark.parametrize(("text", "expected"), SENTENCES, ids=[s[0][:40] for s in SENTENCES])
def test_hand_written_sentences(text, expected):
    got = label_report(text)
    for f in FINDINGS:
        want = expected.get(f, NAN)
        assert (math.isnan(got[f]) and math.isnan(want)) or got[f] == want, (f, got[f], want)


def test_generated_reports_read_back_as_written():
    cfg = PhantomConfig(n_images=400)
    seen = {1.0: 0, 0.0: 0, -1.0: 0}
    for i in range(400):
        rows, _, _, st = sample_truth(cfg, i)
        rep = study_report(cfg, i, rows, st)
        got = label_report(rep.text)
        for f in FINDINGS:
            want = rep.intended[f]
            assert (math.isnan(want) and math.isnan(got[f])) or got[f] == want, (f, want, got[f], rep.text)
            if not math.isnan(want):
                seen[want] += 1
        present = {r.concept: r.present for r in rows}
        assert rep.intended["Pleural Effusion"] != 1.0 or present["pleural_effusion"]
    assert min(seen.values()) > 50  # every label kind is exercised


def test_reports_vary_and_are_seeded():
    rows, _, _, _ = sample_truth(PhantomConfig(), 2)
    a = make_report(rows, np.random.default_rng(1)).text
    assert a == make_report(rows, np.random.default_rng(1)).text
    texts = {make_report(rows, np.random.default_rng(s)).text for s in range(20)}
    assert len(texts) > 10
    assert a.startswith("EXAMINATION:") and "\nFINDINGS:" in a and "\nIMPRESSION:" in a


def test_label_reports_table():
    df = label_reports(["Cardiomegaly.", None, "No edema."])
    assert list(df.columns) == list(FINDINGS) and str(df.dtypes.iloc[0]) == "float32"
    assert df.loc[0, C] == 1 and df.loc[2, E] == 0 and df.iloc[1].isna().all()


def test_sentence_split_keeps_decimals():
    assert split_sentences("A 1.5 cm nodule. No effusion.\nIMPRESSION: clear") == [
        "a 1.5 cm nodule.",
        "no effusion.",
        "impression: clear",
    ]


def test_reports_mention_technique_but_not_detector_artifacts():
    """Radiologists report portable technique, motion, exposure and rotation, never markers, burned-in text,
    grid lines or collimation."""
    cfg = PhantomConfig(n_images=600)
    rotated_said = 0
    for i in range(600):
        rows, _, _, st = sample_truth(cfg, i)
        text = study_report(cfg, i, rows, st).text
        low = text.lower()
        for word in ("marker", "grid", "collimat", "burned", "text"):
            assert word not in low, (word, text)
        assert ("rotat" in low) <= st["rotated"]
        rotated_said += "rotat" in low
        present = {r.concept: r.present for r in rows}
        assert ("portable ap" in low) == present["portable_marker"]
    assert rotated_said > 20
