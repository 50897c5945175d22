"""Interactive HTML maps: a self-contained page (inline SVG, no network) whose points say what they are on hover."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from lanic_nb.io import atomic_path
from lanic_nb.manifest import label_text
from lanic_nb.maps.views import CATEGORY_COLORS

log = logging.getLogger(__name__)

# One self-contained page per PNG map: an inline SVG with one <circle> per point whose <title> is the browser's
# hover tooltip. Radio buttons switch the colouring through CSS custom properties (each circle carries one colour
# per view), so the page needs no JavaScript library and no network. A few lines of inline script only record
# what rendered (``#render-check``), which the headless-browser test reads.

MAP_SIZE = 600.0  # SVG viewBox width and height
MAP_PAD = 10.0  # margin inside the viewBox, so edge points are not clipped
LABEL_COLORS = {1.0: "#d62728", 0.0: "#9ecae1"}  # positive, negative (as on the PNG); anything else is grey
OTHER_COLOR = "#dddddd"

_MAP_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:900px}
h1{font-size:1.3em} .controls label{margin-right:1em;font-size:14px} .legend{display:none;font-size:12px;margin:.4em 0}
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:50%}
svg{border:1px solid #ddd;background:#fff;width:100%;max-width:640px;height:auto}
circle{stroke:#555;stroke-width:.3} circle:hover{stroke:#000;stroke-width:2}
.note{font-size:12px;color:#555}
"""

_MAP_SCRIPT = """
window.addEventListener('load', function () {
  var pts = Array.from(document.querySelectorAll('svg circle'));
  var shown = pts.filter(function (c) { var r = c.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  var c = document.getElementById('render-check');
  c.setAttribute('data-points', shown.length);
  c.setAttribute('data-titles', pts.filter(function (p) { return p.querySelector('title'); }).length);
  c.setAttribute('data-first-fill', pts.length ? getComputedStyle(pts[0]).fill : '');
  c.textContent = 'rendered ' + shown.length + ' points';
});
"""


def coords_table(ids: Sequence, coords: np.ndarray, id_column: str) -> pd.DataFrame:
    """The map coordinates as a table (``id_column``, x, y), the form written beside the PNG and HTML maps."""
    coords = np.asarray(coords, dtype=np.float32).reshape(len(ids), 2)
    return pd.DataFrame({id_column: list(ids), "x": coords[:, 0], "y": coords[:, 1]})


def view_coords(coords: np.ndarray) -> np.ndarray:
    """(n, 2) map coordinates -> SVG positions in [MAP_PAD, MAP_SIZE - MAP_PAD]; y points up, as on the PNG."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return xy
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    unit = (xy - lo) / np.where(span > 0, span, 1.0)  # a constant axis (one point) sits at the low edge
    inner = MAP_SIZE - 2 * MAP_PAD
    return np.stack([MAP_PAD + unit[:, 0] * inner, MAP_SIZE - MAP_PAD - unit[:, 1] * inner], axis=1)


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def pattern_tooltip(row: Mapping) -> str:
    """Hover text of one pattern-table row: id, top concept, category, consistency, firing frequency."""
    names = [str(row.get(f"concept_{r}")) for r in (1, 2, 3)
             if isinstance(row.get(f"concept_{r}"), str) and row.get(f"concept_{r}")]
    cat = row.get("category") if isinstance(row.get("category"), str) and row.get("category") else "uncategorized"
    conf, cons, freq = (_num(row.get(k)) for k in ("category_confidence", "consistency", "firing_freq"))
    lines = [f"pattern {int(row['pattern_id'])}: {names[0] if names else 'no concept'}",
             f"category: {cat}" + (f" (confidence {conf:.2f})" if conf is not None else "")]
    if len(names) > 1:
        lines.append("also: " + ", ".join(names[1:]))
    lines.append(f"consistency: {cons:.2f} of members" if cons is not None else "consistency: n/a")
    lines.append(f"firing frequency: {freq:.1%} of images" if freq is not None else "firing frequency: n/a")
    return "\n".join(lines)


def image_tooltip(image_id: str, labels: Mapping[str, float]) -> str:
    """Hover text of one image: its id, then each finding's report label."""
    return "\n".join([f"image {image_id}", *(f"{f}: {label_text(v)}" for f, v in labels.items())])


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<span class='sw' style='background:{c}'></span>{html.escape(name)}" for name, c in items)


