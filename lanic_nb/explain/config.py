"""The one configuration of explaining new images: the command line and notebook 10 both fill it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lanic_nb.checks import require_at_least_one

MODALITY_CHECKS = ("warn", "refuse")


@dataclass
class ExplainConfig:
    """Parameters of ``python -m lanic_nb.explain`` and of notebook 10 (its defaults)."""

    device: str = "auto"
    """Where the encoder, classifier and transcoders run ("auto": CUDA when present, else CPU)."""
    images: list[str] = field(default_factory=list)
    """Image files (PNG, JPEG, DICOM) or folders of them; a single string is one path. Empty: the first
    ``n_test_images`` readable images of the run's own test split."""
    n_test_images: int = 3
    """How many of the run's test images to explain when ``images`` is empty."""
    out_dir: str = ""
    """Where the JSON, HTML and parquet files go; empty: ``<run_dir>/explain``."""
    n_top: int = 20
    """Top patterns per finding written to each image's JSON (and rows per image and finding in the parquet)."""
    n_shown: int = 5
    """Top patterns per finding named in the explanation text, drawn in the waterfall and shown as cards."""
    n_neighbors: int = 6
    """Nearest training images (cosine similarity of the embeddings) shown and written per image."""
    n_thumbnails: int = 4
    """Top-activating training images shown per pattern."""
    pool_images: int = 5000
    """At most this many training images (evenly spaced) to search for neighbours and pattern thumbnails."""
    batch_size: int = 32
    """Images embedded and decomposed together."""
    modality_check: str = "warn"
    """DICOM whose Modality is not CR/DX or whose BodyPartExamined is not the chest: "warn" (explained, the
    warning written beside the result) or "refuse" (not explained, the reason written instead)."""
    html: bool = True
    """Write a self-contained HTML page per image."""
    allow_patient_data: bool = False
    """Must be True to write HTML pages for a run on a real (non-phantom) dataset: they embed its images."""
    annotator_model: str = ""
    """A local Hugging Face image-text-to-text model (repo id in the cache, or a folder) whose sentences are
    appended to each explanation; empty: none (the default, and what every notebook uses)."""
    name_patterns: bool = False
    """With ``annotator_model``: also ask the model to name each shown pattern from its thumbnails."""
    annotator_max_new_tokens: int = 96
    """Longest answer the annotator model may generate."""
    allow_download: bool = False
    """Let transformers download ``annotator_model`` (default: the Hugging Face cache or a folder only)."""

    def __post_init__(self) -> None:
        if isinstance(self.images, str):
            self.images = [self.images] if self.images else []
        self.images = [str(p) for p in self.images]
        require_at_least_one(self, ("n_test_images", "n_top", "n_shown", "n_thumbnails", "pool_images",
                                    "batch_size", "annotator_max_new_tokens"))
        if self.n_neighbors < 0:
            raise ValueError(f"n_neighbors must be >= 0, got {self.n_neighbors}")
        if self.modality_check not in MODALITY_CHECKS:
            raise ValueError(f"modality_check must be one of {MODALITY_CHECKS}, got {self.modality_check!r}")
        for name in ("html", "allow_patient_data", "name_patterns", "allow_download"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.name_patterns and not self.annotator_model:
            raise ValueError("name_patterns needs annotator_model (the model that names the patterns)")
