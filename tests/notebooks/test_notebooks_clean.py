"""Committed notebooks: outputs stripped, one `parameters` cell (run_dir, params, settings), short markdown, and a
small example stepped through with the package's functions before the stage runs at full size."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from helpers import teaching_cells

from lanic_nb.run_notebooks import list_notebooks, notebook_parameters, resolve_params, strip_outputs
from lanic_nb.stages import STAGES

NOTEBOOKS = list_notebooks()
TEACHING = [p for p in NOTEBOOKS if p.stem[:2] <= "06"]  # the stage notebooks that must step through their idea
FIRST_MARKDOWN_MAX = 1000  # characters: the opening says what the stage does and why
MARKDOWN_MAX = 1500


def test_every_stage_has_a_notebook():
    assert [p.stem for p in NOTEBOOKS] == list(STAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs or c.execution_count for c in code), f"{path.name} has outputs: strip them"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} must have exactly one cell tagged 'parameters'"
    assigned = [t.id for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert assigned == ["run_dir", "params", "settings"], f"{path.name}: the parameters are run_dir, params, settings"
    assert "IN_CI" not in "".join(c.source for c in code), "no CI branches inside notebooks"
    assert f'stage_config("{path.stem}", params, settings)' in "".join(c.source for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_is_short(path: Path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    assert cells and nbformat.read(path, as_version=4).cells[0].cell_type == "markdown", "open with a markdown cell"
    assert len(cells[0].source) <= FIRST_MARKDOWN_MAX, f"{path.name}: the opening has {len(cells[0].source)} characters"
    long = [(i, len(c.source)) for i, c in enumerate(cells) if len(c.source) > MARKDOWN_MAX]
    assert not long, f"{path.name}: markdown cells over {MARKDOWN_MAX} characters: {long}"


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_stage_notebooks_step_through_a_small_example_first(path: Path):
    assert len(teaching_cells(path)) >= 3, f"{path.name}: step through the idea with the package's functions first"


def test_strip_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    nb.cells = [cell]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert strip_outputs(path) is True
    assert nbformat.read(path, as_version=4).cells[0].outputs == []
    assert strip_outputs(path) is False


def test_the_runner_passes_run_dir_and_the_params_file(tmp_path):
    assert notebook_parameters(tmp_path, "small") == {"run_dir": str(tmp_path.resolve()), "params": "small"}
    assert resolve_params("small") == "small" and resolve_params("demo", "phantom_b") == "phantom_b"
    f = tmp_path / "mine.yaml"
    f.write_text("extends: small\n")
    assert resolve_params("demo", f) == str(f.resolve())
    with pytest.raises(ValueError, match="size"):
        resolve_params("huge")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path: Path):
    """papermill's own parser sees every name the parameters cell assigns (a help comment it cannot parse hides the
    parameter from `papermill --help-notebook` and logs a warning on every run)."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert [p.name for p in PythonTranslator.inspect(cell)] == assigned
