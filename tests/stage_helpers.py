"""Helpers of the stage tests: a notebook's parameters cell, and a stage config in small mode."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent


def notebook_parameters(name: str) -> dict:
    """Names and default values of the notebook's one ``parameters`` cell."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    tree = ast.parse(cell.source)
    return {t.targets[0].id: ast.literal_eval(t.value) for t in tree.body if isinstance(t, ast.Assign)}


def small_config(cls, name: str):
    """The stage config with notebooks/params/small.yaml's overrides (what the notebook tests run)."""
    params = yaml.safe_load((ROOT / "notebooks" / "params" / "small.yaml").read_text())
    return cls(**{**params.get("all", {}), **params.get(name, {})})
