"""Frequent noun phrases of a dataset's report text, mined without a part-of-speech tagger.

The phrases extend the curated vocabulary (``lanic_nb.concepts.vocabulary.extend_vocabulary``), so units
can be named with the words this dataset's radiologists use. The rules are plain word lists: phrases
break at function words, report verbs and hedges; a phrase ends on a noun-like head and holds no qualifier
("small left pleural effusion" counts as "pleural effusion").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lanic_nb.concepts.vocabulary import QUALIFIERS, TOKEN

# Words that end or split a noun phrase: English function words (scikit-learn's stop list: prepositions,
# pronouns, determiners, "over", "further", "due"...), plus report verbs, hedges and section labels.
_BREAK = set(ENGLISH_STOP_WORDS) | set(
    """vs versus xxxx seen noted identified present demonstrated visualized shown appear appears appearing
    unchanged stable compared comparison prior previous possible possibly likely probable suggest suggests
    suggesting consistent represent represents representing concerning evidence limits remain remains remained
    interval change changes improved worsened increased decreased persistent persists given terminates terminate
    terminating projects project projecting overlies overlie extends extend courses measures measuring shows
    demonstrate demonstrates demonstrating including include includes reveal reveals revealed recommend
    recommended consider considered correlate correlation correlative reflect reflects reflecting consists consist
    followup follow-up question questionable history status post known result results unless exclude excluded
    examination findings impression indication technique near somewhat""".split()
)
# Words that are never a concept phrase on their own (report boilerplate, positions, "in place").
_NOT_HEAD = set(
    """size disease abnormality abnormalities findings finding process patient view views exam examination
    area areas space spaces tip unremarkable intact active visible suspicious prominent frontal lateral
    radiographic appearance evaluation study image images film films region regions portion aspect level
    configuration contour contours limits position place impression radiograph age zone""".split()
)
# Heads of phrases that name the examination itself.
_EXAM = set("radiograph radiographs film films view views study exam examination image images x-ray".split())
# Adjectives the suffix rule of ``_is_head`` misses: they modify a head, they never are one.
_ADJECTIVES = set(
    """hilar lobar bony soft low free mid dense sharp vague overt streaky hazy cloudy fluffy multiple
    posterior anterior superior inferior median subclavian retrocardiac basilar bibasilar apical cardio
    negative positive various greater helpful multilevel age-indeterminate""".split()
)
_ADJ_SUFFIX = ("al", "ic", "ac", "ous", "ary", "ive", "ble", "ar", "ior", "ian")


# TODO(H1): replace with ``from lanic_nb.text import split_sentences`` once the shared implementation lands
# (this is the one concepts copy, moved here from concepts/annotate.py; concepts.reports imports it from here).
def split_sentences(text: str) -> list[str]:
    """Report prose -> sentences (on . ; ! ? and line breaks; decimals kept)."""
    parts = re.split(r"(?<!\d)[.;!?](?!\d)|\n+", text or "")
    return [p.strip() for p in parts if p.strip()]


def _chunks(sentence: str) -> Iterable[list[str]]:
    """Runs of content words between break words and punctuation."""
    for piece in re.split(r"[,:()/\"]", sentence.lower()):
        run: list[str] = []
        for tok in TOKEN.findall(piece):
            if tok in _BREAK or len(tok) < 3 or "xxxx" in tok:  # "XXXX" is the IU reports' redaction
                if run:
                    yield run
                run = []
            else:
                run.append(tok)
        if run:
            yield run


def _is_qualifier(word: str) -> bool:
    return word in QUALIFIERS or word.startswith(("left-", "right-"))  # "left-sided", "right-sided"


def _is_head(word: str) -> bool:
    # A noun-phrase head is rarely a qualifier, an -ly adverb, an -ed/-ing participle ("enlarged", "seen") or
    # an adjective ("hilar", or a long word with an adjective suffix: "pleural", "cardiac", "osseous"; "scar"
    # is short and survives).
    if _is_qualifier(word) or word in _ADJECTIVES or word.endswith(("ly", "ed", "ing")):
        return False
    return not (len(word) > 5 and word.endswith(_ADJ_SUFFIX))


def _singular_word(word: str) -> str:
    # "opacities" -> "opacity", "pneumothoraces" -> "pneumothorax", "masses" -> "mass", "effusions" -> "effusion"
    for suffix, repl in (("ies", "y"), ("aces", "ax"), ("sses", "ss"), ("s", "")):
        if word.endswith(suffix) and not word.endswith(("ss", "us", "is")):
            return word[: -len(suffix)] + repl
    return word


def mine_noun_phrases(
    reports: Iterable[str], min_count: int = 5, max_words: int = 3, fragment_share: float = 0.9
) -> pd.DataFrame:
    """Frequent noun phrases of report text: (phrase, count), most frequent first.

    POS-free heuristic: split sentences at function words (scikit-learn's English stop list), negations,
    verbs and hedges; inside each run of content words, every n-gram (n <= max_words) that ends on a noun-like
    head, holds no qualifier and starts on neither a qualifier nor an -ing participle is a candidate. Plurals
    are folded into the singular when it occurs too. A phrase seen inside one longer candidate in at least
    ``fragment_share`` of its reports is a fragment of it ("vena cava" of "superior vena cava") and is dropped,
    and so is a phrase that names the examination ("chest radiograph", "lateral view"), not what it shows.
    """
    counts: Counter[str] = Counter()
    for report in reports:
        seen: set[str] = set()  # count a phrase once per report (document frequency)
        for sentence in split_sentences(report):
            for run in _chunks(sentence):
                for end in range(len(run)):
                    if not _is_head(run[end]):
                        continue
                    for start in range(end, max(0, end - max_words + 1) - 1, -1):
                        if _is_qualifier(run[start]):
                            break  # longer n-grams would hold the qualifier too
                        if run[start].endswith("ing"):
                            continue  # "overlying ecg leads" -> "ecg leads"
                        seen.add(" ".join(run[start : end + 1]))
        counts.update(seen)
    for phrase in list(counts):  # fold plurals into a singular that occurs too: "effusions" counts as "effusion"
        *mods, head = phrase.split()
        single = " ".join([*mods, _singular_word(head)])
        if single != phrase and single in counts:
            counts[single] += counts.pop(phrase)
    inside: Counter[str] = Counter()  # the count of the most frequent longer phrase holding each phrase
    for phrase, c in counts.items():
        words = phrase.split()
        for n in range(1, len(words)):
            for s in range(len(words) - n + 1):
                sub = " ".join(words[s : s + n])
                inside[sub] = max(inside[sub], c)
    rows = [
        (p, c) for p, c in counts.items()
        if c >= min_count and inside[p] < fragment_share * c and p not in _NOT_HEAD and p.split()[-1] not in _EXAM
    ]
    df = pd.DataFrame(rows, columns=["phrase", "count"])
    return df.sort_values(["count", "phrase"], ascending=[False, True]).reset_index(drop=True)
