"""Galleries: browse patterns and per-image explanations in JupyterLab, or export them as one HTML file.

Two views, built from one ``GalleryData`` (attributions of a split, computed once):

- ``PatternGallery``: choose a finding, a category and a pattern; see its top-activating images, its
  activation histogram, its concepts, its effect on each finding and the report sentences most
  over-represented among its top images.
- ``ImageView``: choose an image; see it, the five probabilities, a waterfall of its top patterns for a
  finding and the explanation text; each pattern button opens that pattern in the gallery.

Both are plain objects holding ipywidgets (``.widget``) and methods that update them, so they build and
update headless (tests drive them). ``export_html`` writes the same content as one self-contained page.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute import Attribution, attribute, load_run
from lanic_nb.explain import explain_prediction, pattern_info, signed, top_evidence
from lanic_nb.io import read_table
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class GalleryData:
    """Everything the views show, for the images of one split (row-aligned arrays)."""

    image_ids: np.ndarray  # (n,) str
    image_paths: list[Path]  # (n,)
    labels: np.ndarray  # (n, 5) manifest labels (1 / 0 / -1 / NaN)
    attribution: Attribution  # on these n images
    patterns: pd.DataFrame  # one row per pattern, pattern_id == column of the attribution
    sentences: pd.DataFrame  # columns image (0..n-1), text
    dataset: str  # the manifest's dataset name(s), e.g. "phantom"
    _info: dict | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def probabilities(self) -> np.ndarray:
        return torch.sigmoid(self.attribution.logits).numpy()  # (n, 5)

    @property
    def is_phantom(self) -> bool:
        return self.dataset == "phantom"

    def categories(self) -> list[str]:
        return sorted({c for c in self.patterns.get("category", pd.Series(dtype=str)).dropna() if c})

    def info(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        """pattern_id -> (category, concepts), computed once."""
        if self._info is None:
            self._info = pattern_info(self.patterns)
        return self._info

    @classmethod
    def from_run(cls, run_dir: str | Path, split: str = "test", max_images: int | None = None,
                 device: str | torch.device = "cpu") -> GalleryData:
        """Load the run's models and compute the attributions of ``split`` (readable images only)."""
        from lanic_nb.embed.store import EmbeddingStore

        rd = RunDir(Path(run_dir))
        run = load_run(rd.root, split, device, max_images)
        ps = run.patterns
        attr = attribute(run.classifier, run.ensemble, ps.latent_pattern, ps.n_patterns, run.x)
        sent = EmbeddingStore.open(rd.embed).sentences
        sent = sent[sent["row"].isin(run.rows)]
        where = pd.Series(np.arange(len(run.rows)), index=run.rows)
        sentences = pd.DataFrame({"image": where.loc[sent["row"]].to_numpy(),
                                  "text": sent["text"].astype(str).to_numpy()})
        sub = run.manifest
        return cls(
            image_ids=sub["image_id"].astype(str).to_numpy(),
            image_paths=[resolve_image_path(rd.manifest, p) for p in sub["image_path"]],
            labels=sub[list(FINDINGS)].to_numpy(np.float32),
            attribution=attr,
            patterns=load_pattern_table(rd, ps),
            sentences=sentences,
            dataset=",".join(sorted(set(sub["dataset"].astype(str)))),
        )


def load_pattern_table(rd: RunDir, ps) -> pd.DataFrame:
    """patterns/patterns.parquet when the concept stage wrote it, else a bare table from the PatternSet."""
    path = rd.patterns / "patterns.parquet"
    if path.exists():
        return read_table(path).sort_values("pattern_id").reset_index(drop=True)
    log.warning("%s not found: patterns have no concepts or categories", path)
    return pd.DataFrame({"pattern_id": np.arange(ps.n_patterns), "category": "",
                         "consistency": ps.consistency.numpy()})


# ---------------------------------------------------------------- pure pieces (shared by widgets and HTML)


def ranked_patterns(data: GalleryData, finding: int, category: str | None = None) -> np.ndarray:
    """Pattern ids by mean |contribution| to ``finding`` over the images, largest first."""
    score = data.attribution.contributions[:, :, finding].abs().mean(0).numpy()
    ids = np.argsort(-score, kind="stable")
    if category:
        cats = data.patterns.set_index("pattern_id")["category"].reindex(ids).fillna("").to_numpy()
        ids = ids[cats == category]
    return ids[score[ids] > 0]


def top_images(data: GalleryData, pattern: int, n: int = 12) -> np.ndarray:
    """Indices of the images where ``pattern`` is most active (active ones only)."""
    a = data.attribution.activations[:, pattern].numpy()
    order = np.argsort(-a, kind="stable")[:n]
    return order[a[order] > 0]


