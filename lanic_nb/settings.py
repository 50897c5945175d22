"""Every setting of every stage, from one place: the stage's config dataclass, filled from a params file.

A stage's config (``PatternsConfig``) holds the library configs it uses (``merge: MergeConfig``,
``annotation: AnnotationConfig``) instead of copying their fields, so each setting has one default, written
once, in the dataclass that uses it. A *params file* (YAML) says what a run changes; the demo's choices are
``notebooks/params/demo.yaml``, the test size ``small.yaml`` (which extends it). Its keys are stage names
(``04_patterns``) or ``all`` (applied to every stage whose config has that field); values nest like the
configs::

    extends: demo              # optional: a params file (name or path) applied first
    all:
      device: cpu
    04_patterns:
      merge:
        sim_threshold: 0.6

An unknown or misspelled setting is an error that names it, the closest known names and where it was read.
``stage_config("04_patterns", "demo", {"merge": {"sim_threshold": 0.6}})`` is what each notebook calls.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lanic_nb.stages import STAGES, stage

PARAMS_DIR = Path(__file__).resolve().parent / "notebooks" / "params"
"""The shipped params files (``lanic_nb/notebooks`` is the repository's ``notebooks/`` folder)."""
ALL = "all"


class SettingError(ValueError):
    """A params file or an override names a setting that does not exist, or gives one a value of the wrong kind."""


# ------------------------------------------------------------------------------------------ configs <-> dicts


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def nested_config(cls, name: str) -> type | None:
    """The config dataclass a field of ``cls`` holds, or None for a plain value."""
    hint = _hints(cls).get(name)
    return hint if dataclasses.is_dataclass(hint) else None


def _unknown(where: str, names: list[str], known: list[str], deeper: list[str] = ()) -> SettingError:
    """The error for unknown keys: each with the closest known names (or nested settings' paths)."""
    hints = []
    for n in names:
        close = difflib.get_close_matches(n, known, n=3, cutoff=0.6)
        if not close and deeper:  # a nested setting given at the top ("n_images" for "phantom.n_images")
            last = {p.rsplit(".", 1)[-1]: p for p in deeper}
            close = [last[c] for c in difflib.get_close_matches(n, list(last), n=3, cutoff=0.75)]
        hints.append(f"{n!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    return SettingError(f"{where}: unknown setting {', '.join(hints)}; known: {', '.join(known)}")


def from_dict(cls, values: Mapping[str, Any] | None, where: str = ""):
    """Build ``cls`` from a (nested) mapping; fields it does not name keep their defaults.

    Raises ``SettingError`` naming an unknown key (with the closest known ones) and ``where`` it came from;
    the config's own ``__post_init__`` checks the values.
    """
    where = where or cls.__name__
    values = dict(values or {})
    known = _fields(cls)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise _unknown(where, unknown, list(known), [p for p in leaf_settings(cls) if "." in p])
    kwargs = {}
    for name, value in values.items():
        sub = nested_config(cls, name)
        if sub is None or isinstance(value, sub):
            kwargs[name] = value
        elif isinstance(value, Mapping):
            kwargs[name] = from_dict(sub, value, f"{where}.{name}")
        else:
            raise SettingError(f"{where}.{name} holds the settings of {sub.__name__}: give a mapping, "
                               f"e.g. {{{next(iter(_fields(sub)))}: ...}}, not {value!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, SettingError):
            raise
        raise SettingError(f"{where}: {e}") from e


def to_dict(cfg) -> dict[str, Any]:
    """A config as the nested mapping ``from_dict`` takes back (derived fields left out)."""
    out = {}
    for name in _fields(type(cfg)):
        value = getattr(cfg, name)
        out[name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def leaf_settings(cls, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every plain setting of a config tree by dotted path ("merge.sim_threshold" -> its field)."""
    out = {}
    for name, f in _fields(cls).items():
        sub = nested_config(cls, name)
        if sub is not None:
            out |= leaf_settings(sub, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = f
    return out


def get_setting(cfg, path: str) -> Any:
    """The value at a dotted path of a config ("merge.sim_threshold")."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def nest(path: str, value: Any) -> dict:
    """{"merge": {"sim_threshold": value}} from "merge.sim_threshold"."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def deep_merge(base: Mapping, top: Mapping | None) -> dict:
    """``top`` over ``base``; mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in (top or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def setting_doc(cls, path: str) -> str:
    """The docstring of the setting at a dotted path of ``cls``."""
    *head, last = path.split(".")
    for part in head:
        cls = nested_config(cls, part)
    return field_docs(cls).get(last, "")


# ------------------------------------------------------------------------------------------ params files


def params_path(params: str | Path) -> Path:
    """A params file by name ("demo": ``notebooks/params/demo.yaml``) or path."""
    p = Path(params)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"params file {p} does not exist")
        return p
    shipped = PARAMS_DIR / f"{params}.yaml"
    if not shipped.exists():
        names = sorted(q.stem for q in PARAMS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no params file {params!r}: give a .yaml path or one of {', '.join(names)}")
    return shipped


def read_params(params: str | Path | None, _seen: tuple[Path, ...] = ()) -> dict[str, dict]:
    """A params file with its ``extends`` chain applied: {stage or "all": {setting: value}}.

    ``None`` is no file (every stage at its defaults). Checks the stage names, not the settings (see
    ``check_params``).
    """
    if params is None:
        return {}
    path = params_path(params).resolve()
    if path in _seen:
        raise SettingError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, _seen))})")
    table = yaml.safe_load(path.read_text()) or {}
    if not isinstance(table, dict):
        raise SettingError(f"{path}: expected a mapping of stage name -> {{setting: value}}")
    base: dict = {}
    parents = table.pop("extends", None) or []
    for parent in [parents] if isinstance(parents, str | Path) else parents:
        parent_path = path.parent / f"{parent}" if str(parent).endswith((".yaml", ".yml")) else parent
        base = deep_merge(base, read_params(parent_path, (*_seen, path)))
    bad = [k for k, v in table.items() if not isinstance(v, dict | None)]
    if bad:
        raise SettingError(f"{path}: the entries {bad} must be mappings of setting -> value")
    unknown = [k for k in table if k != ALL and k not in STAGES]
    if unknown:
        raise _unknown(str(path), unknown, [ALL, *STAGES])
    return deep_merge(base, {k: v or {} for k, v in table.items()})


def _label(params) -> str:
    return "no params file" if params is None else str(params)


def stage_settings(name: str, params: str | Path | None = "demo", overrides: Mapping | None = None) -> dict:
    """What a stage's config is built from: the file's ``all`` entry (the fields this config has), its own
    entry, then ``overrides``."""
    st = stage(name)
    table = read_params(params)
    known = _fields(st.config_class())
    common = {k: v for k, v in table.get(ALL, {}).items() if k in known}
    return deep_merge(deep_merge(common, table.get(st.name, {})), overrides)


def stage_config(name: str, params: str | Path | None = "demo", overrides: Mapping | None = None):
    """The config of stage ``name`` ("04_patterns" or "04") for a run with these params and overrides."""
    st = stage(name)
    where = f"{st.name} ({_label(params)}{' + overrides' if overrides else ''})"
    return from_dict(st.config_class(), stage_settings(st.name, params, overrides), where)


def run_stage(name: str, run_dir: str | Path, params: str | Path | None = "demo", overrides: Mapping | None = None):
    """Run stage ``name`` on ``run_dir`` with the settings of a params file (and overrides); its result."""
    return stage(name).run_function()(run_dir, stage_config(name, params, overrides))


def check_params(params: str | Path | None, names: list[str] | None = None) -> None:
    """Build the config of every stage (or of ``names``) from a params file, so a misspelled setting fails
    before the first notebook runs; an ``all`` key that no stage has fails too."""
    table = read_params(params)
    names = [stage(n).name for n in names] if names else list(STAGES)
    for n in names:
        stage_config(n, params)
    common = set(table.get(ALL, {}))
    used = {k for st in STAGES.values() for k in _fields(st.config_class())}
    if common - used:
        raise _unknown(f"{_label(params)}: {ALL}", sorted(common - used), sorted(used))


# ------------------------------------------------------------------------------------------ showing them


def settings_table(cfg, changed_only: bool = True) -> pd.DataFrame:
    """One row per setting of a config: its dotted path, the value in use, its default and what it is.

    ``changed_only`` keeps the settings that differ from their defaults (what a params file or an override
    chose).
    """
    cls = type(cfg)
    default = from_dict(cls, {})
    rows = []
    for path in leaf_settings(cls):
        value, dflt = get_setting(cfg, path), get_setting(default, path)
        if changed_only and value == dflt:
            continue
        doc = setting_doc(cls, path).split("\n\n")[0].replace("\n", " ")
        rows.append({"setting": path, "value": value, "default": dflt, "what": doc.split(". ")[0].rstrip(".")})
    return pd.DataFrame(rows, columns=["setting", "value", "default", "what"])
