"""A rule-based report labeler for the five findings (CheXpert / NegBio style, no parser).

Each sentence is searched for mentions of a finding (synonym patterns). A mention is classified
negative (0) when a negation cue precedes it in the same clause or follows it ("... is not seen",
"... has cleared"), uncertain (-1) when a hedge does (hedges reach across "which" / "and", not across
"with" / "but"), positive (1) otherwise; cue lists and scopes follow the CheXpert labeler's rules. A report's
label aggregates its mentions the CheXpert way: positive if any mention is positive, else uncertain if any is,
else negative if any is; NaN when the finding is never mentioned. Works on the phantom's templated reports and on
real free text (e.g. the Indiana University reports shipped with torchxrayvision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from lanic_nb.manifest import FINDINGS

_HEART = r"(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiac size|cardiac contour)"

# Finding -> patterns whose match is a mention (the cue check then decides 1 / 0 / -1).
MENTIONS: dict[str, list[str]] = {
    # CheXpert's atelectasis mentions are "atelecta*" and "collapse"; "volume loss" (post-surgical,
    # fibrotic) is not atelectasis, so it is no mention (docs/decisions.md#the-report-labeler).
    "Atelectasis": [r"\batelecta\w*", r"\b(?:lobar |segmental |lung )?collapse\b"],
    "Cardiomegaly": [
        r"\bcardiomegaly\b",
        r"\bcardiac enlargement\b",
        r"\benlarge(?:d|ment of the) (?:heart|cardiac (?:silhouette|shadow|size))\b",
        rf"\b{_HEART}\b[^.;,]{{0,25}}?\b(?:enlarged|enlargement|increased|large)\b",
    ],
    # CheXpert keeps "airspace disease / opacity" for Lung Opacity, not Consolidation.
    "Consolidation": [r"\bconsolidat\w*"],
    "Edema": [
        # not soft-tissue / subcutaneous / chest-wall edema: only lung edema is the finding
        r"(?<!tissue )(?<!tissues )(?<!subcutaneous )(?<!wall )\bedema\b(?! of the (?:soft|chest wall|subcutaneous))",
        r"\b(?:vascular|pulmonary|venous|interstitial) congestion\b",
        r"\bchf\b",
        r"\bcongestive heart failure\b",
        r"\bkerley\b",
        r"\bvascular (?:prominence|indistinctness)\b",
        r"\b(?:prominen|indistinct)\w* (?:of )?(?:the )?(?:central )?(?:pulmonary )?vascula\w*",
    ],
    "Pleural Effusion": [
        r"(?<!pericardial )(?<!joint )\beffusions?\b",
        r"\bpleural fluid\b",
        r"\bfluid in the (?:right |left )?pleural\w*",
        r"\bblunt(?:ing|ed)\b[^.;]{0,30}?\bcostophrenic\b",
        # "xxxx" is the IU reports' de-identification mask, which often swallows "angle"
        r"\bcostophrenic (?:angle|sulcus|sulci|recess|xxxx)e?s? (?:is |are )?(?:\w+ )?blunt\w*",
        r"\bhydrothorax\b",
    ],
}

# Phrases that state the finding is absent without a negation word (CheXpert's "heart size normal").
NORMAL: dict[str, list[str]] = {
    "Cardiomegaly": [
        rf"\b{_HEART}\b[^.;]{{0,40}}?\b(?:normal|within normal limits|unremarkable)\b",
        r"\bnormal[- ](?:sized? )?(?:heart|cardiac)\b",
    ],
    "Pleural Effusion": [
        r"\b(?:sharp|clear|preserved|normal) costophrenic",
        r"\bcostophrenic (?:angles?|sulci|sulcus|recess(?:es)?) (?:are |is |remain )?(?:sharp|clear|preserved|normal)",
    ],
}
# "Upper limits of normal" and "borderline" heart size are CheXpert-uncertain, not normal.
BORDERLINE = re.compile(
    rf"\b(?:borderline|upper limits? (?:of )?normal|top normal|top-normal)\b[^.;]{{0,25}}{_HEART}"
    rf"|\b{_HEART}\b[^.;]{{0,30}}?\b(?:borderline|upper limits? (?:of )?normal|top normal|top-normal)"
)

# Cues, searched in the clause before a mention (and in the mention itself, e.g. "heart is not enlarged").
# CheXpert's pre-negation uncertainty: "cannot exclude", "difficult to (entirely) exclude", "cannot rule out".
UNCERTAIN_STRONG = re.compile(
    r"\b(?:cannot|can ?not|could not|not|difficult to|unable to|hard to) (?:be )?"
    r"(?:entirely |completely |totally |fully |definitely )?(?:exclude[ds]?|ruled? out)\b"
)
NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|resolution of|clear of|rather than"
    r"|removal of|neither|nor|never|ruled out|exclude[ds]?"
    # CheXpert: "clearing of XXX", "cleared XXX" are negations (the finding is gone)
    r"|clearing of|clearance of|cleared)\b"
)
UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|probable|probably|may|might|could|questionable|question(?:ed)?|suspicious"
    r"|suspect(?:ed)?|suspicion|suggest\w*|concern(?:ing)? for|likely|versus|differential|borderline"
    r"|equivocal|indeterminate|uncertain|represent\w*|vs|favor\w*|favour\w*"
    # CheXpert: "XXX is poorly / incompletely / not well evaluated"
    r"|evaluation (?:for|of)|limits evaluation)\b"
)
# After a mention, within its clause.
POST_NEGATION = re.compile(
    r"^[^.;]{0,35}?\b(?:is|are|was|were|has|have)(?: been)? (?:not (?:seen|identified|present|visualized"
    r"|appreciated|demonstrated|evident)|absent|resolved|no longer (?:seen|present|visualized|evident))"
)
# CheXpert: "XXX has resolved", "XXX (and YYY) have cleared", "XXX with interval resolution". The subject
# can be a list ("consolidation, atelectasis and blunting ... have cleared"), so this looks further, but
# only up to the next clause boundary.
POST_RESOLVED = re.compile(
    r"^[^.;]{0,80}?\b(?:is|are|has|have)(?: all| been| now| since| nearly| almost| largely| completely)*"
    r" (?:resolved|cleared)\b"
)
RESOLVED_AFTER = re.compile(
    r"^,? (?:with|showing) (?:interval |near[- ]complete |complete )*(?:resolution|clearing)\b"
)
POST_UNCERTAIN = re.compile(
    r"^[^.;]{0,40}?\b(?:(?:cannot|can not|not) be (?:\w+ )?(?:excluded|ruled out)|not (?:\w+ )?(?:excluded"
    r"|ruled out)|(?:difficult|hard) to (?:\w+ )?exclude|(?:is|are) (?:also )?(?:possible|suspected|questioned"
    r"|not excluded)|suspected(?=\s*(?:[.,]|$))|versus|vs)\b"
)
# CheXpert lists "vascular prominence" and "indistinctness" as Edema mentions that are only ever uncertain.
HEDGED_MENTION = re.compile(r"\b(?:prominen|indistinct)")
# Negation words that do not negate the finding ("no change in the effusion").
PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without|not) (?:significant |substantial |interval |appreciable |definite )?"
    r"(?:change|increase|decrease|worsening|improvement|progression|significantly changed|changed|only)\b"
)
# A clause boundary ends a cue's scope: "no cardiomegaly with bilateral effusions" negates only the heart,
# "probable effusion with basilar atelectasis" hedges only the effusion ("consistent / compatible with"
# do not start a new finding). Hedges reach further back than negations (HEDGE_BOUNDARY): "differential
# includes infection and mild edema", "opacities which may represent atelectasis".
HEDGE_BOUNDARY = re.compile(
    r"[;:]|\b(?:but|however|although|though|except|whereas|there (?:is|are|has been)"
    r"|(?<!compatible )(?<!consistent )with)\b"
)
BOUNDARY = re.compile(
    HEDGE_BOUNDARY.pattern + r"|\b(?:while|which|otherwise|and (?:the|there|a|an|new|mild"
    r"|moderate|small|large|persistent|bilateral))\b"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\bvs\.", "versus", text.lower())
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _scope_before(sentence: str, start: int, boundary: re.Pattern = BOUNDARY) -> str:
    pre = sentence[:start]
    cut = 0
    for m in boundary.finditer(pre):
        cut = m.end()
    return pre[cut:]


def _scope_after(post: str, boundary: re.Pattern) -> str:
    b = boundary.search(post)
    return post[: b.start()] if b else post


def _classify(sentence: str, m: re.Match) -> float:
    # negation cues are looked for in the narrow clause, hedges in the wider one (see BOUNDARY)
    pre = PSEUDO_NEGATION.sub(" ", _scope_before(sentence, m.start())) + " " + m.group(0)
    wide = PSEUDO_NEGATION.sub(" ", _scope_before(sentence, m.start(), HEDGE_BOUNDARY)) + " " + m.group(0)
    post = PSEUDO_NEGATION.sub(" ", sentence[m.end() :])
    if UNCERTAIN_STRONG.search(wide) or POST_UNCERTAIN.search(_scope_after(post, HEDGE_BOUNDARY)):
        return -1.0
    resolved = POST_RESOLVED.search(_scope_after(post, BOUNDARY)) or RESOLVED_AFTER.search(post)
    if NEGATION.search(pre) or POST_NEGATION.search(post) or resolved:
        return 0.0
    if UNCERTAIN.search(wide):
        return -1.0
    return -1.0 if HEDGED_MENTION.search(m.group(0)) else 1.0


def _aggregate(values: list[float]) -> float:
    if not values:
        return math.nan
    for v in (1.0, -1.0, 0.0):
        if v in values:
            return v
    return math.nan


def mention_labels(text: str) -> dict[str, list[float]]:
    """Every mention's label per finding, in reading order (for inspection and tests)."""
    out: dict[str, list[float]] = {f: [] for f in FINDINGS}
    for sentence in split_sentences(text):
        for f in FINDINGS:
            spans = []
            for pat in MENTIONS[f]:
                for m in re.finditer(pat, sentence):
                    if any(m.start() < e and s < m.end() for s, e in spans):
                        continue  # one phrase, one mention
                    spans.append((m.start(), m.end()))
                    out[f].append(_classify(sentence, m))
            if f == "Cardiomegaly" and BORDERLINE.search(sentence):
                out[f].append(-1.0)
            elif not spans:
                for pat in NORMAL.get(f, []):
                    m = re.search(pat, sentence)
                    if m:
                        pre = _scope_before(sentence, m.start())
                        # "not normal" flips a normal statement back into an (uncertain) mention
                        out[f].append(-1.0 if re.search(r"\bnot\b", pre + m.group(0)) else 0.0)
                        break
    return out


def label_report(text: str) -> dict[str, float]:
    """Labels of the five findings: 1 positive, 0 negated, -1 uncertain, NaN not mentioned."""
    return {f: _aggregate(v) for f, v in mention_labels(text or "").items()}


def label_reports(texts: Iterable[str]) -> pd.DataFrame:
    """One row per text, one float32 column per finding (CheXpert convention)."""
    rows = [label_report(t if isinstance(t, str) else "") for t in texts]
    return pd.DataFrame(rows, columns=list(FINDINGS)).astype(np.float32)
