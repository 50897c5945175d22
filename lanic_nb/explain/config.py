"""The one configuration of explaining new images: the command line and notebook 10 both fill it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lanic_nb.checks import require_at_least_one
from lanic_nb.explain.annotator import VLMConfig

MODALITY_CHECKS = ("warn", "refuse")
OOD_CHECKS = ("warn", "refuse")


@dataclass
class ExplainConfig:
    """Settings of explaining new images: ``python -m lanic_nb.explain`` and notebook 10."""

    device: str = "auto"
    """Where the encoder, classifier and transcoders run ("auto": CUDA when present, else CPU). Default: auto."""
    images: list[str] = field(default_factory=list)
    """Image files (PNG, JPEG, DICOM) or folders of them; a single string is one path. Empty: the first
    ``n_test_images`` readable images of the run's own test split. Default: none: a few of the run's own test
    images."""
    n_test_images: int = 3
    """How many of the run's test images to explain when ``images`` is empty. Default: engineering (a short demo)."""
    out_dir: str = ""
    """Where the JSON, HTML and parquet files go; empty: ``<run_dir>/explain``. Default: the run's explain/ folder."""
    n_top: int = 20
    """Top patterns per finding written to each image's JSON (and rows per image and finding in the parquet). Default:
    CXR-LanIC: a prediction decomposes into 20-50 patterns."""
    n_shown: int = 5
    """Top patterns per finding named in the explanation text, drawn in the waterfall and shown as cards. Default:
    engineering (what a reader takes in)."""
    n_neighbors: int = 6
    """Nearest training images (cosine similarity of the embeddings) shown and written per image. Default:
    engineering."""
    n_thumbnails: int = 4
    """Top-activating training images shown per pattern. Default: engineering."""
    pool_images: int = 5000
    """At most this many training images (evenly spaced) to search for neighbours and pattern thumbnails. Default:
    engineering (bounds the search)."""
    batch_size: int = 32
    """Images embedded and decomposed together. Default: engineering."""
    modality_check: str = "warn"
    """DICOM whose Modality is not CR/DX or whose BodyPartExamined is not the chest: "warn" (explained, the warning
    written beside the result) or "refuse" (not explained, the reason written instead). Default: warn (the explanation
    is written, with the warning beside it)."""
    ood: str = "warn"
    """A film outside what the run knows (``attribute.ood``: unlike its training films, or mostly unexplained by
    its patterns, or not a radiograph at all): "warn" (explained, with a banner and the reason) or "refuse" (not
    explained, the reason written instead). Default: warn."""
    html: bool = True
    """Write a self-contained HTML page per image. Default: on."""
    allow_patient_data: bool = False
    """Must be True to write HTML pages for a run on a real (non-phantom) dataset: they embed its images. Default:
    off: a page with patient images is never written by accident."""
    annotator: VLMConfig = field(default_factory=VLMConfig)
    """A local image-text-to-text model whose sentences are appended to each explanation (``annotator.model``
    empty: none, the default and what every notebook uses)."""
    name_patterns: bool = False
    """With an annotator model: also ask it to name each shown pattern from its thumbnails. Default: off."""

    def __post_init__(self) -> None:
        if isinstance(self.images, str):
            self.images = [self.images] if self.images else []
        self.images = [str(p) for p in self.images]
        require_at_least_one(self, ("n_test_images", "n_top", "n_shown", "n_thumbnails", "pool_images",
                                    "batch_size"))
        if self.n_neighbors < 0:
            raise ValueError(f"n_neighbors must be >= 0, got {self.n_neighbors}")
        if self.ood not in OOD_CHECKS:
            raise ValueError(f"ood must be one of {OOD_CHECKS}, got {self.ood!r}")
        if self.modality_check not in MODALITY_CHECKS:
            raise ValueError(f"modality_check must be one of {MODALITY_CHECKS}, got {self.modality_check!r}")
        for name in ("html", "allow_patient_data", "name_patterns"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.name_patterns and not self.annotator.model:
            raise ValueError("name_patterns needs annotator.model (the model that names the patterns)")
