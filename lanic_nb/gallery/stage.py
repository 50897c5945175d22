"""The gallery stage of a run (notebook 07): the galleries' data, ``gallery.html`` and its metrics.

Reads the run's models, patterns, pattern table and report sentences (through ``GalleryData.from_run``);
writes ``<run_dir>/gallery.html`` (refused for a real dataset unless ``allow_patient_data``) and
``metrics/07_gallery.json``. The returned data feeds the notebook's ipywidgets app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lanic_nb.artifacts import stage_function
from lanic_nb.checks import check_selection, require_at_least_one
from lanic_nb.device import pick_device
from lanic_nb.gallery.data import GalleryData
from lanic_nb.gallery.html import export_html
from lanic_nb.rundir import RunDir, record_metrics


@dataclass
class GalleryConfig:
    """Parameters of the gallery stage (notebook 07)."""

    device: str = "auto"
    """Where the attributions are computed ("auto": CUDA when present, else CPU). Default: auto."""
    split: str = "test"
    """Which images the galleries show. Default: the test split."""
    max_images: int | None = None
    """At most this many of the split's readable images (None: all of them). Default: all of them."""
    html_images: int = 12
    """Per-image explanations in gallery.html. Default: engineering (a page of a few MB)."""
    html_patterns: int = 30
    """Pattern cards in gallery.html (patterns linked from the images are always added). Default: engineering (a page
    of a few MB)."""
    allow_patient_data: bool = False
    """Must be True to export a real (non-phantom) dataset: the page then holds patient images. Default: off: a page
    with patient images is never written by accident."""

    def __post_init__(self) -> None:
        check_selection(self.split, self.max_images)
        require_at_least_one(self, ("html_images",))
        if self.html_patterns < 0:
            raise ValueError(f"html_patterns must be >= 0, got {self.html_patterns}")
        if not isinstance(self.allow_patient_data, bool):
            raise ValueError(f"allow_patient_data must be True or False, got {self.allow_patient_data!r}")


@dataclass
class GalleryResult:
    """What notebook 07 shows: the galleries' data (for the app) and the exported page."""

    data: GalleryData
    html_path: Path  # <run_dir>/gallery.html
    metrics: dict = field(default_factory=dict)  # as recorded in metrics/07_gallery.json


@stage_function("07_gallery")
def run_gallery(run_dir: str | Path, config: GalleryConfig | None = None) -> GalleryResult:
    """Compute the galleries' data for ``config.split``, export ``gallery.html`` and record its metrics.

    Raises PermissionError (before writing anything) when the dataset is not the phantom and
    ``allow_patient_data`` is False.
    """
    cfg = config or GalleryConfig()
    rd = RunDir(Path(run_dir))
    data = GalleryData.from_run(rd.root, split=cfg.split, max_images=cfg.max_images, device=pick_device(cfg.device))
    out = export_html(rd.root, rd.root / "gallery.html", allow_patient_data=cfg.allow_patient_data, data=data,
                      n_images=cfg.html_images, n_patterns=cfg.html_patterns)
    page = out.read_text(encoding="utf-8")
    metrics = {
        "n_images": data.n_images,
        "n_pattern_cards": page.count("class='card pattern-card'"),
        "n_image_cards": page.count("class='card image-card'"),
        "html_kb": out.stat().st_size / 1024,
    }
    record_metrics(rd.root, "07_gallery", metrics)
    return GalleryResult(data=data, html_path=out, metrics=metrics)