def pattern_effects(data: GalleryData, pattern: int) -> pd.DataFrame:
    """Per finding: logit change per unit of activation, and mean contribution over the images where active."""
    act = data.attribution.activations[:, pattern].numpy()
    con = data.attribution.contributions[:, pattern, :].numpy()  # (n, 5)
    on = act > 0
    per_unit = con.sum(0) / act.sum() if act.sum() > 0 else np.zeros(con.shape[1])
    mean_on = con[on].mean(0) if on.any() else np.zeros(con.shape[1])
    return pd.DataFrame({"finding": FINDINGS, "per_unit": per_unit, "mean_when_active": mean_on})


def top_sentences(data: GalleryData, pattern: int, n: int = 5, n_images: int = 20) -> list[tuple[str, float]]:
    """Report sentences over-represented among the pattern's top images: (text, share top - share all)."""
    top = top_images(data, pattern, n_images)
    if len(top) == 0 or data.sentences.empty:
        return []
    s = data.sentences.drop_duplicates(["image", "text"])
    share_all = s["text"].value_counts() / max(data.n_images, 1)
    share_top = s[s["image"].isin(top)]["text"].value_counts() / len(top)
    lift = (share_top - share_all.reindex(share_top.index)).sort_values(ascending=False)
    return [(t, float(v)) for t, v in lift.head(n).items() if v > 0]


@functools.lru_cache(maxsize=4096)
def thumbnail_png(path: str, size: int = 96) -> bytes:
    """A grayscale PNG thumbnail of an image file (b"" if it cannot be read)."""
    from PIL import Image

    from lanic_nb.images import ImageReadError, load_image

    try:
        arr = load_image(path)
    except ImageReadError as e:
        log.warning("thumbnail: %s", e)
        return b""
    img = Image.fromarray((arr * 255).astype(np.uint8))
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def histogram_png(data: GalleryData, pattern: int) -> bytes:
    """Histogram of the pattern's non-zero activations over the images (PNG)."""
    import matplotlib.pyplot as plt

    a = data.attribution.activations[:, pattern].numpy()
    fig, ax = plt.subplots(figsize=(3.2, 1.8))
    ax.hist(a[a > 0], bins=20, color="#4c72b0")
    ax.set_title(f"pattern {pattern}: active on {(a > 0).mean():.0%} of images", fontsize=8)
    ax.set_xlabel("activation", fontsize=8)
    ax.tick_params(labelsize=7)
    return _fig_png(fig)


def waterfall_terms(data: GalleryData, image: int, finding: int, n: int = 8) -> pd.DataFrame:
    """The logit as bars: bias, the top-n patterns, the rest of the patterns, other latents, error."""
    at = data.attribution
    c = at.contributions[image, :, finding].numpy()
    top = np.argsort(-np.abs(c), kind="stable")[:n]
    top = top[c[top] != 0]
    labels = ["bias"] + [f"pattern {p}" for p in top] + ["other patterns", "unassigned latents", "error"]
    values = [float(at.bias[finding]), *c[top].tolist(), float(c.sum() - c[top].sum()),
              float(at.other[image, finding]), float(at.error[image, finding])]
    pid = [-1, *top.tolist(), -1, -1, -1]
    return pd.DataFrame({"term": labels, "value": values, "pattern_id": pid})


