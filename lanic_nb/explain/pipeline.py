"""Explain image files with a loaded run: read, check, embed, classify, decompose, name, write the text.

``Explainer`` holds one ``LoadedRun`` and explains any number of files in batches. Each file becomes one
``ImageExplanation``: either ``status == "ok"`` with the exact decomposition of its five logits (pattern
contributions + unassigned latents + bias + reconstruction error), or ``"error"`` / ``"refused"`` with the
reason (an unreadable file, a DICOM that is not a chest radiograph under ``modality_check="refuse"``). One bad
file never stops the others.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lanic_nb.attribute.core import Attribution, attribute
from lanic_nb.attribute.ood import explain_ood, ood_table, unexplained_share
from lanic_nb.classify.calibrate import Calibration
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.model import LoadedRun
from lanic_nb.explain.text import Annotator, PatternEvidence, explain_prediction, top_evidence
from lanic_nb.images import (
    ImageReadError,
    chest_radiograph_problems,
    dicom_info,
    image_properties,
    is_dicom,
    load_image,
    sanity_problems,
)
from lanic_nb.manifest import FINDINGS
from lanic_nb.progress import progress

log = logging.getLogger(__name__)


@dataclass
class ImageExplanation:
    """One image's explanation, or the reason there is none."""

    image_id: str
    """Name of the outputs (``<image_id>.json`` / ``.html``)."""
    source: Path
    """The file that was read."""
    status: str
    """"ok", "error" (unreadable) or "refused" (not a chest radiograph, under modality_check="refuse")."""
    reason: str = ""
    """Why it was not explained (status != "ok")."""
    warnings: list[str] = field(default_factory=list)
    """What the reader should know (e.g. the Modality is not CR/DX); the image was still explained."""
    info: dict = field(default_factory=dict)
    """What the file is: format, size, and for DICOM the header fields the checks read."""
    attribution: Attribution | None = None
    """The decomposition of this image alone (batch of 1), float64."""
    texts: list[str] = field(default_factory=list)
    """The explanation of each finding, in FINDINGS order."""
    evidence: list[list[PatternEvidence]] = field(default_factory=list)
    """The top ``n_shown`` patterns of each finding, largest |contribution| first."""
    neighbors: list[tuple[int, float]] = field(default_factory=list)
    """(pool row, cosine similarity) of the nearest training images, most similar first."""
    run_image: dict | None = None
    """When the file is one of the run's own images: its image_id, split and how far the new embedding is from
    the stored one."""
    thumbnail: bytes = b""
    """A PNG of the image as read (at most 256 px)."""
    pattern_names: dict[int, str] = field(default_factory=dict)
    """Names the annotator model gave the shown patterns (name_patterns=True)."""
    calibration: Calibration | None = None
    """The run's logit -> probability map (None: the raw sigmoid)."""
    ood: dict | None = None
    """The out-of-distribution check (``attribute.ood``): its signals, p-value, score, ``flagged`` and ``why``
    (None: the run has no reference)."""

    @property
    def outside(self) -> bool:
        """Whether the film lies outside what the run knows (its probabilities and patterns are not to be trusted)."""
        return bool(self.ood and self.ood["flagged"])

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def probabilities(self) -> np.ndarray:
        """(5,) calibrated probabilities of the logits (the decomposition stays exact on the logits)."""
        logits = self.attribution.logits[0].numpy()
        return (1.0 / (1.0 + np.exp(-logits)) if self.calibration is None
                else self.calibration.probabilities(logits[None])[0])


def shown_patterns(e: ImageExplanation, n: int) -> list[int]:
    """The patterns of the waterfalls (top ``n`` per finding), by their largest |contribution| here."""
    c = e.attribution.contributions[0].numpy()
    best: dict[int, float] = {}
    for f in range(c.shape[1]):
        for p in np.argsort(-np.abs(c[:, f]), kind="stable")[:n]:
            if c[p, f] != 0:
                best[int(p)] = max(best.get(int(p), 0.0), abs(float(c[p, f])))
    return sorted(best, key=lambda p: -best[p])


