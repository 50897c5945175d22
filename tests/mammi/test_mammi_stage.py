"""The MAMMI stage: run_mammi called directly on a small run, its config, and notebook 08."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lanic_nb.artifacts import load_stage_inputs
from lanic_nb.concepts.vocabulary import match_concept
from lanic_nb.evaluation import ground_truth_matrix, load_ground_truth
from lanic_nb.io import read_table
from lanic_nb.mammi.annotate import METHODS
from lanic_nb.mammi.cnn import load_images
from lanic_nb.mammi.stage import UNIT_SETS, MammiConfig, run_mammi
from lanic_nb.mammi.views import ceiling_table, plot_methods
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import auroc, auroc_matrix
from lanic_nb.rundir import RunDir, load_metrics
from lanic_nb.settings import nest, stage_config


def test_config_takes_a_yaml_list_for_the_cnn_channels_and_keeps_a_tuple():
    cfg = stage_config("08_mammi", None, {"cnn": {"channels": [4, 8]}})
    assert cfg.cnn.channels == (4, 8) and MammiConfig().cnn.channels == (16, 32, 64, 64, 64)


def test_config_errors_name_the_setting():
    for path, bad in (("cnn.image_size", 0), ("cnn.channels", []), ("cnn.epochs", 0), ("cnn.lr", 0.0), ("k_top", 0),
                      ("annotation.beta", 1.5), ("concepts.max_mined", -1), ("evaluation.monosemantic_at", 0.2)):
        with pytest.raises(ValueError, match=path.split(".")[-1]):
            stage_config("08_mammi", None, nest(path, bad))


@pytest.fixture(scope="module")
def mammi_run(small_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mammi") / "run"
    shutil.copytree(small_run.until("04"), run, ignore=shutil.ignore_patterns("mammi"))
    return run


@pytest.fixture(scope="module")
def mammi_result(mammi_run):
    return run_mammi(mammi_run, stage_config("08_mammi", "small"))


@pytest.mark.notebook
def test_run_mammi_writes_the_neuron_table_and_metrics(mammi_run, mammi_result):
    r, rd = mammi_result, RunDir(mammi_run)
    inp = load_stage_inputs(mammi_run)
    n_units = {"cnn last conv": 8, "classifier hidden": inp.classifier.cfg.hidden,
               "transcoder patterns": load_metrics(mammi_run, "04_patterns")["n_patterns"]}
    neurons = read_table(rd.stage("mammi") / "neurons.parquet")
    assert neurons.groupby("unit_set", sort=False).size().to_dict() == n_units
    assert list(r.neurons.columns) == list(neurons.columns)
    m = load_metrics(mammi_run, "08_mammi")
    flat = {k: v for k, v in r.metrics.items() if not isinstance(v, dict)}
    assert m["n_units"] == n_units and m["vlm_ceiling"] == r.metrics["vlm_ceiling"]
    assert {k: m[k] for k in flat} == pytest.approx(flat)
    assert set(m) == {"cnn_auroc", "n_units", "vlm_ceiling_mean", "vlm_ceiling"} | {
        f"{k}_{s.replace(' ', '_')}" for s in UNIT_SETS for k in (
            "n_units", "n_monosemantic", "mean_best_auroc",
            *(f"{meth}_{x}" for meth in METHODS for x in ("assigned_auroc", "top1_accuracy")))}

    # The CNN's AUROC, recomputed from its logits on the test split.
    images, ok = load_images(inp.manifest, rd.data, r.cnn.cfg.image_size)
    test = (inp.manifest["split"].to_numpy() == "test") & ok
    labels = inp.manifest[list(FINDINGS)].to_numpy(np.float32)[test]
    with torch.no_grad():
        logits = r.cnn(images[test].unsqueeze(1)).numpy()
    per_finding = [auroc(labels[keep, j] == 1, logits[keep, j]) for j in range(len(FINDINGS))
                   if (keep := np.isin(labels[:, j], (0, 1))).any() and len(set(labels[keep, j])) == 2]
    assert per_finding and m["cnn_auroc"] == pytest.approx(float(np.mean(per_finding)))

    # The patterns' monosemanticity is the same figure stage 04 measured (same units, images and truth).
    assert m["mean_best_auroc_transcoder_patterns"] == pytest.approx(
        load_metrics(mammi_run, "04_patterns")["mean_best_auroc"])
    presence = ground_truth_matrix(load_ground_truth(mammi_run), inp.image_ids)
    planted_names = {match_concept(c, r.concepts.vocab) for c in presence.columns}
    for unit_set in UNIT_SETS:
        best = np.nan_to_num(auroc_matrix(r.activations[unit_set], presence.to_numpy()), nan=0.0).max(axis=1)
        key = unit_set.replace(" ", "_")
        assert m[f"mean_best_auroc_{key}"] == pytest.approx(float(best.mean()))
        rows = neurons[neurons["unit_set"] == unit_set]
        for method in METHODS:
            assert m[f"{method}_assigned_auroc_{key}"] == pytest.approx(float(rows[f"{method}_auroc"].mean()))
            # A unit named with no planted concept gets chance, never some AUROC by accident.
            off = ~rows[f"{method}_concept"].isin(planted_names)
            assert (rows.loc[off, f"{method}_auroc"] == 0.5).all()

    summary = pd.read_csv(rd.stage("mammi") / "summary.csv")
    assert list(summary["unit_set"]) == list(UNIT_SETS)
    ceiling = pd.read_csv(rd.stage("mammi") / "vlm_ceiling.csv")
    assert len(ceiling) == 23 and set(ceiling["planted"]) == set(m["vlm_ceiling"])
    assert m["vlm_ceiling_mean"] == pytest.approx(ceiling["zero_shot_auroc"].mean())
    # The ceiling is the similarity's AUROC for each planted concept's own vocabulary column.
    row = ceiling.set_index("planted").loc["collimation"]
    col = int(np.flatnonzero(r.concepts.vocab["concept"] == row["concept"])[0])
    assert row["zero_shot_auroc"] == pytest.approx(auroc(presence["collimation"].to_numpy(),
                                                         r.concepts.similarity[:, col]))
    assert ceiling_table(r.ceiling)["zero_shot_auroc"].is_monotonic_decreasing
    assert len(plot_methods(r.summary).axes) == 2


@pytest.mark.notebook
def test_notebook_writes_the_neuron_table(small_run):
    run = small_run.until("08")
    table = read_table(RunDir(run).stage("mammi") / "neurons.parquet")
    assert {"mammi_concept", "clip_dissect_concept", "topk_mean_concept", "unit_set"} <= set(table.columns)
    assert set(table.unit_set) == set(UNIT_SETS)
    m = load_metrics(run, "08_mammi")
    assert m["n_units"]["cnn last conv"] == 8  # small mode: cnn_channels [4, 8]
    summary = pd.read_csv(RunDir(run).stage("mammi") / "summary.csv").set_index("unit_set")
    for unit_set in UNIT_SETS:
        assert m[f"mean_best_auroc_{unit_set.replace(' ', '_')}"] == pytest.approx(
            summary.loc[unit_set, "mean_best_auroc"])
