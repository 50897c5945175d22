"""UMAP maps: the stage (run_maps) on a small run, the PNG figures, and the interactive HTML maps (one SVG
point per pattern / image, the right tooltip on the right point, positions that are the UMAP coordinates
written to the coordinates table)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import CHROMIUM_FLAGS
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from lanic_nb import layout
from lanic_nb.embed.store import load_embedded
from lanic_nb.io import read_table, write_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.maps import pages
from lanic_nb.maps import stage as maps_stage
from lanic_nb.maps import views as maps_views
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir, load_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Points(HTMLParser):
    """Every <circle>: its attributes, its inline CSS variables and the text of its <title>."""

    def __init__(self):
        super().__init__()
        self.points: list[dict] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "circle":
            a = dict(attrs)
            style = dict(kv.split(":", 1) for kv in a.get("style", "").split(";") if kv)
            self.points.append({"id": a["data-id"], "cx": float(a["cx"]), "cy": float(a["cy"]), "style": style,
                                "title": ""})
        elif tag == "title" and self.points:
            self._in_title = True

    def handle_endtag(self, tag):
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data):
        if self._in_title:
            self.points[-1]["title"] += data


def parse_points(path: Path) -> pd.DataFrame:
    p = _Points()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return pd.DataFrame(p.points)


def assert_positions_are(points: pd.DataFrame, coords: pd.DataFrame, id_column: str) -> None:
    """The SVG positions are one affine map (x right, y up) of the table's x, y, matched by id."""
    m = points.reset_index(drop=True).merge(coords.astype({id_column: str}), left_on="id", right_on=id_column,
                                            validate="one_to_one")
    assert len(m) == len(points)
    for page, table, sign in (("cx", "x", 1), ("cy", "y", -1)):
        a = np.stack([m[table].to_numpy(float), np.ones(len(m))], axis=1)
        fit, *_ = np.linalg.lstsq(a, m[page].to_numpy(float), rcond=None)
        assert np.sign(fit[0]) == sign
        assert np.abs(a @ fit - m[page].to_numpy(float)).max() < 0.1  # positions are rounded to 0.1 units
    inner = (pages.MAP_PAD - 0.05, pages.MAP_SIZE - pages.MAP_PAD + 0.05)
    assert points[["cx", "cy"]].min().min() >= inner[0] and points[["cx", "cy"]].max().max() <= inner[1]


def tiny_patterns(n: int = 7) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(1)
    table = pd.DataFrame({
        "pattern_id": np.arange(n),
        "consistency": np.linspace(0.2, 1.0, n),
        "firing_freq": np.linspace(0.01, 0.07, n),
        "concept_1": ["pacemaker", "enlarged heart", "", "pleural fluid", "chest tube", "rib", "kerley lines"][:n],
        "concept_2": ["lead wire", "cardiomegaly", "", "", None, "", "edema"][:n],
        "category": ["device", "cardiac", "", "pleural", "device", None, "pulmonary"][:n],
        "category_confidence": np.linspace(0.5, 0.9, n),
    })
    return rng.normal(size=(n, 2)).astype(np.float32) * 3, table


def test_pattern_map_has_one_point_per_pattern_with_its_tooltip_at_its_coordinates(tmp_path):
    xy, table = tiny_patterns()
    write_table(tmp_path / "pattern_coords.parquet", pages.coords_table(table["pattern_id"], xy, "pattern_id"))
    page = pages.pattern_map_html(xy, table, tmp_path / "patterns.html")
    pts = parse_points(page).set_index("id", drop=False)
    assert list(pts["id"]) == [str(i) for i in range(7)]
    assert pts.loc["1", "title"] == ("pattern 1: enlarged heart\ncategory: cardiac (confidence 0.57)\n"
                                     "also: cardiomegaly\nconsistency: 0.33 of members\n"
                                     "firing frequency: 2.0% of images")
    assert pts.loc["2", "title"].startswith("pattern 2: no concept\ncategory: uncategorized")
    # Colour views: category (view 0) and consistency on viridis (view 1), per point.
    assert pts.loc["1", "style"]["--c0"] == maps_views.CATEGORY_COLORS["cardiac"]
    assert pts.loc["5", "style"]["--c0"] == maps_views.CATEGORY_COLORS[""]
    assert pts.loc["6", "style"]["--c1"] == to_hex(colormaps["viridis"](1.0))
    assert_positions_are(pts, read_table(tmp_path / "pattern_coords.parquet"), "pattern_id")
    text = page.read_text()
    assert "<script src" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert text.count("type='radio'") == 2


