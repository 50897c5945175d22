"""The concept space a run's units are named in: vocabulary, mined phrases, and image-concept similarities.

Notebooks 04 (patterns) and 08 (MAMMI) name units the same way, so they share this one step: the curated
vocabulary extended by the noun phrases of the run's own reports, every concept embedded by the VLM's text
tower (prompt "A chest x-ray image of a {concept}"), and each image's similarity to each concept minus its
similarity to the bare template.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lanic_nb.concepts.annotate import concept_similarity, embed_concepts, load_text_encoder
from lanic_nb.concepts.mining import mine_noun_phrases
from lanic_nb.concepts.vocabulary import extend_vocabulary, load_vocabulary


@dataclass
class ConceptsConfig:
    """The concept vocabulary a run's units are named with, and the VLM that reads it."""

    mine_min_count: int = 5
    """A noun phrase mined from the run's reports joins the vocabulary when at least this many reports use it.
    Default: chosen on the phantom (MAMMI mines nouns from MIMIC-CXR reports without stating a cut-off)."""
    max_mined: int = 200
    """At most this many mined phrases join the vocabulary (the most frequent first; 0: the curated list only).
    Default: chosen on the phantom."""
    known_names_only: bool = True
    """Prompt a concept only by the names (concept, synonyms) that the run's reports use: a text tower trained on
    those reports alone gives names it never read arbitrary embeddings. Default: on (harmless for a text tower
    that knows every word, such as BiomedCLIP's)."""
    encoder: str = ""
    """The VLM whose text tower names the units; empty: the encoder the embedding store was made with (MAMMI
    scores concepts with the same kind of image-text model). Default: the run's own encoder."""

    def __post_init__(self) -> None:
        if self.mine_min_count < 1:
            raise ValueError(f"mine_min_count must be >= 1, got {self.mine_min_count}")
        if self.max_mined < 0:
            raise ValueError(f"max_mined must be >= 0, got {self.max_mined}")


@dataclass
class ConceptSpace:
    """The vocabulary and the VLM's view of it, for one run's images."""

    vocab: pd.DataFrame  # concept, category, synonyms, mined
    mined: pd.DataFrame  # phrase, count: the report phrases mined (before folding into the vocabulary)
    similarity: np.ndarray  # (n_images, n_concepts) prompt similarity minus template similarity
    concept_emb: torch.Tensor  # (n_concepts, d) unit text embeddings
    template_emb: torch.Tensor  # (d,) unit embedding of the bare template

    @property
    def n_mined(self) -> int:
        """Concepts the mined phrases added (those not folded into a known concept as synonyms)."""
        return int(self.vocab["mined"].sum())


def concept_space(
    store, manifest: pd.DataFrame, x: np.ndarray | torch.Tensor, encoder: str = "", mine_min_count: int = 5,
    max_mined: int = 200, known_names_only: bool = True,
) -> ConceptSpace:
    """Vocabulary -> report mining -> text encoder -> concept embeddings -> (n_images, n_concepts) similarity.

    store: the run's EmbeddingStore (its encoder names the text tower unless ``encoder`` is given);
    manifest: the rows of ``x`` (its ``report`` column is mined); x: (n_images, d) image embeddings.
    known_names_only: prompt a concept only by the names its reports use (a text tower trained on those
    reports alone gives names it never read arbitrary embeddings).
    """
    reports = manifest["report"].fillna("").astype(str)
    mined = mine_noun_phrases(reports, min_count=mine_min_count)
    vocab = extend_vocabulary(load_vocabulary(), mined, max_new=max_mined)
    text_encoder = load_text_encoder(store, encoder)
    concept_emb, template_emb = embed_concepts(text_encoder, vocab, known_text=reports if known_names_only else None)
    image_emb = torch.as_tensor(np.asarray(x, dtype=np.float32))
    similarity = concept_similarity(image_emb, concept_emb, template_emb).numpy()
    return ConceptSpace(vocab, mined, similarity, concept_emb, template_emb)
