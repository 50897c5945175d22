"""Shared fixtures: seeding, and one small-mode run of the notebooks shared by the whole session."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Test helpers (embed_helpers, image_helpers, ...) live in tests/ and are imported from tests/<domain>/.
sys.path.insert(0, str(Path(__file__).resolve().parent))

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
                    run_notebook(nb, self.root, size="small")
                self.done.add(nb.stem)
        return self.root


# Training stages must never read the planted truth: while they run, ground_truth.parquet is replaced by a
# file that exists but cannot be parsed, so any read (direct or behind an exists() check) fails the notebook.
TRAINING_STAGES = ("01", "02", "03")
POISON = b"ground truth is evaluation-only; a training stage tried to read it\n"


@contextlib.contextmanager
def poisoned_ground_truth(run_dir: Path, active: bool = True):
    from lanic_nb.rundir import RunDir

    truth = RunDir(run_dir).data / "ground_truth.parquet"
    if not active or not truth.exists():
        yield
        return
    aside = truth.with_name(".ground_truth.parquet.aside")
    os.replace(truth, aside)
    truth.write_bytes(POISON)
    try:
        yield
    finally:
        os.replace(aside, truth)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SmallRun:
    return SmallRun(tmp_path_factory.mktemp("small_run"))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and running as root, else the test skips."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
            r = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
            if cmd[1] == "install" and r.returncode == 0:
                break
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and could not be installed (needs root and apt-get with "
                    "access to Debian's archive): `apt-get install -y chromium`")
    return exe
