"""The galleries in JupyterLab: ipywidgets views over one ``GalleryData``, plus the HTML fragments they show.

- ``PatternGallery``: choose a finding, a category and a pattern; see its top-activating images, its
  activation histogram, its concepts, its effect on each finding and the report sentences most
  over-represented among its top images.
- ``ImageView``: choose an image; see it, the five probabilities, a waterfall of its top patterns for a
  finding and the explanation text; each pattern button opens that pattern in the gallery.

Both are plain objects holding ipywidgets (``.widget``) and methods that update them, so they build and
update headless (tests drive them). ``gallery_app`` puts both in tabs. The fragments
(``pattern_info_html``, ``probabilities_html``) are shared with the static page (``lanic_nb.gallery.html``).
"""

from __future__ import annotations

from html import escape

import ipywidgets as W
import numpy as np

from lanic_nb.explain.text import signed
from lanic_nb.gallery.data import (
    GalleryData,
    describe_pattern,
    explanation,
    histogram_png,
    pattern_effects,
    ranked_patterns,
    thumbnail_png,
    top_images,
    top_sentences,
    waterfall_png,
    waterfall_terms,
)
from lanic_nb.manifest import FINDINGS, label_text

# ---------------------------------------------------------------- HTML fragments (also in the static page)


def pattern_info_html(data: GalleryData, pattern: int) -> str:
    """Concepts, effect table and top sentences of one pattern, as an HTML fragment."""
    d = describe_pattern(data, pattern)
    concepts = ", ".join(f"{escape(n)}" + (f" ({s:.2f})" if s is not None else "") for n, s in d["concepts"])
    eff = pattern_effects(data, pattern)
    rows = "".join(f"<tr><td>{f}</td><td>{u:+.3f}</td><td>{m:+.3f}</td></tr>"
                   for f, u, m in eff.itertuples(index=False))
    sents = "".join(f"<li>{escape(t)} <small>(+{v:.0%})</small></li>" for t, v in top_sentences(data, pattern))
    activating = "".join(f"<li>{escape(t)}</li>" for t in d["sentences"])
    cons = f"; held by {d['consistency']:.0%} of members" if d["consistency"] is not None else ""
    return (f"<div class='pattern-info'><h4>Pattern {pattern} &middot; {escape(d['category'] or 'uncategorized')}"
            f"</h4><p class='concepts'><b>Concepts:</b> {concepts or 'none annotated'}{cons}</p>"
            "<table class='effects'><tr><th>finding</th><th>logit per unit</th><th>mean when active</th></tr>"
            f"{rows}</table><p><b>Top report sentences</b> of its top images (share there minus overall):</p>"
            f"<ul class='sentences'>{sents or '<li>none</li>'}</ul>"
            + (f"<p><b>Report sentences that activate it most:</b></p><ul class='sentences'>{activating}</ul>"
               if activating else "") + "</div>")


def probabilities_html(data: GalleryData, image: int) -> str:
    """The five probabilities as bars, with the report labels when the image has any (a new image has none)."""
    p = data.probabilities[image]
    labelled = not np.isnan(data.labels[image]).all()
    rows = "".join(
        # inline colour and height: in JupyterLab no style sheet defines .bar
        f"<tr><td>{f}</td><td><div class='bar' style='width:{100 * v:.0f}px;height:10px;background:#c44e52'></div>"
        f"</td><td>{v:.2f}</td>"
        + (f"<td>{label_text(data.labels[image, j])}</td>" if labelled else "") + "</tr>"
        for j, (f, v) in enumerate(zip(FINDINGS, p, strict=True)))
    head = "<th>report label</th>" if labelled else ""
    return f"<table class='probs'><tr><th>finding</th><th></th><th>p</th>{head}</tr>{rows}</table>"


# ---------------------------------------------------------------- widgets


