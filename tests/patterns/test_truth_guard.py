"""The planted truth is evaluation-only: training stages run with it poisoned, and the pattern stage names
its patterns (merge, activations, statistics, concept space, annotation) without ever opening it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TRAINING_STAGES, poisoned_ground_truth

import lanic_nb.evaluation as evaluation
from lanic_nb.artifacts import load_stage_inputs
from lanic_nb.concepts.annotate import annotate_units
from lanic_nb.concepts.reports import mention_matrix, report_purity, top_sentences
from lanic_nb.concepts.space import concept_space
from lanic_nb.evaluation import load_ground_truth
from lanic_nb.io import write_table
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.patterns.units import latent_alive, latent_codes, pattern_activations, pattern_stats
from lanic_nb.rundir import RunDir


def test_poisoned_truth_fails_any_read_and_is_restored(tmp_path):
    gt = pd.DataFrame({"image_id": ["a"], "concept": ["pacemaker"], "category": ["device"], "present": [True],
                       "side": [""], "severity": [1.0]})
    write_table(RunDir(tmp_path).ground_truth, gt)
    with poisoned_ground_truth(tmp_path):
        assert RunDir(tmp_path).ground_truth.exists()  # an exists() check does not dodge the guard
        with pytest.raises(Exception):  # noqa: B017 - pyarrow raises its own error type
            load_ground_truth(tmp_path)
        with pytest.raises(Exception):  # noqa: B017
            pd.read_parquet(RunDir(tmp_path).ground_truth)
    pd.testing.assert_frame_equal(load_ground_truth(tmp_path), gt)


@pytest.mark.notebook
def test_training_notebooks_ran_with_the_truth_poisoned(small_run):
    """small_run runs 01-03 (embedding, classifier, transcoders) with ground_truth.parquet unreadable; had
    any of them read it, until("03") would have raised. Afterwards the truth is back for evaluation."""
    run = small_run.until("03")
    assert {s[:2] for s in small_run.done} >= set(TRAINING_STAGES)
    assert len(load_ground_truth(run)) > 0


@pytest.mark.notebook
def test_pattern_stage_before_evaluation_never_reads_the_truth(small_run, monkeypatch):
    """Everything run_patterns computes before its evaluation runs with every parquet read of the truth raising."""
    run = small_run.until("03")
    truth = RunDir(run).ground_truth.resolve()

    def guard(fn):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, str | Path) and Path(path).resolve() == truth:
                raise AssertionError(f"the pattern stage opened the ground truth: {path}")
            return fn(path, *args, **kwargs)

        return wrapped

    def forbidden(*args, **kwargs):
        raise AssertionError("load_ground_truth called outside evaluation")

    monkeypatch.setattr(evaluation, "load_ground_truth", forbidden)
    monkeypatch.setattr(pd, "read_parquet", guard(pd.read_parquet))
    monkeypatch.setattr(pq, "read_table", guard(pq.read_table))
    inp = load_stage_inputs(run)
    alive = latent_alive(inp.ensemble, inp.x)
    codes = latent_codes(inp.ensemble, inp.x, n_rows=64)
    ps = merge_latents(inp.ensemble.W_dec, MergeConfig(sim_threshold=0.5), alive=alive, codes=codes)
    act = pattern_activations(inp.ensemble, ps, inp.x).numpy()
    pattern_stats(act, inp.image_ids)
    space = concept_space(inp.store, inp.manifest, inp.x, mine_min_count=2, max_mined=20)
    ann = annotate_units(act, space.similarity, space.vocab)
    assert len(ann) == ps.n_patterns and space.similarity.shape == (len(inp.x), len(space.vocab))
    sent = pattern_activations(inp.ensemble, ps, torch.from_numpy(np.array(inp.store.sentence, dtype=np.float32)))
    top_sentences(sent.numpy(), inp.store.sentences["text"].astype(str).tolist())
    report_purity(act, mention_matrix(inp.manifest["report"].fillna("").tolist(), space.vocab))
    with pytest.raises(AssertionError, match="ground truth"):
        pd.read_parquet(truth)  # the guard itself works
