"""The benchmark suite: its configurations cover the kinds of shortcut the issue lists, scoring against planted
truth, and one configuration run end to end in small mode (then resumed with nothing to do)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lanic_nb.benchmark.__main__ import main
from lanic_nb.benchmark.configs import SUITE
from lanic_nb.benchmark.score import COLUMNS, classify_flags, population_gap, score_run, summary_rows
from lanic_nb.phantom.config import CONCEPTS
from lanic_nb.phantom.reports import OTHER
from lanic_nb.stages import stage_record


def test_the_suite_covers_every_kind_of_shortcut():
    assert len(SUITE) >= 8
    configs = {e.name: e.phantom_config() for e in SUITE}
    assert {c.population for c in configs.values()} == {"chexpert"}
    assert len({c.seed for c in configs.values()}) == len(SUITE)
    planted = {name: c.planted_shortcuts() for name, c in configs.items()}
    kinds = {name: [(CONCEPTS[concept].category, concept in OTHER, absent) for concept, _, _, absent in p]
             for name, p in planted.items()}
    flat = [k for ks in kinds.values() for k in ks]
    assert ("device", True, False) in flat  # a reported device
    assert ("artifact", False, False) in flat  # an unreported artifact
    assert any(cat == "structural" for cat, _, _ in flat)
    assert any(absent for _, _, absent in flat)  # a shortcut that follows a finding's absence
    assert any(len(p) == 2 and len({f for _, f, _, _ in p}) == 2 for p in planted.values())  # two at once
    assert any(not p for p in planted.values())  # no shortcut at all
    rare = [c for c in configs.values() if c.shortcut_base == 0.0 and c.shortcut_strength <= 0.3]
    assert rare  # a marker planted rarely


def _truth(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    eff = rng.random(n) < 0.4
    return pd.DataFrame({"pleural_effusion": eff, "central_venous_catheter": rng.random(n) < np.where(eff, 0.6, 0.2),
                         "grid_lines": rng.random(n) < 0.3, "portable_marker": rng.random(n) < 0.3})


def test_flags_are_sorted_into_shortcut_population_and_false_alarm():
    truth = _truth()
    gap, z = population_gap(truth, "central_venous_catheter", "Pleural Effusion")
    assert gap > 0.2 and z > 4
    assert abs(population_gap(truth, "grid_lines", "Pleural Effusion")[1]) < 2
    rel = pd.DataFrame({"finding": "Pleural Effusion", "pattern": [0, 1, 2, 3, 4],
                        "name": ["portable film", "central venous catheter", "grid lines", "", "pleural effusion"],
                        "flagged": [True, True, True, True, False], "reliance": 0.1})
    kinds = classify_flags(rel, truth, {("Pleural Effusion", "portable_marker")}).set_index("pattern")["kind"]
    assert kinds.to_dict() == {0: "shortcut", 1: "population", 2: "false alarm", 3: "false alarm"}


def test_summary_rows_mean_and_worst():
    table = pd.DataFrame([
        {"config": "a", "shortcuts": "x", "recovery": 0.9, "recovery_of_ceiling": 1.0, "names_top1": 0.8,
         "names_category": 1.0, "n_shortcuts": 2, "found": 2, "named": 1, "ranked_first": 1, "ranks": "1, 3",
         "true_ranks": "1, 2",
         "false_alarms": 0, "population_flags": 2},
        {"config": "b", "shortcuts": "none", "recovery": 0.7, "recovery_of_ceiling": 0.8, "names_top1": 1.0,
         "names_category": 0.9, "n_shortcuts": 0, "found": 0, "named": 0, "ranked_first": 0, "ranks": "",
         "true_ranks": "", "false_alarms": 1, "population_flags": 0}], columns=list(COLUMNS))
    mean, worst = summary_rows(table).set_index("config").loc[["mean", "worst"]].to_dict(orient="records")
    assert mean["recovery"] == pytest.approx(0.8) and worst["recovery"] == pytest.approx(0.7)
    assert worst["names_top1"] == pytest.approx(0.8) and worst["names_category"] == pytest.approx(0.9)
    # shares of the planted shortcuts, over the configurations that plant one
    assert mean["named"] == pytest.approx(0.5) and mean["found"] == pytest.approx(1.0)
    assert worst["false_alarms"] == 1 and mean["false_alarms"] == pytest.approx(0.5)


def test_one_configuration_end_to_end_and_resumed(tmp_path):
    """Small mode (the tests' sizes on the demo's settings): the table has the configuration, the mean and the worst;
    a second call finds every stage fresh and runs none."""
    out = tmp_path / "suite"
    assert main(["--out", str(out), "--params", "small", "--only", "absence"]) == 0
    table = pd.read_csv(out / "suite.csv")
    assert table["config"].tolist() == ["absence", "mean", "worst"]
    row = table.iloc[0]
    assert row["shortcuts"] == "collimation -> no Pleural Effusion" and row["n_shortcuts"] == 1
    assert 0 <= row["recovery"] <= 1 and 0 <= row["names_top1"] <= 1 and row["false_alarms"] >= 0
    assert json.loads((out / "suite.json").read_text())["machine"].startswith("machine:")
    metrics = json.loads((out / "absence" / "metrics" / "06_attribution.json").read_text())
    assert metrics["shortcuts"][0]["absent"] is True
    assert {"shortcut_rank", "concept_rank", "concept_pattern"} <= set(metrics["shortcuts"][0]["reliance"])
    row = score_run(out / "absence", counterfactual=True)
    assert row["config"] == "absence" and row["true_ranks"].isdigit()
    effects = pd.read_parquet(out / "absence" / "benchmark" / "counterfactual.parquet")
    assert set(effects["category"]) == {"device", "artifact", "structural"}
    assert effects.groupby("finding")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    _redrawn_films_embed_as_stored(out / "absence")
    records = {n: stage_record(out / "absence", n).stat().st_mtime_ns for n in ("00_data", "03_transcoders")}
    assert main(["--out", str(out), "--params", "small", "--only", "absence"]) == 0
    assert {n: stage_record(out / "absence", n).stat().st_mtime_ns for n in records} == records
    with pytest.raises(ValueError, match="unknown suite configurations"):
        main(["--out", str(out), "--only", "nothing"])


def _redrawn_films_embed_as_stored(run_dir):
    """The counterfactual's films, redrawn without a forced concept, embed exactly as stage 01 embedded their PNGs."""
    import torch

    from lanic_nb.benchmark.counterfactual import embed_films, run_phantom_config
    from lanic_nb.embed.store import EmbeddingStore
    from lanic_nb.explain.model import load_run_encoder

    store = EmbeddingStore.open(run_dir / "embed")
    encoder = load_run_encoder(run_dir.resolve(), store.header, torch.device("cpu"))
    manifest = pd.read_parquet(run_dir / "data" / "manifest.parquet")
    rows = [0, 7, 11]
    got = embed_films(encoder, run_phantom_config(run_dir), [int(i[2:]) for i in manifest["image_id"].iloc[rows]])
    np.testing.assert_allclose(got.numpy(), np.stack([store.image[r] for r in rows]), atol=1e-6)


