"""environment.yml (conda users) and pyproject.toml (pip, the Makefile) must name the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {_name(r) for r in pyproject["project"]["dependencies"]}
    for extra in ("dev", "pathology"):  # the extras `make` installs
        declared |= {_name(r) for r in pyproject["project"]["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip_section if not r.startswith("-e")}
    assert listed == declared, (
        f"only in environment.yml: {sorted(listed - declared)}; only in pyproject: {sorted(declared - listed)}"
    )


def test_makefile_pins_torch():
    text = (ROOT / "Makefile").read_text()
    assert '"torch==2.14.1"' in text and '"torchvision==0.29.1"' in text


def test_ci_calls_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
