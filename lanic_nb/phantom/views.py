"""Figures and tables of the 00_data notebook: example images with reports and labels, prevalence,
and the co-occurrence of findings with other concepts (where the planted shortcut shows)."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from lanic_nb.evaluation import ground_truth_matrix, load_ground_truth, load_states
from lanic_nb.io import read_json
from lanic_nb.manifest import FINDINGS
from lanic_nb.phantom.config import CONCEPT_NAMES, CONCEPTS, FINDING_TO_CONCEPT, PhantomConfig
from lanic_nb.phantom.generate import generate_image
from lanic_nb.rundir import RunDir

_LABEL = {1.0: "+", 0.0: "-", -1.0: "?"}


def _short(row: pd.Series) -> str:
    parts = [f"{f.split()[-1][:5]}{_LABEL[float(row[f])]}" for f in FINDINGS if not pd.isna(row[f])]
    return " ".join(parts) or "(no finding mentioned)"


def plot_film(img: np.ndarray, title: str = "", size: float = 3.0) -> plt.Figure:
    """One radiograph (uint8 (S, S)) with a title."""
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(img, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return fig


def example_grid(run_dir: str | Path, n: int = 8, cols: int = 4, seed: int = 0) -> plt.Figure:
    """n random images, each titled with its labels (+ positive, - negated, ? uncertain)."""
    rd = RunDir(Path(run_dir))
    m = pd.read_parquet(rd.manifest)
    rows = m.sample(min(n, len(m)), random_state=seed)
    nrows = int(np.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, r) in zip(axes.ravel(), rows.iterrows(), strict=False):
        ax.imshow(np.asarray(Image.open(rd.data / r["image_path"])), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{r['image_id']} ({r['view']})\n{_short(r)}", fontsize=8)
    fig.tight_layout()
    return fig


def example_reports(run_dir: str | Path, n: int = 4, seed: int = 0) -> pd.DataFrame:
    """The reports and labels of the first ``n`` images of ``example_grid`` (same sampling)."""
    m = pd.read_parquet(RunDir(Path(run_dir)).manifest)
    rows = m.sample(min(n, len(m)), random_state=seed)
    return rows[["image_id", "report", *FINDINGS]].set_index("image_id")


def concept_pairs(cfg: PhantomConfig, index: int, concepts: list[str]) -> plt.Figure:
    """One image with nothing planted, then the same image with each concept turned on alone."""
    off = {c: False for c in CONCEPT_NAMES}
    fig, axes = plt.subplots(1, len(concepts) + 1, figsize=(2.4 * (len(concepts) + 1), 2.8))
    for ax, c in zip(axes, ["(none)", *concepts], strict=True):
        img, _ = generate_image(cfg, index, off if c == "(none)" else {**off, c: True})
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(c.replace("_", " "), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def prevalence_table(run_dir: str | Path) -> pd.DataFrame:
    """Per concept: category, planted prevalence; per finding also the report-label rates."""
    rd = RunDir(Path(run_dir))
    m = pd.read_parquet(rd.manifest)
    pres = ground_truth_matrix(load_ground_truth(run_dir), m["image_id"])
    table = pd.DataFrame(
        {
            "category": [CONCEPTS[c].category for c in CONCEPT_NAMES],
            "planted": pres[list(CONCEPT_NAMES)].mean(),
        },
        index=list(CONCEPT_NAMES),
    )
    to_finding = {c: f for f, c in FINDING_TO_CONCEPT.items()}
    for name, value in (("label +", 1.0), ("label ?", -1.0), ("label -", 0.0)):
        table[name] = [
            float((m[to_finding[c]] == value).mean()) if c in to_finding else np.nan for c in table.index
        ]
    table["label missing"] = [
        float(m[to_finding[c]].isna().mean()) if c in to_finding else np.nan for c in table.index
    ]
    return table.sort_values(["category", "planted"], ascending=[True, False])


def cooccurrence_table(run_dir: str | Path) -> pd.DataFrame:
    """P(concept | finding present): one row per non-finding concept, one column per finding, and a
    last column with the rate over all images. The planted shortcut stands out as one cell far above
    its row's "all images" rate."""
    m = pd.read_parquet(RunDir(Path(run_dir)).manifest)
    pres = ground_truth_matrix(load_ground_truth(run_dir), m["image_id"])
    others = [c for c in CONCEPT_NAMES if c not in FINDING_TO_CONCEPT.values()]
    cols = {f: pres.loc[pres[c], others].mean() for f, c in FINDING_TO_CONCEPT.items()}
    cols["all images"] = pres[others].mean()
    table = pd.DataFrame(cols)
    table.insert(0, "category", [CONCEPTS[c].category for c in table.index])
    return table


