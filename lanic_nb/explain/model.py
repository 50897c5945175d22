"""A trained run, loaded once for explaining new images: its own encoder, classifier, transcoders and patterns.

The encoder is the one named in the embedding store's header (``embed/header.json``), loaded the way the embed
stage loaded it, and must have the same weights: its fingerprint is compared with the header's, and a
different one stops everything (the explanations would be those of another model). A training-split *pool*
(its embeddings, ids, labels and file paths) gives each new image its nearest training images and each
pattern its top-activating training images (the thumbnails of the pages).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.artifacts import load_pattern_table
from lanic_nb.attribute.core import pattern_columns
from lanic_nb.attribute.ood import OODReference, pool_rows
from lanic_nb.attribute.reliance import leans_on
from lanic_nb.classify.calibrate import Calibration, load_calibration
from lanic_nb.classify.model import load_classifier
from lanic_nb.embed.encoders import LOCAL_PREFIX, PHANTOM, Encoder, load_encoder
from lanic_nb.embed.store import EmbeddingStore
from lanic_nb.explain.text import pattern_info
from lanic_nb.io import read_table
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder.model import TranscoderEnsemble

log = logging.getLogger(__name__)


class RunMismatch(RuntimeError):
    """The run cannot be explained faithfully here (its encoder changed, or a stage is missing)."""


@dataclass
class Pool:
    """Training images of the run that neighbours and pattern thumbnails are drawn from (row-aligned)."""

    image_ids: np.ndarray  # (n,) str
    paths: list[Path]  # (n,) image files
    labels: np.ndarray  # (n, 5) report labels (1 / 0 / -1 / NaN)
    x: torch.Tensor  # (n, d_in) float32 L2-normalized embeddings
    top_index: torch.Tensor  # (n_patterns, k) pool rows where each pattern is most active (-1: fewer active)
    top_value: torch.Tensor  # (n_patterns, k) those activations


@dataclass
class LoadedRun:
    """Everything explaining needs, on one device."""

    root: Path
    store: EmbeddingStore  # the run's embeddings (memory-mapped)
    encoder: Encoder
    classifier: nn.Module
    ensemble: nn.Module
    patterns: PatternSet
    table: pd.DataFrame  # patterns.parquet (pattern_id, category, concept_1..)
    info: dict[int, tuple[str, tuple[str, ...]]]  # pattern_id -> (category, concepts)
    dataset: str  # the manifest's dataset name(s), e.g. "phantom"
    pool: Pool
    run_rows: dict[str, tuple[int, str, str]]  # resolved image file -> (manifest row, image_id, split)
    calibration: Calibration = field(default_factory=Calibration.identity)  # logit -> probability, per finding
    ood: OODReference | None = None  # what new films' out-of-distribution scores compare with (from 06)
    leans_on: dict[str, dict] = field(default_factory=dict)  # finding -> the pattern it leans on (06's reliance)

    @property
    def n_patterns(self) -> int:
        return self.patterns.n_patterns

    @property
    def is_phantom(self) -> bool:
        return self.dataset == "phantom"

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def pattern_name(self, pattern: int) -> str:
        """Its concepts, best first ("pattern 12" when none is annotated)."""
        concepts = self.info.get(int(pattern), ("", ()))[1]
        return ", ".join(concepts) if concepts else f"pattern {int(pattern)}"

    def pattern_category(self, pattern: int) -> str:
        return self.info.get(int(pattern), ("", ()))[0]

    @property
    def header(self) -> dict:
        """The embedding store's header (encoder name and fingerprint, preprocessing)."""
        return self.store.header

    def stored_embedding(self, row: int) -> np.ndarray:
        return np.asarray(self.store.image[row], dtype=np.float32)


def _encoder_candidates(name: str, root: Path) -> list[str]:
    """The header's encoder, then (for a ``local-dir:`` folder that moved) the run's clip/ folder and the
    shipped phantom encoder: the fingerprint check decides whether a fallback is the same model."""
    if not name.startswith(LOCAL_PREFIX) or Path(name[len(LOCAL_PREFIX):]).is_dir():
        return [name]
    out = [name]
    clip = root / "clip"
    if (clip / "open_clip_config.json").is_file():
        out.append(f"{LOCAL_PREFIX}{clip}")
    out.append(PHANTOM)
    return out


def load_run_encoder(root: Path, header: dict, device: torch.device) -> Encoder:
    """The run's own encoder with the weights the store was made with; RunMismatch otherwise."""
    name, want = str(header["encoder"]), header.get("encoder_fingerprint")
    errors = []
    for candidate in _encoder_candidates(name, root):
        try:
            encoder = load_encoder(candidate, device)
        except Exception as e:  # EncoderUnavailable, or a folder that is not an open_clip model
            errors.append(f"{candidate}: {e}")
            continue
        got = encoder.fingerprint()
        if want is not None and got != want:
            errors.append(f"{candidate}: weights fingerprint {got}")
            continue
        if candidate != name:
            log.info("encoder %s is not where the run left it; %s has the same weights", name, candidate)
        wanted_pre = header.get("preprocess")
        if wanted_pre is not None and wanted_pre != encoder.preprocess_description():
            raise RunMismatch(f"encoder {name}: its preprocessing {encoder.preprocess_description()} differs "
                              f"from the run's {wanted_pre}")
        return encoder
    raise RunMismatch(
        f"The run {root} was embedded with encoder {name!r} (weights fingerprint {want}); no encoder with those "
        "weights loads here (" + "; ".join(errors) + "). An encoder whose weights changed would explain another "
        "model, so nothing is explained: restore the original weights, or re-run notebook 01 (embed) and the "
        "stages after it with the encoder you have.")


