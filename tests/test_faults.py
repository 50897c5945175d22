"""Faults: a stage killed at any point is rerun to exactly the artifacts and metrics of an uninterrupted run; while
a stage is unfinished, later stages refuse to read it; a second writer in the same run directory is refused.

Each stage 00-07 runs in a forked child (``os.setsid``, so a kill reaches the workers it starts too) and is killed
with SIGKILL at three points of its uninterrupted duration, rerun after each kill, and finally left to finish.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from lanic_nb.artifacts import (
    MissingInputs,
    interrupted,
    owned_files,
    require_inputs,
    running_marker,
    stage_record,
)
from lanic_nb.rundir import LOCK_ENV, RunLocked, run_lock
from lanic_nb.stages import STAGES, downstream

STAGES_KILLED = [n for n in STAGES if n[:2] <= "07"]
KILL_AT = (0.2, 0.5, 0.8)  # fractions of the stage's uninterrupted duration
# Small mode, smaller still where a stage's time goes (the mechanics under test do not depend on size).
FAULT_PARAMS = {"extends": "small", "00_data": {"phantom": {"n_images": 96}},
                "03_transcoders": {"transcoder": {"steps": 300, "checkpoint_every": 50}},
                "05_maps": {"n_neighbors": 5, "max_images": 96}}
NOT_ARTIFACTS = ("checkpoints",)  # resume state: what a rerun continues from, not what later stages read


def _run_stage(name: str, run_dir: str, params: str) -> None:
    os.setsid()  # its own process group: killing it kills the workers it starts (the phantom's image pool)
    from lanic_nb.settings import run_stage

    run_stage(name, run_dir, params)


def start(ctx, name: str, run_dir: Path, params: Path):
    p = ctx.Process(target=_run_stage, args=(name, str(run_dir), str(params)))
    p.start()
    return p


def kill(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.join()


def fingerprint(run_dir: Path, name: str) -> dict[str, str]:
    """sha256 of every file the stage owns (minus resume state), and its metrics without timings."""
    out = {}
    for f in owned_files(run_dir, name):
        rel = f.relative_to(run_dir)
        if any(part in NOT_ARTIFACTS for part in rel.parts):
            continue
        if rel.parts[0] == "metrics":
            metrics = {k: v for k, v in json.loads(f.read_text()).items() if "seconds" not in k}
            out[str(rel)] = json.dumps(metrics, sort_keys=True)
        else:
            out[str(rel)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """A run of stages 00-07 with FAULT_PARAMS, each in a forked child; its fingerprints and stage durations."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lanic_nb.settings", *(STAGES[n].run.split(":")[0] for n in STAGES_KILLED)])
    root = tmp_path_factory.mktemp("faults")
    params = root / "faults.yaml"
    params.write_text(yaml.safe_dump(FAULT_PARAMS))
    base, seconds = root / "base", {}
    for name in STAGES_KILLED:
        p = start(ctx, name, base, params)
        p.join()
        assert p.exitcode == 0, f"{name} failed uninterrupted"
        seconds[name] = json.loads(stage_record(base, name).read_text())["seconds"]  # the stage's own time
    return ctx, params, base, seconds


@pytest.mark.notebook
@pytest.mark.parametrize("name", STAGES_KILLED)
def test_a_killed_stage_reruns_to_the_uninterrupted_result(fault_run, name, tmp_path):
    ctx, params, base, seconds = fault_run
    want = fingerprint(base, name)
    assert want, f"{name} wrote nothing"
    work = tmp_path / "run"
    shutil.copytree(base, work, symlinks=True)
    for f in owned_files(work, name):  # the earlier stages' files stay: this stage runs afresh on them
        f.unlink()
    killed_mid_stage = 0
    for frac in KILL_AT:
        p = start(ctx, name, work, params)
        began = time.perf_counter() + 60
        while p.is_alive() and not running_marker(work, name).exists() and time.perf_counter() < began:
            time.sleep(0.005)  # the stage has taken the lock and marked itself unfinished: it is writing
        p.join(timeout=frac * seconds[name])
        if p.is_alive():
            kill(p)
        if interrupted(work, name):  # killed while writing: later stages must not read it
            killed_mid_stage += 1
            for later in downstream(name)[:1]:
                with pytest.raises(MissingInputs, match="interrupted"):
                    require_inputs(work, later)
    p = start(ctx, name, work, params)
    p.join()
    assert p.exitcode == 0 and not interrupted(work, name)
    assert killed_mid_stage >= 1, f"no kill landed while {name} was writing"
    assert fingerprint(work, name) == want


def test_a_second_writer_is_refused_with_who_holds_the_run(tmp_path):
    with run_lock(tmp_path, "04_patterns"):
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()

        def other():  # a process of its own, not started under the holder (no token in its environment)
            os.environ.pop(LOCK_ENV, None)
            try:
                with run_lock(tmp_path, "run_notebooks"):
                    q.put("entered")
            except RunLocked as e:
                q.put(str(e))

        p = ctx.Process(target=other)
        p.start()
        p.join(30)
        msg = q.get(timeout=5)
    assert "04_patterns" in msg and str(os.getpid()) in msg and "entered" not in msg
    with run_lock(tmp_path, "after"):  # released: the next writer gets it
        pass


def test_a_stage_that_fails_stays_unfinished_and_reruns(tmp_path):
    from lanic_nb.artifacts import writing_stage

    with pytest.raises(RuntimeError), writing_stage(tmp_path, "00_data"):
        raise RuntimeError("disk full")
    assert running_marker(tmp_path, "00_data").exists()
    with writing_stage(tmp_path, "00_data"):
        pass
    assert not interrupted(tmp_path, "00_data") and (tmp_path / "stages" / "00_data.json").exists()
