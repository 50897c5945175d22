"""How a dataset's population is confounded: each finding's prevalence, and how often support devices and AP films
come with it and without it, with the findings' pairwise co-occurrence.

The same figures for CheXpert's training table (frontal films; the table ships in torchxrayvision's wheel and is read
at run time, never copied here) and for a phantom run (its planted truth) tell how much stronger the phantom's
confounding is than a hospital's: strong confounders are easy to find, so figures measured on a strongly confounded
phantom may overstate what a user sees on real data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.evaluation import concept_categories, finding_concept, ground_truth_matrix
from lanic_nb.manifest import FINDINGS

RATE_COLUMNS = ("prevalence", "device_given_finding", "device_given_none", "ap_given_finding", "ap_given_none")


def population_rates(findings: pd.DataFrame, device: np.ndarray, ap: np.ndarray) -> pd.DataFrame:
    """Per finding: prevalence, P(device | finding), P(device | not finding), P(AP | finding), P(AP | not finding).

    findings: one bool column per finding (present or not); device, ap: (n,) bool per film. Index: the findings.
    """
    device, ap = np.asarray(device, bool), np.asarray(ap, bool)
    if not len(findings) == len(device) == len(ap):
        raise ValueError(f"{len(findings)} films of findings, {len(device)} of devices, {len(ap)} of views")
    rows = {}
    for f in findings.columns:
        has = findings[f].to_numpy(bool)
        rows[f] = [has.mean(), _mean(device[has]), _mean(device[~has]), _mean(ap[has]), _mean(ap[~has])]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(RATE_COLUMNS))


def co_occurrence(findings: pd.DataFrame) -> pd.DataFrame:
    """(finding, finding) share of films holding both (the diagonal: each finding's prevalence)."""
    x = findings.to_numpy(np.float64)
    return pd.DataFrame(x.T @ x / max(len(x), 1), index=findings.columns, columns=findings.columns)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def chexpert_table_path() -> Path:
    """CheXpert's training table as torchxrayvision ships it (``chexpert_train.csv.gz``)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("torchxrayvision is not installed; it ships CheXpert's training table "
                                "(pip install torchxrayvision)")
    path = Path(spec.origin).parent / "data" / "chexpert_train.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed torchxrayvision")
    return path


def chexpert_population(path: str | Path | None = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """CheXpert's frontal training films: (findings, device, ap), a finding present where its label is 1 (uncertain
    and blank count as absent), a device where "Support Devices" is 1, AP where "AP/PA" says so."""
    table = pd.read_csv(path or chexpert_table_path())
    table = table[table["Frontal/Lateral"] == "Frontal"]
    findings = pd.DataFrame({f: table[f].to_numpy() == 1 for f in FINDINGS})
    return findings, table["Support Devices"].to_numpy() == 1, table["AP/PA"].to_numpy() == "AP"


def phantom_population(truth: pd.DataFrame, manifest: pd.DataFrame,
                       device_concepts: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A phantom run's films: (findings, device, ap) from its planted truth (long table: image_id, concept, category,
    present) and its manifest's view. ``device_concepts``: the concepts that count as a support device (default:
    every concept of category "device")."""
    ids = manifest["image_id"].astype(str).tolist()
    wide = ground_truth_matrix(truth, ids)
    if device_concepts is None:
        device_concepts = [c for c, cat in concept_categories(truth).items() if cat == "device"]
    findings = pd.DataFrame({f: wide[finding_concept(f)].to_numpy(bool) for f in FINDINGS})
    device = wide[device_concepts].to_numpy(bool).any(1) if device_concepts else np.zeros(len(ids), bool)
    return findings, device, manifest["view"].astype(str).str.upper().eq("AP").to_numpy()


def compare_populations(**populations: tuple[pd.DataFrame, np.ndarray, np.ndarray]) -> pd.DataFrame:
    """The rates of several populations side by side: rows (finding, rate), a column per population, and per pair
    of findings their co-occurrence (rate "with <finding>")."""
    cols = {}
    for name, (findings, device, ap) in populations.items():
        rates = population_rates(findings, device, ap).stack()
        co = co_occurrence(findings)
        pairs = {(a, f"with {b}"): co.loc[a, b] for i, a in enumerate(co.index) for b in co.columns[i + 1:]}
        cols[name] = pd.concat([rates, pd.Series(pairs)])
    out = pd.DataFrame(cols)
    out.index.names = ["finding", "rate"]
    return out
