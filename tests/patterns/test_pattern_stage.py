"""The pattern stage: run_patterns called directly on a small run, its config, and notebook 04."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from lanic_nb.artifacts import load_stage_inputs
from lanic_nb.concepts.annotate import AnnotationConfig
from lanic_nb.concepts.vocabulary import CATEGORIES
from lanic_nb.evaluation import ground_truth_matrix, load_ground_truth
from lanic_nb.io import read_table
from lanic_nb.metrics import auroc_matrix
from lanic_nb.patterns.merge import MergeConfig, PatternSet
from lanic_nb.patterns.stage import PatternsConfig, run_patterns
from lanic_nb.patterns.units import pattern_activations
from lanic_nb.patterns.views import (
    best_detectors,
    category_table,
    plot_consistency,
    plot_names,
    recovery_table,
)
from lanic_nb.rundir import RunDir, load_metrics
from lanic_nb.settings import nest, stage_config

METRIC_KEYS = {
    "n_patterns", "n_alive_latents", "mean_consistency", "n_concepts", "n_mined", "report_lift",
    "report_lift_single_transcoder", "report_lift_embedding_dims",
}
TRUTH_KEYS = {
    f"{k}{s}" for s in ("", "_single_transcoder", "_embedding_dims")
    for k in ("recovery", "category_accuracy", "concept_accuracy", "category_accuracy_best", "category_agreement",
              "mean_best_auroc", "n_monosemantic", "n_gallery_pure", "category_accuracy_gallery",
              "concept_accuracy_gallery")
} | {"probe_ceiling_embedding", "probe_ceiling_hidden", "recovery_of_hidden_ceiling"}


def test_config_holds_the_library_configs_it_uses():
    cfg = PatternsConfig()
    assert cfg.merge == MergeConfig() and cfg.annotation == AnnotationConfig()


def test_config_errors_name_the_setting():
    for path, bad in (("merge.sim_threshold", 1.5), ("merge.min_consistency", -0.1), ("merge.act_threshold", -0.2),
                      ("k_top", 0), ("act_rows", 0), ("annotation.beta", 0.0), ("annotation.min_images", 0),
                      ("concepts.max_mined", -1), ("evaluation.recover_at", 1.2)):
        with pytest.raises(ValueError, match=path.split(".")[-1]):
            stage_config("04_patterns", None, nest(path, bad))


@pytest.fixture(scope="module")
def pattern_run(small_run, tmp_path_factory) -> Path:
    """A copy of the small run up to stage 03, so run_patterns writes beside nobody else's artifacts."""
    run = tmp_path_factory.mktemp("patterns") / "run"
    shutil.copytree(small_run.until("03"), run)
    shutil.rmtree(run / "patterns", ignore_errors=True)
    return run


@pytest.fixture(scope="module")
def patterns_result(pattern_run):
    return run_patterns(pattern_run, stage_config("04_patterns", "small"))


@pytest.mark.notebook
def test_run_patterns_writes_the_merge_and_the_pattern_table(pattern_run, patterns_result):
    r, rd = patterns_result, RunDir(pattern_run)
    ps = PatternSet.load(rd.patterns)
    assert torch.equal(ps.latent_pattern, r.patterns.latent_pattern) and ps.n_patterns > 0
    assert ps.config == stage_config("04_patterns", "small").merge
    # Exactly one latent per member in a pattern, and consistency = members holding it / members.
    for p in range(ps.n_patterns):
        members = [m for m, _ in ps.members_of(p)]
        assert len(members) == len(set(members)) == int(ps.n_latents[p])
    assert torch.allclose(ps.consistency * ps.n_members, ps.n_latents.float())
    assert (ps.consistency >= ps.config.min_consistency - 1e-6).all()

    table = read_table(rd.patterns / "patterns.parquet")
    assert list(table["pattern_id"]) == list(range(ps.n_patterns))
    assert np.allclose(table["consistency"], ps.consistency.numpy())
    assert set(table["category"].fillna("")) <= set(CATEGORIES) | {""}
    # The stored activations are the patterns' activations on the run's images, and the top images follow them.
    inp = load_stage_inputs(pattern_run)
    act = pattern_activations(inp.ensemble, ps, inp.x).numpy()
    assert np.allclose(r.activations, act, atol=1e-6)
    p = int(np.argmax(act.max(axis=0)))
    assert table.loc[p, "top_images"][0] == inp.image_ids[int(np.argmax(act[:, p]))]
    assert table.loc[p, "firing_freq"] == pytest.approx(float((act[:, p] > 0).mean()))
    assert set(category_table(table)["patterns"].index) <= set(CATEGORIES) | {""}
    assert category_table(table)["patterns"].sum() == ps.n_patterns


