"""What the notebooks call besides the stages: logging set-up and figure display.

Notebooks orchestrate: each calls one ``run_<stage>`` function (which writes every artifact and the
stage's metrics JSON) and then shows what it made with the functions here. Nothing here writes an
artifact of the run except the log file.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

from lanic_nb.rundir import RunDir

# Warnings that third-party code emits on every run and that say nothing about the user's data.
HARMLESS_WARNINGS = (
    ("ignore", r".*n_jobs value .* overridden to 1 by setting random_state.*", UserWarning),  # umap-learn
    ("ignore", r".*Graph is not fully connected.*", UserWarning),  # umap spectral init on tiny inputs
    ("ignore", r".*tqdm.*IProgress not found.*", Warning),
    ("ignore", r".*`torch.nn.functional.scaled_dot_product_attention`.*", UserWarning),
)


def start_notebook(run_dir: str | Path, name: str, level: int = logging.INFO) -> Path:
    """Set up logging for one notebook and check that the stages it reads have run; returns the log file
    ``<run_dir>/logs/<name>.log``.

    Library log lines go in full to the log file and as short plain lines to stdout (stderr shows as a
    red block in Jupyter, which students read as an error). Known harmless third-party warnings are
    filtered. Calling it twice (re-running the cell) replaces the handlers instead of doubling them.
    A notebook opened before the stages it reads raises ``artifacts.MissingInputs`` here, naming them and
    the command that runs them, before any cell stumbles on a missing file.
    """
    from lanic_nb.artifacts import require_inputs
    from lanic_nb.stages import STAGES

    if name in STAGES:
        require_inputs(run_dir, name)
    log_file = RunDir(Path(run_dir)).stage("logs") / f"{name}.log"
    root = logging.getLogger("lanic_nb")
    for h in list(root.handlers):
        if getattr(h, "_lanic_notebook", False):
            root.removeHandler(h)
            h.close()
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    to_out = logging.StreamHandler(sys.stdout)
    to_out.setFormatter(logging.Formatter("%(message)s"))
    for h in (to_file, to_out):
        h._lanic_notebook = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    root.propagate = False
    for action, message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings(action, message=message, category=category)
    return log_file


def show(fig, dpi: int = 100) -> None:
    """Display a matplotlib figure as one PNG output and close it.

    Works whatever matplotlib backend the kernel runs (Agg included), so the executed notebooks that
    papermill writes always carry the image, and the figure is not shown a second time at cell end.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))
