"""Reruns cost what changed: a stage's fingerprint (settings, code, inputs) decides whether the runner runs it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from lanic_nb.data.stage import DataConfig
from lanic_nb.fingerprint import (
    _hash_files,
    external_inputs,
    module_closure,
    recorded_fingerprint,
    stage_fingerprint,
    stale_stages,
)
from lanic_nb.run_notebooks import run_all
from lanic_nb.settings import stage_config
from lanic_nb.stages import STAGES

UP_TO_07 = [n for n in STAGES if n[:2] <= "07"]


def test_the_code_of_a_stage_is_its_import_closure():
    closure = module_closure("lanic_nb.maps.stage")
    assert {"lanic_nb.maps.stage", "lanic_nb.maps.pages", "lanic_nb.layout", "lanic_nb.io"} <= set(closure)
    assert "lanic_nb.transcoder.train" not in closure and "lanic_nb.pathology.stage" not in closure


def test_a_changed_file_changes_the_hash(tmp_path, monkeypatch):
    monkeypatch.setattr("lanic_nb.fingerprint.PACKAGE", tmp_path)
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    before = _hash_files([f])
    f.write_text("x = 2\n")
    assert _hash_files([f]) != before


def test_a_changed_release_table_changes_the_data_stage_fingerprint(tmp_path):
    root = tmp_path / "nih"
    (root / "images_001").mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,No Finding\n")
    cfg = DataConfig(dataset="nih", data_root=str(root))
    before = stage_fingerprint(tmp_path, "00_data", cfg)
    assert stage_fingerprint(tmp_path, "00_data", cfg) == before
    assert list(external_inputs(cfg)) == ["data_root"]
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Edema\nb.png,No Finding\n")
    assert stage_fingerprint(tmp_path, "00_data", cfg) != before
    assert external_inputs(DataConfig()) == {}  # the phantom reads nothing outside the run


@pytest.fixture(scope="module")
def finished(small_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("fingerprint") / "run"
    shutil.copytree(small_run.until("07"), run, symlinks=True)
    return run


@pytest.mark.notebook
def test_a_finished_run_is_current_and_records_its_fingerprints(finished):
    for n in UP_TO_07:
        assert recorded_fingerprint(finished, n) == stage_fingerprint(finished, n, stage_config(n, "small")), n
    assert stale_stages(finished, UP_TO_07, "small") == []
    assert stale_stages(finished, UP_TO_07, "small", force=True) == UP_TO_07


@pytest.mark.notebook
def test_a_changed_setting_reruns_its_stage_and_only_what_reads_it(finished, tmp_path):
    def params(entry: dict):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"extends": "small", **entry}))
        return path

    assert stale_stages(finished, UP_TO_07, params({"05_maps": {"n_neighbors": 6}})) == ["05_maps"]
    assert stale_stages(finished, UP_TO_07, params({"04_patterns": {"k_top": 6}})) == [
        "04_patterns", "05_maps", "06_attribution", "07_gallery"]
    # The gallery shows 06's out-of-distribution scores and reliance where 06 has run (Stage.uses): a change there
    # reruns it too.
    assert stale_stages(finished, UP_TO_07, params({"06_attribution": {"ood_alpha": 0.02}})) == [
        "06_attribution", "07_gallery"]
    (finished / "notebooks" / "06_attribution.ipynb").rename(finished / "06.ipynb")  # an executed copy is gone
    try:
        assert stale_stages(finished, UP_TO_07, "small") == ["06_attribution", "07_gallery"]
    finally:
        (finished / "06.ipynb").rename(finished / "notebooks" / "06_attribution.ipynb")


@pytest.mark.notebook
def test_the_runner_skips_unchanged_stages_and_leaves_their_notebooks(finished):
    executed = {p.name: p.stat().st_mtime_ns for p in (finished / "notebooks").glob("*.ipynb")}
    records = {n: json.loads((finished / "stages" / f"{n}.json").read_text()) for n in UP_TO_07}
    assert run_all(finished, "small", [n[:2] for n in UP_TO_07], stream=False) == {}
    assert {p.name: p.stat().st_mtime_ns for p in (finished / "notebooks").glob("*.ipynb")} == executed
    assert {n: json.loads((finished / "stages" / f"{n}.json").read_text()) for n in UP_TO_07} == records
