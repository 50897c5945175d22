"""Run the suite: each configuration's stages 00-04 and 06 (05's maps are not scored) in ``<out>/<name>``, with the
demo's settings and the configuration's phantom, then one table.

A configuration's params file (``<out>/<name>/params.yaml``) extends the frozen settings with its phantom alone;
stages whose fingerprint is unchanged are skipped, so an interrupted suite resumes where it stopped, and a change of
any default or of the code reruns what it touches in every configuration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import yaml

from lanic_nb.benchmark.configs import SUITE, SuiteEntry
from lanic_nb.benchmark.score import COLUMNS, score_run, summary_rows
from lanic_nb.fingerprint import stale_stages
from lanic_nb.io import atomic_path, read_json, write_json, write_table
from lanic_nb.settings import params_path, run_stage
from lanic_nb.stages import stage_record

log = logging.getLogger(__name__)

STAGE_NAMES: tuple[str, ...] = ("00_data", "01_embed", "02_classifier", "03_transcoders", "04_patterns",
                                "06_attribution")


def entry_params(folder: Path, entry: SuiteEntry, params: str | Path = "demo", encoder: str | None = None) -> Path:
    """Write the configuration's params file: the frozen settings (``params``), its phantom, and the encoder
    (``01_embed.model``) where one is given."""
    path = folder / "params.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    table = {"extends": str(params_path(params)), "00_data": {"phantom": entry.phantom}}
    if encoder:
        table["01_embed"] = {"model": encoder}
    with atomic_path(path, suffix=".yaml") as tmp:
        tmp.write_text(f"# {entry.name}: {entry.what}\n" + yaml.safe_dump(table, sort_keys=False), encoding="utf-8")
    return path


def run_entry(out: str | Path, entry: SuiteEntry, params: str | Path = "demo", force: bool = False,
              run: bool = True, encoder: str | None = None) -> dict:
    """Run (or resume) one configuration; its row of the table, with the minutes its stages took in all.
    ``run=False`` scores what the folder holds without running anything; ``encoder``: another image-text encoder
    (``01_embed.model``, e.g. "local-dir:runs/phantom_encoder_gap/encoder")."""
    folder = Path(out) / entry.name
    if run:
        entry_params(folder, entry, params, encoder)
    own = folder / "params.yaml"
    todo = stale_stages(folder, list(STAGE_NAMES), own, force=force, executed=False) if run else []
    for name in todo:
        log.info("[%s] %s", entry.name, name)
        run_stage(name, folder, own)
    row = score_run(folder, entry.name, counterfactual=True)
    row["minutes"] = sum(read_json(stage_record(folder, n)).get("seconds", 0.0) for n in STAGE_NAMES) / 60
    return row


def run_suite(out: str | Path, names: list[str] | None = None, params: str | Path = "demo",
              force: bool = False, run: bool = True, encoder: str | None = None) -> pd.DataFrame:
    """Run the chosen configurations (default: all of ``SUITE``) and write ``<out>/suite.csv`` and ``suite.json``:
    a row per configuration, then the mean and the worst. ``run=False``: score the finished runs only."""
    from lanic_nb.device import machine_line

    known = {e.name: e for e in SUITE}
    if unknown := [n for n in names or [] if n not in known]:
        raise ValueError(f"unknown suite configurations {unknown}; known: {', '.join(known)}")
    chosen = [known[n] for n in names] if names else list(SUITE)
    out = Path(out)
    previous = out / "suite.json"
    # scoring alone keeps the machine the stages ran on
    machine = read_json(previous)["machine"] if not run and previous.exists() else machine_line()
    log.info("%s", machine)
    t0 = time.perf_counter()
    rows = [run_entry(out, e, params, force, run, encoder) for e in chosen]
    table = pd.DataFrame(rows, columns=[*COLUMNS, "minutes"])
    full = pd.concat([table, summary_rows(table[list(COLUMNS)])], ignore_index=True)
    write_table(out / "suite.csv", full)
    write_json(out / "suite.json", {"machine": machine, "params": str(params_path(params)),
                                    "encoder": encoder or "the params file's (the shipped phantom encoder)",
                                    "configurations": {e.name: {"what": e.what, "phantom": e.phantom} for e in chosen},
                                    "rows": full.to_dict(orient="records"),
                                    "wall_minutes": (time.perf_counter() - t0) / 60})
    return full
