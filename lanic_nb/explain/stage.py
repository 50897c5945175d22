"""Explaining new images with a trained run: the API behind the command line and notebook 10.

    explainer = open_explainer(run_dir, ExplainConfig())    # load the run once (encoder checked)
    result = explain_paths(explainer, ["a.png", "dicoms/"], out_dir)   # as often as needed
    run_explain(run_dir, cfg)                                # notebook 10: both, plus metrics/10_explain.json

``open_explainer`` loads the run's own encoder (refusing one whose weights changed), classifier, transcoders
and patterns, and the annotator model when one is configured. ``explain_paths`` reads every file (one bad file
never stops the others), explains them in batches and writes the files of ``lanic_nb.explain.output``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lanic_nb.artifacts import stage_function
from lanic_nb.device import pick_device
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.model import LoadedRun, load_explain_run
from lanic_nb.explain.output import check_patient_data, collect_inputs, write_outputs
from lanic_nb.explain.pipeline import Explainer, ImageExplanation
from lanic_nb.rundir import record_metrics

log = logging.getLogger(__name__)


def open_explainer(run_dir: str | Path, cfg: ExplainConfig | None = None) -> Explainer:
    """Load the run (and the annotator model, if any) once; raises before loading models when the run's
    dataset needs ``allow_patient_data`` for the HTML pages."""
    cfg = cfg or ExplainConfig()
    t0 = time.perf_counter()
    run = load_explain_run(run_dir, pick_device(cfg.device), cfg.pool_images, cfg.n_thumbnails)
    check_patient_data(run, cfg)
    annotator = namer = None
    if cfg.annotator.model:
        from lanic_nb.explain.annotator import HFAnnotator, HFPatternNamer, VisionLanguageModel

        vlm = VisionLanguageModel(cfg.annotator)
        annotator = HFAnnotator(vlm)
        namer = HFPatternNamer(vlm) if cfg.name_patterns else None
    explainer = Explainer(run, cfg, annotator=annotator, namer=namer)
    explainer.load_seconds = time.perf_counter() - t0
    return explainer


@dataclass
class ExplainResult:
    """What explaining some files produced."""

    explanations: list[ImageExplanation]
    """One per input file, in order (status "ok", "error" or "refused")."""
    out_dir: Path
    """Where the files were written."""
    index: dict
    """The contents of ``<out_dir>/index.json``."""
    seconds: float
    """Time to read, explain and write them (the run already loaded)."""
    explainer: Explainer | None = None
    """The loaded run, reusable (``run_explain`` fills it)."""
    metrics: dict = field(default_factory=dict)
    """As recorded in metrics/10_explain.json (``run_explain`` only)."""

    @property
    def run(self) -> LoadedRun | None:
        return None if self.explainer is None else self.explainer.run


def explain_paths(explainer: Explainer, paths: Sequence[str | Path], out_dir: str | Path,
                  show_progress: bool = True) -> ExplainResult:
    """Explain image files and folders of images; write JSON, HTML pages and (for several) parquet tables."""
    t0 = time.perf_counter()
    files, folder = collect_inputs(paths)
    if not files:
        raise ValueError(f"no image files in {[str(p) for p in paths]}")
    explanations = explainer.explain_files(files, show_progress=show_progress)
    index = write_outputs(explanations, explainer.run, explainer.cfg, Path(out_dir), tables=folder or len(files) > 1)
    seconds = time.perf_counter() - t0
    log.info("%d images explained (%d not: see index.json) in %.1f s into %s", index["n_ok"],
             index["n_error"] + index["n_refused"], seconds, out_dir)
    return ExplainResult(explanations, Path(out_dir), index, seconds, explainer)


def split_images(run: LoadedRun, n: int) -> list[Path]:
    """The first ``n`` readable images of the run's test split (what notebook 10 explains by default)."""
    rows = sorted((r, p) for p, (r, _, split) in run.run_rows.items() if split == "test" and run.store.ok[r])
    return [Path(p) for _, p in rows[:n]]


@stage_function("10_explain")
def run_explain(run_dir: str | Path, config: ExplainConfig | None = None) -> ExplainResult:
    """Notebook 10: load the run, explain ``config.images`` (default: a few of its test images), write the files
    into ``config.out_dir`` (default ``<run_dir>/explain``) and record ``metrics/10_explain.json``."""
    cfg = config or ExplainConfig()
    explainer = open_explainer(run_dir, cfg)
    paths = cfg.images or split_images(explainer.run, cfg.n_test_images)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else explainer.run.root / "explain"
    result = explain_paths(explainer, paths, out_dir)
    ok = [e for e in result.explanations if e.ok]
    metrics = {
        "n_images": len(result.explanations), "n_ok": len(ok), "n_error": result.index["n_error"],
        "n_refused": result.index["n_refused"], "n_warned": result.index["n_warned"],
        "load_seconds": explainer.load_seconds, "explain_seconds": result.seconds,
        "max_identity_error": max((e.attribution.identity_error() for e in ok), default=0.0),
        "annotator": cfg.annotator.model or None,
    }
    record_metrics(explainer.run.root, "10_explain", metrics)
    result.metrics = metrics
    return result
