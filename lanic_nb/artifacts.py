"""What stages read from each other, in one layer: the run's artifacts loaded by the stages that use them.

A stage never imports another stage's module; what it needs of an earlier stage (the usable rows, the
classifier, the ensemble, the pattern set and its table) comes from here or from the domain module that owns
the format (``classify.model``, ``transcoder.model``, ``patterns.merge``, ``embed.store``). Each stage function
starts with ``require_inputs``, so a stage run before its inputs exist names the stages that make them and the
command that runs them, instead of a traceback about a missing file.

``Run`` is the same layer for a researcher's own code: ``Run("runs/demo").pattern_table`` and friends.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lanic_nb.classify.model import DiagnosticClassifier, load_classifier
from lanic_nb.embed.store import EmbeddedRows, EmbeddingStore, load_embedded
from lanic_nb.io import read_json, read_table, read_tensors, stray_temp_files, write_json, write_tensors
from lanic_nb.manifest import FINDINGS
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir, load_metrics, run_lock
from lanic_nb.stages import (  # noqa: F401  (the stages' state, re-exported: artifacts is where users look)
    STAGE_STATE,
    STAGES,
    interrupted,
    missing_stages,
    running_marker,
    stage,
    stage_record,
    upstream,
)
from lanic_nb.transcoder.model import TranscoderEnsemble

log = logging.getLogger(__name__)

PATTERN_TABLE = "patterns.parquet"
"""The pattern stage's table (one row per pattern), under ``patterns/``."""
INPUT_DECODER = "input_decoder.safetensors"
"""The decoder's input part of an ensemble trained with ``input_weight`` (W_dec_input, (n_members, d_dict, d_in)):
beside the saved x -> h transcoder under ``transcoders/``, read by the pattern merge."""


# ------------------------------------------------------------------------------------------ stages' state

class MissingInputs(FileNotFoundError):
    """A stage ran before the stages whose outputs it reads; the message names them and the command to run."""


def require_inputs(run_dir: str | Path, name: str) -> None:
    """Raise ``MissingInputs`` when a stage that ``name`` reads has not finished in ``run_dir``."""
    needed = missing_stages(run_dir, upstream(name))
    if not needed:
        return
    root = Path(run_dir)
    first = needed[0]
    if interrupted(root, first):
        since = read_json(running_marker(root, first)).get("since", "?")
        why = f"{first} was interrupted (it started at {since} and did not finish: its files may be half-written)"
    else:
        absent = [f for f in STAGES[first].outputs if not (root / f).exists()]
        why = f"{first}: {', '.join(absent)} missing"
    prefixes = " ".join(STAGES[n].prefix for n in needed)
    raise MissingInputs(
        f"{name} reads what {', '.join(needed)} write, and {root} does not hold it yet ({why}). Run those stages "
        f"first, e.g.\n    python -m lanic_nb.run_notebooks --run-dir {root} --only {prefixes}\n"
        f"or open their notebooks ({', '.join(n + '.ipynb' for n in needed)}) with this run_dir, in order."
    )