def test_planted_effect_rank_in_the_shortcuts_direction():
    from lanic_nb.benchmark.counterfactual import planted_effect_rank

    effects = pd.DataFrame({"finding": "F", "concept": ["a", "b", "c"], "effect": [0.5, -0.8, 0.1]})
    assert planted_effect_rank(effects, "a", "F") == (0.5, 1)
    assert planted_effect_rank(effects, "b", "F") == (-0.8, 3)
    assert planted_effect_rank(effects, "b", "F", absent=True) == (-0.8, 1)


def test_a_configurations_params_freeze_the_demos_settings_and_name_the_encoder(tmp_path):
    from lanic_nb.benchmark.suite import entry_params
    from lanic_nb.settings import stage_config

    entry = SUITE[0]
    path = entry_params(tmp_path / entry.name, entry, "demo", encoder="local-dir:/elsewhere/gap")
    assert stage_config("01_embed", path).model == "local-dir:/elsewhere/gap"
    assert stage_config("01_embed", entry_params(tmp_path / "plain", entry)).model == "phantom"
    phantom = stage_config("00_data", path).phantom
    assert phantom == entry.phantom_config() and phantom.population == "chexpert"
    for name in ("03_transcoders", "04_patterns", "06_attribution"):  # every other setting is the demo's
        assert stage_config(name, path) == stage_config(name, "demo")
