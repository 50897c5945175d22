"""The concept vocabulary: a curated radiology list, name matching, and extension by mined report phrases.

The vocabulary is ``resources/concepts.csv`` (concept, category, "|"-separated synonyms). Phrases mined from
a dataset's reports (``lanic_nb.concepts.mining``) extend it: a phrase that names a known concept becomes its
synonym, any other a new concept whose category is the vote of the known entries sharing its words.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES: tuple[str, ...] = ("cardiac", "pulmonary", "pleural", "structural", "device", "artifact")
VOCABULARY_CSV = Path(__file__).resolve().parent.parent / "resources" / "concepts.csv"
TOKEN = re.compile(r"[a-z][a-z\-]*")

# Qualifiers stripped from the front of a phrase: "small left pleural effusion" -> "pleural effusion"; a phrase
# with one anywhere inside ("calcified right hilar node") is a located variant, not a concept of its own.
QUALIFIERS = set(
    """normal abnormal clear mild mildly moderate moderately severe small large tiny minimal minor trace left
    right bilateral bilaterally unilateral upper lower middle new old acute chronic focal diffuse patchy
    slight slightly borderline top significant definite obvious apparent residual subtle marked markedly
    well grossly overall partially partial likely""".split()
)


# Words that say where, or how generally, never what: the anatomy every film shows and report boilerplate. A mined
# phrase made of these words alone ("lung", "heart", "cardiomediastinal silhouette", "osseous structures", "active
# disease", "mid lung") names no concept of its own: ``extend_vocabulary`` keeps it out of the names (it may still
# become a synonym of a curated concept that holds it, as "heart size"). Chosen on the Indiana University reports
# and the phantom's; a real dataset's reports may need more (``not_a_name`` takes an extra list).
ANATOMY = set(
    """lung lungs heart cardiac silhouette mediastinum mediastinal cardiomediastinal cardio hilum hila hilar lobe lobes
    chest thorax thoracic hemithorax aorta aortic arch base bases apex apices atrium ventricle artery arteries vein
    veins vessel vessels body bone bones bony osseous skeletal abdomen abdominal joint vertebra vertebrae vertebral
    vasculature vascularity vascular pulmonary cardiopulmonary pleural pleura space spaces airspace airspaces carina
    svc vena cava superior inferior stomach zone zones midlung mid lymph quadrant midline junction contour contours
    structure structures border borders margin margins region angle angles basilar bibasilar intrathoracic head neck
    breast breasts segment disc discs endplate endplates valve fat nipple nipples sulcus fissure fissures diameter
    caliber interstitial cavoatrial distal proximal tip""".split()
)
BOILERPLATE = set(
    """disease diseases abnormality abnormalities process processes finding findings active assessment resolution
    scan age patient negative lateral frontal appearance evaluation air radiographic visualized limit limits intact
    projection note adjacent concern evaluate redemonstration differential diagnosis placement technical factors
    pattern remote characterization""".split()
)


def not_a_name(phrase: str, extra: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether a phrase says only where or how generally (``ANATOMY``, ``BOILERPLATE``, qualifiers, ``extra``),
    never what: "cardiomediastinal silhouette", "active disease", "left lung" (but not "lung nodule")."""
    words = normalize_name(phrase).split()
    known = ANATOMY | BOILERPLATE | QUALIFIERS | set(extra)
    return bool(words) and all(w in known or _singular(w) in known for w in words)


