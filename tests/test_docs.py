"""The documentation: docs/settings.md is current with the code, and `make docs` (mkdocs with the API reference
from the docstrings) builds offline without a warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lanic_nb.report import settings_markdown, suite_markdown, update_block

ROOT = Path(__file__).resolve().parents[1]


def test_the_settings_reference_is_current():
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == settings_markdown(), "docs/settings.md is stale: run `make docs` (or lanic_nb.report)"


def test_every_stage_setting_is_in_the_reference():
    text = settings_markdown()
    for needle in ("`merge.sim_threshold`", "`annotation.own_rivals`", "`transcoder.d_dict`", "`phantom.n_images`"):
        assert needle in text


def test_generated_blocks_replace_only_their_own_text(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("head\n<!-- BEGIN generated: t -->\nold\n<!-- END generated: t -->\ntail\n")
    update_block(page, "t", "new table")
    assert page.read_text() == "head\n<!-- BEGIN generated: t -->\nnew table\n<!-- END generated: t -->\ntail\n"
    with pytest.raises(ValueError, match="markers"):
        update_block(page, "other", "x")


def test_the_suite_table_comes_from_its_record(tmp_path):
    import json

    rows = [{"config": "marker", "shortcuts": "portable_marker -> Edema", "recovery": 0.86, "recovery_of_ceiling": 0.95,
             "names_top1": 0.9, "names_category": 1.0, "n_shortcuts": 1, "found": 1, "named": 1, "ranked_first": 0,
             "ranks": "2", "true_ranks": "3", "false_alarms": 0, "population_flags": 2, "minutes": 8.0},
            {"config": "none", "shortcuts": "none", "recovery": 0.8, "recovery_of_ceiling": 0.9, "names_top1": 0.8,
             "names_category": 0.9, "n_shortcuts": 0, "found": 0, "named": 0, "ranked_first": 0, "ranks": "",
             "false_alarms": 1, "population_flags": 0, "minutes": 7.0},
            {"config": "worst", "shortcuts": "", "recovery": 0.8, "recovery_of_ceiling": 0.9, "names_top1": 0.8,
             "names_category": 0.9, "n_shortcuts": 1, "found": 1.0, "named": 1.0, "ranked_first": 0.0, "ranks": "",
             "false_alarms": 1, "population_flags": 2, "minutes": None}]
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"machine": "machine: test", "rows": rows}))
    table = suite_markdown(path).splitlines()
    assert table[0].startswith("| configuration | planted shortcuts | recovery")
    marker = "| marker | portable_marker -> Edema | 0.86 | 0.95 | 0.90 | 1.00 | 1/1 | 1/1 | 0/1 | 2 | 3 | 0 | 2 |"
    assert marker in table
    assert "| none | none | 0.80 | 0.90 | 0.80 | 0.90 | - | - | - |  |  | 1 | 0 |" in table
    assert table[-1] == "machine: test; the configurations' stages took 15 min in all"


def test_the_docs_site_builds_offline(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is missing from the environment: `make test` installs it (the dev extra)")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "api" / "transcoder.html").read_text()
    assert "TranscoderConfig" in api and "train_ensemble" in api
    assert (tmp_path / "site" / "settings.html").exists() and (tmp_path / "site" / "decisions.html").exists()
