"""Checks on an executed notebook: every figure cell carries its image, and nothing reads as an error."""

from __future__ import annotations

from pathlib import Path

import nbformat


def figure_problems(executed: Path) -> list[str]:
    """What a student opening this executed notebook would miss or misread; empty when it is right.

    - a cell that calls ``show(...)`` (the notebooks' way to draw a figure) without an image/png output;
    - a figure's repr text (``<Figure size ...>``) instead of the figure;
    - stderr output (Jupyter paints it red) or an error.
    """
    nb = nbformat.read(executed, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        head = f"{executed.stem} cell {i} ({cell.source.splitlines()[0][:60] if cell.source else ''})"
        draws = any(line.lstrip().startswith("show(") or " show(" in line for line in cell.source.splitlines())
        if draws and not any("image/png" in o.get("data", {}) for o in outs):
            problems.append(f"{head}: draws a figure but has no image output")
        for o in outs:
            text = "".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
            if "<Figure size" in text:
                problems.append(f"{head}: shows a figure's repr instead of the figure")
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                problems.append(f"{head}: stderr output: {text.strip()[:200]}")
            if o.get("output_type") == "error":
                problems.append(f"{head}: error {o.get('ename')}")
    return problems


def count_images(executed: Path) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
