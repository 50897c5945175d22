"""Static export of the galleries: one self-contained HTML page, thumbnails embedded as base64 PNGs.

The page has per-image explanations (image, probabilities, top patterns with links, explanation text)
and one card per pattern (top images, histogram, concepts, effects, sentences). It needs no Jupyter
and no network. A small inline script records which parts actually rendered (``#render-check``), which
the headless-browser test reads.

Images of a real dataset are patient data: exporting them needs ``allow_patient_data=True`` and logs a
warning, because the file may fall under the dataset's data-use agreement (e.g. PhysioNet's for
MIMIC-CXR) and must not be shared beyond it.
"""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path

import numpy as np

from lanic_nb.explain.text import signed
from lanic_nb.gallery.data import (
    GalleryData,
    b64,
    describe_pattern,
    explanation,
    finding_reliance,
    histogram_png,
    ood_png,
    ranked_patterns,
    reliance_png,
    thumbnail_png,
    top_images,
    waterfall_terms,
)
from lanic_nb.gallery.widgets import pattern_info_html, probabilities_html
from lanic_nb.io import atomic_path
from lanic_nb.manifest import FINDINGS
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1{font-size:1.5em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:1.5em}
.card{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0;background:#fafafa}
.grid{display:flex;flex-wrap:wrap;gap:4px} .grid figure{margin:0;text-align:center;font-size:10px}
.thumb{width:80px;height:80px;object-fit:contain;background:#000} .wide{max-width:620px;display:block}
.big{width:160px;height:160px;object-fit:contain;background:#000;display:block;margin-bottom:.5em}
.row{display:flex;gap:1.2em;align-items:flex-start} .left{flex:0 0 auto} .right{flex:1 1 auto}
summary{cursor:pointer;font-size:14px;margin:.2em 0}
.bar{height:10px;background:#c44e52} .neg{background:#4c72b0} .neutral{background:#999}
table{border-collapse:collapse;font-size:12px} td,th{padding:2px 6px;text-align:left}
.wf td.v{text-align:right;font-family:monospace} .explanation{font-size:13px;max-width:760px}
.note{background:#fff3cd;padding:.5em;border-radius:4px}
.pattern-card .pattern-info h4{display:none}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  function shown(el) { var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; }
  var pc = Array.from(document.querySelectorAll('.pattern-card')).filter(shown).length;
  var ic = Array.from(document.querySelectorAll('.image-card')).filter(shown).length;
  var imgs = Array.from(document.querySelectorAll('img'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && shown(i); }).length;
  var links = Array.from(document.querySelectorAll('a.pattern-link'));
  var dangling = links.filter(function (a) {
    return !document.getElementById(a.getAttribute('href').slice(1));
  }).length;
  var c = document.getElementById('render-check');
  c.setAttribute('data-pattern-cards', pc); c.setAttribute('data-image-cards', ic);
  c.setAttribute('data-images-decoded', ok); c.setAttribute('data-images-total', imgs.length);
  c.setAttribute('data-dangling-links', dangling);
  c.textContent = 'rendered ' + pc + ' pattern cards, ' + ic + ' image cards, ' + ok + '/' + imgs.length + ' images';
});
"""


def _img(png: bytes, cls: str, alt: str) -> str:
    return (f"<img class='{cls}' src='{b64(png)}' alt='{escape(str(alt))}'>" if png
            else f"<span>{escape(str(alt))}: unreadable</span>")


def image_card(data: GalleryData, i: int, n_top: int = 5) -> tuple[str, set[int]]:
    """HTML of one image's explanations; returns it and the pattern ids it links to."""
    linked: set[int] = set()
    parts = [f"<div class='card image-card' id='image-{escape(str(data.image_ids[i]))}'>",
             f"<h3>{escape(str(data.image_ids[i]))}</h3><div class='row'><div class='left'>",
             _img(thumbnail_png(str(data.image_paths[i]), 160), "big", data.image_ids[i]),
             probabilities_html(data, i), "</div><div class='right'>"]
    if data.ood is not None and bool(data.ood.flagged.iloc[i]):
        parts.insert(2, "<p class='note'>Outside what the run knows: its probabilities and patterns are not "
                        "evidence about this film (notebook 06's out-of-distribution check).</p>")
    for c, f in enumerate(FINDINGS):
        terms = waterfall_terms(data, i, c, n_top)
        scale = max(float(np.abs(terms["value"]).max()), 1e-9)
        rows = []
        for term, v, p in terms.itertuples(index=False):
            name = escape(term)
            if p >= 0:
                linked.add(int(p))
                name = f"<a class='pattern-link' href='#pattern-{p}'>{name}</a>"
            cls = "neutral" if p < 0 else ("" if v > 0 else "neg")
            rows.append(f"<tr><td>{name}</td><td><div class='bar {cls}' style='width:{80 * abs(v) / scale:.0f}px'>"
                        f"</div></td><td class='v'>{signed(v)}</td></tr>")
        logit = float(data.attribution.logits[i, c])
        parts.append(f"<details{' open' if c == int(np.argmax(data.probabilities[i])) else ''}><summary>{f}: "
                     f"p = {data.probabilities[i, c]:.2f}, logit {logit:+.2f}</summary>"
                     f"<table class='wf'>{''.join(rows)}</table>"
                     f"<p class='explanation'>{escape(explanation(data, i, c, n_top))}</p></details>")
    parts.append("</div></div></div>")
    return "".join(parts), linked


def pattern_card(data: GalleryData, p: int, n_images: int = 8) -> str:
    figs = "".join(
        f"<figure>{_img(thumbnail_png(str(data.image_paths[i]), 80), 'thumb', data.image_ids[i])}"
        f"<figcaption>{float(data.attribution.activations[i, p]):.2f}</figcaption></figure>"
        for i in top_images(data, p, n_images))
    d = describe_pattern(data, p)
    cat = d["category"] or "uncategorized"
    names = ", ".join(n for n, _ in d["concepts"]) or "no concept"
    return (f"<div class='card pattern-card' id='pattern-{p}' data-category='{escape(cat)}'>"
            f"<h3>Pattern {p} &middot; {escape(cat)} &middot; {escape(names)}</h3>"
            f"<div class='row'><div class='grid'>{figs}</div>{_img(histogram_png(data, p), 'hist', f'histogram {p}')}"
            f"</div>{pattern_info_html(data, p)}</div>")


def ood_section(data: GalleryData) -> str:
    """How unusual the films are: the distribution of their out-of-distribution scores (empty without one)."""
    if data.ood is None:
        return ""
    flagged = int(data.ood.flagged.fillna(False).astype(bool).sum())
    return (f"<h2 id='ood'>How unusual are these films?</h2><p>Out-of-distribution scores of the {data.n_images} "
            f"films (notebook 06): {flagged} lie beyond the threshold, outside what the run knows.</p>"
            f"{_img(ood_png(data), 'wide', 'out-of-distribution scores')}")


def reliance_section(rel) -> str:
    """What each finding leans on (``finding_reliance``): the figure, and a sentence per finding whose device or
    artifact pattern stands out (empty when no finding has films labelled without it)."""
    if rel.empty:
        return ""
    flagged = rel[rel["flagged"]]
    items = "".join(
        f"<li><b>{escape(r.finding)}</b> leans on <a href='#pattern-{int(r.pattern_id)}'>pattern {int(r.pattern_id)}"
        f"</a> ({escape(r.name or 'unnamed')}, {escape(r.category)}): on films without {escape(r.finding)} it lifts "
        f"the logit by {r.reliance:.2f} ({r.lo:.2f} to {r.hi:.2f}) where it fires most.</li>"
        for r in flagged.itertuples())
    verdict = (f"<ul>{items}</ul>" if items else "<p>No device or artifact pattern stands out for any finding.</p>")
    return ("<h2 id='reliance'>What each finding leans on</h2><p>For each finding, the device and artifact patterns "
            "that lift its logit most on the films labelled <i>without</i> it (where it fires most against where it "
            "fires least, with a 95% bootstrap band): a finding's own evidence is silent there, a shortcut is not. "
            "Red: the pattern stands out from the other device and artifact patterns.</p>"
            f"{verdict}{_img(reliance_png(rel), 'wide', 'reliance per finding')}")


def render_html(data: GalleryData, n_images: int = 12, n_patterns: int = 30, n_top: int = 5,
                title: str = "lanic-nb gallery") -> str:
    """The whole page. Images: the most confident prediction per finding first, then the rest in order."""
    probs = data.probabilities
    chosen: list[int] = []
    for c in range(len(FINDINGS)):
        for i in np.argsort(-probs[:, c], kind="stable"):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    chosen += [i for i in range(data.n_images) if i not in chosen]
    chosen = chosen[:n_images]
    cards, linked = [], set()
    for i in chosen:
        html_i, ids = image_card(data, i, n_top)
        cards.append(html_i)
        linked |= ids
    # Every linked pattern gets a card (the patterns a finding leans on too); then the most important patterns per
    # finding up to n_patterns.
    rel = finding_reliance(data)
    linked |= {int(p) for p in rel.loc[rel["flagged"], "pattern_id"]} if not rel.empty else set()
    pats = sorted(linked)
    ranked = [ranked_patterns(data, c) for c in range(len(FINDINGS))]
    for depth in range(max((len(r) for r in ranked), default=0)):
        if len(pats) >= max(n_patterns, len(linked)):
            break
        for r in ranked:
            if depth < len(r) and int(r[depth]) not in pats and len(pats) < max(n_patterns, len(linked)):
                pats.append(int(r[depth]))
    pcards = [pattern_card(data, p) for p in pats]
    note = ("" if data.is_phantom else "<p class='note'>Contains images of a real dataset: patient data under its "
            "data-use agreement. Do not share beyond it.</p>")
    nav = " ".join(f"<a href='#pattern-{p}'>{p}</a>" for p in pats)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>{note}"
            f"<p>Dataset: {escape(data.dataset)}; {len(chosen)} of {data.n_images} explained images shown; "
            "each logit = sum of pattern contributions + unassigned latents + bias + "
            "reconstruction error (exactly).</p>"
            f"{ood_section(data)}{reliance_section(rel)}<h2 id='images'>Per-image explanations</h2>{''.join(cards)}"
            f"<h2 id='patterns'>Pattern galleries</h2><p class='nav'>Patterns: {nav}</p>{''.join(pcards)}"
            f"<div id='render-check'>not rendered</div><script>{_SCRIPT}</script></body></html>")


def export_html(run_dir: str | Path, out_path: str | Path | None = None, allow_patient_data: bool = False,
                data: GalleryData | None = None, split: str = "test", max_images: int | None = None,
                device: str = "cpu", **render_kwargs) -> Path:
    """Write ``gallery.html`` (default: ``<run_dir>/gallery.html``) and return its path.

    A dataset other than the phantom holds patient images: without ``allow_patient_data=True`` this
    raises PermissionError; with it, a warning about patient data and data-use agreements is logged.
    """
    rd = RunDir(Path(run_dir))
    if data is None:
        data = GalleryData.from_run(rd.root, split=split, max_images=max_images, device=device)
    if not data.is_phantom:
        if not allow_patient_data:
            raise PermissionError(
                f"dataset {data.dataset!r} is not the phantom: its images are patient data. Exporting them into "
                "an HTML file needs allow_patient_data=True, and the file then falls under the dataset's "
                "data-use agreement.")
        log.warning("Exporting images of dataset %r: this HTML file contains PATIENT DATA. Keep it under the "
                    "dataset's data-use agreement (e.g. PhysioNet credentialed access); do not share or publish it.",
                    data.dataset)
    out = Path(out_path) if out_path is not None else rd.root / "gallery.html"
    page = render_html(data, **render_kwargs)
    with atomic_path(out, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
