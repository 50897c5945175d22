"""Shared fixtures: seeding, and one small-mode run of the notebooks shared by the whole session."""

from __future__ import annotations

import os
import random
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
                run_notebook(nb, self.root, size="small")
                self.done.add(nb.stem)
        return self.root


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SmallRun:
    return SmallRun(tmp_path_factory.mktemp("small_run"))