class PatternGallery:
    """Finding / category / pattern pickers over an image grid, a histogram and the pattern's description."""

    def __init__(self, data: GalleryData, n_images: int = 12, thumb: int = 96, max_options: int = 300):
        # The picker lists the max_options most important patterns of the finding (thousands would not scroll).
        self.data, self.n_images, self.thumb, self.max_options = data, n_images, thumb, max_options
        self.finding = W.Dropdown(options=[(f, j) for j, f in enumerate(FINDINGS)], value=0, description="finding")
        self.category = W.Dropdown(options=[("all", "")] + [(c, c) for c in data.categories()], value="",
                                   description="category")
        self.pattern = W.Dropdown(options=[], description="pattern")
        self.grid = W.GridBox(layout=W.Layout(grid_template_columns=f"repeat(6, {thumb + 8}px)"))
        self.histogram = W.Image(format="png")
        self.info = W.HTML()
        self.widget = W.VBox([W.HBox([self.finding, self.category, self.pattern]),
                              W.HBox([self.grid, W.VBox([self.histogram])]), self.info])
        self._quiet = False  # set while this object changes its own pickers, so observers do not re-enter
        self.finding.observe(self._on_filter, names="value")
        self.category.observe(self._on_filter, names="value")
        self.pattern.observe(self._on_pattern, names="value")
        self._refresh_options()

    def _on_filter(self, _change) -> None:
        if not self._quiet:
            self._refresh_options()

    def _on_pattern(self, _change) -> None:
        if not self._quiet:
            self._show()

    def _refresh_options(self, keep: int | None = None) -> None:
        ids = ranked_patterns(self.data, self.finding.value, self.category.value or None)[: self.max_options]
        if keep is not None and keep not in ids:
            ids = np.r_[keep, ids]
        current = keep if keep is not None else (self.pattern.value if self.pattern.value in ids else None)
        self._quiet = True
        try:
            self.pattern.options = [(self._label(int(p)), int(p)) for p in ids]
            self.pattern.value = current if current is not None else (int(ids[0]) if len(ids) else None)
        finally:
            self._quiet = False
        self._show()

    def _label(self, p: int) -> str:
        cat, concepts = self.data.info().get(p, ("", ()))
        return f"{p}: {cat or '?'} / {concepts[0] if concepts else '-'}"

    def _show(self) -> None:
        p = self.pattern.value
        if p is None:
            self.grid.children, self.histogram.value, self.info.value = (), b"", "<p>No active pattern.</p>"
            return
        imgs = top_images(self.data, p, self.n_images)
        self.grid.children = tuple(
            W.VBox([W.Image(value=thumbnail_png(str(self.data.image_paths[i]), self.thumb), format="png",
                            layout=W.Layout(width=f"{self.thumb}px")),
                    W.HTML(f"<small>{escape(str(self.data.image_ids[i]))} "
                           f"{float(self.data.attribution.activations[i, p]):.2f}</small>")]) for i in imgs)
        self.histogram.value = histogram_png(self.data, p)
        self.info.value = pattern_info_html(self.data, p)

    def show_pattern(self, pattern: int) -> None:
        """Open one pattern (from any finding or category)."""
        if self.category.value and self.data.info().get(pattern, ("",))[0] != self.category.value:
            self._quiet = True
            try:
                self.category.value = ""
            finally:
                self._quiet = False
        self._refresh_options(keep=int(pattern))


class ImageView:
    """One image: the image, five probabilities, a waterfall of its top patterns and the explanation.

    ``text_of(image, finding)``, when given, supplies the explanation text (e.g. one already written with an
    annotator model's sentences); by default it is the template text of ``explanation``.
    """

    def __init__(self, data: GalleryData, gallery: PatternGallery | None = None, n_top: int = 8, on_open=None,
                 text_of=None):
        self.data, self.gallery, self.n_top, self.on_open = data, gallery, n_top, on_open
        self.text_of = text_of
        self.image_select = W.Dropdown(options=[(str(iid), i) for i, iid in enumerate(data.image_ids)],
                                       value=0 if data.n_images else None, description="image")
        best = int(np.nanargmax(data.probabilities.mean(0))) if data.n_images else 0
        self.finding = W.Dropdown(options=[(f, j) for j, f in enumerate(FINDINGS)], value=best, description="finding")
        self.image = W.Image(format="png", layout=W.Layout(width="224px"))
        self.probs = W.HTML()
        self.waterfall = W.Image(format="png")
        self.buttons = W.VBox()
        self.text = W.HTML()
        self.widget = W.VBox([W.HBox([self.image_select, self.finding]),
                              W.HBox([self.image, self.probs]),
                              W.HBox([self.waterfall, self.buttons]), self.text])
        self.image_select.observe(lambda _: self.update(), names="value")
        self.finding.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> None:
        i, c = self.image_select.value, self.finding.value
        if i is None:
            return
        self.image.value = thumbnail_png(str(self.data.image_paths[i]), 224)
        self.probs.value = probabilities_html(self.data, i)
        self.waterfall.value = waterfall_png(self.data, i, c, self.n_top)
        terms = waterfall_terms(self.data, i, c, self.n_top)
        buttons = []
        for p, v in zip(terms["pattern_id"], terms["value"], strict=True):
            if p < 0:
                continue
            b = W.Button(description=f"pattern {p} {signed(v)}", tooltip=self._tooltip(int(p)))
            b.pattern_id = int(p)
            b.on_click(self._open)
            buttons.append(b)
        self.buttons.children = tuple(buttons)
        text = self.text_of(i, c) if self.text_of is not None else explanation(self.data, i, c)
        self.text.value = f"<p class='explanation'>{escape(text)}</p>"

    def _tooltip(self, p: int) -> str:
        cat, concepts = self.data.info().get(p, ("", ()))
        return f"{cat}: {', '.join(concepts)}" if concepts else cat

    def _open(self, button) -> None:
        if self.gallery is not None:
            self.gallery.show_pattern(button.pattern_id)
        if self.on_open is not None:
            self.on_open(button.pattern_id)


def gallery_app(data: GalleryData):
    """Both views in tabs; a pattern button in the image view switches to its gallery tab."""
    gallery = PatternGallery(data)
    tabs = W.Tab()
    view = ImageView(data, gallery, on_open=lambda _: setattr(tabs, "selected_index", 0))
    tabs.children = (gallery.widget, view.widget)
    tabs.titles = ("Pattern gallery", "Image explanations")
    tabs.gallery, tabs.image_view = gallery, view
    return tabs