def cooccurrence_heatmap(run_dir: str | Path) -> plt.Figure:
    """Correlation (phi) between every pair of planted concepts and latent states over the run's images.

    Blocks show the confounders of hospital data: acuity ties tubes, lines, ECG leads, the portable marker
    and the acute findings together; cardiac history ties cardiomegaly, pacemaker and sternotomy wires.
    """
    m = pd.read_parquet(RunDir(Path(run_dir)).manifest)
    pres = ground_truth_matrix(load_ground_truth(run_dir), m["image_id"])
    states = load_states(run_dir).set_index("image_id").loc[m["image_id"]]
    cols = [c for c in states.columns if states[c].dtype == bool]
    table = pd.concat([states[cols].reset_index(drop=True), pres.reset_index(drop=True)], axis=1).astype(float)
    corr = np.nan_to_num(np.corrcoef(table.to_numpy().T))
    names = [c.replace("_", " ") for c in table.columns]
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-0.6, vmax=0.6)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.axhline(len(cols) - 0.5, color="k", lw=0.8)
    ax.axvline(len(cols) - 0.5, color="k", lw=0.8)
    ax.set_title("correlation of latent states (top left) and planted concepts")
    fig.colorbar(im, ax=ax, shrink=0.7, label="phi coefficient")
    fig.tight_layout()
    return fig


def data_metrics(run_dir: str | Path) -> dict:
    """The figures 00_data records: counts, planted prevalence of the findings, label rates, shortcut."""
    meta = read_json(RunDir(Path(run_dir)).data / "meta.json")
    return {
        "n_images": meta["n_images"],
        "n_patients": meta["n_patients"],
        "split_counts": meta["split_counts"],
        "prevalence": {f: meta["prevalence"][c] for f, c in FINDING_TO_CONCEPT.items()},
        "label_positive_rate": {f: meta["label_rates"][f]["positive"] for f in FINDINGS},
        "label_uncertain_rate": {f: meta["label_rates"][f]["uncertain"] for f in FINDINGS},
        "shortcut": meta.get("shortcut", {}),
        "state_rates": meta.get("state_rates", {}),
        "population": meta["config"].get("population", "teaching"),
    }


def population_against_chexpert(run_dir: str | Path) -> pd.DataFrame | None:
    """CheXpert's frontal training films (``data.population``) beside the calibrated population's exact rates
    (``phantom.calibrate``) and this run's planted truth: per finding its prevalence and the rates of devices and AP
    films with and without it, and the findings' co-occurrence. None (with a logged reason) where torchxrayvision,
    which ships CheXpert's table, is not installed."""
    from lanic_nb.data.population import chexpert_population, compare_populations, phantom_population
    from lanic_nb.phantom.calibrate import expected_population
    from lanic_nb.phantom.population import CHEXPERT

    rd = RunDir(Path(run_dir))
    try:
        chexpert = chexpert_population()
    except FileNotFoundError as e:
        logging.getLogger(__name__).warning("no comparison with CheXpert: %s", e)
        return None
    phantom = phantom_population(load_ground_truth(rd.root), pd.read_parquet(rd.manifest))
    name = read_json(rd.data / "meta.json")["config"].get("population", "teaching")
    table = compare_populations(CheXpert=chexpert, **{f"this run ({name})": phantom})
    table.insert(1, "calibrated (exact)", expected_population(CHEXPERT).reindex(table.index))
    return table


def population_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """Per column of ``population_against_chexpert``'s table (after CheXpert): the largest absolute difference from
    CheXpert, the rate where it is, and whether it is within ``phantom.calibrate.TOLERANCE``."""
    from lanic_nb.phantom.calibrate import TOLERANCE

    gaps = table.drop(columns="CheXpert").sub(table["CheXpert"], axis=0).abs()
    return pd.DataFrame({"largest difference": gaps.max(), "at": [" / ".join(i) for i in gaps.idxmax()],
                         f"within {TOLERANCE}": gaps.max() <= TOLERANCE})


def plot_population_against_chexpert(table: pd.DataFrame) -> plt.Figure:
    """One panel per rate (prevalence, device and AP with / without the finding): a bar per column of ``table``
    (CheXpert, the calibrated population, this run)."""
    from lanic_nb.data.population import RATE_COLUMNS

    fig, axes = plt.subplots(1, len(RATE_COLUMNS), figsize=(3.0 * len(RATE_COLUMNS), 3.1), sharey=True)
    x = np.arange(len(FINDINGS))
    for ax, rate in zip(axes, RATE_COLUMNS, strict=True):
        rows = table.xs(rate, level="rate").reindex(list(FINDINGS))
        width = 0.8 / len(rows.columns)
        for k, (name, color) in enumerate(zip(rows.columns, ("#4c72b0", "#55a868", "#dd8452"), strict=False)):
            ax.bar(x + (k - (len(rows.columns) - 1) / 2) * width, rows[name], width=width, color=color, label=name)
        ax.set_title(rate.replace("_", " "), fontsize=9)
        ax.set_xticks(x, [f.split()[-1][:6] for f in FINDINGS], fontsize=7, rotation=30)
    axes[0].set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