def test_image_map_caps_points_and_keeps_each_tooltip_and_position_with_its_image(tmp_path):
    rng = np.random.default_rng(2)
    n = 9
    xy = rng.normal(size=(n, 2))
    ids = np.array([f"im{i}" for i in range(n)])
    labels = pd.DataFrame({"Edema": [1, 0, np.nan, -1, 1, 0, 0, 1, np.nan],
                           "Cardiomegaly": [0, 0, 1, 1, 0, 1, np.nan, 0, 0]})
    write_table(tmp_path / "image_coords.parquet", pages.coords_table(ids, xy, "image_id"))
    page = pages.image_map_html(xy, ids, labels, tmp_path / "images.html", max_points=5, seed=3)
    pts = parse_points(page).set_index("id", drop=False)
    kept = pages.subsample(n, 5, seed=3)
    assert list(pts["id"]) == list(ids[kept]) and "5 of 9 points shown" in page.read_text()
    for i in kept:
        want = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}
        lines = [f"image im{i}"] + [f"{f}: {want.get(labels.loc[i, f], 'not mentioned')}" for f in labels.columns]
        assert pts.loc[f"im{i}", "title"] == "\n".join(lines)
        for v, f in enumerate(labels.columns):
            color = {1.0: pages.LABEL_COLORS[1.0], 0.0: pages.LABEL_COLORS[0.0]}.get(labels.loc[i, f],
                                                                                       pages.OTHER_COLOR)
            assert pts.loc[f"im{i}", "style"][f"--c{v}"] == color
    assert_positions_are(pts, read_table(tmp_path / "image_coords.parquet"), "image_id")


def test_map_page_renders_in_headless_chromium_without_console_errors(tmp_path, chromium):  # noqa: F811
    xy, table = tiny_patterns()
    page = pages.pattern_map_html(xy, table, tmp_path / "patterns.html")
    r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CONSOLE" not in r.stderr, r.stderr[-2000:]
    check = re.search(r'<div id="render-check"([^>]*)>', r.stdout)
    assert check, r.stdout[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', check.group(1)))
    assert attrs["points"] == "7" and attrs["titles"] == "7"
    # The first point (a device pattern) takes its colour from the checked view through its CSS variable.
    assert attrs["first-fill"] == "rgb({}, {}, {})".format(*(int(maps_views.CATEGORY_COLORS["device"][k:k + 2], 16)
                                                              for k in (1, 3, 5)))


@pytest.mark.notebook
def test_notebook_05_writes_html_maps_wired_to_the_coordinate_tables(small_run):
    run = small_run.until("05")
    out = RunDir(run).patterns / "maps"
    m = load_metrics(run, "05_maps")
    table = read_table(RunDir(run).patterns / "patterns.parquet").set_index("pattern_id")

    pat_coords = read_table(out / "pattern_coords.parquet")
    pts = parse_points(out / "patterns.html").set_index("id", drop=False)
    assert len(pat_coords) == len(pts) == m["n_patterns_mapped"] == len(table)
    assert_positions_are(pts, pat_coords, "pattern_id")
    for p in (0, len(table) - 1):
        row = table.loc[p]
        title = pts.loc[str(p), "title"]
        concept = row["concept_1"] if isinstance(row["concept_1"], str) and row["concept_1"] else "no concept"
        assert title.startswith(f"pattern {p}: {concept}\ncategory: {row['category'] or 'uncategorized'}")
        assert f"consistency: {row['consistency']:.2f} of members" in title
        assert f"firing frequency: {row['firing_freq']:.1%} of images" in title

    img_coords = read_table(out / "image_coords.parquet")
    pts = parse_points(out / "images.html").set_index("id", drop=False)
    assert len(img_coords) == len(pts) == m["n_images_mapped"]
    assert_positions_are(pts, img_coords, "image_id")
    manifest = read_table(RunDir(run).manifest).astype({"image_id": str}).set_index("image_id")
    for image_id in pts.index[:3]:
        title = pts.loc[image_id, "title"].splitlines()
        assert title[0] == f"image {image_id}"
        positives = {f for f in FINDINGS if manifest.loc[image_id, f] == 1}
        assert {line.split(": ")[0] for line in title[1:] if line.endswith(": positive")} == positives


def test_maps_plots_without_umap(tmp_path):
    """Tiny inputs take the PCA path (no numba compile); the plots return figures, save_figure writes PNGs."""
    dirs = F.normalize(torch.randn(5, 8), dim=1).numpy()
    xy = layout.umap_coords(dirs)
    assert xy.shape == (5, 2) and np.isfinite(xy).all()
    centered = dirs - dirs.mean(0)
    assert np.allclose(np.abs(xy[:, 0]), np.abs(centered @ np.linalg.svd(centered)[2][0]), atol=1e-5)
    fig = maps_views.plot_pattern_map(xy, ["cardiac", "device", "", "pleural", "unknown"], np.linspace(0, 1, 5))
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes[:2]] == ["patterns by category",
                                                                                   "patterns by consistency"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["cardiac", "pleural", "device", "(none)"]  # "unknown" is not a category: drawn as none
    labels = pd.DataFrame({"Edema": [1, 0, np.nan, -1, 1], "Cardiomegaly": [0, 0, 1, 1, 0]})
    fig2 = maps_views.plot_image_map(xy, labels)
    assert [ax.get_title() for ax in fig2.axes] == ["Edema", "Cardiomegaly"]
    # Edema panel: grey (nan, -1), blue (0), red (1, 1) scatter layers, in that order.
    assert [len(c.get_offsets()) for c in fig2.axes[0].collections] == [2, 1, 2]
    for f, name in ((fig, "p.png"), (fig2, "i.png")):
        path = maps_stage.save_figure(f, tmp_path / name)
        assert path.read_bytes()[:8] == PNG_MAGIC and not plt.fignum_exists(f.number)
    assert (list(pages.subsample(10, 4, seed=0)) == sorted(pages.subsample(10, 4, seed=0))
            and len(pages.subsample(10, 4)) == 4)


def test_maps_config_fails_at_once_naming_the_bad_field():
    for bad, name in (({"n_neighbors": 1}, "n_neighbors"), ({"max_images": 0}, "max_images"),
                      ({"min_dist": -0.1}, "min_dist"), ({"max_html_points": 0}, "max_html_points")):
        with pytest.raises(ValueError, match=name):
            maps_stage.MapsConfig(**bad)


@pytest.fixture(scope="module")
def maps_run(small_run, tmp_path_factory) -> Path:
    """A copy of the small run after stage 04, so run_maps writes nowhere the notebook tests read."""
    src = small_run.until("04")
    dst = tmp_path_factory.mktemp("maps_run") / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("notebooks", "maps"))
    return dst


