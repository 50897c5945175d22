"""The phantom encoder's recipe (``PretrainConfig``): architecture, data stream, optimisation, and the words its
captions use. Training is in :mod:`lanic_nb.phantom.encoder`."""

from __future__ import annotations

from dataclasses import dataclass

from lanic_nb.checks import require_at_least_one
from lanic_nb.embed.clip_small import SmallClipConfig
from lanic_nb.phantom.captions import CAPTION_WORDS
from lanic_nb.phantom.config import CONCEPT_NAMES, PhantomConfig


@dataclass
class PretrainConfig:
    """The recipe of the phantom encoder (architecture, data stream, optimisation)."""

    steps: int = 2000
    """Optimizer steps; each sees ``batch_size`` fresh phantom images (no image is seen twice)."""
    batch_size: int = 64
    """Image-text pairs per step (the contrastive negatives)."""
    image_size: int = 128
    """Encoder input side: the 224 px phantom films are resized to it, as every user image is."""
    source_size: int = 224
    """Side at which the stream's phantoms are drawn (the demo's image size)."""
    vision_layers: int = 1
    """ModifiedResNet bottleneck blocks per stage (four stages)."""
    vision_width: int = 32
    """ModifiedResNet stage-one width (the last stage has 32x as many channels)."""
    text_layers: int = 4
    """BERT layers."""
    text_width: int = 128
    """BERT hidden size; narrower than ``embed_dim``, since a text tower that wide would cost most of a step."""
    text_heads: int = 4
    """BERT attention heads."""
    embed_dim: int = 256
    """Joint embedding dimension (what the classifier and the transcoders read)."""
    context_length: int = 128
    """Token budget per text."""
    vocab_size: int = 6000
    """Most WordPiece tokens; large enough that every word of the concept vocabulary is one token."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule after a linear warmup)."""
    warmup_steps: int = 200
    """Linear warmup steps."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    caption_fraction: float = 0.5
    """Share of pairs whose text is a figure-style caption; the rest get their clinical report."""
    phrase_weight: float = 2.0
    """Weight of the image-phrase loss (every image against each concept's name and its negation)."""
    words: str = "vocabulary"
    """Whose names captions and phrases use: "vocabulary" (the concept vocabulary's names and synonyms, which naming
    scores later) or "paraphrase" (``resources/caption_paraphrases.csv``: never those words; the language-gap
    encoder, with ``tag_weight`` 0)."""
    tag_weight: float = 1.0
    """Weight of the tagging loss (the caption's concepts read linearly off the image embedding)."""
    pretrain_rate: float = 0.3
    """Rate at which every concept is planted, independently, in the pretraining stream."""
    phantom_seed: int = 1_000
    """Phantom seed of the stream (runs use other seeds; the card's evaluation uses ``eval_seed``)."""
    eval_seed: int = 2_027
    """Phantom seed of the held-out images that the card and the progress checks are measured on."""
    eval_every: int = 250
    """Steps between progress checks (linear probes on held-out images, logged; 0: none)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (the run resumes from the last one)."""
    seed: int = 0
    """Seed of initialisation and augmentation."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("steps", "batch_size", "image_size", "source_size", "vision_layers",
                                    "vision_width", "text_layers", "text_width", "text_heads", "embed_dim",
                                    "context_length", "vocab_size", "checkpoint_every"))
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the resnet halves it five times), got "
                             f"{self.image_size}")
        if not 0.0 <= self.caption_fraction <= 1.0 or not 0.0 < self.pretrain_rate < 1.0:
            raise ValueError("caption_fraction must be in [0, 1] and pretrain_rate in (0, 1)")
        if self.words not in CAPTION_WORDS:
            raise ValueError(f"words must be one of {CAPTION_WORDS}, got {self.words!r}")
        if self.phantom_seed == self.eval_seed:
            raise ValueError("eval_seed must differ from phantom_seed: the card is measured on unseen images")

    def architecture(self) -> SmallClipConfig:
        """The model's shape in the small CLIP's terms (same open_clip folder layout)."""
        return SmallClipConfig(vision_arch="resnet", image_size=self.image_size, vision_layers=self.vision_layers,
                               vision_width=self.vision_width, text_layers=self.text_layers,
                               text_width=self.text_width, text_heads=self.text_heads, embed_dim=self.embed_dim,
                               context_length=self.context_length, vocab_size=self.vocab_size,
                               steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                               warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, seed=self.seed)

    def stream_phantom(self) -> PhantomConfig:
        return PhantomConfig(n_images=self.steps * self.batch_size, image_size=self.source_size,
                             seed=self.phantom_seed, latent_states=False, shortcut_concept="",
                             prevalence=dict.fromkeys(CONCEPT_NAMES, self.pretrain_rate))


