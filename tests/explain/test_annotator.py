"""The multimodal annotator on a tiny, randomly initialised local model: prompt, offline loading, plumbing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import make_tiny_run, tiny_vlm
from PIL import Image

from lanic_nb.explain.annotator import (
    AnnotatorUnavailable,
    HFAnnotator,
    HFPatternNamer,
    VisionLanguageModel,
    VLMConfig,
    annotation_prompt,
)
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.pipeline import Explainer
from lanic_nb.explain.stage import explain_paths, open_explainer
from lanic_nb.explain.text import Annotator, PatternEvidence, explain_prediction
from lanic_nb.io import read_json
from lanic_nb.run_notebooks import list_notebooks
from lanic_nb.settings import PARAMS_DIR, stage_config

EVIDENCE = [PatternEvidence(3, 1.25, "pleural", ("blunted costophrenic angle", "meniscus")),
            PatternEvidence(7, -0.5, "device", ("portable marker",))]


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    return tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def vlm(vlm_folder) -> VisionLanguageModel:
    return VisionLanguageModel(VLMConfig(model=str(vlm_folder), device="cpu", max_new_tokens=6))


def film(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 52), dtype=np.uint8)).save(path)
    return path


def test_prompt_states_the_prediction_and_the_named_patterns():
    prompt = annotation_prompt("Pleural Effusion", 0.87, EVIDENCE)
    assert "probability of 0.87 for Pleural Effusion (likely present)" in prompt
    assert "- pattern 3 (pleural: blunted costophrenic angle, meniscus) +1.25" in prompt
    assert "- pattern 7 (device: portable marker) -0.50" in prompt
    assert "Do not give a diagnosis" in prompt
    assert "no pattern is active" in annotation_prompt("Edema", 0.1, [])


def test_annotator_output_lands_in_the_explanation(vlm, tmp_path):
    annotator = HFAnnotator(vlm)
    assert isinstance(annotator, Annotator)
    image = film(tmp_path / "x.png")
    template = explain_prediction("Pleural Effusion", 0.87, EVIDENCE, total_abs=2.0)
    text = explain_prediction("Pleural Effusion", 0.87, EVIDENCE, total_abs=2.0, annotator=annotator,
                              image_path=image)
    assert annotator.last_prompt == annotation_prompt("Pleural Effusion", 0.87, EVIDENCE)
    assert annotator.last_output and len(annotator.last_output) <= 6 * 4  # 6 new tokens of at most a few bytes
    assert text.startswith(template + " The multimodal model (")
    assert text.endswith(annotator.last_output)
    again = explain_prediction("Pleural Effusion", 0.87, EVIDENCE, total_abs=2.0, annotator=annotator,
                               image_path=image)
    assert again == text, "greedy decoding: the same answer every time"


def test_pattern_namer_sees_several_images(vlm):
    images = [np.random.default_rng(i).random((40, 36)) for i in range(3)]
    name = HFPatternNamer(vlm, max_words=3).name(images, "pleural", ("fluid",))
    assert "These 3 chest radiographs" in vlm.last_prompt and "pleural; fluid" in vlm.last_prompt
    assert len(name.split()) <= 3


def test_a_missing_model_fails_at_once_offline():
    t0 = time.perf_counter()
    with pytest.raises(AnnotatorUnavailable, match="huggingface-cli download"):
        VisionLanguageModel(VLMConfig(model="nobody-lanic/no-such-vlm", device="cpu"))
    assert time.perf_counter() - t0 < 30  # no network retries (generous bound for a loaded machine)
    with pytest.raises(ValueError, match="dtype"):
        VLMConfig(model="x", dtype="int8")


def test_the_explainer_with_an_annotator_and_namer(vlm_folder, tmp_path_factory, tmp_path):
    run = make_tiny_run(tmp_path_factory.mktemp("tiny_annotated"))
    cfg = ExplainConfig(device="cpu", html=True, allow_patient_data=True, name_patterns=True, n_shown=2,
                        annotator=VLMConfig(model=str(vlm_folder), device="cpu", max_new_tokens=5))
    explainer = open_explainer(run, cfg)
    assert isinstance(explainer.annotator, HFAnnotator) and explainer.namer is not None
    res = explain_paths(explainer, [film(tmp_path / "x.png")], tmp_path / "out")
    (e,) = res.explanations
    assert e.ok and all(" The multimodal model (" in t for t in e.texts)
    assert e.texts[-1].endswith(explainer.annotator.last_output)
    assert e.pattern_names, "the namer named the shown patterns"
    doc = read_json(tmp_path / "out" / "x.json")
    assert all("The multimodal model" in d["explanation"] for d in doc["findings"].values())
    assert any("model_name" in p for d in doc["findings"].values() for p in d["top_patterns"])
    assert "Named by the annotator model" in (tmp_path / "out" / "x.html").read_text()
    plain = Explainer(explainer.run, dataclasses.replace(cfg, annotator=VLMConfig(), name_patterns=False))
    assert "multimodal" not in plain.explain_file(tmp_path / "x.png").texts[0]


def test_the_annotator_is_off_in_every_notebook():
    assert ExplainConfig().annotator.model == "" and not ExplainConfig().name_patterns
    for params in PARAMS_DIR.glob("*.yaml"):
        assert not stage_config("10_explain", params).annotator.model, f"{params.name} turns the annotator on"
    for nb in list_notebooks():
        for cell in nbformat.read(nb, as_version=4).cells:
            if "parameters" in cell.metadata.get("tags", []):
                ns: dict = {}
                exec(cell.source, ns)
                assert ns["settings"] == {}, f"{nb.name}: the notebook's own settings must be empty by default"
