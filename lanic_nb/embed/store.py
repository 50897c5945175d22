"""The embedding store: image, report and report-sentence embeddings, row-aligned with the manifest.

Layout of ``<run_dir>/embed/`` (raw float32 memmaps; their shapes live in the header)::

    header.json        encoder (+ weights fingerprint), preprocess, dim, dtype, n_rows, manifest hash,
                       done batches, errors
    image.f32          (n_rows, dim)       L2-normalized; NaN rows = unreadable image (see status)
    report.f32         (n_rows, dim)       whole report; NaN where a row has no report
    sentence.f32       (n_sentences, dim)  one row per report sentence
    sentences.parquet  row, sentence, text (the sentence table, row-aligned with sentence.f32)
    status.parquet     row, image_id, status ("ok", "pending" or the reason an image was unreadable)

Resumable: rows are processed in fixed batches of ``batch_size`` consecutive rows; after a batch's
embeddings are flushed to disk its index is added to the header (atomic rename), so an interrupted run
redoes at most one batch and ends bit-for-bit equal to an uninterrupted one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lanic_nb.embed.encoders import Encoder, preprocess_gray
from lanic_nb.images import ImageReadError, load_image
from lanic_nb.io import read_json, read_table, write_json, write_table
from lanic_nb.manifest import manifest_hash, resolve_image_path
from lanic_nb.progress import progress
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILES = {"image": "image.f32", "report": "report.f32", "sentence": "sentence.f32"}


def split_sentences(text: str) -> list[str]:
    """Report -> sentences, with section headings such as ``FINDINGS:`` removed."""
    text = re.sub(r"\b[A-Z][A-Z ]+:", " ", str(text))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) > 1]


def sentence_table(reports: Sequence[str]) -> pd.DataFrame:
    """One row per sentence: ``row`` (manifest row), ``sentence`` (index within its report), ``text``."""
    rows, idx, texts = [], [], []
    for r, rep in enumerate(reports):
        for j, s in enumerate(split_sentences(rep) if isinstance(rep, str) else []):
            rows.append(r)
            idx.append(j)
            texts.append(s)
    return pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "sentence": np.asarray(idx, dtype=np.int32),
                         "text": pd.Series(texts, dtype="string")})


class ImageRows(Dataset):
    """Decodes + preprocesses manifest rows in worker processes; unreadable images carry their reason."""

    def __init__(self, paths: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float]):
        self.paths, self.size, self.mean, self.std = list(paths), size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            img = torch.from_numpy(load_image(self.paths[i]))
        except ImageReadError as e:
            return i, None, e.reason
        return i, preprocess_gray(img, self.size, self.mean, self.std), "ok"


def collate_rows(items: list[tuple[int, torch.Tensor | None, str]]) -> dict[str, Any]:
    """Stack the readable images of a batch; keep every row's index and status."""
    good = [x for _, x, _ in items if x is not None]
    return {
        "rows": [i for i, _, _ in items],
        "status": [s for _, _, s in items],
        "images": torch.stack(good) if good else None,  # (n_ok, 3, S, S)
    }


@dataclass
class EmbeddingStore:
    """Read-only view of an embedding folder (arrays are memory-mapped)."""

    path: Path
    header: dict
    image: np.ndarray  # (n_rows, dim)
    report: np.ndarray  # (n_rows, dim)
    sentence: np.ndarray  # (n_sentences, dim)
    sentences: pd.DataFrame
    status: pd.Series  # (n_rows,) "ok" / "pending" / reason

    @property
    def ok(self) -> np.ndarray:
        """(n_rows,) True where the image embedding exists."""
        return (self.status == "ok").to_numpy()

    @property
    def complete(self) -> bool:
        return bool(self.header["complete"])

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingStore:
        path = Path(path)
        header = read_json(path / "header.json")
        n, d, m = header["n_rows"], header["dim"], header["n_sentences"]
        return cls(
            path=path,
            header=header,
            image=_memmap(path / FILES["image"], (n, d), "r"),
            report=_memmap(path / FILES["report"], (n, d), "r"),
            sentence=_memmap(path / FILES["sentence"], (m, d), "r"),
            sentences=read_table(path / "sentences.parquet"),
            status=pd.Series(_statuses(header), dtype="string"),
        )


