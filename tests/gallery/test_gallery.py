"""Explanations, ipywidgets views (built and driven headless), the static HTML export and the stage."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CHROMIUM_FLAGS
from helpers import make_tiny_run
from PIL import Image

from lanic_nb.artifacts import load_split
from lanic_nb.attribute.core import attribute, patterns_for_mass
from lanic_nb.attribute.faithfulness import deletion_test, insertion_curves
from lanic_nb.classify.model import ClassifierConfig, DiagnosticClassifier
from lanic_nb.explain.text import Annotator, PatternEvidence, explain_prediction, top_evidence
from lanic_nb.gallery.data import GalleryData, ranked_patterns, top_sentences, waterfall_terms
from lanic_nb.gallery.html import export_html
from lanic_nb.gallery.stage import GalleryConfig, run_gallery
from lanic_nb.gallery.widgets import ImageView, PatternGallery, gallery_app
from lanic_nb.manifest import FINDINGS, label_text
from lanic_nb.rundir import RunDir, load_metrics
from lanic_nb.settings import stage_config
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble

N_IMG, N_PAT = 14, 9
CATS = ("cardiac", "pleural", "device")


def make_data(tmp_path: Path, dataset: str = "phantom") -> GalleryData:
    """A tiny but real gallery: PNG files on disk, a random classifier and ensemble, a pattern table."""
    g = torch.Generator().manual_seed(0)
    clf = DiagnosticClassifier(ClassifierConfig(d_in=10, hidden=8))
    ens = TranscoderEnsemble(TranscoderConfig(d_in=10, d_out=8, d_dict=20, n_members=3, k=6))
    with torch.no_grad():
        for p in list(clf.parameters()) + list(ens.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    lp = torch.randint(-1, N_PAT, (3, 20), generator=g)
    lp[:, :N_PAT] = torch.arange(N_PAT)
    attr = attribute(clf.eval(), ens.eval(), lp, N_PAT, torch.randn(N_IMG, 10, generator=g))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMG):
        p = tmp_path / "images" / f"img{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(p)
        paths.append(p)
    table = pd.DataFrame({
        "pattern_id": np.arange(N_PAT),
        "category": [CATS[p % 3] for p in range(N_PAT)],
        "concept_1": [f"concept{p}a" for p in range(N_PAT)],
        "concept_2": [f"concept{p}b" if p % 2 else None for p in range(N_PAT)],
        "concept_3": [None] * N_PAT,
        "consistency": np.linspace(0.5, 1.0, N_PAT),
        "top_sentences": [[f"Sentence of pattern {p}."] for p in range(N_PAT)],
    })
    sentences = pd.DataFrame({"image": np.r_[np.arange(N_IMG), np.arange(N_IMG)],
                              "text": ["Heart size is normal."] * N_IMG + [f"Finding {i % 3}." for i in range(N_IMG)]})
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(N_IMG, 5)).astype(np.float32)
    return GalleryData(np.array([f"img{i:02d}" for i in range(N_IMG)]), paths, labels, attr, table, sentences, dataset)


@pytest.fixture
def data(tmp_path) -> GalleryData:
    return make_data(tmp_path)


# ---------------------------------------------------------------- explanations


def test_explanation_text_and_annotator_protocol():
    ev = [PatternEvidence(3, 1.25, "pleural", ("effusion", "meniscus")), PatternEvidence(7, -0.5, "cardiac", ())]
    text = explain_prediction("Pleural Effusion", 0.87, ev, total_abs=2.0)
    assert "probability 0.87" in text and "likely present" in text
    assert "toward it: pattern 3 (pleural: effusion, meniscus) +1.25" in text
    assert "against it: pattern 7 (cardiac: no concept) -0.50" in text
    assert "88%" in text  # (1.25 + 0.5) / 2

    class EchoAnnotator:  # what a user writes to plug in their own multimodal model
        def annotate(self, finding, probability, evidence, image_path):
            return f"[{finding} via {len(evidence)} patterns, {image_path}]"

    assert isinstance(EchoAnnotator(), Annotator)
    assert text + " [Pleural Effusion via 2 patterns, None]" == explain_prediction(
        "Pleural Effusion", 0.87, ev, total_abs=2.0, annotator=EchoAnnotator())
    picked = top_evidence(np.array([0.1, -2.0, 0.0, 0.5]), {1: ("cardiac", ("heart",))}, n=3)
    assert [e.pattern_id for e in picked] == [1, 3, 0] and picked[0].concepts == ("heart",)


# ---------------------------------------------------------------- widgets


def test_pattern_gallery_builds_and_updates(data):
    g = PatternGallery(data, n_images=5)
    ids = [v for _, v in g.pattern.options]
    assert ids == ranked_patterns(data, 0).tolist() and g.pattern.value == ids[0]
    assert 0 < len(g.grid.children) <= 5
    assert g.histogram.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Pattern {ids[0]}" in g.info.value and "Top report sentences" in g.info.value
    assert f"Sentence of pattern {ids[0]}." in g.info.value and "concept" + f"{ids[0]}a" in g.info.value
    g.pattern.value = ids[1]  # what a user's click does
    assert f"Pattern {ids[1]} " in g.info.value
    assert len(g.grid.children) == len([i for i in range(N_IMG) if data.attribution.activations[i, ids[1]] > 0][:5])
    g.category.value = "device"
    assert all(data.info()[p][0] == "device" for _, p in g.pattern.options)
    assert "device" in g.info.value
    other = next(p for p in range(N_PAT) if data.info()[p][0] == "cardiac")
    g.show_pattern(other)  # outside the current category filter: the filter is cleared
    assert g.pattern.value == other and g.category.value == "" and f"Pattern {other} " in g.info.value
    g.finding.value = 3
    assert g.pattern.value == other  # the open pattern stays when the finding changes


def test_image_view_buttons_open_the_gallery(data):
    app = gallery_app(data)
    view, gallery = app.image_view, app.gallery
    app.selected_index = 1
    before = view.image.value
    view.image_select.value = 4
    assert view.image.value != before and view.image.value[:4] == b"\x89PNG"
    assert "Pleural Effusion" in view.probs.value
    terms = waterfall_terms(data, 4, view.finding.value, view.n_top)
    shown = [b.pattern_id for b in view.buttons.children]
    assert shown == [p for p in terms["pattern_id"] if p >= 0] and shown
    assert FINDINGS[view.finding.value] in view.text.value and "probability" in view.text.value
    view.buttons.children[-1].click()
    assert gallery.pattern.value == shown[-1] and app.selected_index == 0
    # The waterfall's bars add up to the logit.
    assert terms["value"].sum() == pytest.approx(float(data.attribution.logits[4, view.finding.value]), abs=1e-6)
    standalone = ImageView(data)  # without a gallery, buttons still render
    assert standalone.buttons.children


def test_top_sentences_rank_by_lift(data):
    p = int(ranked_patterns(data, 0)[0])
    sents = top_sentences(data, p, n_images=4)
    assert all(t.startswith("Finding") for t, _ in sents)  # the sentence every report has has zero lift


# ---------------------------------------------------------------- HTML export


def test_export_html_content_and_patient_data_gate(tmp_path, caplog):
    data = make_data(tmp_path)
    out = export_html(tmp_path, tmp_path / "g.html", data=data, n_images=6, n_patterns=9)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "https://" not in page
    assert page.count("class='card image-card'") == 6
    cards = set(re.findall(r"id='pattern-(\d+)'", page))
    links = set(re.findall(r"href='#pattern-(\d+)'", page))
    assert links and links <= cards and len(cards) == 9
    assert page.count("data:image/png;base64,") >= 6 + 9
    assert "Pushing toward it" in page or "Pushing against it" in page
    assert "<h2 id='reliance'>What each finding leans on</h2>" in page  # labels give films without each finding
    real = make_data(tmp_path / "real", dataset="mimic_cxr")
    with pytest.raises(PermissionError, match="allow_patient_data"):
        export_html(tmp_path, tmp_path / "r.html", data=real)
    assert not (tmp_path / "r.html").exists()
    with caplog.at_level(logging.WARNING):
        export_html(tmp_path, tmp_path / "r.html", data=real, allow_patient_data=True, n_images=2)
    assert "PATIENT DATA" in caplog.text and "patient data" in (tmp_path / "r.html").read_text()


def test_gallery_renders_in_headless_chromium(tmp_path, chromium):
    data = make_data(tmp_path)
    out = export_html(tmp_path, tmp_path / "gallery.html", data=data, n_images=4, n_patterns=6)
    n_cards = len(set(re.findall(r"id='pattern-(\d+)'", out.read_text())))
    r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    check = re.search(r'<div id="render-check"([^>]*)>', r.stdout)
    assert check, r.stdout[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', check.group(1)))
    assert int(attrs["pattern-cards"]) == n_cards and int(attrs["image-cards"]) == 4
    assert int(attrs["images-total"]) > 10 and attrs["images-decoded"] == attrs["images-total"]
    assert attrs["dangling-links"] == "0"


# ---------------------------------------------------------------- a real (tiny) run directory


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"))


def test_gallery_from_a_run_directory(tiny_run):
    data = GalleryData.from_run(tiny_run, split="test")
    run = load_split(tiny_run, split="test")
    assert data.n_images == len(run.rows) == 4 and data.attribution.identity_error() < 1e-5
    with torch.no_grad():
        assert np.allclose(data.probabilities, torch.sigmoid(run.classifier(run.x)).numpy(), atol=1e-5)
    assert not data.is_phantom and data.dataset == "tiny"
    assert not data.sentences.empty and data.sentences["image"].between(0, 3).all()
    app = gallery_app(data)
    assert app.image_view.buttons.children and app.gallery.pattern.value is not None
    with pytest.raises(PermissionError):
        export_html(tiny_run)
    out = export_html(tiny_run, allow_patient_data=True, n_images=3)
    assert out == tiny_run / "gallery.html" and "class='card pattern-card'" in out.read_text()


# ---------------------------------------------------------------- notebook


def test_a_run_without_patterns_still_explains_and_exports(tmp_path):
    """Everything lands in 'unassigned latents'; nothing crashes, ratios are undefined (NaN)."""
    data = make_data(tmp_path)
    clf = DiagnosticClassifier(ClassifierConfig(d_in=10, hidden=8)).eval()
    ens = TranscoderEnsemble(TranscoderConfig(d_in=10, d_out=8, d_dict=20, n_members=3, k=6)).eval()
    x = torch.randn(N_IMG, 10)
    lp = torch.full((3, 20), -1)
    attr = attribute(clf, ens, lp, 0, x)
    assert attr.contributions.shape == (N_IMG, 0, 5) and attr.identity_error() < 1e-5
    assert (patterns_for_mass(attr.contributions) == 0).all()
    assert deletion_test(clf, ens, lp, attr, x, k=5, n_random=2)["ratio"].isna().all()
    assert len(insertion_curves(attr, [0, 5]))
    empty = GalleryData(data.image_ids, data.image_paths, data.labels, attr, data.patterns.iloc[:0], data.sentences,
                        "phantom")
    app = gallery_app(empty)
    assert app.gallery.pattern.value is None and not app.image_view.buttons.children
    page = export_html(tmp_path, tmp_path / "empty.html", data=empty, n_images=2).read_text()
    assert "class='card image-card'" in page and "class='card pattern-card'" not in page


def test_one_html_escaper_everywhere(tmp_path):
    data = make_data(tmp_path)
    data.patterns.loc[0, "concept_1"] = "<b>bold & 'quoted'</b>"
    data.sentences.loc[0, "text"] = "<script>alert(1)</script>"
    page = export_html(tmp_path, tmp_path / "g.html", data=data, n_images=N_IMG, n_patterns=N_PAT).read_text()
    assert "<b>bold" not in page and "&lt;b&gt;bold &amp; &#x27;quoted&#x27;&lt;/b&gt;" in page
    assert "<script>alert" not in page
    assert label_text(1.0) == "positive" and label_text(float("nan")) == "not mentioned"


# ---------------------------------------------------------------- the stage


METRIC_KEYS = {"n_images", "n_pattern_cards", "n_image_cards", "html_kb"}


def test_gallery_config_errors_name_the_setting():
    for bad in (dict(split="all"), dict(max_images=0), dict(html_images=0), dict(html_patterns=-1),
                dict(allow_patient_data="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GalleryConfig(**bad)


def test_run_gallery_guards_patient_data_and_records_metrics(tiny_run, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    (run_dir / "gallery.html").unlink(missing_ok=True)  # another test exports into the shared tiny run
    with pytest.raises(PermissionError, match="allow_patient_data"):
        run_gallery(run_dir, GalleryConfig(device="cpu"))  # the tiny dataset is not the phantom
    assert not (run_dir / "gallery.html").exists() and not RunDir(run_dir).metrics_file("07_gallery").exists()
    res = run_gallery(run_dir, GalleryConfig(device="cpu", html_images=3, html_patterns=2, allow_patient_data=True))
    page = (run_dir / "gallery.html").read_text()
    assert res.html_path == run_dir / "gallery.html" and "PATIENT DATA" not in page and "patient data" in page
    m = load_metrics(run_dir, "07_gallery")
    assert set(m) == METRIC_KEYS and m == res.metrics
    assert m["n_images"] == res.data.n_images == 4 and m["n_image_cards"] == 3
    cards = set(re.findall(r"id='pattern-(\d+)'", page))
    assert m["n_pattern_cards"] == len(cards) >= 1 and m["html_kb"] == pytest.approx(len(page.encode()) / 1024)
    assert set(re.findall(r"href='#pattern-(\d+)'", page)) <= cards


@pytest.mark.notebook
def test_run_gallery_on_the_small_phantom_run(small_run, tmp_path):
    run_dir = shutil.copytree(small_run.until("04"), tmp_path / "run")
    cfg = stage_config("07_gallery", "small")
    res = run_gallery(run_dir, cfg)
    page = res.html_path.read_text()
    m = load_metrics(run_dir, "07_gallery")
    assert res.data.is_phantom and "class='note'" not in page  # no patient-data warning on the phantom
    assert m["n_images"] == len(load_split(run_dir, "test").rows) and m["n_image_cards"] == cfg.html_images
    assert m["n_pattern_cards"] == len(set(re.findall(r"id='pattern-(\d+)'", page))) >= cfg.html_patterns
    assert set(re.findall(r"href='#pattern-(\d+)'", page)) <= set(re.findall(r"id='pattern-(\d+)'", page))
    app = gallery_app(res.data)
    assert app.gallery.pattern.value is not None and app.image_view.buttons.children


@pytest.mark.notebook
def test_notebook_07_gallery(small_run):
    run = small_run.until("07")
    m = load_metrics(run, "07_gallery")
    page = (run / "gallery.html").read_text()
    assert set(m) == METRIC_KEYS and m["n_image_cards"] == 6 and page.count("class='card image-card'") == 6
    assert m["n_pattern_cards"] >= 10 and page.count("class='card pattern-card'") == m["n_pattern_cards"]
    assert m["html_kb"] == pytest.approx((run / "gallery.html").stat().st_size / 1024)
