"""The embedding stage of a run (notebook 01): the encoder, every image, report and sentence embedded, and
how well the encoder reads the images (retrieval, zero-shot).

By default the phantom encoder shipped with the package is loaded (``model="phantom"``, an open_clip
``local-dir:`` folder pretrained once by :mod:`lanic_nb.phantom.encoder`). With ``model="small"`` a small CLIP
is trained from scratch on the train split's image-report pairs and saved as an open_clip folder in ``clip/``
(a teaching option: it sees far less than the pretrained one); ``hf-hub:`` BiomedCLIP or any folder load too.
Writes ``embed/`` (the memory-mapped store), ``clip/zeroshot_scores.parquet`` + ``clip/metrics.json``
and ``metrics/01_embed.json``. Training stages never read the planted truth; this one reads only the
manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lanic_nb.artifacts import stage_function
from lanic_nb.device import pick_device, seed_everything
from lanic_nb.embed.clip_eval import write_clip_evaluation
from lanic_nb.embed.clip_small import SmallClipConfig, fit_small_clip
from lanic_nb.embed.encoders import CARD_NAME, LOCAL_PREFIX, Encoder, load_encoder
from lanic_nb.embed.store import EmbeddingStore, embed_manifest
from lanic_nb.io import read_json, read_table
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """Settings of the embedding stage (notebook 01)."""

    device: str = "auto"
    """Where the encoder runs: "auto" (CUDA when present, else CPU), "cpu", "cuda", ... Default: auto."""
    model: str = "phantom"
    """The image-text encoder: "phantom" (shipped with the package, pretrained on phantom films), "small" (a small
    CLIP trained here from scratch, for teaching), "hf-hub:org/repo" (BiomedCLIP:
    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", from the local Hugging Face cache), or an
    open_clip folder ("local-dir:PATH"). Default: the phantom encoder, the one that runs offline on the phantom."""
    manifest_path: str = ""
    """The manifest to embed; empty: the run's ``data/manifest.parquet``. Image paths are relative to its folder.
    Default: the run's own."""
    batch_size: int = 128
    """Images per forward pass (speed and memory only). Default: engineering."""
    num_workers: int = 2
    """Image-decoding worker processes (0: decode in the main process; speed only). Default: the 2 cores of the
    project's reference machine."""
    seed: int = 0
    """Seeds torch, numpy and random before the stage runs. Default: 0."""
    small_clip: SmallClipConfig = field(default_factory=SmallClipConfig)
    """With ``model="small"``: the small CLIP's architecture and training."""


@dataclass
class EmbedResult:
    encoder: Encoder
    manifest: pd.DataFrame
    data_dir: Path
    """The folder image paths of the manifest are relative to."""
    store: EmbeddingStore
    train_log: dict | None
    """The small CLIP's training (losses per step, seconds, pairs); None for a loaded encoder."""
    card: dict | None
    """The loaded encoder's card (``card.json`` beside its weights: recipe, fingerprint, figures), if it has one."""
    clip_metrics: dict
    """Retrieval and zero-shot figures on the test split (``clip/metrics.json``)."""
    zeroshot: pd.DataFrame
    """Zero-shot scores of every image (``clip/zeroshot_scores.parquet``)."""
    summary: dict
    """What ``metrics/01_embed.json`` records."""


@stage_function("01_embed", reads_run=lambda config: not config.manifest_path)
def run_embed(run_dir: str | Path, config: EmbedConfig | None = None) -> EmbedResult:
    """Train or load the encoder, embed the whole manifest (resumably), evaluate, record the figures."""
    cfg = config or EmbedConfig()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    rd = RunDir(Path(run_dir))
    mpath = Path(cfg.manifest_path) if cfg.manifest_path else rd.manifest
    manifest = read_table(mpath)
    log.info("%d images, device %s", len(manifest), device)
    train_log = None
    if cfg.model == "small":
        encoder, train_log = fit_small_clip(run_dir, cfg.small_clip, device)
        log.info("small CLIP trained on %d pairs in %.0f s", train_log["n_pairs"], train_log["train_seconds"])
    else:
        t0 = time.perf_counter()
        encoder = load_encoder(cfg.model, device)
        load_seconds = time.perf_counter() - t0
        log.info("loaded %s in %.1f s", encoder.name, load_seconds)
    store = embed_manifest(run_dir, encoder, manifest, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           data_dir=mpath.parent)
    clip_metrics = write_clip_evaluation(run_dir, encoder, manifest, store.image, store.report)
    summary = {
        "encoder": encoder.name,
        "embed_dim": encoder.embed_dim,
        "n_images": int(len(manifest)),
        "n_ok": int(store.ok.sum()),
        "n_sentences": int(store.sentence.shape[0]),
        "recall@10": clip_metrics["recall@10"],
        "recall@10_chance": clip_metrics["recall@10_chance"],
        "zeroshot_auroc": clip_metrics["zeroshot_auroc"],
        "zeroshot_auroc_mean": clip_metrics["zeroshot_auroc_mean"],
    }
    if train_log is not None:
        summary.update(clip_train_seconds=train_log["train_seconds"], clip_final_loss=train_log["losses"][-1],
                       clip_steps=len(train_log["losses"]))
    else:
        summary["encoder_load_seconds"] = round(load_seconds, 2)
    card = encoder_card(encoder)
    if card is not None and "evaluation" in card:  # the shipped encoder's own figures (its card), beside the run's
        ev = card["evaluation"]
        summary["encoder_card"] = {k: ev[k] for k in ("probe_auroc", "probe_at_target", "probe_missed",
                                                      "zeroshot_auroc_mean", "recall@10", "recall@10_chance",
                                                      "phantom") if k in ev}
    record_metrics(run_dir, "01_embed", summary)
    zeroshot = read_table(rd.clip / "zeroshot_scores.parquet")
    return EmbedResult(encoder, manifest, mpath.parent, store, train_log, card, clip_metrics, zeroshot, summary)


def encoder_card(encoder: Encoder) -> dict | None:
    """``card.json`` from a local-dir encoder's folder (the shipped phantom encoder has one), else None."""
    if not encoder.name.startswith(LOCAL_PREFIX):
        return None
    path = Path(encoder.name[len(LOCAL_PREFIX):]) / CARD_NAME
    return read_json(path) if path.exists() else None
