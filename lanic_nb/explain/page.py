"""One self-contained HTML page per explained image: it opens in any browser, offline, without Jupyter.

The page shows the image, the five probabilities, a waterfall per finding (bias, the top patterns, the rest
of the patterns, unassigned latents and the reconstruction error adding up to the logit), the explanation
text, a card per shown pattern (name, category, its contribution to each finding here, thumbnails of its
top-activating training images) and the nearest training images by embedding. Images are inline base64
PNGs; a small inline script records what rendered (``#render-check``) for the headless-browser test.
"""

from __future__ import annotations

import functools
from html import escape

import numpy as np

from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.model import LoadedRun
from lanic_nb.explain.pipeline import ImageExplanation, shown_patterns
from lanic_nb.explain.text import signed
from lanic_nb.gallery.data import b64, thumbnail_png
from lanic_nb.manifest import FINDINGS, label_text

PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1150px;color:#222}
h1{font-size:1.4em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:1.4em;font-size:1.15em}
.meta{color:#555;font-size:12px} .note{background:#fff3cd;padding:.5em;border-radius:4px}
.ood{background:#f8d7da;border:2px solid #b02a37;color:#58151c;padding:.7em;border-radius:4px;font-weight:600}
.probs.untrusted td{color:#888;text-decoration:line-through}
.row{display:flex;gap:1.5em;align-items:flex-start} .left{flex:0 0 auto} .right{flex:1 1 auto}
.big{width:256px;height:256px;object-fit:contain;background:#000;display:block;margin-bottom:.6em}
table{border-collapse:collapse;font-size:12px} td,th{padding:2px 6px;text-align:left}
.bar{height:10px;background:#c44e52} .track{position:relative;width:260px;height:12px;background:#f3f3f3}
.wf .seg{position:absolute;top:1px;height:10px} .pos{background:#c44e52} .neg{background:#4c72b0}
.neutral{background:#999} .total{background:#222} .v{text-align:right;font-family:monospace}
summary{cursor:pointer;font-size:14px;margin:.3em 0} .explanation{font-size:13px;max-width:780px}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin:.6em 0;background:#fafafa}
.card h3{font-size:1.05em;margin:.2em 0 .4em}
.grid{display:flex;flex-wrap:wrap;gap:6px} .grid figure{margin:0;text-align:center;font-size:10px;width:96px}
.thumb{width:96px;height:96px;object-fit:contain;background:#000}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  function shown(el) { var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; }
  var imgs = Array.from(document.querySelectorAll('img'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && shown(i); }).length;
  var c = document.getElementById('render-check');
  c.setAttribute('data-waterfalls', document.querySelectorAll('table.wf').length);
  c.setAttribute('data-pattern-cards', Array.from(document.querySelectorAll('.pattern-card')).filter(shown).length);
  c.setAttribute('data-neighbors', document.querySelectorAll('.neighbor').length);
  c.setAttribute('data-images-decoded', ok); c.setAttribute('data-images-total', imgs.length);
  c.textContent = 'rendered ' + ok + '/' + imgs.length + ' images';
});
"""


def _img(png: bytes, cls: str, alt: str) -> str:
    if not png:
        return f"<span class='{cls}'>{escape(alt)}: unreadable</span>"
    return f"<img class='{cls}' src='{b64(png)}' alt='{escape(alt)}'>"


@functools.lru_cache(maxsize=4096)
def _thumb(path: str, alt: str) -> str:
    """A training image's 96 px thumbnail as an <img> (the same few appear on many pages)."""
    return _img(thumbnail_png(path, 96), "thumb", alt)


def waterfall_rows(e: ImageExplanation, finding: int, n: int) -> list[tuple[str, float, int]]:
    """(term, value, pattern id or -1): bias, the top-n patterns, the other patterns, unassigned, error."""
    at = e.attribution
    c = at.contributions[0, :, finding].numpy()
    top = np.argsort(-np.abs(c), kind="stable")[:n]
    top = top[c[top] != 0]
    rows = [("bias", float(at.bias[finding]), -1)]
    rows += [(f"pattern {p}", float(c[p]), int(p)) for p in top]
    rows += [("other patterns", float(np.delete(c, top).sum()), -1),
             ("unassigned latents", float(at.other[0, finding]), -1), ("error", float(at.error[0, finding]), -1)]
    return rows


def waterfall_html(e: ImageExplanation, finding: int, n: int, run: LoadedRun) -> str:
    """A waterfall as a table: each bar starts where the previous one ended; the last row is the logit."""
    rows = waterfall_rows(e, finding, n)
    ends = np.cumsum([v for _, v, _ in rows])
    starts = np.r_[0.0, ends[:-1]]
    lo, hi = min(0.0, float(ends.min()), float(starts.min())), max(0.0, float(ends.max()), float(starts.max()))
    scale = 260.0 / max(hi - lo, 1e-9)
    out = []
    for (term, v, p), s in zip(rows, starts, strict=True):
        left = (min(s, s + v) - lo) * scale
        cls = "neutral" if p < 0 else ("pos" if v > 0 else "neg")
        name = escape(term)
        if p >= 0:
            name = (f"<a href='#pattern-{p}' title='{escape(run.pattern_category(p))}'>{name}</a> "
                    f"<small>{escape(e.pattern_names.get(p, run.pattern_name(p)))}</small>")
        out.append(f"<tr><td>{name}</td><td><div class='track'><div class='seg {cls}' style='left:{left:.1f}px;"
                   f"width:{max(abs(v) * scale, 1):.1f}px'></div></div></td><td class='v'>{signed(v)}</td></tr>")
    logit = float(e.attribution.logits[0, finding])
    out.append(f"<tr><td><b>logit</b></td><td><div class='track'><div class='seg total' style='left:"
               f"{(min(0.0, logit) - lo) * scale:.1f}px;width:{max(abs(logit) * scale, 1):.1f}px'></div></div></td>"
               f"<td class='v'><b>{signed(logit)}</b></td></tr>")
    return f"<table class='wf'>{''.join(out)}</table>"


def probabilities_table(e: ImageExplanation) -> str:
    rows = "".join(f"<tr><td>{f}</td><td><div class='bar' style='width:{100 * v:.0f}px'></div></td>"
                   f"<td>{v:.2f}</td></tr>"
                   for f, v in zip(FINDINGS, e.probabilities, strict=True))
    note = ("<caption>Not to be trusted: the film lies outside what the run knows.</caption>" if e.outside else "")
    return (f"<table class='probs{' untrusted' if e.outside else ''}'>{note}<tr><th>finding</th><th></th><th>p "
            f"(calibrated)</th></tr>{rows}</table>")


def ood_banner(e: ImageExplanation) -> str:
    """The warning a reader sees first when the film lies outside what the run knows (empty otherwise)."""
    if not e.outside:
        return ""
    return (f"<p class='ood'>Outside what this run knows: {escape(e.ood['why'])}. The probabilities and patterns "
            "below show how the model reacts to a film unlike its own; they are not evidence about this film.</p>")


def pattern_card(e: ImageExplanation, p: int, run: LoadedRun) -> str:
    pool = run.pool
    figs = "".join(
        f"<figure>{_thumb(str(pool.paths[i]), str(pool.image_ids[i]))}"
        f"<figcaption>{escape(str(pool.image_ids[i]))} {float(v):.2f}</figcaption></figure>"
        for i, v in zip(pool.top_index[p].tolist(), pool.top_value[p].tolist(), strict=True) if i >= 0)
    c = e.attribution.contributions[0, p].numpy()
    effects = "".join(f"<td>{signed(float(v))}</td>" for v in c)
    cat = run.pattern_category(p) or "uncategorized"
    model = (f"<p>Named by the annotator model: <b>{escape(e.pattern_names[p])}</b></p>"
             if p in e.pattern_names else "")
    return (f"<div class='card pattern-card' id='pattern-{p}'><h3>Pattern {p} &middot; {escape(cat)} &middot; "
            f"{escape(run.pattern_name(p))}</h3>{model}<table><tr>{''.join(f'<th>{f}</th>' for f in FINDINGS)}</tr>"
            f"<tr>{effects}</tr></table><p>Activation here {float(e.attribution.activations[0, p]):.3f}; the training "
            f"images where it is most active:</p><div class='grid'>{figs or 'none'}</div></div>")


def neighbors_html(e: ImageExplanation, run: LoadedRun) -> str:
    pool = run.pool
    figs = []
    for i, s in e.neighbors:
        pos = [f for f, v in zip(FINDINGS, pool.labels[i], strict=True) if label_text(v) == "positive"]
        figs.append(f"<figure class='neighbor'>{_thumb(str(pool.paths[i]), str(pool.image_ids[i]))}"
                    f"<figcaption>{escape(str(pool.image_ids[i]))}<br>cos {s:.3f}<br>"
                    f"{escape(', '.join(pos) or 'no finding')}"
                    "</figcaption></figure>")
    return f"<div class='grid'>{''.join(figs) or 'no training images in the run'}</div>"


def leans_on_note(e: ImageExplanation, finding: int, run: LoadedRun) -> str:
    """A caution under a finding that leans on a device or artifact pattern (notebook 06's reliance), saying how much
    that pattern adds to the logit on this film."""
    lean = run.leans_on.get(FINDINGS[finding])
    if not lean:
        return ""
    here = float(e.attribution.contributions[0, lean["pattern_id"], finding])
    return (f"<p class='note'>Over the run's films, {escape(FINDINGS[finding])} leans on pattern {lean['pattern_id']} "
            f"({escape(lean['name'] or 'unnamed')}, {escape(lean['category'])}): on films without the finding it lifts "
            f"the logit by {lean['reliance']:.2f} where it fires most. Here it adds {here:+.2f}.</p>")


def render_page(e: ImageExplanation, run: LoadedRun, cfg: ExplainConfig) -> str:
    """The whole page of one explained image (``e.ok``)."""
    n = cfg.n_shown
    notes = []
    if not run.is_phantom:
        notes.append("This page contains images of a real dataset (the run's training images): patient data under "
                     "its data-use agreement. Do not share it beyond that agreement.")
    notes += [f"Warning: {w}." for w in e.warnings]
    if e.run_image:
        notes.append(f"This file is the run's own image {e.run_image['image_id']} ({e.run_image['split']} split).")
    best = int(np.argmax(e.probabilities))
    findings = "".join(
        f"<details{' open' if f == best else ''}><summary>{name}: p = {e.probabilities[f]:.2f}, logit "
        f"{float(e.attribution.logits[0, f]):+.2f}</summary>{waterfall_html(e, f, n, run)}"
        f"<p class='explanation'>{escape(e.texts[f])}</p>{leans_on_note(e, f, run)}</details>"
        for f, name in enumerate(FINDINGS))
    cards = "".join(pattern_card(e, p, run) for p in shown_patterns(e, n))
    meta = (f"File {escape(str(e.source))} ({escape(str(e.info.get('format', '')))}, "
            f"{'x'.join(str(v) for v in e.info.get('shape', []))}); run {escape(str(run.root))}; encoder "
            f"{escape(run.encoder.name)}; dataset {escape(run.dataset)}.")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(e.image_id)}: lanic-nb "
            f"explanation</title><style>{PAGE_CSS}</style></head><body><h1>What the classifier sees in "
            f"{escape(e.image_id)}</h1>{ood_banner(e)}<p class='meta'>{meta}</p>"
            + "".join(f"<p class='note'>{escape(t)}</p>" for t in notes)
            + f"<div class='row'><div class='left'>{_img(e.thumbnail, 'big', e.image_id)}{probabilities_table(e)}</div>"
            f"<div class='right'><p>Each logit is exactly the sum of the bars: the pattern contributions, the latents "
            f"in no pattern, the bias and the transcoders' reconstruction error.</p>{findings}</div></div>"
            f"<h2>The patterns in the waterfalls</h2>{cards or '<p>No pattern is active.</p>'}"
            f"<h2>Nearest training images (cosine similarity of the embeddings)</h2>{neighbors_html(e, run)}"
            f"<div id='render-check'>not rendered</div><script>{_SCRIPT}</script></body></html>")
