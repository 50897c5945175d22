"""What a stage's outputs depend on, as one hash: its settings, the code it runs and the outputs it reads.

A stage's fingerprint is the sha256 of its effective config, the source of every lanic_nb module its stage module
imports (followed through the package, read from the files), the shipped resources (vocabulary, phantom encoder),
its notebook, the fingerprints the stages it reads recorded when they finished, and the stat signature of what it
reads from outside the run (a real release's tables under ``data_root``). So a change of a setting, of
the code a stage runs or of anything upstream changes it, and an unchanged stage keeps it: the notebook runner
skips a stage whose recorded fingerprint equals the one it would get (``stale_stages``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from lanic_nb.stages import STAGES, interrupted, missing_stages, stage, stage_record

PACKAGE = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(name: str) -> frozenset[str]:
    """lanic_nb modules that module ``name`` imports (at any level of its source)."""
    path = _module_file(name)
    if path is None:
        return frozenset()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        found |= {t for t in targets if t.startswith("lanic_nb.") and _module_file(t) is not None}
    return frozenset(found)


def module_closure(name: str) -> list[str]:
    """``name`` and every lanic_nb module it imports, directly or through others, sorted."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    return sorted(seen)


@functools.cache
def _file_hash(path: Path, size: int, mtime: float) -> str:  # size and mtime: a changed file is hashed again
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(str(p.relative_to(PACKAGE.parent)).encode() + _file_hash(p, st.st_size, st.st_mtime).encode())
    return h.hexdigest()


def code_hash(name: str) -> str:
    """The code stage ``name`` runs: its stage module's import closure, the shipped resources, its notebook."""
    st = stage(name)
    files = [_module_file(m) for m in module_closure(st.run.split(":")[0])]
    files += [p for p in (PACKAGE / "resources").rglob("*") if p.is_file()]
    notebook = PACKAGE / "notebooks" / f"{st.name}.ipynb"
    return _hash_files([f for f in files if f is not None] + ([notebook] if notebook.exists() else []))


def recorded_fingerprint(run_dir: str | Path, name: str) -> str | None:
    """The fingerprint stage ``name`` recorded when it last finished in ``run_dir`` (None: not recorded)."""
    path = stage_record(run_dir, name)
    if not path.exists() or interrupted(run_dir, name):
        return None
    return json.loads(path.read_text()).get("fingerprint")


def _stat_signature(path: Path) -> list:
    """Names, sizes and modification times of a file, or of the files directly in a folder (a release's tables)."""
    if path.is_file():
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())


def external_inputs(config) -> dict[str, list]:
    """What a stage reads from outside the run directory: ``data_root`` and any reader option naming a file or
    folder, by their stat signature (cheap; a release's image folders are not walked)."""
    candidates = {"data_root": getattr(config, "data_root", "") or ""}
    for key, value in (getattr(config, "reader_options", None) or {}).items():
        if isinstance(value, str):
            candidates[f"reader_options.{key}"] = value
    return {k: _stat_signature(Path(v)) for k, v in candidates.items() if v and Path(v).exists()}


def stage_fingerprint(run_dir: str | Path, name: str, config) -> str:
    """The fingerprint stage ``name`` has with ``config`` on ``run_dir`` as it stands (its inputs' records)."""
    from lanic_nb.settings import to_dict

    st = stage(name)
    doc = {"stage": st.name, "config": to_dict(config), "code": code_hash(st.name),
           "inputs": {r: recorded_fingerprint(run_dir, r) for r in (*st.reads, *st.uses)},
           "external": external_inputs(config)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def stale_stages(run_dir: str | Path, names: list[str], params, force: bool = False,
                 executed: bool = True) -> list[str]:
    """Which of ``names`` (in pipeline order) must run: those whose outputs are incomplete, whose executed notebook
    is missing (``executed``: the runner keeps one per stage; a caller of the stage functions alone does not),
    whose fingerprint changed, or that read a stage that runs before them (everything with ``force``)."""
    from lanic_nb.settings import stage_config

    root = Path(run_dir)
    order = [n for n in STAGES if n in {stage(x).name for x in names}]
    if force:
        return order
    stale: list[str] = []
    for n in order:
        upstream_runs = any(r in stale for r in (*STAGES[n].reads, *STAGES[n].uses))
        fresh = (not upstream_runs and not missing_stages(root, [n])
                 and (not executed or (root / "notebooks" / f"{n}.ipynb").exists())
                 and recorded_fingerprint(root, n) == stage_fingerprint(root, n, stage_config(n, params)))
        if not fresh:
            stale.append(n)
    return stale
