"""Run the pipeline's notebooks in order with papermill into one run directory.

    python -m lanic_nb.run_notebooks --run-dir runs/demo             # demo: the notebooks' own defaults
    python -m lanic_nb.run_notebooks --run-dir /tmp/x --size small   # small: notebooks/params/small.yaml
    python -m lanic_nb.run_notebooks --run-dir runs/mimic --params notebooks/params/mimic_biomedclip.yaml
    python -m lanic_nb.run_notebooks --strip notebooks/*.ipynb       # strip outputs before committing

Every notebook gets ``run_dir`` (absolute); in small mode it also gets its entry of the small-mode
parameter file, and ``--params FILE.yaml`` (same format: keys are notebook names or ``all``) is applied
last. Executed copies land in ``<run_dir>/notebooks/``; the kernels run with that folder as their working
directory and the inline matplotlib backend, so the copies carry their figures. While a notebook runs,
its cell progress and the kernel's stdout (the progress bars of long loops) stream to the terminal;
at the end the elapsed times and the machine's matmul speed go to ``<run_dir>/metrics/run.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import yaml

from lanic_nb.io import atomic_path

log = logging.getLogger("lanic_nb.run_notebooks")

# Shipped inside the package (lanic_nb/notebooks is the repository's notebooks/ folder), so a
# non-editable install finds them too.
NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
PARAMS_DIR = NOTEBOOK_DIR / "params"
SMALL_PARAMS = PARAMS_DIR / "small.yaml"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline notebooks, ``NN_name.ipynb``, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def read_params_file(path: str | Path) -> dict[str, dict]:
    """A parameter file: ``{notebook name or "all": {parameter: value}}``; checked for unknown names."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameter file {path} does not exist")
    table = yaml.safe_load(path.read_text()) or {}
    if not isinstance(table, dict) or not all(isinstance(v, dict | None) for v in table.values()):
        raise ValueError(f"{path}: expected a mapping of notebook name -> {{parameter: value}}")
    known = {p.stem for p in list_notebooks()} | {"all"}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{path}: unknown notebook keys {sorted(unknown)}; known: {sorted(known)}")
    return {k: dict(v or {}) for k, v in table.items()}


def notebook_parameters(name: str, run_dir: Path, size: str = "demo", params_file: str | Path | None = None) -> dict:
    """The papermill parameters of one notebook: run_dir, then small mode's, then the file's overrides."""
    if size not in ("demo", "small"):
        raise ValueError(f"size must be 'demo' or 'small', got {size!r}")
    params: dict = {"run_dir": str(Path(run_dir).resolve())}
    tables = []
    if size == "small":
        tables.append(read_params_file(SMALL_PARAMS))
    if params_file is not None:
        tables.append(read_params_file(params_file))
    for table in tables:
        params.update(table.get("all", {}))
        params.update(table.get(name, {}))
    return params


def executed_cell_types(path: Path) -> list[str]:
    """Cell types of the notebook as papermill runs it: its injected parameters cell follows the tagged one."""
    types = []
    for cell in nbformat.read(path, as_version=4).cells:
        types.append(cell.cell_type)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            types.append("code")
    return types


class _CellProgress(logging.Filter):
    """Turns papermill's per-cell log lines into ``[i/N name] cell k/n, elapsed`` and drops its noise."""

    _CELL = re.compile(r"Executing Cell (\d+)")
    MAX_LINES = 4
    _NOISE = ("Executing notebook with kernel", "Ending Cell", "Input Notebook", "Output Notebook",
              "Black is not installed",
              "Working directory", "<IPython.core.display.Image object>")

    def __init__(self, tag: str, cell_types: list[str]):
        super().__init__()
        self.tag, self.t0 = tag, time.perf_counter()
        # papermill numbers every cell from 1; report code cells only, numbered among themselves
        self.code_number = {}
        for i, kind in enumerate(cell_types, 1):
            if kind == "code":
                self.code_number[i] = len(self.code_number) + 1
        self.n_code = len(self.code_number)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        m = self._CELL.search(msg)
        if m:
            k = self.code_number.get(int(m.group(1)))
            if k is None:
                return False
            record.msg = f"{self.tag} cell {k}/{self.n_code}, {time.perf_counter() - self.t0:.0f} s"
            record.args = ()
            return True
        if any(s in msg for s in self._NOISE):
            return False
        # tqdm redraws with carriage returns: keep the last state of each line
        lines = [seg for line in msg.split("\n") for seg in [line.split("\r")[-1] or line.strip("\r")] if seg.strip()]
        if len(lines) > self.MAX_LINES:  # a table or a long repr: the executed notebook shows it in full
            lines = [f"  (an output of {len(lines)} lines: see the executed notebook)"]
        lines = [line if len(line) <= 120 else line[:117] + "..." for line in lines]
        record.msg = "\n".join(lines)
        record.args = ()
        return bool(lines)


