"""Name units (patterns, latents, embedding dimensions) with radiology concepts, without masks (MAMMI-style).

MAMMI (Kim, Ahn, Kim, MICCAI 2024) annotates a neuron from its *representative* images only: those whose
activation is within 7% of the neuron's range from its maximum, so a rare-class neuron keeps few images and a
frequent one many (this adaptive count is its class-imbalance correction). Each concept is scored by the
vision-language model's image-text similarity to "A chest x-ray image of a {concept}" minus the similarity
to the bare template, summed over those images; concepts within beta = 0.95 of the best are kept.

The vocabulary is ``data/concepts.csv`` (concept, category, "|"-separated synonyms) extended by noun
phrases mined from the dataset's reports. A unit's category is the score-weighted vote of its concepts.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

log = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("cardiac", "pulmonary", "pleural", "structural", "device", "artifact")
VOCABULARY_CSV = Path(__file__).resolve().parent.parent / "resources" / "concepts.csv"
TEMPLATE = "A chest x-ray image of a {}"

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
# Qualifiers stripped from the front of a phrase: "small left pleural effusion" -> "pleural effusion"; a phrase
# with one anywhere inside ("calcified right hilar node") is a located variant, not a concept of its own.
_QUALIFIERS = set(
    """normal abnormal clear mild mildly moderate moderately severe small large tiny minimal minor trace left
    right bilateral bilaterally unilateral upper lower middle new old acute chronic focal diffuse patchy
    slight slightly borderline top significant definite obvious apparent residual subtle marked markedly
    well grossly overall partially partial likely""".split()
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
_TOKEN = re.compile(r"[a-z][a-z\-]*")


@dataclass
class AnnotationConfig:
    """How representative images are chosen and concepts kept (MAMMI's released defaults)."""

    top_fraction: float = 0.93
    """Representative images: activation > max - (1 - top_fraction) * (max - min)."""
    min_images: int = 5
    """At least this many representative images (the top ones) when the threshold keeps fewer."""
    max_images: int = 200
    """At most this many representative images (the top ones)."""
    beta: float = 0.95
    """Concepts scoring >= beta * best are kept (adaptive concept threshold)."""
    n_top: int = 3
    """Concepts reported per unit."""
    category_beta: float = 0.8
    """Concepts scoring >= category_beta * best vote for the unit's category."""
    center: bool = True
    """Subtract each concept's mean similarity over all images (a concept close to every image names none)."""
    standardize: bool = True
    """Also divide by each concept's standard deviation over images, so concepts compete on one scale.
    Not in MAMMI; with the small phantom CLIP it raised category agreement with the planted truth (0.19 -> 0.34)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {self.min_images}")
        if self.max_images < self.min_images:
            raise ValueError(f"max_images must be >= min_images, got {self.max_images}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.n_top < 1:
            raise ValueError(f"n_top must be >= 1, got {self.n_top}")
        if not 0.0 < self.category_beta <= 1.0:
            raise ValueError(f"category_beta must be in (0, 1], got {self.category_beta}")


# ---------------------------------------------------------------------------------------------- vocabulary


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


def _normalize(name: str) -> str:
    return " ".join(_TOKEN.findall(name.lower().replace("_", " ").replace("-", " ")))


def match_concept(name: str, vocab: pd.DataFrame) -> str | None:
    """The vocabulary concept a free name refers to (exact name or synonym, else best word overlap)."""
    key = _normalize(name)
    for concept, syns in zip(vocab["concept"], vocab["synonyms"], strict=True):
        if key == _normalize(concept) or key in {_normalize(s) for s in syns}:
            return concept
    words = set(key.split())
    best, best_score = None, 0.0
    for concept in vocab["concept"]:
        cw = set(_normalize(concept).split())
        score = len(words & cw) / len(words | cw) if cw else 0.0
        if score > best_score:
            best, best_score = concept, score
    return best if best_score >= 0.5 else None


def infer_category(phrase: str, vocab: pd.DataFrame) -> str:
    """Category of a mined phrase: vote of vocabulary entries sharing its words ("" when none does)."""
    words = set(_normalize(phrase).split()) - _QUALIFIERS
    votes: Counter[str] = Counter()
    for concept, cat, syns in zip(vocab["concept"], vocab["category"], vocab["synonyms"], strict=True):
        for text in (concept, *syns):
            votes[cat] += len(words & set(_normalize(text).split()))
    if not votes or max(votes.values()) == 0:
        return ""
    return votes.most_common(1)[0][0]


def _singular(name: str) -> str:
    # Word-wise singular of a normalized name, so "flattened diaphragms" meets the synonym "flattened diaphragm".
    words = _normalize(name).split()
    return " ".join(w[:-3] + "y" if w.endswith("ies") else w[:-1] if w.endswith("s") and not w.endswith(("ss", "us", "is"))
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
    """Add mined phrases (most frequent first) as new concepts, unless they name a known one.

    A phrase that is a known concept or synonym up to plurals, that ``match_concept`` maps to a known concept
    ("lung consolidation" -> consolidation), or that holds a known name ("apical pneumothorax"), becomes a
    synonym of that concept instead of a rival concept with the same meaning (which would split the concept's
    score and make a right name count as wrong).
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
        if key in owner or len(rows) >= max_new:
            continue
        owner[key] = -1  # a new concept: later variants of it are dropped, not added twice
        rows.append({"concept": phrase, "category": infer_category(phrase, vocab), "synonyms": [], "mined": True})
    out = vocab.assign(synonyms=syns, mined=False)
    return pd.concat([out, pd.DataFrame(rows, columns=out.columns)], ignore_index=True) if rows else out


# ------------------------------------------------------------------------------------------ report mining


def split_sentences(text: str) -> list[str]:
    """Report prose -> sentences (on . ; ! ? and line breaks; decimals kept)."""
    parts = re.split(r"(?<!\d)[.;!?](?!\d)|\n+", text or "")
    return [p.strip() for p in parts if p.strip()]


def _chunks(sentence: str) -> Iterable[list[str]]:
    """Runs of content words between break words and punctuation."""
    for piece in re.split(r"[,:()/\"]", sentence.lower()):
        run: list[str] = []
        for tok in _TOKEN.findall(piece):
            if tok in _BREAK or len(tok) < 3 or "xxxx" in tok:  # "XXXX" is the IU reports' redaction
                if run:
                    yield run
                run = []
            else:
                run.append(tok)
        if run:
            yield run


def _is_qualifier(word: str) -> bool:
    return word in _QUALIFIERS or word.startswith(("left-", "right-"))  # "left-sided", "right-sided"


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


def iu_reports_path() -> Path:
    """The Indiana University reports archive that torchxrayvision ships (read at run time, never copied)."""
    import torchxrayvision

    return Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"


def read_iu_reports(path: str | Path | None = None) -> list[str]:
    """FINDINGS + IMPRESSION text of each of the 3,955 Indiana University reports (CC BY-NC-ND 4.0)."""
    path = Path(path) if path else iu_reports_path()
    out = []
    pattern = re.compile(r'<AbstractText Label="(FINDINGS|IMPRESSION)">(.*?)</AbstractText>', re.S)
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8", errors="replace")
            out.append(" ".join(text for _, text in pattern.findall(xml)))
    return out


# ------------------------------------------------------------------------------------ text-side scoring


def load_text_encoder(store, name: str = ""):
    """The VLM whose text tower names the units: ``name``, else the encoder the embedding store was made with."""
    from lanic_nb.embed.encoders import LOCAL_PREFIX, load_encoder

    name = name or store.header["encoder"]
    if name.startswith(LOCAL_PREFIX) and not Path(name[len(LOCAL_PREFIX) :]).exists():
        name = LOCAL_PREFIX + str(Path(store.path).parent / "clip")  # the run folder moved: use its own clip/
    return load_encoder(name, device="cpu")


@torch.no_grad()
def embed_concepts(
    encoder, vocab: pd.DataFrame, template: str = TEMPLATE, known_text: Iterable[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept embeddings (C, d) (mean of the prompt over the concept and its synonyms, unit norm) and the
    bare-template embedding (d,), both from the VLM's text tower on CPU.

    known_text: if given (e.g. the reports the VLM was trained on), only names that occur in it enter a
    concept's mean (all of them when none does). A text tower trained on that text alone gives names it never
    read arbitrary embeddings, which would otherwise drown the ones it knows.
    """
    texts, owner = [], []
    for i, names in enumerate(prompt_names(vocab, known_text)):
        for name in names:
            texts.append(template.format(name))
            owner.append(i)
    emb = encoder.encode_texts(texts).float().cpu()  # (n_texts, d)
    sums = torch.zeros(len(vocab), emb.shape[1]).index_add_(0, torch.tensor(owner), emb)
    bare = encoder.encode_texts([template.replace("{}", "").strip()]).float().cpu()[0]
    return F.normalize(sums, dim=1), F.normalize(bare, dim=0)


def prompt_names(vocab: pd.DataFrame, known_text: Iterable[str] | None = None) -> list[list[str]]:
    """Per concept, the names whose prompts are averaged: the concept and its synonyms, restricted to those
    occurring (as whole words, plural too) in ``known_text`` when given, all of them when none occurs."""
    seen = " " + " . ".join(_normalize(t) for t in known_text) + " " if known_text is not None else None
    out = []
    for concept, syns in zip(vocab["concept"], vocab["synonyms"], strict=True):
        names = [concept, *syns]
        out.append(([n for n in names if _occurs(n, seen)] or names) if seen is not None else names)
    return out


def _occurs(name: str, text: str) -> bool:
    # ``text`` is normalized and space-padded: a whole-word match (plural too) is a plain substring test.
    key = _normalize(name)
    return bool(key) and (f" {key} " in text or f" {key}s " in text)


def concept_similarity(image_emb: torch.Tensor, concept_emb: torch.Tensor, template_emb: torch.Tensor) -> torch.Tensor:
    """(n, C) similarity of each image to each concept prompt minus its similarity to the bare template."""
    img = F.normalize(image_emb.float(), dim=1)
    return img @ concept_emb.T - (img @ template_emb)[:, None]


def representative_images(act: np.ndarray, cfg: AnnotationConfig) -> np.ndarray:
    """Indices of a unit's representative images (adaptive count, MAMMI), highest activation first."""
    hi, lo = float(act.max()), float(act.min())
    if hi <= lo:
        return np.zeros(0, np.int64)  # a unit that never varies has no representative images
    order = np.argsort(-act, kind="stable")
    n = int((act > hi - (1 - cfg.top_fraction) * (hi - lo)).sum())
    n = int(np.clip(n, cfg.min_images, cfg.max_images))
    n = min(n, int((act > lo).sum()))
    return order[:n]


def annotate_units(
    activations: np.ndarray, similarity: np.ndarray, vocab: pd.DataFrame, cfg: AnnotationConfig | None = None
) -> pd.DataFrame:
    """Name every unit: top concepts with scores, kept count, category and its confidence.

    activations: (n_images, n_units); similarity: (n_images, n_concepts) from :func:`concept_similarity`.
    Concepts are ranked by their similarity summed over the representative images (as MAMMI sums);
    ``score_k`` reports that sum divided by the number of images, so scores compare across units.
    """
    cfg = cfg or AnnotationConfig()
    act = np.asarray(activations, dtype=np.float32)
    sim = np.asarray(similarity, dtype=np.float32)
    if cfg.center or cfg.standardize:
        sim = sim - sim.mean(axis=0, keepdims=True)
    if cfg.standardize:
        sim = sim / (sim.std(axis=0, keepdims=True) + 1e-6)
    concepts = vocab["concept"].to_numpy()
    cats = vocab["category"].to_numpy()
    rows = []
    for u in range(act.shape[1]):
        rep = representative_images(act[:, u], cfg)
        row: dict = {"unit": u, "n_images": len(rep)}
        if len(rep) == 0:
            rows.append(row | {"category": "", "category_confidence": 0.0, "n_kept": 0})
            continue
        score = sim[rep].sum(axis=0)  # (C,) summed over representative images, as MAMMI sums
        order = np.argsort(-score, kind="stable")
        best = float(score[order[0]])
        for r in range(cfg.n_top):
            row[f"concept_{r + 1}"] = concepts[order[r]] if r < len(order) else ""
            row[f"score_{r + 1}"] = float(score[order[r]]) / len(rep) if r < len(order) else np.nan
        row["n_kept"] = int((score >= _adaptive(best, cfg.beta)).sum())
        voters = (score >= _adaptive(best, cfg.category_beta)) & (cats != "")
        votes: Counter[str] = Counter()
        for c in np.nonzero(voters)[0]:
            votes[cats[c]] += max(float(score[c]), 1e-9)  # a positive weight even when all scores are <= 0
        total = sum(votes.values())
        cat, w = votes.most_common(1)[0] if votes else ("", 0.0)
        rows.append(row | {"category": cat, "category_confidence": w / total if total else 0.0})
    columns = ["unit", "n_images", *(f"{k}_{r + 1}" for r in range(cfg.n_top) for k in ("concept", "score")),
               "n_kept", "category", "category_confidence"]
    return pd.DataFrame(rows, columns=columns)


def _adaptive(best: float, beta: float) -> float:
    # beta * best when the best score is positive; for a negative best, the same relative distance below it.
    return best * beta if best > 0 else best - (1 - beta) * abs(best)


def top_sentences(activations: np.ndarray, sentences: Sequence[str], k: int = 3) -> list[list[str]]:
    """Per unit, the k sentences (distinct texts) that activate it most; (n_sentences, n_units) in."""
    act = np.asarray(activations)
    out = []
    for u in range(act.shape[1]):
        picked: list[str] = []
        for i in np.argsort(-act[:, u], kind="stable"):
            if act[i, u] <= 0 or len(picked) >= k:
                break
            if sentences[i] not in picked:
                picked.append(sentences[i])
        out.append(picked)
    return out


_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|cannot|rather than)\b")


def mention_matrix(reports: Sequence[str], vocab: pd.DataFrame) -> np.ndarray:
    """(n_reports, n_concepts) bool: the concept (or a synonym) is mentioned in a sentence without a negation
    or hedge cue. Crude on purpose: it needs no labeler, so it works on any report text."""
    patterns = [
        re.compile(r"\b(" + "|".join(re.escape(_normalize(t)) for t in (c, *s) if _normalize(t)) + r")s?\b")
        for c, s in zip(vocab["concept"], vocab["synonyms"], strict=True)
    ]
    out = np.zeros((len(reports), len(vocab)), dtype=bool)
    for i, report in enumerate(reports):
        text = " . ".join(_normalize(s) for s in split_sentences(report) if not _NEGATION.search(s.lower()))
        for c, pat in enumerate(patterns):
            out[i, c] = bool(pat.search(text))
    return out


def report_purity(activations: np.ndarray, mentions: np.ndarray, k: int = 20, min_firing: int = 5) -> pd.DataFrame:
    """Monosemanticity without planted truth: for each unit, the concept most often (positively) mentioned
    in the reports of its top-k images, and that share ("purity") minus the concept's base rate ("lift").
    Units firing on fewer than ``min_firing`` images get NaN (two images agree by chance too easily)."""
    act = np.asarray(activations)
    base = mentions.mean(axis=0)  # (C,)
    rows = []
    for u in range(act.shape[1]):
        top = np.argsort(-act[:, u], kind="stable")[:k]
        top = top[act[top, u] > 0]
        if len(top) < min(min_firing, k):
            rows.append({"unit": u, "purity_concept": -1, "purity": np.nan, "lift": np.nan})
            continue
        share = mentions[top].mean(axis=0)
        c = int(np.argmax(share - base))
        rows.append({"unit": u, "purity_concept": c, "purity": float(share[c]), "lift": float(share[c] - base[c])})
    return pd.DataFrame(rows, columns=["unit", "purity_concept", "purity", "lift"])
