"""The out-of-distribution check: p-values against the validation films, the image sanity checks, the reference
the attribution stage writes, and what the explainer does with a film unlike the run's own."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lanic_nb.attribute.ood import OODReference, build_reference, ood_table, tail_p, unexplained_share
from lanic_nb.images import image_properties, sanity_problems

FILMS = {"min_side": 224, "max_side": 224, "aspect": [1.0, 1.0]}


def test_tail_p_is_the_conservative_share_beyond():
    ref = [1.0, 2.0, 3.0]
    assert tail_p(ref, np.array([0.5, 2.0, 3.5])).tolist() == [1.0, 0.75, 0.25]


def test_a_film_beyond_every_validation_film_is_flagged_and_others_are_not():
    ref = OODReference(alpha=0.01, distance_val=sorted(np.linspace(1, 2, 299)), unexplained_val=[0.1] * 299)
    t = ood_table(np.array([1.5, 5.0]), np.array([0.05, 0.05]), ref, [[], []])
    assert t.flagged.tolist() == [False, True] and t.p[1] == pytest.approx(2 / 300)
    insane = ood_table(np.array([1.5]), np.array([0.05]), ref, [["a colour image"]])
    assert insane.flagged[0] and np.isinf(insane.score[0]) and "colour" in insane.problems[0]


def test_the_reference_measures_mahalanobis_distance_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (4000, 4)) * [1, 1, 1, 0.01]  # the last direction barely varies
    attr = type("A", (), {})()
    attr.contributions, attr.other, attr.error = torch.ones(5, 2, 1), torch.zeros(5, 1), torch.ones(5, 1)
    ref = build_reference(train, train[:300], attr, alpha=0.01, films=FILMS)
    along_small = ref.distance(np.array([[0, 0, 0, 0.5]]))[0]
    along_large = ref.distance(np.array([[0.5, 0, 0, 0]]))[0]
    assert along_small > 10 * along_large  # far along a direction the training films do not vary in
    assert unexplained_share(attr) == pytest.approx([1 / 3] * 5)
    ref.save(tmp_path)
    back = OODReference.load(tmp_path)
    assert back.distance_val == ref.distance_val and np.allclose(back.precision, ref.precision)
    assert OODReference.load(tmp_path / "none") is None


def png(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def test_sanity_checks_name_what_is_not_a_radiograph(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224]
    film = (80 + 100 * np.exp(-((xx - 112) ** 2 + (yy - 112) ** 2) / 4000) + rng.normal(0, 3, (224, 224))).clip(0, 255)
    assert sanity_problems(image_properties(png(tmp_path / "film.png", film)), FILMS) == []
    cases = {"noise": rng.integers(0, 256, (224, 224)), "colour": rng.integers(0, 256, (224, 224, 3)),
             "blank": np.full((224, 224), 128), "small": film[::4, ::4], "size": np.kron(film, np.ones((2, 2))),
             "aspect": film[:, :80], "contrast": 100 + 10 * xx / 223}
    expect = {"noise": "noise-like", "colour": "colour", "blank": "blank", "small": "px", "size": "px",
              "aspect": "aspect", "contrast": "contrast"}
    for name, arr in cases.items():
        problems = sanity_problems(image_properties(png(tmp_path / f"{name}.png", arr)), FILMS)
        assert any(expect[name] in p for p in problems), (name, problems)
    one_bit = tmp_path / "bits.png"
    Image.fromarray(film > 120).save(one_bit)
    assert any("1-bit" in p for p in sanity_problems(image_properties(one_bit), FILMS))


@pytest.mark.notebook
def test_the_attribution_stage_writes_the_reference_and_scores(small_run):
    from lanic_nb.io import read_table
    from lanic_nb.rundir import load_metrics

    run = small_run.until("06")
    ref = OODReference.load(run / "attribution")
    scores = read_table(run / "attribution" / "ood_scores.parquet")
    assert set(scores.split) == {"val", "test"} and len(ref.distance_val) == int((scores.split == "val").sum())
    m = load_metrics(run, "06_attribution")["ood"]
    assert m["false_alarm_rate"] == pytest.approx(scores[scores.split == "test"].flagged.mean())
    assert ref.films["min_side"] == ref.films["max_side"] == 112  # small mode's films


@pytest.mark.notebook
def test_the_explainer_flags_a_noise_image_and_refuses_it_when_asked(small_run, tmp_path):
    run = small_run.until("06")
    rng = np.random.default_rng(1)
    noise = png(tmp_path / "noise.png", rng.integers(0, 256, (112, 112)))
    film = next((run / "data" / "images").glob("*.png"))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "lanic_nb.explain", "--run", str(run), str(noise), str(film), "--out",
                        str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OUTSIDE WHAT THE RUN KNOWS" in r.stdout and "noise-like" in r.stdout
    doc = json.loads((out / "noise.json").read_text())
    assert doc["status"] == "ok" and doc["ood"]["flagged"] and doc["ood"]["score"] is None
    assert not json.loads((out / f"{film.stem}.json").read_text())["ood"]["flagged"]
    assert "Outside what this run knows" in (out / "noise.html").read_text()
    assert "Outside what this run knows" not in (out / f"{film.stem}.html").read_text()
    from lanic_nb.explain.config import ExplainConfig
    from lanic_nb.explain.output import to_json
    from lanic_nb.explain.stage import open_explainer

    explainer = open_explainer(run, ExplainConfig(device="cpu", ood="refuse", html=False))
    e = explainer.explain_file(noise)
    doc = to_json(e, explainer.run, 5)
    assert e.status == "refused" and "noise-like" in doc["reason"] and "findings" not in doc and doc["ood"]["flagged"]
    assert explainer.explain_file(film).ok
    from pydicom.data import get_testdata_file

    chest_cr = get_testdata_file("RG1_UNCR.dcm", download=False)  # a real chest CR (pydicom-data, a dev extra)
    if chest_cr:
        e = explainer.explain_file(chest_cr)
        assert e.status == "refused" and "px, unlike the run's films" in e.reason
