"""Population statistics: CheXpert's confounding read from torchxrayvision's table, and a phantom's beside it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from lanic_nb.data.population import (
    RATE_COLUMNS,
    chexpert_population,
    co_occurrence,
    compare_populations,
    phantom_population,
    population_rates,
)
from lanic_nb.manifest import FINDINGS


def test_rates_match_a_plain_count():
    rng = np.random.default_rng(0)
    findings = pd.DataFrame(rng.random((500, 3)) < [0.1, 0.3, 0.5], columns=["a", "b", "c"])
    device, ap = rng.random(500) < 0.4, rng.random(500) < 0.7
    rates = population_rates(findings, device, ap)
    for f in findings:
        has = list(findings[f])
        n_has = sum(has)
        with_device = sum(1 for h, d in zip(has, device, strict=True) if h and d)
        without_ap = sum(1 for h, a in zip(has, ap, strict=True) if not h and a)
        assert rates.loc[f, "prevalence"] == pytest.approx(n_has / 500)
        assert rates.loc[f, "device_given_finding"] == pytest.approx(with_device / n_has)
        assert rates.loc[f, "ap_given_none"] == pytest.approx(without_ap / (500 - n_has))
    co = co_occurrence(findings)
    assert co.loc["a", "b"] == pytest.approx(float((findings.a & findings.b).mean()))
    assert np.allclose(np.diag(co), rates["prevalence"])
    with pytest.raises(ValueError, match="500 films of findings, 3 of devices"):
        population_rates(findings, device[:3], ap)


def test_phantom_population_reads_the_truth_and_the_view():
    ids = ["a", "b", "c", "d"]
    present = {  # per image: the concepts present
        "a": {"pleural_effusion", "endotracheal_tube"}, "b": {"edema"}, "c": set(), "d": {"pleural_effusion"}}
    concepts = {**{f.lower().replace(" ", "_"): "finding" for f in FINDINGS}, "endotracheal_tube": "device",
                "grid_lines": "artifact"}
    truth = pd.DataFrame([{"image_id": i, "concept": c, "category": cat, "present": c in present[i], "side": "",
                           "severity": 1.0} for i in ids for c, cat in concepts.items()])
    manifest = pd.DataFrame({"image_id": ids, "view": ["AP", "PA", "pa", "ap"]})
    findings, device, ap = phantom_population(truth, manifest)
    assert findings["Pleural Effusion"].tolist() == [True, False, False, True]
    assert device.tolist() == [True, False, False, False] and ap.tolist() == [True, False, False, True]
    table = compare_populations(one=(findings, device, ap), two=(findings, ~device, ap))
    assert table.loc[("Pleural Effusion", "device_given_finding"), "one"] == 0.5
    assert table.loc[("Pleural Effusion", "device_given_finding"), "two"] == 0.5
    assert table.loc[("Edema", "with Pleural Effusion"), "one"] == 0.0
    assert set(table.index.get_level_values("rate")) >= set(RATE_COLUMNS)


@pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None, reason="torchxrayvision ships the table")
def test_chexpert_frontal_training_films():
    """The figures issue 31 quotes: 191,027 frontal films; devices nearly as common without a finding as with it."""
    findings, device, ap = chexpert_population()
    assert len(findings) == 191_027
    rates = population_rates(findings, device, ap).round(2)
    assert rates["prevalence"].tolist() == [0.16, 0.12, 0.07, 0.26, 0.40]
    assert rates["device_given_finding"].tolist() == [0.64, 0.61, 0.57, 0.66, 0.65]
    assert rates["device_given_none"].tolist() == [0.55, 0.55, 0.56, 0.53, 0.50]
    assert (rates["ap_given_finding"].between(0.87, 0.97)).all() and rates["ap_given_none"].between(0.80, 0.84).all()