def _memmap(path: Path, shape: tuple[int, int], mode: str) -> np.ndarray:
    if shape[0] == 0:  # numpy cannot map an empty file
        return np.zeros(shape, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode=mode, shape=shape)


def _batches(n: int, batch_size: int) -> list[range]:
    return [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def _statuses(header: dict) -> list[str]:
    status = ["pending"] * header["n_rows"]
    for b in header["done_batches"]:
        for r in _batches(header["n_rows"], header["batch_size"])[b]:
            status[r] = "ok"
    for r, reason in header["errors"].items():
        status[int(r)] = reason
    return status


def _new_store(folder: Path, header: dict, sentences: pd.DataFrame) -> None:
    """Preallocate NaN-filled arrays, then the sentence table, then the header (last: it marks validity)."""
    (folder / "header.json").unlink(missing_ok=True)
    n, d, m = header["n_rows"], header["dim"], header["n_sentences"]
    for key, rows in (("image", n), ("report", n), ("sentence", m)):
        (folder / FILES[key]).unlink(missing_ok=True)
        if rows:
            mm = np.memmap(folder / FILES[key], dtype=np.float32, mode="w+", shape=(rows, d))
            mm[:] = np.nan  # never a silent zero row: unwritten rows read as NaN
            mm.flush()
            del mm
    write_table(folder / "sentences.parquet", sentences)
    write_json(folder / "header.json", header)


def _write_status(folder: Path, header: dict, image_ids: Sequence[str]) -> None:
    write_table(folder / "status.parquet", pd.DataFrame({
        "row": np.arange(header["n_rows"]), "image_id": pd.Series(list(image_ids), dtype="string"),
        "status": pd.Series(_statuses(header), dtype="string")}))


@torch.no_grad()
def embed_manifest(
    run_dir: str | Path,
    encoder: Encoder,
    manifest: pd.DataFrame,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    data_dir: str | Path | None = None,
    max_batches: int | None = None,
    resume: bool = True,
) -> EmbeddingStore:
    """Embed every manifest row's image, report and report sentences into ``<run_dir>/embed``.

    ``data_dir`` is the folder that relative ``image_path`` entries are relative to (default: the run's
    data folder). ``max_batches`` stops after that many batches (to interrupt on purpose); calling again
    resumes. With ``resume=False`` or a header that does not match (encoder name or weights, manifest,
    batch size) the store is rebuilt from scratch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    rd = RunDir(Path(run_dir))
    folder = rd.embed
    data_dir = Path(data_dir) if data_dir is not None else rd.data
    if device is not None:
        encoder.model.to(torch.device(device))
    dev = encoder.device
    n = len(manifest)
    sentences = sentence_table(manifest["report"].fillna("").astype(str).tolist())
    wanted = {
        "format_version": FORMAT_VERSION, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint(),
        "preprocess": encoder.preprocess_description(),
        "dim": encoder.embed_dim, "dtype": "float32", "n_rows": n, "n_sentences": len(sentences),
        "manifest_hash": manifest_hash(manifest), "batch_size": batch_size, "files": FILES,
    }
    header = read_json(folder / "header.json") if (folder / "header.json").exists() else None
    if not (resume and header and all(header.get(k) == v for k, v in wanted.items())):
        if header:
            log.info("embedding store at %s does not match this run; rebuilding it", folder)
        header = dict(wanted, done_batches=[], errors={}, complete=False)
        _new_store(folder, header, sentences)
    batches = _batches(n, batch_size)
    done = set(header["done_batches"])
    todo = [b for b in range(len(batches)) if b not in done][: max_batches]
    paths = [resolve_image_path(data_dir / "manifest.parquet", p) for p in manifest["image_path"].astype(str)]
    reports = manifest["report"].fillna("").astype(str).tolist()
    # Sentence rows of manifest row r are [offsets[r], offsets[r + 1]) (the table is sorted by row).
    offsets = np.searchsorted(sentences["row"].to_numpy(), np.arange(n + 1), side="left")
    sent_text = sentences["text"].astype(str).tolist()

    mm = {k: _memmap(folder / FILES[k], s, "r+") for k, s in
          (("image", (n, encoder.embed_dim)), ("report", (n, encoder.embed_dim)),
           ("sentence", (len(sentences), encoder.embed_dim)))}
    loader = DataLoader(
        ImageRows(paths, encoder.image_size, encoder.mean, encoder.std),
        batch_sampler=[list(batches[b]) for b in todo], num_workers=num_workers, collate_fn=collate_rows,
        pin_memory=dev.type == "cuda",
    )
    for b, batch in zip(todo, progress(loader, total=len(todo), desc="embed"), strict=True):
        rows = np.asarray(batch["rows"])
        ok = np.asarray([s == "ok" for s in batch["status"]])
        img = np.full((len(rows), encoder.embed_dim), np.nan, dtype=np.float32)
        if batch["images"] is not None:
            img[ok] = encoder.encode_images(batch["images"].to(dev, non_blocking=True)).cpu().numpy()
        mm["image"][rows] = img
        has_text = [r for r in rows if reports[r].strip()]
        if has_text:
            mm["report"][has_text] = encoder.encode_texts([reports[r] for r in has_text]).cpu().numpy()
        lo, hi = offsets[rows[0]], offsets[rows[-1] + 1]
        if hi > lo:
            mm["sentence"][lo:hi] = encoder.encode_texts(sent_text[lo:hi]).cpu().numpy()
        for m in mm.values():
            if isinstance(m, np.memmap):
                m.flush()  # data on disk before the header says the batch is done
        for r, s in zip(rows, batch["status"], strict=True):
            if s != "ok":
                header["errors"][str(int(r))] = s
        header["done_batches"] = sorted(done | {b})
        done.add(b)
        header["complete"] = len(done) == len(batches)
        write_json(folder / "header.json", header)
    del mm
    header["complete"] = len(done) == len(batches)
    write_json(folder / "header.json", header)
    _write_status(folder, header, manifest["image_id"].astype(str).tolist())
    if header["errors"]:
        log.warning("%d of %d images could not be read (see %s)", len(header["errors"]), n,
                    folder / "status.parquet")
    return EmbeddingStore.open(folder)


@dataclass
class EmbeddedRows:
    """The readable images of a run (or of one split), row-aligned with their manifest rows.

    The one place that decides which rows later stages use: a row is used when its embedding was written
    ("ok" in the store's status) and is finite.
    """

    store: EmbeddingStore
    manifest: pd.DataFrame  # the used rows of the manifest, in embedding order, index reset
    rows: np.ndarray  # (n,) row of each in the full manifest / store
    x: np.ndarray  # (n, d_in) float32 image embeddings

    @property
    def image_ids(self) -> np.ndarray:
        return self.manifest["image_id"].astype(str).to_numpy()


def load_embedded(run_dir: str | Path, split: str | None = None, max_images: int | None = None) -> EmbeddedRows:
    """Open a run's embedding store and manifest and keep the readable rows (of ``split`` if given)."""
    rd = RunDir(Path(run_dir))
    store = EmbeddingStore.open(rd.embed)
    manifest = read_table(rd.manifest)
    if len(manifest) != len(store.ok):
        raise ValueError(f"manifest has {len(manifest)} rows, the embedding store {len(store.ok)}: "
                         "re-run the embed stage for this manifest")
    keep = store.ok & np.isfinite(np.asarray(store.image)).all(1)
    if split is not None:
        keep &= (manifest["split"].astype(str) == split).to_numpy()
    rows = np.flatnonzero(keep)[:max_images]
    if len(rows) == 0:
        raise ValueError(f"no readable images{f' in split {split!r}' if split else ''} in {rd.root}")
    return EmbeddedRows(store=store, manifest=manifest.iloc[rows].reset_index(drop=True), rows=rows,
                        x=np.asarray(store.image[rows], dtype=np.float32))
