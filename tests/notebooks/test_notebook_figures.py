"""The executed notebooks carry their figures (small mode), and library logging does not read as errors."""

from __future__ import annotations

import nbformat
import pytest
from helpers import count_images, figure_problems, teaching_cells

from lanic_nb.run_notebooks import list_notebooks


def test_figure_check_catches_a_missing_image(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show(views.plot_x(result))")
    cell.outputs = [nbformat.v4.new_output("display_data", {"text/plain": "<Figure size 640x480 with 1 Axes>"})]
    warn = nbformat.v4.new_code_cell("1")
    warn.outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: x")]
    nb.cells = [cell, warn]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    problems = figure_problems(path)
    assert len(problems) == 3 and "no image output" in problems[0] and "repr" in problems[1]
    assert "stderr" in problems[2]


@pytest.mark.notebook
@pytest.mark.parametrize("stem", [p.stem for p in list_notebooks() if p.stem[:2] <= "08"])
def test_executed_notebook_shows_its_figures(small_run, stem):
    run = small_run.until(stem[:2])
    executed = run / "notebooks" / f"{stem}.ipynb"
    assert executed.exists()
    assert figure_problems(executed) == []
    source = "".join(c.source for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code")
    if "show(" in source:
        assert count_images(executed) >= 1
    assert (run / "logs" / f"{stem}.log").exists(), "start_notebook writes the library log into logs/"


@pytest.mark.notebook
@pytest.mark.parametrize("stem", [p.stem for p in list_notebooks() if p.stem[:2] <= "06"])
def test_the_small_example_cells_show_their_outputs(small_run, stem):
    """Each cell that steps through the idea before the stage call shows something in the executed copy."""
    committed = next(p for p in list_notebooks() if p.stem == stem)
    executed = nbformat.read(small_run.until(stem[:2]) / "notebooks" / f"{stem}.ipynb", as_version=4)
    shift = 1  # papermill injects its parameters cell after the tagged one, which comes before every teaching cell
    silent = [i for i in teaching_cells(committed) if not executed.cells[i + shift].get("outputs")]
    assert not silent, f"{stem}: teaching cells without an output: {silent}"
