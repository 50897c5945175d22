"""A non-editable install (a built wheel in a fresh venv) runs the first notebooks from another directory.

The wheel is built from the files git tracks (what a clean clone holds), installed without dependencies
into a new venv that borrows the test environment's third-party packages, and run from an empty folder:
so the notebooks, their parameter files and the shipped vocabulary must come from inside the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def clean_copy(dst: Path) -> Path:
    """The repository's tracked and not-ignored files (symlinks kept as links), as a clean clone has them."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        elif src.is_file():
            shutil.copy2(src, out)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = clean_copy(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (dist / "build.log").write_text(r.stdout + r.stderr)
    (whl,) = dist.glob("lanic_nb-*.whl")
    return whl


def test_building_the_package_prints_no_setuptools_warning(wheel):
    log = (wheel.parent / "build.log").read_text()
    assert "would be ignored" not in log and "SetuptoolsDeprecationWarning" not in log, log[-3000:]


def test_wheel_ships_notebooks_params_and_vocabulary(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("lanic_nb/notebooks/00_data.ipynb", "lanic_nb/notebooks/09_pathology.ipynb",
                   "lanic_nb/notebooks/10_explain.ipynb",
                   "lanic_nb/resources/phantom_encoder/open_clip_model.safetensors",
                   "lanic_nb/resources/phantom_encoder/card.json",
                   "lanic_nb/resources/phantom_encoder/fingerprint.safetensors",
                   "lanic_nb/notebooks/params/small.yaml", "lanic_nb/resources/concepts.csv",
                   "lanic_nb/run_notebooks.py", "lanic_nb/patterns/stage.py"):
        assert needed in names, f"{needed} is not in the wheel"
    assert not any(n.startswith(("tests/", "runs/", "bench/")) for n in names)


@pytest.mark.notebook
def test_installed_wheel_runs_the_small_pipeline_elsewhere(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Third-party dependencies from the test environment; its .pth files (the editable lanic_nb) are not read.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run([str(py), "-c", "import lanic_nb, sys; print(lanic_nb.__file__); print(sys.prefix)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert Path(where[0]).is_relative_to(venv), f"imported lanic_nb from {where[0]}, not the installed wheel"

    # The first notebooks (papermill, the shipped params files, the phantom encoder) and the vocabulary, all read
    # from inside the installed package; the whole small pipeline runs in the notebook tests already.
    r = subprocess.run([str(py), "-m", "lanic_nb.run_notebooks", "--run-dir", "run", "--size", "small", "--quiet",
                        "--only", "00", "01"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = elsewhere / "run"
    executed = sorted(p.stem for p in (run / "notebooks").glob("*.ipynb"))
    assert executed == ["00_data", "01_embed"]
    for artifact in ("data/manifest.parquet", "embed/header.json", "metrics/run.json"):
        assert (run / artifact).exists(), artifact
    vocab = subprocess.run([str(py), "-c", "from lanic_nb.concepts.vocabulary import load_vocabulary; "
                            "print(len(load_vocabulary()))"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert vocab.returncode == 0 and int(vocab.stdout) > 100, vocab.stderr[-2000:]
    assert not (REPO / "runs" / "run").exists()