@torch.no_grad()
def pattern_top_images(ensemble: nn.Module, latent_pattern: torch.Tensor, n_patterns: int, x: torch.Tensor,
                       k: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pattern, the ``k`` rows of ``x`` where its activation (sum of its latents' codes / members) is
    largest: (indices (n_patterns, k) with -1 where fewer are active, values (n_patterns, k))."""
    device = ensemble.W_dec.device
    n_members = ensemble.W_dec.shape[0]
    cols = pattern_columns(latent_pattern, n_patterns).to(device)
    best_v = torch.zeros(n_patterns, 0, device=device)
    best_i = torch.zeros(n_patterns, 0, dtype=torch.long, device=device)
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(device)
        z = ensemble.encode(xb)  # (n_members, b, d_dict)
        m, b, i = torch.nonzero(z, as_tuple=True)
        act = torch.zeros(len(xb), n_patterns + 1, device=device)
        act.index_put_((b, cols[m, i]), z[m, b, i] / n_members, accumulate=True)
        vals = torch.cat([best_v, act[:, :n_patterns].T], 1)
        idx = torch.cat([best_i, torch.arange(s, s + len(xb), device=device).expand(n_patterns, -1)], 1)
        best_v, pos = vals.topk(min(k, vals.shape[1]), dim=1)
        best_i = idx.gather(1, pos)
    best_i = torch.where(best_v > 0, best_i, torch.full_like(best_i, -1))
    return best_i.cpu(), best_v.cpu()


def _pool(rd: RunDir, store: EmbeddingStore, manifest: pd.DataFrame, ens: nn.Module, ps: PatternSet,
          max_images: int, k: int) -> Pool:
    rows = pool_rows(manifest["split"].to_numpy(), store.ok, max_images)
    x = torch.from_numpy(np.asarray(store.image[rows], dtype=np.float32))
    finite = torch.isfinite(x).all(1).numpy()
    rows, x = rows[finite], x[finite]
    sub = manifest.iloc[rows]
    top_i, top_v = pattern_top_images(ens, ps.latent_pattern, ps.n_patterns, x, k)
    return Pool(image_ids=sub["image_id"].astype(str).to_numpy(),
                paths=[resolve_image_path(rd.manifest, p) for p in sub["image_path"].astype(str)],
                labels=sub[list(FINDINGS)].to_numpy(np.float32), x=x, top_index=top_i, top_value=top_v)


def load_explain_run(run_dir: str | Path, device: str | torch.device = "cpu", pool_images: int = 5000,
                     n_thumbnails: int = 4) -> LoadedRun:
    """Load a finished run (notebooks 00-04 at least) for explaining new images; RunMismatch when it cannot be."""
    rd = RunDir(Path(run_dir))
    root = rd.root.resolve()
    for needed in ("embed/header.json", "classifier/config.json", "transcoders/config.json",
                   "patterns/directions.safetensors"):
        if not (root / needed).is_file():
            raise RunMismatch(f"{root / needed} is missing: run notebooks 00-04 on this run directory first")
    device = torch.device(device)
    store = EmbeddingStore.open(rd.embed)
    encoder = load_run_encoder(root, store.header, device)
    classifier = load_classifier(rd.classifier, device)
    ensemble = TranscoderEnsemble.load(rd.transcoders, device).eval()
    ps = PatternSet.load(rd.patterns)
    if int(ensemble.W_dec.shape[0]) != ps.n_members:
        raise RunMismatch(f"the patterns were merged from {ps.n_members} members, the ensemble has "
                          f"{int(ensemble.W_dec.shape[0])}: re-run notebook 04")
    table = load_pattern_table(rd.patterns, ps)
    manifest = read_table(rd.manifest)
    pool = _pool(rd, store, manifest, ensemble, ps, pool_images, n_thumbnails)
    paths = [resolve_image_path(rd.manifest, p) for p in manifest["image_path"].astype(str)]
    run_rows = {str(p.resolve()): (r, str(i), str(s)) for r, (p, i, s) in
                enumerate(zip(paths, manifest["image_id"], manifest["split"], strict=True))}
    log.info("run %s: encoder %s, %d patterns, %d pool images", root, encoder.name, ps.n_patterns, len(pool.x))
    ood = OODReference.load(rd.attribution) if (root / "attribution").is_dir() else None
    if ood is None:
        log.warning("%s has no out-of-distribution reference (notebook 06 writes it): films are explained without "
                    "checking that they look like the run's films", root)
    return LoadedRun(root=root, store=store, encoder=encoder, classifier=classifier, ensemble=ensemble,
                     patterns=ps, table=table, info=pattern_info(table),
                     dataset=",".join(sorted(set(manifest["dataset"].astype(str)))), pool=pool, run_rows=run_rows,
                     calibration=load_calibration(rd.classifier), ood=ood, leans_on=_leans_on(rd))


def _leans_on(rd: RunDir) -> dict[str, dict]:
    """Per finding, the device or artifact pattern notebook 06 flagged in its reliance table (none: not run)."""
    path = rd.attribution / "reliance.parquet"
    if not path.exists():
        return {}
    return {f: v["flagged"] for f, v in leans_on(read_table(path)).items() if v["flagged"]}