@contextlib.contextmanager
def _kernel_environment(progress: bool):
    """The environment kernels inherit: inline figures; stream progress bars only when shown."""
    saved = {k: os.environ.get(k) for k in ("MPLBACKEND", "LANIC_PROGRESS")}
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    if not progress:
        os.environ["LANIC_PROGRESS"] = "0"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _papermill_logging(tag: str, cell_types: list[str], stream: bool):
    """Route papermill's logger (cell starts, the kernel's streamed output) through ``_CellProgress``."""
    pm_log = logging.getLogger("papermill")
    saved = (pm_log.level, pm_log.propagate, list(pm_log.handlers))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_CellProgress(tag, cell_types))
    pm_log.handlers = [handler] if stream else [logging.NullHandler()]
    pm_log.setLevel(logging.INFO)
    pm_log.propagate = False
    try:
        yield
    finally:
        pm_log.setLevel(saved[0])
        pm_log.propagate = saved[1]
        pm_log.handlers = saved[2]


def run_notebook(path: Path, run_dir: Path, size: str = "demo", kernel: str = "python3",
                 params_file: str | Path | None = None, stream: bool = False, tag: str | None = None) -> Path:
    """Execute one notebook; returns the executed copy's path (written atomically).

    ``stream=True`` prints the cell progress and the kernel's stdout while it runs (the command line);
    the tests keep it quiet.
    """
    import papermill as pm

    run_dir = Path(run_dir).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    params = notebook_parameters(path.stem, run_dir, size, params_file)
    cell_types = executed_cell_types(path)
    with atomic_path(out, suffix=".ipynb") as tmp, _kernel_environment(stream), \
            _papermill_logging(tag or path.stem, cell_types, stream):
        pm.execute_notebook(
            str(path), str(tmp), parameters=params, kernel_name=kernel, cwd=str(out_dir),
            progress_bar=False, log_output=stream,
            # the kernel's own start-up log (its ZMQ sockets on 127.0.0.1 are unencrypted, ...) is not the
            # user's business; its errors still show
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    return out


def run_all(run_dir: Path, size: str = "demo", only: list[str] | None = None,
            params_file: str | Path | None = None, stream: bool = True) -> dict[str, float]:
    """Run the notebooks in order; returns ``{notebook: seconds}``."""
    chosen = [nb for nb in list_notebooks() if not only or any(nb.stem.startswith(o) for o in only)]
    if not chosen:
        raise ValueError(f"no notebook matches {only}; there are {[p.stem for p in list_notebooks()]}")
    times: dict[str, float] = {}
    for i, nb in enumerate(chosen, 1):
        tag = f"[{i}/{len(chosen)} {nb.stem}]"
        log.info("%s running (%s mode) ...", tag, size)
        t0 = time.perf_counter()
        run_notebook(nb, run_dir, size, params_file=params_file, stream=stream, tag=tag)
        times[nb.stem] = time.perf_counter() - t0
        log.info("%s done in %s", tag, _fmt(times[nb.stem]))
    return times


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def record_run(run_dir: Path, size: str, times: dict[str, float], params_file: str | Path | None) -> dict:
    """Write ``metrics/run.json``: per-notebook seconds, total, and the machine they were measured on."""
    from lanic_nb.device import machine_line, matmul_gflops
    from lanic_nb.rundir import RunDir, load_metrics, record_metrics

    gflops = matmul_gflops()
    previous = load_metrics(run_dir, "run") if RunDir(Path(run_dir)).metrics_file("run").exists() else {}
    seconds = {**previous.get("seconds", {}), **{k: round(v, 1) for k, v in times.items()}}
    summary = {
        "size": size, "params_file": str(params_file) if params_file else None,
        "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
        "matmul_gflops": round(gflops, 1), "machine": machine_line(gflops),
    }
    record_metrics(run_dir, "run", summary)
    return summary


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
    ap.add_argument("--params", type=Path, help="per-notebook parameter overrides (YAML, small.yaml's format)")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no cell progress or kernel output while running")
    ap.add_argument("--strip", nargs="*", type=Path, help="strip outputs of these notebooks and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.strip is not None:
        for p in args.strip:
            if strip_outputs(p):
                log.info("stripped %s", p)
        return 0
    if args.params is not None:
        read_params_file(args.params)  # fail before the first notebook on a bad file
    times = run_all(args.run_dir, args.size, args.only, args.params, stream=not args.quiet)
    summary = record_run(args.run_dir, args.size, times, args.params)
    log.info("\nResults are in %s/ (executed notebooks in notebooks/, key figures in metrics/).", args.run_dir)
    for name, sec in times.items():
        log.info("  %-16s %8s", name, _fmt(sec))
    log.info("  %-16s %8s   (%s)", "total", _fmt(sum(times.values())), summary["machine"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
