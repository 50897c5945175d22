"""Acceptance: the command line on the small phantom run, with a test image, real DICOM files and a corrupt one;
and notebook 10 headless (small mode), upload included."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from helpers import count_images, figure_problems

from lanic_nb.explain.__main__ import main
from lanic_nb.io import read_json
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.run_notebooks import NOTEBOOK_DIR, run_notebook
from lanic_nb.rundir import RunDir, load_metrics

pytestmark = pytest.mark.notebook
REAL = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "MR2_UNCR.dcm", "JPEG-LL.dcm")


def real(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed: pip install pydicom-data (the dev extra has it)")
    return Path(path)


@pytest.fixture(scope="module")
def cli(small_run, tmp_path_factory) -> dict:
    """One run of ``python -m lanic_nb.explain``: a phantom test image, a folder of real DICOM + a corrupt file."""
    run = small_run.until("06")
    tmp = tmp_path_factory.mktemp("cli")
    folder = tmp / "dicom"
    folder.mkdir()
    for name in REAL:
        shutil.copy(real(name), folder / name)
    (folder / "corrupt.dcm").write_bytes(real("RG1_UNCR.dcm").read_bytes()[:5000])  # truncated in the pixel data
    manifest = pd.read_parquet(RunDir(run).manifest)
    test = manifest[manifest["split"] == "test"].iloc[0]
    image = resolve_image_path(RunDir(run).manifest, test["image_path"])
    out = tmp / "out"
    r = subprocess.run([sys.executable, "-m", "lanic_nb.explain", "--run", str(run), str(image), str(folder),
                        "--out", str(out), "--top", "50"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]  # 3: some images were not explained
    return {"run": run, "out": out, "image": image, "image_id": str(test["image_id"]), "stdout": r.stdout}


def test_cli_reproduces_the_contributions_notebook_06_stored(cli):
    doc = read_json(cli["out"] / f"{cli['image'].stem}.json")
    assert doc["status"] == "ok" and doc["run_image"]["image_id"] == cli["image_id"]
    stored = pd.read_parquet(RunDir(cli["run"]).attribution / "contributions.parquet")
    stored = stored[stored["image_id"] == cli["image_id"]]
    assert len(stored) >= 5
    for finding, rows in stored.groupby("finding"):
        mine = {p["pattern_id"]: p for p in doc["findings"][finding]["top_patterns"]}
        for r in rows.itertuples():
            if r.contribution == 0:
                continue
            assert mine[r.pattern_id]["contribution"] == pytest.approx(r.contribution, abs=1e-6, rel=0)
            assert mine[r.pattern_id]["activation"] == pytest.approx(r.activation, abs=1e-6, rel=0)
    summary = pd.read_parquet(RunDir(cli["run"]).attribution / "summary.parquet")
    for r in summary[summary["image_id"] == cli["image_id"]].itertuples():
        d = doc["findings"][r.finding]
        assert (d["logit"] == pytest.approx(r.logit, abs=1e-6)
                and d["probability"] == pytest.approx(r.probability, abs=1e-6))
        assert d["terms"]["error"] == pytest.approx(r.error, abs=1e-6)
        assert d["terms"]["unassigned_latents"] == pytest.approx(r.other, abs=1e-6)


def test_the_real_chest_cr_runs_end_to_end(cli):
    doc = read_json(cli["out"] / "RG1_UNCR.json")
    assert doc["status"] == "ok" and doc["warnings"] == [] and doc["image"]["modality"] == "CR"
    assert doc["image"]["shape"] == [1955, 1841] and list(doc["probabilities"]) == list(FINDINGS)
    assert all(0 < p < 1 for p in doc["probabilities"].values())
    for f in FINDINGS:
        d = doc["findings"][f]
        assert sum(d["terms"].values()) == pytest.approx(d["logit"], abs=1e-9)
        assert d["top_patterns"] and d["explanation"].startswith(f"{f}: probability")
    # What each finding leans on comes from notebook 06's reliance table, and the page says it where it applies.
    rel = pd.read_parquet(RunDir(cli["run"]).attribution / "reliance.parquet")
    for f in FINDINGS:
        flagged = rel[(rel.finding == f) & rel.flagged]
        lean = doc["findings"][f]["leans_on"]
        assert (lean is None) == flagged.empty
        if lean is not None:
            assert lean["pattern_id"] == int(flagged.pattern_id.iloc[0])
            assert f"{f} leans on pattern {lean['pattern_id']}" in (cli["out"] / "RG1_UNCR.html").read_text()
    lossless = read_json(cli["out"] / "RG1_J2KR.json")
    assert lossless["probabilities"] == doc["probabilities"]  # identical pixels, identical answer
    lossy = read_json(cli["out"] / "RG1_J2KI.json")
    assert np.allclose(list(lossy["probabilities"].values()), list(doc["probabilities"].values()), atol=0.05)
    page = (cli["out"] / "RG1_UNCR.html").read_text()
    assert page.count("<table class='wf'>") == 5 and "Nearest training images" in page


def test_the_mr_file_gets_the_modality_warning_or_refusal(cli, tmp_path):
    mr = read_json(cli["out"] / "MR2_UNCR.json")
    assert mr["status"] == "ok" and any(w.startswith("Modality MR is not a radiograph") for w in mr["warnings"])
    assert "Modality MR" in (cli["out"] / "MR2_UNCR.html").read_text()
    jpeg_ll = read_json(cli["out"] / "JPEG-LL.json")  # JPEG lossless decodes; it is a nuclear-medicine image
    assert jpeg_ll["status"] == "ok" and any("Modality NM" in w for w in jpeg_ll["warnings"])
    rc = main(["--run", str(cli["run"]), str(real("MR2_UNCR.dcm")), str(real("RG1_UNCR.dcm")), "--out",
               str(tmp_path), "--modality-check", "refuse", "--no-html", "--quiet"])
    assert rc == 3
    refused = read_json(tmp_path / "MR2_UNCR.json")
    assert refused["status"] == "refused" and refused["reason"].startswith("Modality MR")
    assert "probabilities" not in refused and read_json(tmp_path / "RG1_UNCR.json")["status"] == "ok"


def test_a_corrupt_file_gets_its_reason_and_the_rest_still_run(cli):
    bad = read_json(cli["out"] / "corrupt.json")
    assert bad["status"] == "error" and "cannot decode DICOM pixel data" in bad["reason"]
    index = read_json(cli["out"] / "index.json")
    assert (index["n_images"], index["n_ok"], index["n_error"]) == (len(REAL) + 2, len(REAL) + 1, 1)
    assert (cli["out"] / "explanations.parquet").exists() and (cli["out"] / "contributions.parquet").exists()
    assert "corrupt: error: cannot decode" in cli["stdout"]


def test_notebook_10_explain_runs_headless_with_an_upload(small_run, tmp_path):
    run = small_run.until("06")
    executed = run_notebook(NOTEBOOK_DIR / "10_explain.ipynb", run, "small")
    assert figure_problems(executed) == [] and count_images(executed) >= 1
    m = load_metrics(run, "10_explain")
    assert (m["n_images"], m["n_ok"]) == (2, 2) and m["max_identity_error"] < 1e-9 and m["annotator"] is None
    assert len(list((run / "explain").glob("*.html"))) == 2
    widgets = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the upload app is displayed"

    # The notebook's upload app, driven as a browser would: a DICOM arrives in FileUpload.value.
    from lanic_nb.explain.config import ExplainConfig
    from lanic_nb.explain.stage import open_explainer
    from lanic_nb.explain.widgets import UploadApp

    app = UploadApp(open_explainer(run, ExplainConfig(device="cpu")))
    content = real("RG1_J2KI.dcm").read_bytes()
    app.upload.value = ({"name": "RG1_J2KI.dcm", "type": "application/dicom", "size": len(content),
                         "content": memoryview(content), "last_modified": datetime.datetime.now()},)
    assert "explained" in app.status.value and app.view.image_select.label == "RG1_J2KI"
    assert app.view.waterfall.value[:4] == b"\x89PNG" and "Pushing" in app.view.text.value
