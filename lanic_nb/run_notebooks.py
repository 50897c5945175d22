"""Run the pipeline's notebooks in order with papermill into one run directory.

    python -m lanic_nb.run_notebooks --run-dir runs/demo             # the demo: notebooks/params/demo.yaml
    python -m lanic_nb.run_notebooks --run-dir /tmp/x --size small   # the test size: notebooks/params/small.yaml
    python -m lanic_nb.run_notebooks --run-dir runs/mimic --params notebooks/params/mimic_biomedclip.yaml
    python -m lanic_nb.run_notebooks --strip notebooks/*.ipynb       # strip outputs before committing

Every notebook gets two papermill parameters: ``run_dir`` (absolute) and ``params``, the params file that
holds every stage's settings (``lanic_nb.settings``; ``--params`` names one, by path or shipped name, and wins
over ``--size``). All settings of the chosen notebooks are checked before the first one runs, so a misspelled
setting stops the run at once with its name. Executed copies land in ``<run_dir>/notebooks/``; the kernels
run with that folder as their working directory and the inline matplotlib backend, so the copies carry their
figures. While a notebook runs, its cell progress and the kernel's stdout (the progress bars of long loops)
stream to the terminal; at the end the elapsed times and the machine's matmul speed go to
``<run_dir>/metrics/run.json``.
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

from lanic_nb.fingerprint import stale_stages
from lanic_nb.io import atomic_path
from lanic_nb.rundir import RunLocked, run_lock
from lanic_nb.settings import PARAMS_DIR, SettingError, check_params, params_path  # noqa: F401 (PARAMS_DIR re-exported)
from lanic_nb.stages import STAGES

log = logging.getLogger("lanic_nb.run_notebooks")

# Shipped inside the package (lanic_nb/notebooks is the repository's notebooks/ folder), so a
# non-editable install finds them too.
NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
SIZES = ("demo", "small")
"""Shipped params files ``--size`` can name."""
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
PAPERMILL_PARAMETERS = ("run_dir", "params")
"""What the runner passes to every notebook; settings travel in the params file."""


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline notebooks, ``NN_name.ipynb``, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def resolve_params(size: str = "demo", params_file: str | Path | None = None) -> str:
    """The params file a run uses: ``params_file`` (a path or a shipped name) if given, else the size's."""
    if params_file is not None:
        return str(params_path(params_file).resolve()) if Path(params_file).suffix else str(params_file)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size


def notebook_parameters(run_dir: Path, params: str = "demo") -> dict:
    """The papermill parameters of a notebook: the absolute run directory and the params file."""
    return {"run_dir": str(Path(run_dir).resolve()), "params": params}


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