@pytest.mark.notebook
def test_run_maps_writes_both_maps_aligned_with_their_inputs(maps_run):
    cfg = maps_stage.MapsConfig(n_neighbors=10, max_images=50, max_html_points=12, seed=0)
    result = maps_stage.run_maps(maps_run, cfg)
    rd = RunDir(maps_run)
    out = rd.patterns / "maps"
    m = load_metrics(maps_run, "05_maps")
    assert m == pytest.approx(result.metrics, nan_ok=True)
    assert set(m) == {"n_patterns_mapped", "n_images_mapped", "pattern_map_trustworthiness",
                      "image_map_trustworthiness"}
    for name in ("patterns.png", "images.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    # Patterns: every pattern, coordinates as written, aligned with its own direction.
    ps = PatternSet.load(rd.patterns)
    table = read_table(rd.patterns / "patterns.parquet")
    pat = read_table(out / "pattern_coords.parquet")
    assert m["n_patterns_mapped"] == len(pat) == len(table) == ps.n_patterns
    pd.testing.assert_frame_equal(pat, result.pattern_coords)
    assert list(pat.pattern_id) == list(table.pattern_id)
    np.testing.assert_allclose(result.consistency, ps.consistency.numpy())
    tw = maps_stage.trustworthiness(ps.directions.numpy(), pat[["x", "y"]].to_numpy())
    assert tw == pytest.approx(m["pattern_map_trustworthiness"]) and tw > 0.7  # random positions give ~0.5

    # Images: the seeded 50-image subset; each id's coordinates belong to its own embedding.
    emb = load_embedded(maps_run)
    img = read_table(out / "image_coords.parquet")
    rows = pages.subsample(len(emb.x), 50, seed=0)
    assert m["n_images_mapped"] == len(img) == 50 < len(emb.x)
    assert list(img.image_id) == list(emb.image_ids[rows])
    tw = maps_stage.trustworthiness(emb.x[rows], img[["x", "y"]].to_numpy())
    assert tw == pytest.approx(m["image_map_trustworthiness"]) and tw > 0.8
    shuffled = maps_stage.trustworthiness(emb.x[rows][::-1], img[["x", "y"]].to_numpy())
    assert shuffled < tw - 0.1  # the check above would catch coordinates paired with the wrong images
    want = emb.manifest.loc[rows, list(FINDINGS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(result.image_labels, want)

    # HTML pages: capped at max_html_points, positions those of the coordinate tables.
    for page, coords, col in (("patterns.html", pat, "pattern_id"), ("images.html", img, "image_id")):
        pts = parse_points(out / page)
        note = f"12 of {len(coords)} points shown" if len(coords) > 12 else f"all {len(coords)} points shown"
        assert len(pts) == min(12, len(coords)) and note in (out / page).read_text()
        assert_positions_are(pts, coords, col)
    assert result.files["pattern_html"] == out / "patterns.html"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_knn_matches_brute_force(metric):
    """The neighbours handed to UMAP: every row's k nearest by the plain definition, itself first at 0."""
    from scipy.spatial.distance import cdist

    x = np.random.default_rng(1).normal(size=(300, 12)).astype(np.float32)
    x[7] = x[3]  # a duplicate: each must still come first in its own row
    idx, dist = layout.exact_knn(x, 10, metric, chunk=64)
    full = cdist(x.astype(np.float64), x.astype(np.float64), metric=metric)
    np.fill_diagonal(full, -1.0)
    ref = np.argsort(full, axis=1, kind="stable")[:, :10]
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    np.testing.assert_allclose(dist[:, 1:], np.take_along_axis(full, ref, 1)[:, 1:], atol=1e-6)
    assert (np.diff(dist, axis=1) >= 0).all()
    with pytest.raises(ValueError, match="metric"):
        layout.exact_knn(x, 5, "manhattan")
