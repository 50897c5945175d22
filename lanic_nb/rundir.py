"""The stable layout of one run directory. Every stage reads earlier stages' artifacts from here.

    runs/<name>/
      data/          manifest.parquet, images/, meta.json, ground_truth.parquet + states.parquet (EVALUATION ONLY)
      clip/          the small CLIP (open_clip config + safetensors + tokenizer/), metrics.json
      embed/         the embedding store (header.json, *.f32 memmaps, status.parquet)
      classifier/    model.safetensors, config.json, metrics.csv
      transcoders/   ensemble.safetensors, config.json, metrics.parquet, checkpoints/
      patterns/      patterns.parquet, directions.safetensors, evaluation.csv, maps/
      attribution/   attribution tables, faithfulness figures
      notebooks/     executed notebooks
      metrics/       <notebook>.json, the key figures each notebook records
      gallery.html
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanic_nb.io import read_json, write_json

LOCK_FILE = ".lock"
LOCK_INFO = ".lock.json"
LOCK_ENV = "LANIC_RUN_LOCK"
"""Environment variable holding the token of the lock a parent process holds (the notebook runner), so the stages
its notebook kernels run write under it instead of refusing."""


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; creating the object creates nothing on disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> Path:
        """The folder of a stage, created on first use."""
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def data(self) -> Path:
        return self.stage("data")

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.parquet"

    @property
    def ground_truth(self) -> Path:
        # Only evaluation code may open this (tests enforce it): see lanic_nb.evaluation.
        return self.data / "ground_truth.parquet"

    @property
    def states(self) -> Path:
        # The phantom's latent states per image (acuity, histories, technique): evaluation only, as above.
        return self.data / "states.parquet"

    @property
    def clip(self) -> Path:
        return self.stage("clip")

    @property
    def embed(self) -> Path:
        return self.stage("embed")

    @property
    def classifier(self) -> Path:
        return self.stage("classifier")

    @property
    def transcoders(self) -> Path:
        return self.stage("transcoders")

    @property
    def patterns(self) -> Path:
        return self.stage("patterns")

    @property
    def attribution(self) -> Path:
        return self.stage("attribution")

    @property
    def metrics(self) -> Path:
        return self.stage("metrics")

    def metrics_file(self, notebook: str) -> Path:
        return self.metrics / f"{notebook}.json"


def record_metrics(run_dir: str | Path, stage: str, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` into ``<run_dir>/metrics/<stage>.json`` (the figures tests and README quote).

    ``stage`` is the notebook's name (e.g. "04_patterns"), so a reader finds a notebook's figures by its name.
    """
    path = RunDir(Path(run_dir)).metrics_file(stage)
    current = read_json(path) if path.exists() else {}
    current.update(metrics)
    return write_json(path, current)


def load_metrics(run_dir: str | Path, stage: str) -> dict[str, Any]:
    return read_json(RunDir(Path(run_dir)).metrics_file(stage))


class RunLocked(RuntimeError):
    """Another process is writing into the run directory."""


def _lock_info(root: Path) -> dict:
    try:
        return read_json(root / LOCK_INFO)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path, holder: str) -> Iterator[None]:
    """Hold the run directory's lock while ``holder`` (a stage, the runner) writes into it.

    A second process gets ``RunLocked`` naming who holds it, instead of two writers interleaving their files.
    The lock is an OS file lock (``flock``), so a killed holder releases it. A process started under a holder
    (a notebook kernel under the runner) finds the holder's token in ``LANIC_RUN_LOCK`` and writes under it.
    """
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        info = _lock_info(root)
        if info.get("token") and info.get("token") == os.environ.get(LOCK_ENV):
            yield  # our parent holds it for us
            return
        raise RunLocked(f"{root} is being written by {info.get('holder', 'another process')} (pid "
                        f"{info.get('pid', '?')}, since {info.get('since', '?')}): wait for it to finish or stop "
                        "it; two writers in one run directory would interleave their files") from None
    token, saved = uuid.uuid4().hex, os.environ.get(LOCK_ENV)
    try:
        write_json(root / LOCK_INFO, {"holder": holder, "pid": os.getpid(), "token": token,
                                      "since": datetime.datetime.now().isoformat(timespec="seconds")})
        os.environ[LOCK_ENV] = token
        yield
    finally:
        if saved is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = saved
        (root / LOCK_INFO).unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