@contextlib.contextmanager
def writing_stage(run_dir: str | Path, name: str, config=None) -> Iterator[None]:
    """Hold the run's lock while stage ``name`` writes, marked unfinished until it returns.

    Later stages (``require_inputs``) and ``Run`` treat a stage whose ``.running`` marker remains (a killed or
    failed run) as not finished, so nothing reads its half-written files; rerunning the stage finishes it.
    """
    from lanic_nb.fingerprint import stage_fingerprint  # both read the stage table, which names this module's users
    from lanic_nb.settings import to_dict

    root = Path(run_dir)
    with run_lock(root, name):
        fingerprint = stage_fingerprint(root, name, config) if config is not None else None
        marker, record = running_marker(root, name), stage_record(root, name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        for top in [root / w for w in STAGES[name].writes if w and (root / w).is_dir()]:
            for stray in stray_temp_files(top):  # half-written files of a killed run of this stage
                stray.unlink(missing_ok=True)
        write_json(marker, {"since": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()})
        t0 = time.perf_counter()
        yield
        write_json(record, {"stage": name, "seconds": round(time.perf_counter() - t0, 1),
                            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
                            "fingerprint": fingerprint, "config": to_dict(config) if config is not None else None})
        marker.unlink()


def stage_function(name: str, reads_run=None):
    """Decorate ``run_<stage>(run_dir, config=None, ...)``: fill in the default config, check the stage's inputs,
    then run it under ``writing_stage``. ``reads_run(config)``: whether this config reads the earlier stages at all
    (the embedding stage pointed at another manifest does not)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(run_dir, config=None, *args, **kwargs):
            config = config if config is not None else STAGES[name].config_class()()
            if reads_run is None or reads_run(config):
                require_inputs(run_dir, name)
            with writing_stage(run_dir, name, config):
                return fn(run_dir, config, *args, **kwargs)
        return run
    return wrap


def owned_files(run_dir: str | Path, name: str) -> list[Path]:
    """Every file stage ``name`` wrote in ``run_dir`` (its ``writes`` and metrics), sorted; files under another
    stage's nested folder (05's ``patterns/maps`` inside 04's ``patterns``) are that stage's."""
    root = Path(run_dir)
    others = [root / w for s in STAGES.values() if s.name != name for w in s.writes]
    mine = [root / w for w in STAGES[name].writes] + [root / "metrics" / f"{name}.json"]
    files = []
    for top in mine:
        if not top.exists():
            continue
        for f in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            if not any(o != top and o.is_relative_to(top) and f.is_relative_to(o) for o in others):
                files.append(f)
    return sorted(files)


# ------------------------------------------------------------------------------------------ rows and models


@dataclass
class StageData:
    """The run's usable rows: embeddings, labels and splits, row-aligned (rows without an embedding dropped)."""

    X: np.ndarray  # (n, d_in) float32
    Y: np.ndarray  # (n, 5) labels 1 / 0 / -1 / NaN
    split: np.ndarray  # (n,) "train" / "val" / "test"
    image_id: np.ndarray  # (n,)


def load_stage_data(run_dir: str | Path) -> StageData:
    """The run's readable rows: embeddings, labels and splits (what the classifier and transcoders train on)."""
    emb = load_embedded(run_dir)
    return StageData(
        X=emb.x,
        Y=emb.manifest[list(FINDINGS)].to_numpy(dtype=np.float32),
        split=emb.manifest["split"].astype(str).to_numpy(),
        image_id=emb.image_ids,
    )


def save_input_decoder(folder: str | Path, w: torch.Tensor | None) -> None:
    """Write (or, for an ensemble trained without ``input_weight``, remove a stale) ``INPUT_DECODER``."""
    path = Path(folder) / INPUT_DECODER
    if w is None:
        path.unlink(missing_ok=True)
    else:
        write_tensors(path, {"W_dec_input": w.detach().cpu().contiguous()})


def merge_features(folder: str | Path, ensemble: TranscoderEnsemble) -> torch.Tensor:
    """What the pattern merge compares latents by: each latent's whole trained decoder row [h part, input part]
    when the ensemble was trained with ``input_weight`` (``INPUT_DECODER``), else its decoder row in h
    (n_members, d_dict, d_out [+ d_in])."""
    path = Path(folder) / INPUT_DECODER
    w = ensemble.W_dec.detach().cpu()
    if not path.exists():
        return w
    w_in = read_tensors(path)["W_dec_input"]
    if w_in.shape[:2] != w.shape[:2]:
        raise ValueError(f"{path} holds {tuple(w_in.shape[:2])} latents, the ensemble {tuple(w.shape[:2])}: "
                         "rerun 03")
    return torch.cat([w, w_in], dim=-1)


def load_pattern_table(folder: str | Path, patterns: PatternSet) -> pd.DataFrame:
    """patterns.parquet in pattern order (one row per pattern), or, before the pattern stage has named them,
    a bare table of ids and consistencies."""
    path = Path(folder) / PATTERN_TABLE
    if not path.exists():
        log.warning("%s not found: patterns have no concepts or categories", path)
        return pd.DataFrame({"pattern_id": np.arange(patterns.n_patterns), "category": "",
                             "consistency": patterns.consistency.numpy()})
    table = read_table(path).sort_values("pattern_id").reset_index(drop=True)
    if len(table) != patterns.n_patterns:
        raise ValueError(f"{path} has {len(table)} patterns, the pattern set {patterns.n_patterns}: rerun 04")
    return table


@dataclass
class StageInputs:
    """What the pattern stage (and MAMMI) read from earlier stages of a run (readable images only)."""

    ensemble: TranscoderEnsemble
    classifier: torch.nn.Module
    store: EmbeddingStore
    manifest: pd.DataFrame  # rows of the readable images, in embedding order
    x: torch.Tensor  # (n_images, d_in) image embeddings
    image_ids: np.ndarray  # (n_images,) str


def load_stage_inputs(run_dir: str | Path, device: str | torch.device = "cpu") -> StageInputs:
    """Ensemble, classifier, embedding store and manifest of a run (never the ground truth)."""
    rd = RunDir(Path(run_dir))
    emb = load_embedded(rd.root)
    return StageInputs(
        ensemble=TranscoderEnsemble.load(rd.transcoders, device),
        classifier=load_classifier(rd.classifier, device).eval(),
        store=emb.store,
        manifest=emb.manifest,
        x=torch.from_numpy(emb.x),
        image_ids=emb.image_ids,
    )


@dataclass
class SplitInputs:
    """What attribution and the galleries need from a run directory, for the readable images of one split."""

    classifier: nn.Module
    ensemble: nn.Module
    patterns: PatternSet
    x: torch.Tensor  # (n, d_in) image embeddings
    rows: np.ndarray  # (n,) manifest row of each embedding
    manifest: pd.DataFrame  # the rows themselves


def load_split(run_dir: str | Path, split: str = "test", device: str | torch.device = "cpu",
               max_images: int | None = None) -> SplitInputs:
    """Load the classifier, ensemble, patterns and the split's embeddings from a run directory."""
    rd = RunDir(Path(run_dir))
    emb = load_embedded(rd.root, split=split, max_images=max_images)
    return SplitInputs(
        classifier=load_classifier(rd.classifier, device),
        ensemble=TranscoderEnsemble.load(rd.transcoders, device),
        patterns=PatternSet.load(rd.patterns),
        x=torch.from_numpy(emb.x),
        rows=emb.rows,
        manifest=emb.manifest,
    )


# ------------------------------------------------------------------------------------------ a finished run


class Run:
    """A run directory's artifacts, loaded on first use (CPU unless ``device`` says otherwise).

        run = Run("runs/demo")
        run.pattern_table.head()            # patterns.parquet: names, categories, consistency, effects
        rows = run.embeddings("test")       # the readable test images: .x, .manifest, .image_ids
        attr = attribute(run.classifier, run.ensemble, run.patterns.latent_pattern, run.patterns.n_patterns,
                         torch.from_numpy(rows.x))
    """

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        self.root = Path(run_dir)
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r}, finished stages: {', '.join(self.finished) or 'none'})"

    @property
    def finished(self) -> list[str]:
        """The stages whose outputs are all present."""
        return [n for n in STAGES if not missing_stages(self.root, [n])]

    def _need(self, name: str) -> None:
        needed = missing_stages(self.root, [*upstream(name), name])
        if needed:
            raise MissingInputs(
                f"{self.root} holds no finished {name}: {', '.join(needed)} must run first, e.g.\n"
                f"    python -m lanic_nb.run_notebooks --run-dir {self.root} "
                f"--only {' '.join(STAGES[n].prefix for n in needed)}")

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """The dataset's manifest (one row per image; never the planted truth)."""
        self._need("00_data")
        return read_table(RunDir(self.root).manifest)

    def embeddings(self, split: str | None = None, max_images: int | None = None) -> EmbeddedRows:
        """The readable images (of ``split``), with their embeddings and manifest rows."""
        self._need("01_embed")
        return load_embedded(self.root, split=split, max_images=max_images)

    @cached_property
    def classifier(self) -> DiagnosticClassifier:
        self._need("02_classifier")
        return load_classifier(RunDir(self.root).classifier, self.device).eval()

    @cached_property
    def ensemble(self) -> TranscoderEnsemble:
        self._need("03_transcoders")
        return TranscoderEnsemble.load(RunDir(self.root).transcoders, self.device).eval()

    @cached_property
    def patterns(self) -> PatternSet:
        self._need("04_patterns")
        return PatternSet.load(RunDir(self.root).patterns)

    @cached_property
    def pattern_table(self) -> pd.DataFrame:
        return load_pattern_table(RunDir(self.root).patterns, self.patterns)

    def metrics(self, name: str) -> dict:
        """The figures a stage recorded (``metrics/<stage>.json``)."""
        return load_metrics(self.root, stage(name).name)
