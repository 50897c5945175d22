"""Explaining in JupyterLab: upload a radiograph, see it explained in place with the gallery's ImageView.

``UploadApp`` holds an ipywidgets ``FileUpload``; each uploaded file (PNG, JPEG or DICOM) is explained by the
loaded run and added to an ``ImageView`` (image, five probabilities, waterfall, pattern buttons, explanation),
above the cards of the shown patterns and the nearest training images. A file that cannot be explained shows
its reason. Uploads live in a temporary folder for the app's lifetime; nothing is written into the run.
Everything is plain objects holding widgets, so tests drive it headless (``explain_bytes``).
"""

from __future__ import annotations

import re
import tempfile
import weakref
from collections.abc import Sequence
from html import escape
from pathlib import Path

import ipywidgets as W
import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute.core import Attribution
from lanic_nb.explain.page import PAGE_CSS, neighbors_html, ood_banner, pattern_card
from lanic_nb.explain.pipeline import Explainer, ImageExplanation, shown_patterns
from lanic_nb.gallery.data import GalleryData
from lanic_nb.gallery.widgets import ImageView

UPLOAD_TYPES = ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom"


def gallery_data(explanations: Sequence[ImageExplanation], explainer: Explainer) -> GalleryData:
    """The explained images (status "ok") as the gallery's data, so its ImageView shows them unchanged."""
    ok = [e for e in explanations if e.ok]
    run = explainer.run
    if ok:
        def cat(k: str) -> torch.Tensor:
            return torch.cat([getattr(e.attribution, k) for e in ok])

        attr = Attribution(cat("contributions"), cat("other"), ok[0].attribution.bias, cat("error"), cat("logits"),
                           cat("activations"))
    else:
        zero = torch.zeros(0, 5, dtype=torch.float64)
        attr = Attribution(torch.zeros(0, run.n_patterns, 5, dtype=torch.float64), zero,
                           torch.zeros(5, dtype=torch.float64), zero, zero,
                           torch.zeros(0, run.n_patterns, dtype=torch.float64))
    return GalleryData(image_ids=np.array([e.image_id for e in ok], dtype=object), image_paths=[e.source for e in ok],
                       labels=np.full((len(ok), 5), np.nan, dtype=np.float32), attribution=attr, patterns=run.table,
                       sentences=pd.DataFrame({"image": pd.Series(dtype=np.int64), "text": pd.Series(dtype=str)}),
                       dataset=run.dataset)


def details_html(e: ImageExplanation, explainer: Explainer) -> str:
    """The page's pattern cards and nearest training images for one explanation (an HTML fragment)."""
    run, n = explainer.run, explainer.cfg.n_shown
    warn = ood_banner(e) + "".join(f"<p class='note'>Warning: {escape(w)}.</p>" for w in e.warnings)
    cards = "".join(pattern_card(e, p, run) for p in shown_patterns(e, n))
    return (f"<div class='lanic-explain'><style>{scoped_css(PAGE_CSS, '.lanic-explain')}</style>{warn}"
            f"<h4>The patterns in the waterfalls</h4>{cards or '<p>No pattern is active.</p>'}"
            f"<h4>Nearest training images</h4>{neighbors_html(e, run)}</div>")


def scoped_css(css: str, scope: str) -> str:
    """The page's style sheet limited to ``scope`` (in JupyterLab a <style> would restyle the whole app)."""
    def prefix(m: re.Match) -> str:
        sels = [x.strip() for x in m.group(1).split(",")]
        return ",".join(scope if x == "body" else f"{scope} {x}" for x in sels) + "{"

    return re.sub(r"([^{}]+)\{", prefix, css)


class UploadApp:
    """A FileUpload whose files are explained in place (``.widget`` is what a notebook displays)."""

    def __init__(self, explainer: Explainer, initial: Sequence[ImageExplanation] = ()):
        self.explainer = explainer
        self.explanations: list[ImageExplanation] = [e for e in initial if e.ok]
        self.upload = W.FileUpload(accept=UPLOAD_TYPES, multiple=True, description="Upload")
        self.status = W.HTML("<i>Upload a PNG, JPEG or DICOM radiograph to explain it.</i>")
        self.view_box = W.VBox()
        self.details = W.HTML()
        self.widget = W.VBox([W.HBox([self.upload, self.status]), self.view_box, self.details])
        self.view: ImageView | None = None
        self._tmp = tempfile.mkdtemp(prefix="lanic_upload_")
        self._cleanup = weakref.finalize(self, _remove_tree, self._tmp)
        self.upload.observe(self._on_upload, names="value")
        self._refresh()

    def explain_bytes(self, name: str, content: bytes) -> ImageExplanation:
        """Explain one uploaded file's bytes, add it to the view (when explained) and select it."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name) or "upload"
        folder = Path(tempfile.mkdtemp(dir=self._tmp))  # a fresh folder: two uploads of one name both stay
        path = folder / safe
        path.write_bytes(bytes(content))
        e = self.explainer.explain_file(path, image_id=Path(safe).stem)
        if e.ok:
            self.explanations.append(e)
            warn = f" ({len(e.warnings)} warning{'s' if len(e.warnings) > 1 else ''}, below)" if e.warnings else ""
            outside = (f" <span style='color:#b02a37;font-weight:600'>Outside what the run knows: "
                       f"{escape(e.ood['why'])}</span>" if e.outside else "")
            self.status.value = f"<b>{escape(safe)}</b> explained{warn}.{outside}"
            self._refresh(select=len(self.explanations) - 1)
        else:
            self.status.value = f"<b>{escape(safe)}</b> was not explained ({e.status}): {escape(e.reason)}"
        return e

    def _on_upload(self, change) -> None:
        for item in change["new"] or ():
            self.explain_bytes(item["name"], item["content"])

    def _refresh(self, select: int | None = None) -> None:
        if not self.explanations:
            self.view_box.children, self.details.value = (), ""
            return
        data = gallery_data(self.explanations, self.explainer)
        self.view = ImageView(data, n_top=self.explainer.cfg.n_shown,
                              text_of=lambda i, c: self.explanations[i].texts[c])
        if select is not None:
            self.view.image_select.value = select
        self.view.image_select.observe(lambda _: self._show_details(), names="value")
        self.view_box.children = (self.view.widget,)
        self._show_details()

    def _show_details(self) -> None:
        i = self.view.image_select.value if self.view is not None else None
        self.details.value = "" if i is None else details_html(self.explanations[i], self.explainer)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
