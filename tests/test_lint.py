"""The style rules that a linter can hold (ruff config in pyproject: no print in the library, modern
typing, sorted imports), and the layering rule that the library never imports the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "lanic_nb", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_library_never_imports_tests():
    offenders = [p.name for p in (ROOT / "lanic_nb").glob("*.py")
                 if "from tests" in p.read_text() or "import tests" in p.read_text()]
    assert not offenders, offenders
