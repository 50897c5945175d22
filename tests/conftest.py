"""Shared fixtures: seeding, and one small-mode run of the notebooks shared by the whole session."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


class SmallRun:
    """Runs the pipeline notebooks in small mode, in order, once per test session, up to a prefix."""

    def __init__(self, root: Path):
        self.root = root
        self.done: set[str] = set()

    def until(self, prefix: str) -> Path:
        """Make sure every notebook up to and including ``prefix`` (e.g. "03") has run; return run_dir."""
        from lanic_nb.run_notebooks import list_notebooks, run_notebook

        for nb in list_notebooks():
            if nb.stem[:2] > prefix[:2]:
                break
            if nb.stem not in self.done:
                with poisoned_ground_truth(self.root, active=nb.stem[:2] in TRAINING_STAGES):
                    run_notebook(nb, self.root, "small")
                self.done.add(nb.stem)
        return self.root


# Training stages must never read the planted truth: while they run, ground_truth.parquet and states.parquet
# are replaced by files that exist but cannot be parsed, so any read (direct or behind an exists() check)
# fails the notebook.
TRAINING_STAGES = ("01", "02", "03")
POISON = b"ground truth is evaluation-only; a training stage tried to read it\n"


@contextlib.contextmanager
def poisoned_ground_truth(run_dir: Path, active: bool = True):
    from lanic_nb.rundir import RunDir

    rd = RunDir(run_dir)
    files = [p for p in (rd.ground_truth, rd.states) if p.exists()] if active else []
    for truth in files:
        os.replace(truth, truth.with_name(f".{truth.name}.aside"))
        truth.write_bytes(POISON)
    try:
        yield
    finally:
        for truth in files:
            os.replace(truth.with_name(f".{truth.name}.aside"), truth)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SmallRun:
    return SmallRun(tmp_path_factory.mktemp("small_run"))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by `make test`'s setup step (never by a test).

    Missing: the test skips, unless LANIC_REQUIRE_CHROMIUM=1 (set by `make test` as root, where the setup
    step installed it), where it fails.
    """
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        message = "chromium is not installed: `make system` (as root) or `apt-get install -y chromium`"
        if os.environ.get("LANIC_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return exe