def map_page(title: str, intro: str, coords: np.ndarray, ids: Sequence, tooltips: Sequence[str],
             views: Sequence[tuple[str, Sequence[str], str]]) -> str:
    """The whole page. ``views``: (name, one colour per point, legend HTML); the first view is shown first."""
    xy = view_coords(coords)
    css = [_MAP_CSS] + [f"#view{v}:checked~svg circle{{fill:var(--c{v})}} #view{v}:checked~.legend{v}{{display:block}}"
                        for v in range(len(views))]
    controls = "".join(f"<input type='radio' name='view' id='view{v}'{' checked' if v == 0 else ''}>"
                       f"<label for='view{v}'>{html.escape(name)}</label>" for v, (name, _, _) in enumerate(views))
    legends = "".join(f"<div class='legend legend{v}'>{legend}</div>" for v, (_, _, legend) in enumerate(views))
    circles = []
    for i, (pid, tip) in enumerate(zip(ids, tooltips, strict=True)):
        style = ";".join(f"--c{v}:{colors[i]}" for v, (_, colors, _) in enumerate(views))
        circles.append(f"<circle cx='{xy[i, 0]:.1f}' cy='{xy[i, 1]:.1f}' r='3.5' data-id='{html.escape(str(pid))}' "
                       f"style='{style}'><title>{html.escape(tip)}</title></circle>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{''.join(css)}</style></head><body><h1>{html.escape(title)}</h1><p class='note'>{intro}</p>"
            f"<div class='controls'>Colour by: {controls}{legends}"
            f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {MAP_SIZE:g} {MAP_SIZE:g}' role='img'>"
            f"{''.join(circles)}</svg></div><div id='render-check' class='note'>not rendered</div>"
            f"<script>{_MAP_SCRIPT}</script></body></html>")


def _write_page(page: str, path: Path) -> Path:
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1024)
    return path


def subsample(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded random ``max_rows`` of them."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def _cap(n: int, max_points: int, seed: int) -> tuple[np.ndarray, str]:
    rows = subsample(n, max_points, seed)
    shown = f"{len(rows)} of {n} points shown (a seeded random subset)" if len(rows) < n else f"all {n} points shown"
    return rows, shown + "; hover a point for details. Neighbourhoods matter, distances between clusters do not."


def pattern_map_html(coords: np.ndarray, table: pd.DataFrame, path: str | Path, max_points: int = 5000,
                     seed: int = 0) -> Path:
    """Interactive twin of ``plot_pattern_map``: patterns (rows of ``table``, aligned with ``coords``) coloured
    by category or by consistency; hovering shows each pattern's id, concept, category, consistency, frequency."""
    rows, note = _cap(len(table), max_points, seed)
    sub = table.iloc[rows].reset_index(drop=True)
    cats = [c if isinstance(c, str) and c in CATEGORY_COLORS else "" for c in sub.get("category", [""] * len(sub))]
    cons = np.nan_to_num(sub["consistency"].to_numpy(dtype=float), nan=0.0).clip(0, 1)
    viridis = plt.get_cmap("viridis")
    views = [
        ("category", [CATEGORY_COLORS[c] for c in cats],
         _legend([(c or "(none)", col) for c, col in CATEGORY_COLORS.items() if c in set(cats)])),
        ("consistency", [to_hex(viridis(v)) for v in cons],
         _legend([(f"{v:.2g}", to_hex(viridis(v))) for v in (0.0, 0.25, 0.5, 0.75, 1.0)])),
    ]
    tips = [pattern_tooltip(r) for r in sub.to_dict("records")]
    page = map_page("Pattern map (UMAP of decoder directions)", note, np.asarray(coords)[rows],
                    sub["pattern_id"].tolist(), tips, views)
    return _write_page(page, Path(path))


def image_map_html(coords: np.ndarray, image_ids: Sequence[str], labels: pd.DataFrame, path: str | Path,
                   max_points: int = 5000, seed: int = 0) -> Path:
    """Interactive twin of ``plot_image_map``: images coloured by one finding's label at a time (red positive,
    blue negative, grey uncertain or missing); hovering shows the image id and its five labels."""
    rows, note = _cap(len(labels), max_points, seed)
    sub = labels.iloc[rows].reset_index(drop=True)
    ids = [str(image_ids[i]) for i in rows]
    legend = _legend([("positive", LABEL_COLORS[1.0]), ("negative", LABEL_COLORS[0.0]),
                      ("uncertain or not mentioned", OTHER_COLOR)])
    views = [(col, [LABEL_COLORS.get(float(v), OTHER_COLOR) if pd.notna(v) else OTHER_COLOR for v in sub[col]], legend)
             for col in sub.columns]
    tips = [image_tooltip(i, r) for i, r in zip(ids, sub.to_dict("records"), strict=True)]
    page = map_page("Image map (UMAP of image embeddings)", note, np.asarray(coords)[rows], ids, tips, views)
    return _write_page(page, Path(path))