def load_vocabulary(path: str | Path = VOCABULARY_CSV) -> pd.DataFrame:
    """The concept table: concept, category, synonyms (a list of strings)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"concept", "category", "synonyms"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: vocabulary is missing columns {sorted(missing)}")
    bad = sorted(set(df["category"]) - set(CATEGORIES) - {""})
    if bad:
        raise ValueError(f"{path}: category must be one of {CATEGORIES} (or empty); found {bad}")
    df["concept"] = df["concept"].str.strip().str.lower()
    df["synonyms"] = [[s.strip().lower() for s in v.split("|") if s.strip()] for v in df["synonyms"]]
    return df.drop_duplicates("concept").reset_index(drop=True)


def normalize_name(name: str) -> str:
    """Lower-case words of a name, "_" and "-" read as spaces: "Pleural_Effusion" -> "pleural effusion"."""
    return " ".join(TOKEN.findall(name.lower().replace("_", " ").replace("-", " ")))


def match_concept(name: str, vocab: pd.DataFrame) -> str | None:
    """The vocabulary concept a free name refers to (exact name or synonym, else best word overlap)."""
    key = normalize_name(name)
    for concept, syns in zip(vocab["concept"], vocab["synonyms"], strict=True):
        if key == normalize_name(concept) or key in {normalize_name(s) for s in syns}:
            return concept
    words = set(key.split())
    best, best_score = None, 0.0
    for concept in vocab["concept"]:
        cw = set(normalize_name(concept).split())
        score = len(words & cw) / len(words | cw) if cw else 0.0
        if score > best_score:
            best, best_score = concept, score
    return best if best_score >= 0.5 else None


def infer_category(phrase: str, vocab: pd.DataFrame) -> str:
    """Category of a mined phrase: vote of vocabulary entries sharing its words ("" when none does)."""
    words = set(normalize_name(phrase).split()) - QUALIFIERS
    votes: Counter[str] = Counter()
    for concept, cat, syns in zip(vocab["concept"], vocab["category"], vocab["synonyms"], strict=True):
        for text in (concept, *syns):
            votes[cat] += len(words & set(normalize_name(text).split()))
    if not votes or max(votes.values()) == 0:
        return ""
    return votes.most_common(1)[0][0]


def _singular(name: str) -> str:
    # Word-wise singular of a normalized name, so "flattened diaphragms" meets the synonym "flattened diaphragm".
    words = normalize_name(name).split()
    return " ".join(w[:-3] + "y" if w.endswith("ies")
                    else w[:-1] if w.endswith("s") and not w.endswith(("ss", "us", "is"))
                    else w for w in words)


def _contained_owner(key: str, owner: dict[str, int]) -> int | None:
    """The known concept a qualified variant names: the longest known name ending the phrase ("mid lung
    consolidation" -> consolidation), else the longest inside it ("cardiac pacemaker device" -> pacemaker)."""
    words = key.split()
    spans = [(e == len(words), e - s, " ".join(words[s:e]))  # (ends the phrase, length, sub-phrase)
             for s in range(len(words)) for e in range(s + 1, len(words) + 1) if e - s < len(words)]
    for _, _, sub in sorted(spans, reverse=True):
        if owner.get(sub, -1) >= 0:
            return owner[sub]
    return None


def extend_vocabulary(vocab: pd.DataFrame, phrases: pd.DataFrame, max_new: int = 200) -> pd.DataFrame:
    """Add mined phrases (most frequent first) as new concepts, unless they name a known one or nothing at all.

    A phrase that is a known concept or synonym up to plurals, that ``match_concept`` maps to a known concept
    ("lung consolidation" -> consolidation), or that holds a known name ("apical pneumothorax"), becomes a
    synonym of that concept instead of a rival concept with the same meaning (which would split the concept's
    score and make a right name count as wrong). A phrase of anatomy and boilerplate alone (``not_a_name``: "lung",
    "cardiomediastinal silhouette", "active disease") is never added: it would compete with what a pattern shows.
    """
    syns = [list(s) for s in vocab["synonyms"]]
    owner: dict[str, int] = {}
    for i, (concept, names) in enumerate(zip(vocab["concept"], syns, strict=True)):
        for name in (concept, *names):
            owner.setdefault(_singular(name), i)
    index_of = {c: i for i, c in enumerate(vocab["concept"])}
    rows = []
    for phrase in phrases.sort_values("count", ascending=False)["phrase"]:
        key = _singular(phrase)
        i = owner.get(key)
        if i is None and key not in owner and " " in key:  # a lone word ("leads") is too vague to match fuzzily
            i = index_of.get(match_concept(phrase, vocab))
            i = _contained_owner(key, owner) if i is None else i
        if i is not None and i >= 0:
            if phrase != vocab["concept"].iloc[i] and phrase not in syns[i]:
                syns[i].append(phrase)
            continue
        if key in owner or len(rows) >= max_new or not_a_name(phrase):
            continue
        owner[key] = -1  # a new concept: later variants of it are dropped, not added twice
        rows.append({"concept": phrase, "category": infer_category(phrase, vocab), "synonyms": [], "mined": True})
    out = vocab.assign(synonyms=syns, mined=False)
    return pd.concat([out, pd.DataFrame(rows, columns=out.columns)], ignore_index=True) if rows else out


def name_alternatives(vocab: pd.DataFrame) -> list[list[int]]:
    """Per concept, the concepts that name a unit in its place when they score about as well (within the
    annotation's ``beta`` of it): names at the level of a finding, neither a qualified variant nor a bare head word.

    - a qualified variant ("large pleural effusion", "bilateral pleural effusions": the name without its
      qualifiers is another concept) -> that concept: where the scores cannot tell them apart, the unqualified
      name is true of the images either way;
    - a bare head word, i.e. a category's name ("artifact") or a one-word phrase mined from the reports ("tube",
      "motion"; ``mined`` column of ``extend_vocabulary``), that ends other concepts' names or synonyms -> those
      concepts ("tube": endotracheal tube, chest tube...; "artifact": grid lines by "grid artifact"; "motion":
      motion blur by "patient motion"): alone it says little more than the category does. Curated one-word
      findings ("pneumothorax", "nodule") are findings, whatever longer names end on them.
    Every other concept gets an empty list.
    """
    mined = vocab["mined"].to_numpy(bool) if "mined" in vocab else np.zeros(len(vocab), bool)
    names = [[normalize_name(n) for n in (c, *syns)] for c, syns in zip(vocab["concept"], vocab["synonyms"],
                                                                         strict=True)]
    owner: dict[str, int] = {}
    for i, ns in enumerate(names):
        for n in ns:
            owner.setdefault(_singular(n), i)
    heads: dict[str, list[int]] = {}  # last word (singular) of a longer name -> concepts holding such a name
    for i, ns in enumerate(names):
        for n in ns:
            words = _singular(n).split()
            if len(words) > 1 and i not in heads.setdefault(words[-1], []):
                heads[words[-1]].append(i)
    out: list[list[int]] = []
    for i, ns in enumerate(names):
        words = ns[0].split()
        bare = [w for w in words if w not in QUALIFIERS]
        if bare and len(bare) < len(words) and owner.get(_singular(" ".join(bare)), i) != i:
            out.append([owner[_singular(" ".join(bare))]])
        elif len(words) == 1 and (mined[i] or ns[0] in CATEGORIES):
            out.append([j for j in heads.get(_singular(words[0]), []) if j != i])
        else:
            out.append([])
    return out
