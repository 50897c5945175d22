"""Run the pipeline's notebooks in order with papermill into one run directory.

    python -m lanic_nb.run_notebooks --run-dir runs/demo             # demo: the notebooks' own defaults
    python -m lanic_nb.run_notebooks --run-dir /tmp/x --size small   # small: notebooks/params/small.yaml
    python -m lanic_nb.run_notebooks --strip notebooks/*.ipynb       # strip outputs before committing

Every notebook gets ``run_dir`` (absolute); in small mode it also gets its entry of the small-mode
parameter file. Executed copies land in ``<run_dir>/notebooks/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import nbformat
import yaml

from lanic_nb.io import atomic_path

log = logging.getLogger("lanic_nb.run_notebooks")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SMALL_PARAMS = NOTEBOOK_DIR / "params" / "small.yaml"


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline notebooks, ``NN_name.ipynb``, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(name: str, run_dir: Path, size: str) -> dict:
    if size not in ("demo", "small"):
        raise ValueError(f"size must be 'demo' or 'small', got {size!r}")
    params: dict = {"run_dir": str(Path(run_dir).resolve())}
    if size == "small" and SMALL_PARAMS.exists():
        table = yaml.safe_load(SMALL_PARAMS.read_text()) or {}
        params.update(table.get("all", {}) or {})
        params.update(table.get(name, {}) or {})
    return params


def run_notebook(path: Path, run_dir: Path, size: str = "demo", kernel: str = "python3") -> Path:
    """Execute one notebook; returns the executed copy's path (written atomically)."""
    import papermill as pm

    run_dir = Path(run_dir)
    out = run_dir / "notebooks" / path.name
    params = notebook_parameters(path.stem, run_dir, size)
    with atomic_path(out, suffix=".ipynb") as tmp:
        pm.execute_notebook(
            str(path), str(tmp), parameters=params, kernel_name=kernel, cwd=str(path.parent), progress_bar=False
        )
    return out


def run_all(run_dir: Path, size: str = "demo", only: list[str] | None = None) -> list[Path]:
    done = []
    for nb in list_notebooks():
        if only and not any(nb.stem.startswith(o) for o in only):
            continue
        t0 = time.perf_counter()
        log.info("running %s (%s mode) ...", nb.name, size)
        done.append(run_notebook(nb, run_dir, size))
        log.info("  %s done in %.0f s", nb.name, time.perf_counter() - t0)
    return done


def strip_outputs(path: Path) -> bool:
    """Remove outputs and execution counts; returns True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill"):
            if key in cell.get("metadata", {}):
                del cell["metadata"][key]
                changed = True
    for key in ("papermill",):
        if key in nb.metadata:
            del nb.metadata[key]
            changed = True
    if changed:
        with atomic_path(path, suffix=".ipynb") as tmp:
            nbformat.write(nb, str(tmp))
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    ap.add_argument("--size", choices=("demo", "small"), default="demo")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (default: all)")
    ap.add_argument("--strip", nargs="*", type=Path, help="strip outputs of these notebooks and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.strip is not None:
        for p in args.strip:
            if strip_outputs(p):
                log.info("stripped %s", p)
        return 0
    done = run_all(args.run_dir, args.size, args.only)
    log.info("\nResults are in %s/ (executed notebooks in notebooks/, key figures in metrics/).", args.run_dir)
    for p in done:
        log.info("  %s", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
