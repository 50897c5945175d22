"""Calibration: the expected calibration error, Platt and temperature scaling, the "auto" choice, and what the
classifier stage records."""

from __future__ import annotations

import numpy as np
import pytest

from lanic_nb.classify.calibrate import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    load_calibration,
    reliability_table,
)
from lanic_nb.metrics import auroc


def synthetic(n: int, scale: float, seed: int = 0):
    """Labels and logits whose true log-odds are ``logit / scale`` (scale > 1: an overconfident head)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 2, (n, 3))
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-true))).astype(float)
    return true * scale, y


def test_ece_of_a_known_case():
    p = np.array([[0.1], [0.1], [0.9], [0.9]])
    y = np.array([[0.0], [1.0], [1.0], [1.0]])
    # two bins: {0.1, 0.1} with half positive (gap 0.4), {0.9, 0.9} all positive (gap 0.1)
    assert expected_calibration_error(p, y, n_bins=10)[0] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert np.isnan(expected_calibration_error(p, np.full_like(y, np.nan))[0])  # no certain label


def test_scaling_an_overconfident_head_lowers_held_out_ece_and_keeps_the_ranking():
    logits, y = synthetic(6000, scale=3.0)
    fit, test = slice(0, 3000), slice(3000, None)
    raw = 1 / (1 + np.exp(-logits[test]))
    for method in ("temperature", "platt", "auto"):
        cal = fit_calibration(logits[fit], y[fit], method)
        after = cal.probabilities(logits[test])
        assert (expected_calibration_error(after, y[test]) < 0.5 * expected_calibration_error(raw, y[test])).all()
        assert auroc(y[test, 0], after[:, 0]) == pytest.approx(auroc(y[test, 0], raw[:, 0]))
    cal = fit_calibration(logits[fit], y[fit], "temperature")
    assert cal.a == pytest.approx([1 / 3] * 3, rel=0.15) and cal.b == [0.0] * 3
    assert set(fit_calibration(logits[fit], y[fit], "auto").chosen) <= {"temperature", "platt"}


def test_auto_keeps_the_raw_sigmoid_of_a_calibrated_head():
    logits, y = synthetic(3000, scale=1.0)
    cal = fit_calibration(logits, y, "auto")
    assert cal.chosen == ["none"] * 3 and cal.a == [1.0] * 3
    one_class = fit_calibration(logits[:, :1], np.zeros((3000, 1)), "platt")
    assert one_class.chosen == ["none"]


def test_save_and_load_mirror_and_a_missing_file_is_the_identity(tmp_path):
    cal = Calibration("platt", [0.5, 2.0], [0.1, -0.2], ["platt", "platt"])
    cal.save(tmp_path)
    assert load_calibration(tmp_path) == cal
    assert load_calibration(tmp_path / "none").probabilities([[0.0]])[0, 0] == 0.5
    with pytest.raises(ValueError, match="method"):
        fit_calibration(np.zeros((4, 1)), np.zeros((4, 1)), "isotonic")


def test_reliability_table_counts_every_certain_label():
    logits, y = synthetic(500, 1.0)
    y[:10, 0] = np.nan
    t = reliability_table(1 / (1 + np.exp(-logits)), y)
    assert t[t.finding == "Atelectasis"].n.sum() == 490 and t.frac_pos.between(0, 1).all()


@pytest.mark.notebook
def test_the_classifier_stage_records_ece_before_and_after(small_run):
    from lanic_nb.rundir import RunDir, load_metrics

    run = small_run.until("02")
    m = load_metrics(run, "02_classifier")
    assert set(m["ece_before"]) == set(m["ece_after"]) == set(m["calibration"]) and len(m["calibration"]) == 5
    for f, before in m["ece_before"].items():
        assert m["ece_after"][f] <= before + 1e-12, f"{f}: calibration made the test split worse"
    assert load_calibration(RunDir(run).classifier).chosen == list(m["calibration"].values())
    assert (RunDir(run).classifier / "reliability.csv").exists()
