"""Gallery data: what the pattern galleries and per-image explanations show, and the pure pieces both views use.

``GalleryData`` holds the attributions of one split (computed once) with the images, labels, pattern table
and report sentences; the functions below turn it into rankings, tables, PNGs and text. The ipywidgets
views are in ``lanic_nb.gallery.widgets``, the static page in ``lanic_nb.gallery.html``, the notebook's
call in ``lanic_nb.gallery.stage``.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lanic_nb.artifacts import load_pattern_table, load_split
from lanic_nb.attribute.core import Attribution, attribute
from lanic_nb.attribute.ood import SCORES_FILE, OODReference
from lanic_nb.classify.calibrate import Calibration, load_calibration
from lanic_nb.embed.store import EmbeddingStore
from lanic_nb.explain.text import explain_prediction, pattern_info, top_evidence
from lanic_nb.images import ImageReadError, load_image
from lanic_nb.io import read_table
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class GalleryData:
    """Everything the views show, for the images of one split (row-aligned arrays)."""

    image_ids: np.ndarray  # (n,) str
    image_paths: list[Path]  # (n,)
    labels: np.ndarray  # (n, 5) manifest labels (1 / 0 / -1 / NaN)
    attribution: Attribution  # on these n images
    patterns: pd.DataFrame  # one row per pattern, pattern_id == column of the attribution
    sentences: pd.DataFrame  # columns image (0..n-1), text
    dataset: str  # the manifest's dataset name(s), e.g. "phantom"
    calibration: Calibration | None = None  # the classifier's logit -> probability map (None: the raw sigmoid)
    ood: pd.DataFrame | None = None  # notebook 06's out-of-distribution scores of these images (row-aligned)
    ood_threshold: float | None = None  # the score above which a film is flagged
    _info: dict | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def probabilities(self) -> np.ndarray:
        """(n, 5) calibrated probabilities (the logits' exact decomposition is unchanged by calibration)."""
        if self.calibration is None:
            return torch.sigmoid(self.attribution.logits).numpy()
        return self.calibration.probabilities(self.attribution.logits.numpy())

    @property
    def is_phantom(self) -> bool:
        return self.dataset == "phantom"

    def categories(self) -> list[str]:
        return sorted({c for c in self.patterns.get("category", pd.Series(dtype=str)).dropna() if c})

    def info(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        """pattern_id -> (category, concepts), computed once."""
        if self._info is None:
            self._info = pattern_info(self.patterns)
        return self._info

    @classmethod
    def from_run(cls, run_dir: str | Path, split: str = "test", max_images: int | None = None,
                 device: str | torch.device = "cpu") -> GalleryData:
        """Load the run's models and compute the attributions of ``split`` (readable images only)."""
        rd = RunDir(Path(run_dir))
        run = load_split(rd.root, split, device, max_images)
        ps = run.patterns
        attr = attribute(run.classifier, run.ensemble, ps.latent_pattern, ps.n_patterns, run.x)
        sent = EmbeddingStore.open(rd.embed).sentences
        sent = sent[sent["row"].isin(run.rows)]
        where = pd.Series(np.arange(len(run.rows)), index=run.rows)
        sentences = pd.DataFrame({"image": where.loc[sent["row"]].to_numpy(),
                                  "text": sent["text"].astype(str).to_numpy()})
        sub = run.manifest
        return cls(
            image_ids=sub["image_id"].astype(str).to_numpy(),
            image_paths=[resolve_image_path(rd.manifest, p) for p in sub["image_path"]],
            labels=sub[list(FINDINGS)].to_numpy(np.float32),
            attribution=attr,
            patterns=load_pattern_table(rd.patterns, ps),
            sentences=sentences,
            dataset=",".join(sorted(set(sub["dataset"].astype(str)))),
            calibration=load_calibration(rd.classifier),
            **_ood_of(rd, sub["image_id"].astype(str).to_numpy()),
        )


# ---------------------------------------------------------------- pure pieces (shared by the widgets and the HTML page)


def ranked_patterns(data: GalleryData, finding: int, category: str | None = None) -> np.ndarray:
    """Pattern ids by mean |contribution| to ``finding`` over the images, largest first."""
    score = data.attribution.contributions[:, :, finding].abs().mean(0).numpy()
    ids = np.argsort(-score, kind="stable")
    if category:
        cats = data.patterns.set_index("pattern_id")["category"].reindex(ids).fillna("").to_numpy()
        ids = ids[cats == category]
    return ids[score[ids] > 0]


def top_images(data: GalleryData, pattern: int, n: int = 12) -> np.ndarray:
    """Indices of the images where ``pattern`` is most active (active ones only)."""
    a = data.attribution.activations[:, pattern].numpy()
    order = np.argsort(-a, kind="stable")[:n]
    return order[a[order] > 0]


def pattern_effects(data: GalleryData, pattern: int) -> pd.DataFrame:
    """Per finding: logit change per unit of activation, and mean contribution over the images where active."""
    act = data.attribution.activations[:, pattern].numpy()
    con = data.attribution.contributions[:, pattern, :].numpy()  # (n, 5)
    on = act > 0
    per_unit = con.sum(0) / act.sum() if act.sum() > 0 else np.zeros(con.shape[1])
    mean_on = con[on].mean(0) if on.any() else np.zeros(con.shape[1])
    return pd.DataFrame({"finding": FINDINGS, "per_unit": per_unit, "mean_when_active": mean_on})


def top_sentences(data: GalleryData, pattern: int, n: int = 5, n_images: int = 20) -> list[tuple[str, float]]:
    """Report sentences over-represented among the pattern's top images: (text, share top - share all)."""
    top = top_images(data, pattern, n_images)
    if len(top) == 0 or data.sentences.empty:
        return []
    s = data.sentences.drop_duplicates(["image", "text"])
    share_all = s["text"].value_counts() / max(data.n_images, 1)
    share_top = s[s["image"].isin(top)]["text"].value_counts() / len(top)
    lift = (share_top - share_all.reindex(share_top.index)).sort_values(ascending=False)
    return [(t, float(v)) for t, v in lift.head(n).items() if v > 0]


@functools.lru_cache(maxsize=4096)
def thumbnail_png(path: str, size: int = 96) -> bytes:
    """A grayscale PNG thumbnail of an image file (b"" if it cannot be read)."""
    try:
        arr = load_image(path)
    except ImageReadError as e:
        log.warning("thumbnail: %s", e)
        return b""
    img = Image.fromarray((arr * 255).astype(np.uint8))
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ood_of(rd: RunDir, image_ids: np.ndarray) -> dict:
    """The out-of-distribution scores notebook 06 wrote for these images, and its threshold (empty: none)."""
    ref = OODReference.load(rd.attribution) if (rd.root / "attribution").is_dir() else None
    path = rd.root / "attribution" / SCORES_FILE
    if ref is None or not path.exists():
        return {}
    scores = read_table(path)
    scores = scores[~scores.split.eq("val")].drop_duplicates("image_id").set_index("image_id")
    return {"ood": scores.reindex(pd.Index(image_ids)).reset_index(), "ood_threshold": ref.threshold}


def ood_png(data: GalleryData) -> bytes:
    """The distribution of these films' out-of-distribution scores and the flagging threshold (PNG)."""
    from lanic_nb.attribute.views import plot_ood_scores

    return _fig_png(plot_ood_scores(data.ood.dropna(subset=["score"]).assign(split="these films"),
                                    data.ood_threshold))


def finding_reliance(data: GalleryData) -> pd.DataFrame:
    """What each finding leans on among these films (``attribute.reliance``: labels, no planted truth)."""
    from lanic_nb.attribute.reliance import reliance_table

    return reliance_table(data.attribution, data.labels, data.patterns)


def reliance_png(reliance: pd.DataFrame) -> bytes:
    """Each finding's top device and artifact patterns by reliance, the flagged ones in red (PNG)."""
    from lanic_nb.attribute.views import plot_reliance

    return _fig_png(plot_reliance(reliance))


def histogram_png(data: GalleryData, pattern: int) -> bytes:
    """Histogram of the pattern's non-zero activations over the images (PNG)."""
    import matplotlib.pyplot as plt

    a = data.attribution.activations[:, pattern].numpy()
    fig, ax = plt.subplots(figsize=(3.2, 1.8))
    ax.hist(a[a > 0], bins=20, color="#4c72b0")
    ax.set_title(f"pattern {pattern}: active on {(a > 0).mean():.0%} of images", fontsize=8)
    ax.set_xlabel("activation", fontsize=8)
    ax.tick_params(labelsize=7)
    return _fig_png(fig)


def waterfall_terms(data: GalleryData, image: int, finding: int, n: int = 8) -> pd.DataFrame:
    """The logit as bars: bias, the top-n patterns, the rest of the patterns, other latents, error."""
    at = data.attribution
    c = at.contributions[image, :, finding].numpy()
    top = np.argsort(-np.abs(c), kind="stable")[:n]
    top = top[c[top] != 0]
    labels = ["bias"] + [f"pattern {p}" for p in top] + ["other patterns", "unassigned latents", "error"]
    values = [float(at.bias[finding]), *c[top].tolist(), float(c.sum() - c[top].sum()),
              float(at.other[image, finding]), float(at.error[image, finding])]
    pid = [-1, *top.tolist(), -1, -1, -1]
    return pd.DataFrame({"term": labels, "value": values, "pattern_id": pid})


def waterfall_png(data: GalleryData, image: int, finding: int, n: int = 8) -> bytes:
    import matplotlib.pyplot as plt

    t = waterfall_terms(data, image, finding, n)
    start = np.r_[0.0, np.cumsum(t["value"].to_numpy())[:-1]]
    fig, ax = plt.subplots(figsize=(4.2, 0.28 * len(t) + 0.8))
    colors = ["#999999" if p < 0 else ("#c44e52" if v > 0 else "#4c72b0")
              for p, v in zip(t["pattern_id"], t["value"], strict=True)]
    ax.barh(range(len(t)), t["value"], left=start, color=colors)
    ax.set_yticks(range(len(t)), t["term"], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(float(start[-1] + t["value"].iloc[-1]), color="k", lw=0.8, ls="--")
    ax.set_title(f"{FINDINGS[finding]}: logit {float(data.attribution.logits[image, finding]):+.2f}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return _fig_png(fig)


def explanation(data: GalleryData, image: int, finding: int, n: int = 6, annotator=None) -> str:
    at = data.attribution
    c = at.contributions[image, :, finding].numpy()
    ev = top_evidence(c, data.info(), None, n)  # column index == pattern id
    return explain_prediction(FINDINGS[finding], float(data.probabilities[image, finding]), ev,
                              total_abs=float(np.abs(c).sum()), error=float(at.error[image, finding]),
                              annotator=annotator, image_path=data.image_paths[image])


def describe_pattern(data: GalleryData, pattern: int) -> dict:
    """Category, concepts (with scores when the table has them) and consistency of one pattern."""
    row = data.patterns.set_index("pattern_id").loc[pattern] if pattern in set(data.patterns["pattern_id"]) else {}
    concepts = []
    for i in (1, 2, 3):
        name = row.get(f"concept_{i}") if len(row) else None
        if isinstance(name, str) and name:
            score = row.get(f"score_{i}", row.get(f"concept_{i}_score"))
            concepts.append((name, None if score is None or pd.isna(score) else float(score)))
    cat = row.get("category") if len(row) else ""
    cons = row.get("consistency") if len(row) else None
    sents = row.get("top_sentences") if len(row) else None  # written by notebook 04 (sentence activations)
    return {"category": cat if isinstance(cat, str) else "", "concepts": concepts,
            "consistency": None if cons is None or pd.isna(cons) else float(cons),
            "sentences": [str(t) for t in sents] if sents is not None and not isinstance(sents, float) else []}


def b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