def _png(arr: np.ndarray, size: int = 256) -> bytes:
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)  # a page per image: fast beats small
    return buf.getvalue()


class Explainer:
    """Explains image files with one loaded run (load once with ``load_explain_run``, then call many times)."""

    def __init__(self, run: LoadedRun, config: ExplainConfig | None = None, annotator: Annotator | None = None,
                 namer=None):
        self.run, self.cfg, self.annotator, self.namer = run, config or ExplainConfig(), annotator, namer
        self._names: dict[int, str] = {}  # the namer's answers, once per pattern
        self.load_seconds = 0.0  # how long loading the run took (set by open_explainer)

    # ------------------------------------------------------------ reading

    def read(self, path: Path) -> tuple[torch.Tensor, list[str], dict, bytes]:
        """(preprocessed (3, S, S), warnings, info, thumbnail PNG); ImageReadError / ValueError("refused: ...")."""
        warnings: list[str] = []
        info: dict = {"file": path.name}
        if is_dicom(path):
            d = dicom_info(path)
            info.update(format="DICOM", modality=d.modality, body_part=d.body_part, view_position=d.view_position,
                        transfer_syntax=d.transfer_syntax, photometric=d.photometric, n_frames=d.n_frames)
            problems = chest_radiograph_problems(d)
            if problems and self.cfg.modality_check == "refuse":
                raise _Refused("; ".join(problems))
            warnings += problems
            if d.n_frames > 1:
                warnings.append(f"{d.n_frames} frames: only the first is explained")
        arr = load_image(path)
        info.setdefault("format", path.suffix.lstrip(".").upper() or "image")
        info["shape"] = list(arr.shape)
        info["properties"] = image_properties(path, gray=arr)
        enc = self.run.encoder
        return enc.preprocess_array(torch.from_numpy(arr)), warnings, info, _png(arr)

    # ------------------------------------------------------------ explaining

    def explain_files(self, files: Sequence[tuple[str, Path]], show_progress: bool = True) -> list[ImageExplanation]:
        """Explain ``(image_id, path)`` pairs; the result is in the same order, one entry per file."""
        out: list[ImageExplanation | None] = [None] * len(files)
        batch: list[tuple[int, torch.Tensor]] = []
        for k, (image_id, path) in enumerate(progress(files, desc="explain", disable=not show_progress
                                                       or len(files) < 4)):
            path = Path(path)
            try:
                x, warnings, info, thumb = self.read(path)
            except ImageReadError as e:
                out[k] = ImageExplanation(image_id, path, "error", reason=e.reason, info={"file": path.name})
                log.warning("%s: %s", path, e.reason)
                continue
            except _Refused as e:
                out[k] = ImageExplanation(image_id, path, "refused", reason=str(e), info={"file": path.name})
                log.warning("%s: refused: %s", path, e)
                continue
            out[k] = ImageExplanation(image_id, path, "ok", warnings=warnings, info=info, thumbnail=thumb)
            batch.append((k, x))
            if len(batch) >= self.cfg.batch_size:
                self._explain_batch(batch, out)
                batch = []
        if batch:
            self._explain_batch(batch, out)
        return [e for e in out if e is not None]

    def explain_file(self, path: str | Path, image_id: str | None = None) -> ImageExplanation:
        path = Path(path)
        return self.explain_files([(image_id or path.stem, path)], show_progress=False)[0]

    @torch.no_grad()
    def _explain_batch(self, batch: list[tuple[int, torch.Tensor]], out: list) -> None:
        run = self.run
        x = run.encoder.encode_images(torch.stack([t for _, t in batch])).float().cpu()  # (b, d) L2-normalized
        attr = attribute(run.classifier, run.ensemble, run.patterns.latent_pattern, run.n_patterns, x)
        sims = x @ run.pool.x.T if len(run.pool.x) else torch.zeros(len(x), 0)
        n_nb = min(self.cfg.n_neighbors, sims.shape[1])
        near = sims.topk(n_nb, dim=1) if n_nb else None
        for j, (k, _) in enumerate(batch):
            e = out[k]
            e.attribution = Attribution(attr.contributions[j : j + 1], attr.other[j : j + 1], attr.bias,
                                        attr.error[j : j + 1], attr.logits[j : j + 1], attr.activations[j : j + 1])
            if near is not None:
                e.neighbors = [(int(i), float(v)) for v, i in zip(near.values[j], near.indices[j], strict=True)]
            e.calibration = run.calibration
            e.ood = self._ood(e, x[j], attr, j)
            if e.outside and self.cfg.ood == "refuse":
                e.status, e.reason = "refused", e.ood["why"]
                continue
            e.run_image = self._run_image(e.source, x[j])
            self._name_patterns(e)
            self._write_texts(e)

    def _ood(self, e: ImageExplanation, x: torch.Tensor, attr: Attribution, j: int) -> dict | None:
        ref = self.run.ood
        if ref is None:
            return None
        problems = sanity_problems(e.info["properties"], ref.films)
        one = Attribution(attr.contributions[j: j + 1], attr.other[j: j + 1], attr.bias, attr.error[j: j + 1],
                          attr.logits[j: j + 1], attr.activations[j: j + 1])
        row = ood_table(ref.distance(x[None].numpy()), unexplained_share(one), ref, [problems]).iloc[0]
        out = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        out["score"] = out["score"] if np.isfinite(out["score"]) else None  # not a radiograph: no finite score
        out["threshold"] = ref.threshold
        out["why"] = explain_ood(row) if row["flagged"] else ""
        return out

    def _run_image(self, path: Path, x: torch.Tensor) -> dict | None:
        hit = self.run.run_rows.get(str(path.resolve()))
        if hit is None:
            return None
        row, image_id, split = hit
        stored = self.run.stored_embedding(row)
        diff = float(np.abs(stored - x.numpy()).max()) if np.isfinite(stored).all() else None
        return {"row": row, "image_id": image_id, "split": split, "embedding_max_abs_diff": diff}

    def _name_patterns(self, e: ImageExplanation) -> None:
        """The namer's names of the shown patterns (asked once per pattern, from its top training images)."""
        if self.namer is None:
            return
        pool = self.run.pool
        for p in shown_patterns(e, self.cfg.n_shown):
            if p not in self._names:
                images = []
                for i in (int(i) for i in pool.top_index[p] if i >= 0):
                    try:
                        images.append(load_image(pool.paths[i]))
                    except ImageReadError as err:
                        log.warning("pattern %d: %s", p, err)
                cat, concepts = self.run.info.get(p, ("", ()))
                self._names[p] = self.namer.name(images, cat, concepts) if images else ""
            if self._names[p]:
                e.pattern_names[p] = self._names[p]

    def _write_texts(self, e: ImageExplanation) -> None:
        at = e.attribution
        c = at.contributions[0].numpy()
        info = self.run.info
        if e.pattern_names:  # the model's names go first among the concepts
            info = {**info, **{p: (info.get(p, ("", ()))[0], (n, *info.get(p, ("", ()))[1]))
                               for p, n in e.pattern_names.items()}}
        e.evidence, e.texts = [], []
        for f, finding in enumerate(FINDINGS):
            ev = top_evidence(c[:, f], info, None, self.cfg.n_shown)
            e.evidence.append(ev)
            e.texts.append(explain_prediction(finding, float(e.probabilities[f]), ev,
                                              total_abs=float(np.abs(c[:, f]).sum()), error=float(at.error[0, f]),
                                              annotator=self.annotator, image_path=e.source))


class _Refused(ValueError):
    """A DICOM refused by the modality check."""
