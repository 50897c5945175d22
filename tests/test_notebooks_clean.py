"""Committed notebooks: outputs stripped, exactly one `parameters` cell with run_dir, a teaching intro."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from lanic_nb.run_notebooks import SMALL_PARAMS, list_notebooks, notebook_parameters, strip_outputs

NOTEBOOKS = list_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/NN_*.ipynb are missing"
    assert NOTEBOOKS[0].stem == "00_data"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs or c.execution_count for c in code), f"{path.name} has outputs: strip them"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} must have exactly one cell tagged 'parameters'"
    assert "run_dir" in params[0].source and "device" in params[0].source
    assert nb.cells[0].cell_type == "markdown" and len(nb.cells[0].source) > 200, "open with a teaching intro"
    assert "IN_CI" not in "".join(c.source for c in code), "no CI branches inside notebooks"


def test_small_params_name_real_notebooks():
    table = yaml.safe_load(SMALL_PARAMS.read_text())
    stems = {p.stem for p in NOTEBOOKS} | {"all"}
    assert set(table) <= stems, f"unknown notebook keys in small.yaml: {set(table) - stems}"
    assert notebook_parameters("00_data", Path("/tmp/x"), "small")["device"] == "cpu"
    with pytest.raises(ValueError, match="size"):
        notebook_parameters("00_data", Path("/tmp/x"), "huge")


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


def test_params_files_name_real_notebooks_and_parameters():
    """Every shipped parameter file names notebooks that exist and parameters their `parameters` cell has."""
    from lanic_nb.run_notebooks import PARAMS_DIR, read_params_file

    files = sorted(PARAMS_DIR.glob("*.yaml"))
    assert {p.name for p in files} >= {"small.yaml", "mimic_biomedclip.yaml"}
    cells = {}
    for nb in NOTEBOOKS:
        params = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
        ns: dict = {}
        exec(params[0].source, ns)  # the parameters cell is plain assignments
        cells[nb.stem] = {k for k in ns if not k.startswith("__")}
    for f in files:
        for name, values in read_params_file(f).items():
            allowed = set.intersection(*cells.values()) if name == "all" else cells[name]
            assert set(values) <= allowed, f"{f.name}: {name} has no parameters {set(values) - allowed}"


def test_params_file_overrides_small_mode(tmp_path):
    extra = tmp_path / "p.yaml"
    extra.write_text("all:\n  device: cuda\n01_embed:\n  clip_steps: 3\n")
    p = notebook_parameters("01_embed", tmp_path, "small", extra)
    assert p["device"] == "cuda" and p["clip_steps"] == 3 and p["batch_size"] == 64
    assert p["run_dir"] == str(tmp_path.resolve())
    bad = tmp_path / "bad.yaml"
    bad.write_text("01_embd:\n  clip_steps: 3\n")
    with pytest.raises(ValueError, match="01_embd"):
        notebook_parameters("01_embed", tmp_path, "demo", bad)


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path: Path):
    """papermill's own parser sees every name the parameters cell assigns (a help comment it cannot parse, e.g.
    one holding '=', hides the parameter from `papermill --help-notebook` and logs a warning on every run)."""
    import ast

    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert [p.name for p in PythonTranslator.inspect(cell)] == assigned