def run_notebook(path: Path, run_dir: Path, params: str = "demo", kernel: str = "python3",
                 stream: bool = False, tag: str | None = None) -> Path:
    """Execute one notebook with a params file (a shipped name or a path); returns the executed copy's path
    (written atomically).

    ``stream=True`` prints the cell progress and the kernel's stdout while it runs (the command line);
    the tests keep it quiet.
    """
    import papermill as pm

    run_dir = Path(run_dir).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    parameters = notebook_parameters(run_dir, params)
    cell_types = executed_cell_types(path)
    with atomic_path(out, suffix=".ipynb") as tmp, _kernel_environment(stream), \
            _papermill_logging(tag or path.stem, cell_types, stream):
        pm.execute_notebook(
            str(path), str(tmp), parameters=parameters, kernel_name=kernel, cwd=str(out_dir),
            progress_bar=False, log_output=stream,
            # the kernel's own start-up log (its ZMQ sockets on 127.0.0.1 are unencrypted, ...) is not the
            # user's business; its errors still show
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    return out


def chosen_notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks whose names start with one of ``only`` (all of them when it is empty)."""
    chosen = [nb for nb in list_notebooks() if not only or any(nb.stem.startswith(o) for o in only)]
    if not chosen:
        raise ValueError(f"no notebook matches {only}; there are {[p.stem for p in list_notebooks()]}")
    return chosen


def run_all(run_dir: Path, params: str = "demo", only: list[str] | None = None, stream: bool = True,
            force: bool = False) -> dict[str, float]:
    """Check every chosen notebook's settings, then run in order the notebooks whose stage is not current (its
    fingerprint: settings, code, inputs; ``lanic_nb.fingerprint``), or all of them with ``force``; returns
    ``{notebook: seconds}`` of those that ran."""
    chosen = chosen_notebooks(only)
    check_params(params, [nb.stem for nb in chosen])  # a misspelled setting fails before the first notebook
    times: dict[str, float] = {}
    # One writer at a time: the notebooks' kernels inherit the lock's token and write under it; a second runner
    # (or a stage started by hand) in this run directory gets RunLocked at once.
    with run_lock(run_dir, f"run_notebooks ({', '.join(nb.stem for nb in chosen)})"):
        # Decided once, before any runs: a stale stage makes every chosen stage that reads or uses it stale too.
        stale = set(stale_stages(run_dir, [nb.stem for nb in chosen if nb.stem in STAGES], params, force))
        for i, nb in enumerate(chosen, 1):
            tag = f"[{i}/{len(chosen)} {nb.stem}]"
            if nb.stem in STAGES and nb.stem not in stale:
                log.info("%s unchanged (settings, code and inputs as when it last ran): skipped", tag)
                continue
            log.info("%s running (params %s) ...", tag, Path(params).name if Path(params).suffix else params)
            t0 = time.perf_counter()
            run_notebook(nb, run_dir, params, stream=stream, tag=tag)
            times[nb.stem] = time.perf_counter() - t0
            log.info("%s done in %s", tag, _fmt(times[nb.stem]))
    return times


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def record_run(run_dir: Path, params: str, times: dict[str, float]) -> dict:
    """Write ``metrics/run.json``: per-notebook seconds, total, and the machine they were measured on.

    Seconds of notebooks that did not run this time are kept from the previous record; the machine reading is
    this run's (a run where nothing ran leaves the record as it was)."""
    from lanic_nb.device import machine_line, matmul_gflops
    from lanic_nb.rundir import RunDir, load_metrics, record_metrics

    previous = load_metrics(run_dir, "run") if RunDir(Path(run_dir)).metrics_file("run").exists() else {}
    if not times and previous:
        return previous  # nothing ran: the recorded times keep the machine reading they were measured with
    gflops = matmul_gflops()
    seconds = {**previous.get("seconds", {}), **{k: round(v, 1) for k, v in times.items()}}
    summary = {
        "params": params,
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
    ap.add_argument("--size", choices=SIZES, default="demo", help="a shipped params file (default: %(default)s)")
    ap.add_argument("--params", help="a params file (YAML path, or a shipped name such as phantom_b): every "
                    "stage's settings; wins over --size")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no cell progress or kernel output while running")
    ap.add_argument("--force", action="store_true", help="rerun every chosen notebook, even those whose stage is "
                    "unchanged since it last ran")
    ap.add_argument("--strip", nargs="*", type=Path, help="strip outputs of these notebooks and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.strip is not None:
        for p in args.strip:
            if strip_outputs(p):
                log.info("stripped %s", p)
        return 0
    try:
        params = resolve_params(args.size, args.params)
        check_params(params, [nb.stem for nb in chosen_notebooks(args.only)])
    except (SettingError, FileNotFoundError, ValueError) as e:
        log.error("error: %s", e)
        return 2
    try:
        times = run_all(args.run_dir, params, args.only, stream=not args.quiet, force=args.force)
    except RunLocked as e:
        log.error("error: %s", e)
        return 2
    summary = record_run(args.run_dir, params, times)
    log.info("\nResults are in %s/ (executed notebooks in notebooks/, key figures in metrics/).", args.run_dir)
    skipped = len(chosen_notebooks(args.only)) - len(times)
    if skipped:
        log.info("  %d notebook%s unchanged since they last ran, not rerun (--force reruns them)", skipped,
                 "s" if skipped > 1 else "")
    for name, sec in times.items():
        log.info("  %-16s %8s", name, _fmt(sec))
    if times:
        log.info("  %-16s %8s   (%s)", "total", _fmt(sum(times.values())), summary["machine"])
    elif summary:
        log.info("  as recorded when they ran: %s in all (%s)", _fmt(summary["total_seconds"]), summary["machine"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
