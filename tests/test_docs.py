"""The documentation: docs/settings.md is current with the code, and `make docs` (mkdocs with the API reference
from the docstrings) builds offline without a warning."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lanic_nb.embed.encoders import PHANTOM_ENCODER_DIR
from lanic_nb.report import main, settings_markdown, suite_markdown, update_block

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


def _suite_record(folder: Path) -> Path:
    rows = [{"config": "marker", "shortcuts": "portable_marker -> Edema", "recovery": 0.86, "recovery_of_ceiling": 0.95,
             "names_top1": 0.9, "names_category": 1.0, "n_shortcuts": 1, "found": 1, "named": 1, "ranked_first": 0,
             "ranks": "2", "true_ranks": "3", "false_alarms": 0, "population_flags": 2, "minutes": 8.0},
            {"config": "none", "shortcuts": "none", "recovery": 0.8, "recovery_of_ceiling": 0.9, "names_top1": 0.8,
             "names_category": 0.9, "n_shortcuts": 0, "found": 0, "named": 0, "ranked_first": 0, "ranks": "",
             "false_alarms": 1, "population_flags": 0, "minutes": 7.0},
            {"config": "worst", "shortcuts": "", "recovery": 0.8, "recovery_of_ceiling": 0.9, "names_top1": 0.8,
             "names_category": 0.9, "n_shortcuts": 1, "found": 1.0, "named": 1.0, "ranked_first": 0.0, "ranks": "",
             "false_alarms": 1, "population_flags": 2, "minutes": None}]
    path = folder / "suite.json"
    path.write_text(json.dumps({"machine": "machine: test", "rows": rows}))
    return path


def test_the_suite_table_comes_from_its_record(tmp_path):
    table = suite_markdown(_suite_record(tmp_path)).splitlines()
    assert table[0].startswith("| configuration | planted shortcuts | recovery")
    marker = "| marker | portable_marker -> Edema | 0.86 | 0.95 | 0.90 | 1.00 | 1/1 | 1/1 | 0/1 | 2 | 3 | 0 | 2 |"
    assert marker in table
    assert "| none | none | 0.80 | 0.90 | 0.80 | 0.90 | - | - | - |  |  | 1 | 0 |" in table
    assert table[-1] == "machine: test; the configurations' stages took 15 min in all"


def test_the_language_gap_block_shows_both_encoders_cards_and_both_suites(tmp_path):
    """`make results` with --suite-gap: README gets the shipped encoder's card and the language-gap encoder's, then
    the two suites side by side (shipped → gap per cell); docs/benchmarks.md gets the gap suite's full table."""
    card = json.loads((PHANTOM_ENCODER_DIR / "card.json").read_text())
    ev = card["evaluation"]
    ev["probe_auroc"] = {c: 0.5 + i / 100 for i, c in enumerate(ev["probe_auroc"])}  # concept 0 weakest
    ev["probe_at_target"], ev["zeroshot_auroc_mean"] = 3, 0.612
    ev["zeroshot_auroc"] = dict.fromkeys(ev["zeroshot_auroc"], 0.612)
    gap = tmp_path / "card.json"
    gap.write_text(json.dumps(card))
    (tmp_path / "shipped").mkdir()
    (tmp_path / "gap").mkdir()
    shipped_suite = _suite_record(tmp_path / "shipped")
    record = json.loads(shipped_suite.read_text())
    record["machine"], record["rows"][0]["named"], record["rows"][0]["names_top1"] = "machine: gap", 0, 0.5
    gap_suite = tmp_path / "gap" / "suite.json"
    gap_suite.write_text(json.dumps(record))
    readme, bench = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text("a\n<!-- BEGIN generated: suite -->\n<!-- END generated: suite -->\n"
                      "<!-- BEGIN generated: suite-gap -->\nnot yet\n<!-- END generated: suite-gap -->\nb\n")
    bench.write_text("".join(f"<!-- BEGIN generated: {n} -->\n<!-- END generated: {n} -->\n" for n in
                             ("suite", "suite-gap")))
    args = ["--suite", str(shipped_suite), "--suite-gap", str(gap_suite), "--gap-card", str(gap), "--readme",
            str(readme), "--docs", str(tmp_path)]
    assert main(args) == 0
    text = readme.read_text(encoding="utf-8")
    assert "not yet" not in text and text.startswith("a\n") and text.endswith("\nb\n")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "21 of 23" in rows["| shipped"] and "(0.996)" in rows["| shipped"]
    first = next(iter(card["evaluation"]["probe_auroc"]))
    assert f"3 of 23 (>= 0.95) | {first} 0.50," in rows["| language gap"]
    assert "0.612 / 0.612 / 0.612 / 0.612 / 0.612 (0.612)" in rows["| language gap"]
    cells = "0.86 → 0.86 | 0.90 → 0.50 | 1.00 → 1.00 | 1/1 → 1/1 | 1/1 → 0/1 | 0/1 → 0/1 | 0 → 0"
    assert rows["| marker"] == f"| marker | {cells} |"  # shipped → language gap in every cell
    assert "shipped: machine: test" in text and "language gap: machine: gap" in text
    docs = bench.read_text()
    assert "| marker | portable_marker -> Edema | 0.86 | 0.95 | 0.50 | 1.00 | 1/1 | 0/1 | 0/1 |" in docs
    with pytest.raises(SystemExit):  # a gap suite alone has nothing to compare with
        main(["--suite-gap", str(gap_suite), "--readme", str(readme), "--docs", str(tmp_path)])


def test_the_docs_site_builds_offline(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is missing from the environment: `make test` installs it (the dev extra)")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "api" / "transcoder.html").read_text()
    assert "TranscoderConfig" in api and "train_ensemble" in api
    assert (tmp_path / "site" / "settings.html").exists() and (tmp_path / "site" / "decisions.html").exists()
