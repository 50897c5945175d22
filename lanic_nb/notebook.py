"""Small helpers that notebooks call (kept here so tests can reach them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lanic_nb.io import read_json, write_json
from lanic_nb.rundir import RunDir


def record_metrics(run_dir: str | Path, notebook: str, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` into ``<run_dir>/metrics/<notebook>.json`` (the figures tests and README quote)."""
    path = RunDir(Path(run_dir)).metrics_file(notebook)
    current = read_json(path) if path.exists() else {}
    current.update(metrics)
    return write_json(path, current)


def load_metrics(run_dir: str | Path, notebook: str) -> dict[str, Any]:
    return read_json(RunDir(Path(run_dir)).metrics_file(notebook))


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (a crashed run never leaves half a file)."""
    from lanic_nb.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)
