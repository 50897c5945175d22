"""Explaining new images with a (tiny, real) run directory: exactness, bad files, DICOM checks, guards, pages."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CHROMIUM_FLAGS
from helpers import make_tiny_run, write_dicom
from PIL import Image

from lanic_nb.artifacts import load_split
from lanic_nb.attribute.core import attribute
from lanic_nb.explain.__main__ import main
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.model import RunMismatch, load_explain_run
from lanic_nb.explain.output import collect_inputs
from lanic_nb.explain.pipeline import Explainer
from lanic_nb.explain.stage import explain_paths, open_explainer
from lanic_nb.explain.views import results_table, waterfall_figure
from lanic_nb.explain.widgets import UploadApp
from lanic_nb.io import read_json, write_json
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.rundir import RunDir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_explain"))


@pytest.fixture(scope="module")
def explainer(tiny_run) -> Explainer:
    # The tiny dataset is not the phantom: JSON only, unless a test allows patient data.
    return open_explainer(tiny_run, ExplainConfig(device="cpu", html=False, n_neighbors=3))


def run_images(run: Path, split: str) -> list[tuple[str, Path]]:
    m = pd.read_parquet(RunDir(run).manifest)
    m = m[m["split"] == split]
    return [(str(i), resolve_image_path(RunDir(run).manifest, p)) for i, p in zip(m["image_id"], m["image_path"],
                                                                               strict=True)]


def png(path: Path, seed: int = 0, size=(50, 44)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def test_config_validates_its_fields():
    assert ExplainConfig(images="a.png").images == ["a.png"] and ExplainConfig().annotator.model == ""
    for bad in (dict(modality_check="ignore"), dict(n_top=0), dict(n_neighbors=-1), dict(html="yes"),
                dict(name_patterns=True), dict(batch_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ExplainConfig(**bad)


def test_the_runs_own_images_reproduce_the_stored_decomposition(tiny_run, explainer):
    """Read, preprocess and embed the files again: the decomposition equals the one on the stored embeddings."""
    stored = load_split(tiny_run, "test")
    ps = explainer.run.patterns
    ref = attribute(stored.classifier, stored.ensemble, ps.latent_pattern, ps.n_patterns, stored.x)
    files = run_images(tiny_run, "test")
    exps = explainer.explain_files(files)
    assert [e.image_id for e in exps] == [i for i, _ in files] and all(e.ok for e in exps)
    for j, e in enumerate(exps):
        for k in ("contributions", "other", "error", "logits", "activations"):
            assert torch.allclose(getattr(e.attribution, k)[0], getattr(ref, k)[j], atol=1e-6, rtol=0), k
        assert e.attribution.identity_error() < 1e-12
        assert e.run_image["image_id"] == files[j][0] and e.run_image["split"] == "test"
        assert e.run_image["embedding_max_abs_diff"] < 1e-6
        sims = [s for _, s in e.neighbors]
        assert len(sims) == 3 and sims == sorted(sims, reverse=True)
        assert set(explainer.run.pool.image_ids[[i for i, _ in e.neighbors]]) <= set(
            i for i, _ in run_images(tiny_run, "train"))
        assert len(e.texts) == 5 and e.texts[1].startswith("Cardiomegaly: probability")


def test_collect_inputs_finds_images_and_keeps_missing_paths(tmp_path):
    png(tmp_path / "d" / "a.png")
    png(tmp_path / "d" / "sub" / "a.png")
    write_dicom(tmp_path / "d" / "sub" / "noext", np.ones((4, 4), np.uint16))
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    png(tmp_path / "d" / ".hidden" / "x.png")
    png(tmp_path / "a.png")
    pairs, folder = collect_inputs([tmp_path / "d", tmp_path / "a.png", tmp_path / "gone.dcm"])
    assert folder and [i for i, _ in pairs] == ["a", "sub__a", "sub__noext", "a-2", "gone"]
    assert pairs[-1][1] == tmp_path / "gone.dcm"
    assert collect_inputs([tmp_path / "a.png"]) == ([("a", tmp_path / "a.png")], False)


def test_bad_files_get_their_reason_and_the_rest_still_run(tmp_path, explainer):
    good = [png(tmp_path / "in" / f"good{i}.png", seed=i) for i in range(3)]
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "text.dcm").write_text("hello")
    out = tmp_path / "out"
    res = explain_paths(explainer, [tmp_path / "in", tmp_path / "missing.png"], out)
    status = {e.image_id: (e.status, e.reason) for e in res.explanations}
    assert status["corrupt"][0] == "error" and status["corrupt"][1].startswith("corrupt or truncated image")
    assert status["empty"] == ("error", "empty file") and status["missing"] == ("error", "file not found")
    assert status["text"][0] == "error" and "DICOM" in status["text"][1]
    assert all(status[p.stem] == ("ok", "") for p in good)
    index = read_json(out / "index.json")
    assert (index["n_images"], index["n_ok"], index["n_error"]) == (7, 3, 4)
    assert read_json(out / "corrupt.json")["reason"] == status["corrupt"][1]
    assert not any(p.name.startswith(".") or ".tmp" in p.name for p in out.iterdir()), "no partial files"
    summary = pd.read_parquet(out / "explanations.parquet")
    assert len(summary) == 3 * 5 + 4 and set(summary.loc[summary["finding"].isna(), "status"]) == {"error"}
    ok = summary.dropna(subset=["finding"])
    assert np.allclose(ok[["patterns", "other", "bias", "error"]].sum(1), ok["logit"], atol=1e-9)
    contrib = pd.read_parquet(out / "contributions.parquet")
    assert set(contrib["image_id"]) == {p.stem for p in good}


def test_json_holds_probabilities_terms_and_named_top_patterns(tmp_path, explainer):
    e = explainer.explain_file(png(tmp_path / "x.png"))
    res = explain_paths(explainer, [e.source], tmp_path / "out")
    doc = read_json(tmp_path / "out" / "x.json")
    assert res.index["n_ok"] == 1 and not (tmp_path / "out" / "explanations.parquet").exists()  # one image: no table
    assert list(doc["probabilities"]) == list(FINDINGS) and doc["status"] == "ok" and doc["run_image"] is None
    for f in FINDINGS:
        d = doc["findings"][f]
        assert d["sum_of_terms"] == pytest.approx(d["logit"], abs=1e-9) and abs(d["sum_minus_logit"]) < 1e-9
        assert d["probability"] == pytest.approx(1 / (1 + np.exp(-d["logit"])))
        c = [abs(p["contribution"]) for p in d["top_patterns"]]
        assert c == sorted(c, reverse=True) and all(p["name"] for p in d["top_patterns"])
        assert d["explanation"].startswith(f"{f}: probability")
    assert len(doc["nearest_training_images"]) == 3 and doc["encoder_fingerprint"]
    table = results_table(res.explanations)
    assert list(table.columns[2:7]) == list(FINDINGS)
    fig = waterfall_figure(res.explanations[0], 0, run=explainer.run)
    assert fig.axes[0].get_title().startswith("x: Atelectasis")


def test_modality_check_warns_or_refuses(tmp_path, explainer):
    pixels = (np.arange(64 * 60) % 4000).astype(np.uint16).reshape(64, 60)
    mr = write_dicom(tmp_path / "mr.dcm", pixels, Modality="MR", BodyPartExamined="HEAD")
    chest = write_dicom(tmp_path / "chest.dcm", pixels, Modality="DX", BodyPartExamined="CHEST")
    knee = write_dicom(tmp_path / "knee.dcm", pixels, Modality="CR", BodyPartExamined="KNEE")
    warned = explainer.explain_files([("mr", mr), ("chest", chest), ("knee", knee)])
    assert [e.status for e in warned] == ["ok"] * 3
    assert any("Modality MR" in w for w in warned[0].warnings) and any("HEAD" in w for w in warned[0].warnings)
    assert warned[1].warnings == [] and warned[1].info["modality"] == "DX"
    assert warned[2].warnings == ["BodyPartExamined KNEE is not the chest"]
    strict = Explainer(explainer.run, dataclasses.replace(explainer.cfg, modality_check="refuse"))
    refused = strict.explain_files([("mr", mr), ("chest", chest)])
    assert refused[0].status == "refused" and "Modality MR" in refused[0].reason and refused[1].ok


def test_patient_data_guard_for_pages_of_a_real_run(tiny_run, tmp_path, explainer):
    with pytest.raises(PermissionError, match="allow_patient_data"):
        open_explainer(tiny_run, ExplainConfig(device="cpu"))
    allowed = Explainer(explainer.run, dataclasses.replace(explainer.cfg, html=True, allow_patient_data=True))
    explain_paths(allowed, [png(tmp_path / "x.png")], tmp_path / "out")
    page = (tmp_path / "out" / "x.html").read_text()
    assert "patient data" in page and "http://" not in page and "https://" not in page
    with pytest.raises(PermissionError):
        explain_paths(Explainer(explainer.run, dataclasses.replace(explainer.cfg, html=True)),
                      [tmp_path / "x.png"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def copy_run(tiny_run: Path, dst: Path, **header) -> Path:
    run = shutil.copytree(tiny_run, dst)
    h = read_json(run / "embed" / "header.json")
    write_json(run / "embed" / "header.json", {**h, **header})
    return run


def test_an_encoder_with_other_weights_is_refused(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run", encoder_fingerprint="0123456789abcdef")
    with pytest.raises(RunMismatch, match="fingerprint 0123456789abcdef"):
        load_explain_run(run)
    img = png(tmp_path / "x.png")
    assert main(["--run", str(run), str(img), "--out", str(tmp_path / "out"), "--no-html", "--quiet"]) == 1
    assert not (tmp_path / "out").exists()


def test_an_encoder_folder_that_moved_is_found_in_the_run(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run", encoder="local-dir:/nonexistent/clip")
    loaded = load_explain_run(run)
    assert loaded.encoder.fingerprint() == loaded.header["encoder_fingerprint"]
    assert loaded.encoder.name.endswith(str(Path("run") / "clip"))


def test_cli_exit_status_and_files(tiny_run, tmp_path):
    img = png(tmp_path / "in" / "x.png")
    argv = ["--run", str(tiny_run), str(img), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv + ["--no-html"]) == 0 and (tmp_path / "out" / "x.json").exists()
    assert main(argv + ["--no-html", str(tmp_path / "in" / "nope.png")]) == 3
    assert main(argv) == 1  # a real dataset's pages need --allow-patient-data
    assert main(argv + ["--allow-patient-data"]) == 0 and (tmp_path / "out" / "x.html").exists()


def test_page_renders_in_headless_chromium(tiny_run, tmp_path, explainer, chromium):
    allowed = Explainer(explainer.run, dataclasses.replace(explainer.cfg, html=True, allow_patient_data=True))
    explain_paths(allowed, [run_images(tiny_run, "test")[0][1]], tmp_path / "out")
    (page,) = (tmp_path / "out").glob("*.html")
    r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    check = re.search(r'<div id="render-check"([^>]*)>', r.stdout)
    assert check, r.stdout[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', check.group(1)))
    assert attrs["waterfalls"] == "5" and attrs["neighbors"] == "3"
    assert int(attrs["images-total"]) >= 4 and attrs["images-decoded"] == attrs["images-total"]
    assert re.search(r"own image i\d+ \(test split\)", page.read_text())


def test_upload_app_explains_an_upload_in_place(tiny_run, explainer):
    first = explainer.explain_files(run_images(tiny_run, "test")[:1])
    app = UploadApp(explainer, first)
    assert app.view.image_select.options == ((first[0].image_id, 0),)
    content = run_images(tiny_run, "val")[0][1].read_bytes()
    app.upload.value = ({"name": "my film.png", "type": "image/png", "size": len(content),
                         "content": memoryview(content), "last_modified": datetime.datetime.now()},)  # a user's upload
    assert "explained" in app.status.value and len(app.explanations) == 2
    assert app.view.image_select.value == 1 and app.view.image.value[:4] == b"\x89PNG"
    assert app.view.text.value.count("probability") == 1 and "Nearest training images" in app.details.value
    assert app.explanations[1].image_id == "my_film" and "report label" not in app.view.probs.value
    bad = app.explain_bytes("broken.dcm", b"nope")
    assert bad.status == "error" and "not explained" in app.status.value and len(app.explanations) == 2
    app.view.image_select.value = 0
    assert first[0].image_id in app.view.image_select.label and json.dumps(app.details.value)