@pytest.mark.notebook
def test_run_patterns_metrics_match_its_tables(pattern_run, patterns_result):
    r, rd = patterns_result, RunDir(pattern_run)
    m = load_metrics(pattern_run, "04_patterns")
    assert set(m) == METRIC_KEYS | TRUTH_KEYS and m == pytest.approx(r.metrics)
    assert m["n_patterns"] == r.patterns.n_patterns and m["n_alive_latents"] == r.n_alive < r.n_latents
    assert m["mean_consistency"] == pytest.approx(float(r.patterns.consistency.mean()))
    assert m["n_concepts"] == len(r.concepts.vocab) >= 150 and m["n_mined"] == int(r.concepts.vocab["mined"].sum()) > 0
    assert m["report_lift"] == pytest.approx(float(r.purity["ensemble patterns"]["lift"].mean()))
    assert list(r.purity_summary["units"]) == ["ensemble patterns", "single transcoder", "embedding dims"]

    ev = pd.read_csv(rd.patterns / "evaluation.csv").set_index("units")
    assert list(ev.index) == ["ensemble patterns", "single transcoder", "embedding dims"]
    inp = load_stage_inputs(pattern_run)
    ens = inp.ensemble.cfg
    assert ev.loc["ensemble patterns", "n_units"] == r.patterns.n_patterns
    assert ev.loc["single transcoder", "n_units"] == ens.d_dict and ev.loc["embedding dims", "n_units"] == 2 * ens.d_in
    for suffix, units in (("", "ensemble patterns"), ("_single_transcoder", "single transcoder")):
        assert m["recovery" + suffix] == pytest.approx(ev.loc[units, "recovery"])
    # mean_best_auroc recomputed from the activations and the truth, independently of the stage.
    presence = ground_truth_matrix(load_ground_truth(pattern_run), inp.image_ids)
    best = np.nan_to_num(auroc_matrix(r.activations, presence.to_numpy()), nan=0.0).max(axis=1)
    assert m["mean_best_auroc"] == pytest.approx(float(best.mean())) and m["mean_best_auroc"] > 0.6
    assert np.allclose(r.per_unit["ensemble patterns"]["best_auroc"], best)

    by = pd.read_csv(rd.patterns / "recovery_by_concept.csv").set_index("concept")
    assert len(by) == 23 and by["recovered"].mean() == pytest.approx(m["recovery"])
    assert (by["recovered"] == (by["best_ensemble_patterns"] >= 0.95)).all()
    assert by["probe_embedding"].ge(0.95).mean() == pytest.approx(m["probe_ceiling_embedding"])
    assert by["probe_classifier_hidden"].ge(0.95).mean() == pytest.approx(m["probe_ceiling_hidden"])
    # Collimation (bright unexposed borders) is the phantom's coarsest concept: even the tiny test CLIP carries it.
    assert by.loc["collimation", "probe_embedding"] > 0.95 and by.loc["collimation", "in_reach"]
    # Best-carried first; a concept too rare in the small test split to probe (NaN) goes last.
    assert np.allclose(recovery_table(r.by_concept)["probe_embedding"],
                       by["probe_embedding"].sort_values(ascending=False), equal_nan=True)
    top = best_detectors(r.per_unit, r.table, n=5)
    assert len(top) == 5 and top["best_auroc"].is_monotonic_decreasing
    assert top["best_auroc"].iloc[0] == pytest.approx(best.max())
    fig = plot_consistency(r.patterns)
    assert sum(p.get_height() for p in fig.axes[0].patches) == r.patterns.n_patterns
    # The names figure: one bar segment per (concept, verdict), adding up to the monosemantic patterns, the
    # "name right" ones to concept_accuracy of them.
    bars = plot_names(r.per_unit).axes[0].containers
    assert len(bars) == 3 and sum(p.get_width() for c in bars for p in c) == m["n_monosemantic"]
    assert sum(p.get_width() for p in bars[0]) == pytest.approx(m["concept_accuracy"] * m["n_monosemantic"])


@pytest.mark.notebook
def test_run_patterns_without_planted_truth_names_patterns_and_writes_no_evaluation(pattern_run, tmp_path):
    """Real data has no ground truth: the stage still merges and names, and writes no evaluation tables."""
    run = tmp_path / "real"
    shutil.copytree(pattern_run, run, ignore=shutil.ignore_patterns("patterns", "metrics"))
    (RunDir(run).ground_truth).unlink()
    r = run_patterns(run, stage_config("04_patterns", "small"))
    assert r.evaluation.empty and r.by_concept.empty and r.per_unit == {}
    assert not plot_names(r.per_unit).axes[0].patches  # a note, no bars
    assert not (RunDir(run).patterns / "evaluation.csv").exists()
    assert not (RunDir(run).patterns / "recovery_by_concept.csv").exists()
    assert set(load_metrics(run, "04_patterns")) == METRIC_KEYS
    assert (RunDir(run).patterns / "patterns.parquet").exists() and r.table["concept_1"].notna().all()


@pytest.mark.notebook
def test_notebook_04_patterns(small_run):
    run = small_run.until("04")
    m = load_metrics(run, "04_patterns")
    rd = RunDir(run)
    ps = PatternSet.load(rd.patterns)
    assert set(m) == METRIC_KEYS | TRUTH_KEYS and m["n_patterns"] == ps.n_patterns > 0
    table = read_table(rd.patterns / "patterns.parquet")
    assert list(table["pattern_id"]) == list(range(ps.n_patterns))
    ev = pd.read_csv(rd.patterns / "evaluation.csv").set_index("units")
    assert ev.loc["ensemble patterns", "recovery"] == pytest.approx(m["recovery"])
    executed = nbformat.read(rd.stage("notebooks") / "04_patterns.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 1  # the consistency histogram is shown
