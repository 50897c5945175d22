"""The public API: ``import lanic_nb`` exposes what a researcher uses outside the notebooks, the names README lists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lanic_nb

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_and_is_documented():
    assert len(lanic_nb.__all__) == len(set(lanic_nb.__all__))
    for name in lanic_nb.__all__:
        obj = getattr(lanic_nb, name)
        assert obj is not None, name
        if callable(obj) and not isinstance(obj, dict):
            assert (obj.__doc__ or "").strip(), f"lanic_nb.{name} has no docstring"
    assert set(dir(lanic_nb)) >= set(lanic_nb.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="public names"):
        lanic_nb.run_everything  # noqa: B018


def test_the_readme_lists_public_names():
    """README's "Use it from Python" section names only what ``lanic_nb`` exports."""
    text = README.read_text()
    section = text[text.index("## Use it from Python"):]
    section = section[: section.index("\n## ", 4)]
    listed = set(re.findall(r"`(\w+)`", section)) & {n for n in re.findall(r"\b[A-Za-z_]\w+\b", section)}
    imported = set(re.findall(r"from lanic_nb import ([\w, ]+)", section))
    names = {n.strip() for group in imported for n in group.split(",")} | {n for n in listed if n[0].isupper()
                                                                         or n.startswith(("run_", "train_"))}
    assert names, "README lists no public names"
    assert names <= set(lanic_nb.__all__), ("README names what lanic_nb does not export: "
                                            f"{names - set(lanic_nb.__all__)}")


def test_import_is_light():
    """``import lanic_nb`` loads no stage: each public name is imported on first use."""
    code = "import sys, lanic_nb; print(sorted(m for m in sys.modules if m.startswith('lanic_nb.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "stage" not in out and "torch" not in out
