"""Progress bars for long loops, readable in a terminal, a notebook and a papermill log alike.

Bars go to stdout (stderr shows as a red block in Jupyter and reads as an error) and refresh at most
every few seconds, so `make demo`, which streams the kernels' output, prints a line at least that often
without flooding the log. ``LANIC_PROGRESS_INTERVAL`` (seconds) overrides the refresh interval and
``LANIC_PROGRESS=0`` turns bars off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

DEFAULT_INTERVAL = 5.0  # seconds between refreshes; the demo promises a line at least every 30 s


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
             disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stdout with the project's refresh interval (same arguments as ``tqdm``)."""
    interval = float(os.environ.get("LANIC_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    off = disable or os.environ.get("LANIC_PROGRESS", "1") == "0"
    kwargs.setdefault("mininterval", interval)
    kwargs.setdefault("maxinterval", max(interval, 10.0))
    kwargs.setdefault("ascii", True)  # survives log files and terminals without UTF-8
    kwargs.setdefault("dynamic_ncols", False)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, desc=desc, total=total, disable=off, file=sys.stdout, **kwargs)
