"""What notebook 10 shows besides the widgets: a results table and a waterfall figure of one explanation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lanic_nb.explain.model import LoadedRun
from lanic_nb.explain.page import waterfall_rows
from lanic_nb.explain.pipeline import ImageExplanation
from lanic_nb.manifest import FINDINGS


def results_table(explanations: Sequence[ImageExplanation]) -> pd.DataFrame:
    """One row per image: status, the five (calibrated) probabilities (or the reason there are none), whether the
    film lies outside what the run knows, warnings."""
    rows = []
    for e in explanations:
        row = {"image": e.image_id, "status": e.status}
        if e.ok:
            row.update({f: round(float(p), 3) for f, p in zip(FINDINGS, e.probabilities, strict=True)})
        row["outside"] = None if e.ood is None else bool(e.ood["flagged"])
        row["note"] = e.reason or "; ".join([*([e.ood["why"]] if e.outside else []), *e.warnings])
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["image", "status", *FINDINGS, "outside", "note"])


def waterfall_figure(e: ImageExplanation, finding: int, n: int = 5, run: LoadedRun | None = None):
    """The logit of one finding as a waterfall: each bar starts where the previous ended; the dashed line is
    the logit. Red pushes toward the finding, blue against, grey are the non-pattern terms. With ``run`` the
    patterns carry their names."""
    import matplotlib.pyplot as plt

    rows = waterfall_rows(e, finding, n)
    labels = [t if p < 0 or run is None else f"{t}: {e.pattern_names.get(p, run.pattern_name(p))[:40]}"
              for t, _, p in rows]
    values = np.array([v for _, v, _ in rows])
    start = np.r_[0.0, np.cumsum(values)[:-1]]
    colors = ["#999999" if p < 0 else ("#c44e52" if v > 0 else "#4c72b0") for _, v, p in rows]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.0))
    ax.barh(range(len(rows)), values, left=start, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    logit = float(e.attribution.logits[0, finding])
    ax.axvline(logit, color="k", lw=0.8, ls="--")
    ax.axvline(0.0, color="#cccccc", lw=0.6)
    ax.set_xlabel("contribution to the logit", fontsize=8)
    ax.set_title(f"{e.image_id}: {FINDINGS[finding]}, logit {logit:+.2f} "
                 f"(p = {float(e.probabilities[finding]):.2f})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