def waterfall_png(data: GalleryData, image: int, finding: int, n: int = 8) -> bytes:
    import matplotlib.pyplot as plt

    t = waterfall_terms(data, image, finding, n)
    start = np.r_[0.0, np.cumsum(t["value"].to_numpy())[:-1]]
    fig, ax = plt.subplots(figsize=(4.2, 0.28 * len(t) + 0.8))
    colors = ["#999999" if p < 0 else ("#c44e52" if v > 0 else "#4c72b0") for p, v in zip(t["pattern_id"], t["value"], strict=True)]
    ax.barh(range(len(t)), t["value"], left=start, color=colors)
    ax.set_yticks(range(len(t)), t["term"], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(float(start[-1] + t["value"].iloc[-1]), color="k", lw=0.8, ls="--")
    ax.set_title(f"{FINDINGS[finding]}: logit {float(data.attribution.logits[image, finding]):+.2f}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return _fig_png(fig)


def explanation(data: GalleryData, image: int, finding: int, n: int = 6, annotator=None) -> str:
    at = data.attribution
    c = at.contributions[image, :, finding].numpy()
    ev = top_evidence(c, data.info(), None, n)  # column index == pattern id
    return explain_prediction(FINDINGS[finding], float(data.probabilities[image, finding]), ev,
                              total_abs=float(np.abs(c).sum()), error=float(at.error[image, finding]),
                              annotator=annotator, image_path=data.image_paths[image])


def describe_pattern(data: GalleryData, pattern: int) -> dict:
    """Category, concepts (with scores when the table has them) and consistency of one pattern."""
    row = data.patterns.set_index("pattern_id").loc[pattern] if pattern in set(data.patterns["pattern_id"]) else {}
    concepts = []
    for i in (1, 2, 3):
        name = row.get(f"concept_{i}") if len(row) else None
        if isinstance(name, str) and name:
            score = row.get(f"score_{i}", row.get(f"concept_{i}_score"))
            concepts.append((name, None if score is None or pd.isna(score) else float(score)))
    cat = row.get("category") if len(row) else ""
    cons = row.get("consistency") if len(row) else None
    sents = row.get("top_sentences") if len(row) else None  # written by notebook 04 (sentence activations)
    return {"category": cat if isinstance(cat, str) else "", "concepts": concepts,
            "consistency": None if cons is None or pd.isna(cons) else float(cons),
            "sentences": [str(t) for t in sents] if sents is not None and not isinstance(sents, float) else []}


def b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# ---------------------------------------------------------------- widgets


def _html_escape(s: str) -> str:
    import html

    return html.escape(str(s))


def pattern_info_html(data: GalleryData, pattern: int) -> str:
    """Concepts, effect table and top sentences of one pattern, as an HTML fragment."""
    d = describe_pattern(data, pattern)
    concepts = ", ".join(f"{_html_escape(n)}" + (f" ({s:.2f})" if s is not None else "") for n, s in d["concepts"])
    eff = pattern_effects(data, pattern)
    rows = "".join(f"<tr><td>{f}</td><td>{u:+.3f}</td><td>{m:+.3f}</td></tr>"
                   for f, u, m in eff.itertuples(index=False))
    sents = "".join(f"<li>{_html_escape(t)} <small>(+{v:.0%})</small></li>" for t, v in top_sentences(data, pattern))
    activating = "".join(f"<li>{_html_escape(t)}</li>" for t in d["sentences"])
    cons = f"; held by {d['consistency']:.0%} of members" if d["consistency"] is not None else ""
    return (f"<div class='pattern-info'><h4>Pattern {pattern} &middot; {_html_escape(d['category'] or 'uncategorized')}"
            f"</h4><p class='concepts'><b>Concepts:</b> {concepts or 'none annotated'}{cons}</p>"
            "<table class='effects'><tr><th>finding</th><th>logit per unit</th><th>mean when active</th></tr>"
            f"{rows}</table><p><b>Top report sentences</b> of its top images (share there minus overall):</p>"
            f"<ul class='sentences'>{sents or '<li>none</li>'}</ul>"
            + (f"<p><b>Report sentences that activate it most:</b></p><ul class='sentences'>{activating}</ul>"
               if activating else "") + "</div>")


def probabilities_html(data: GalleryData, image: int) -> str:
    p = data.probabilities[image]
    rows = "".join(
        f"<tr><td>{f}</td><td><div class='bar' style='width:{100 * v:.0f}px'></div></td><td>{v:.2f}</td>"
        f"<td>{label_text(data.labels[image, j])}</td></tr>" for j, (f, v) in enumerate(zip(FINDINGS, p, strict=True)))
    return f"<table class='probs'><tr><th>finding</th><th></th><th>p</th><th>report label</th></tr>{rows}</table>"


def label_text(v: float) -> str:
    return {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}.get(float(v), "not mentioned")


class PatternGallery:
    """Finding / category / pattern pickers over an image grid, a histogram and the pattern's description."""

    def __init__(self, data: GalleryData, n_images: int = 12, thumb: int = 96, max_options: int = 300):
        import ipywidgets as W

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
        import ipywidgets as W

        p = self.pattern.value
        if p is None:
            self.grid.children, self.histogram.value, self.info.value = (), b"", "<p>No active pattern.</p>"
            return
        imgs = top_images(self.data, p, self.n_images)
        self.grid.children = tuple(
            W.VBox([W.Image(value=thumbnail_png(str(self.data.image_paths[i]), self.thumb), format="png",
                            layout=W.Layout(width=f"{self.thumb}px")),
                    W.HTML(f"<small>{self.data.image_ids[i]} "
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
    """One image: the image, five probabilities, a waterfall of its top patterns and the explanation."""

    def __init__(self, data: GalleryData, gallery: PatternGallery | None = None, n_top: int = 8, on_open=None):
        import ipywidgets as W

        self.data, self.gallery, self.n_top, self.on_open = data, gallery, n_top, on_open
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
        import ipywidgets as W

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
        self.text.value = f"<p class='explanation'>{_html_escape(explanation(self.data, i, c))}</p>"

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
    import ipywidgets as W

    gallery = PatternGallery(data)
    tabs = W.Tab()
    view = ImageView(data, gallery, on_open=lambda _: setattr(tabs, "selected_index", 0))
    tabs.children = (gallery.widget, view.widget)
    tabs.titles = ("Pattern gallery", "Image explanations")
    tabs.gallery, tabs.image_view = gallery, view
    return tabs


def export_html(run_dir: str | Path, out_path: str | Path | None = None, allow_patient_data: bool = False,
                data: GalleryData | None = None, **kwargs) -> Path:
    """Write one self-contained HTML page (see ``lanic_nb.gallery.html.export_html``)."""
    from lanic_nb.gallery.html import export_html as _export

    return _export(run_dir, out_path, allow_patient_data=allow_patient_data, data=data, **kwargs)
