"""One source for every setting: stage configs hold the library configs they use, every setting arrives from a
params file, a misspelled one stops the run with its name, each has one default and says where it comes from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lanic_nb import settings as S
from lanic_nb.run_notebooks import main as run_notebooks_main
from lanic_nb.stages import STAGES

STAGE_NAMES = list(STAGES)


def write_params(path: Path, table: dict) -> Path:
    path.write_text(yaml.safe_dump(table))
    return path


# Values for settings whose valid values cannot be guessed from their type and default (a choice among names,
# a list tied to another setting). Any setting missing here gets a candidate from its type.
SPECIAL = {
    "dataset": ["nih"], "model": ["small"], "uncertain_policy": ["positive"], "activation": ["relu"],
    "encoder_precision": ["bfloat16"], "split": ["val"], "modality_check": ["refuse"], "dtype": ["float16"],
    "seeds": [[5] * 100], "dict_sizes": [[64] * 100], "prevalence": [{"pneumothorax": 0.3}],
    "shortcut_concept": ["burned_in_text"], "shortcut_finding": ["Edema"], "population": ["chexpert"],
    "extra_shortcuts": [[{"concept": "grid_lines", "finding": "Edema", "strength": 0.5, "absent": False}]],
    "split_fractions": [[0.6, 0.2, 0.2]],
    "reader_options": [{"frontal_only": True}], "images": [["a.png", "b.png"]], "own_rivals": [["device"]],
    "cnn.channels": [[4, 8]], "insertion_ks": [[0, 2, 7]], "calibration": ["platt"], "ood": ["refuse"],
    "vision_arch": ["resnet"], "name_patterns": [],
}


def candidates(path: str, default):
    name = path.rsplit(".", 1)[-1]
    for key in (path, name):
        if key in SPECIAL:
            return SPECIAL[key]
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int):
        return [default + 1, default * 2, 2, 1]
    if isinstance(default, float):
        return [round(default * 0.9, 6), round(default + 0.01, 6), 0.5, 2.0, 1.0]
    if isinstance(default, str):
        return [default + "x", "x"]
    if default is None:
        return [3, 0.3, "x"]
    if isinstance(default, tuple | list):
        return [list(default)[:1] or [1]]
    raise AssertionError(f"no candidate value for a setting of type {type(default).__name__}: add it to SPECIAL")


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_setting_of_every_stage_arrives_from_a_params_file(name, tmp_path):
    cls = STAGES[name].config_class()
    default = S.from_dict(cls, {})
    leaves = S.leaf_settings(cls)
    assert leaves, f"{name} has no settings"
    for path in leaves:
        if path == "name_patterns":  # needs an annotator model: set together with it below
            continue
        dflt = S.get_setting(default, path)
        for value in [v for v in candidates(path, dflt) if v != dflt]:
            params = write_params(tmp_path / "p.yaml", {name: S.nest(path, value)})
            try:
                cfg = S.stage_config(name, params)
            except S.SettingError:
                continue  # not a valid value for this setting: try the next candidate
            got = S.get_setting(cfg, path)
            want = tuple(value) if isinstance(got, tuple) else value
            assert got == want and got != dflt, f"{name}: {path} set to {value!r} arrived as {got!r}"
            break
        else:
            pytest.fail(f"{name}: no candidate value for {path} was accepted; add one to SPECIAL")
    if name == "10_explain":
        params = write_params(tmp_path / "p.yaml", {name: {"annotator": {"model": "m"}, "name_patterns": True}})
        assert S.stage_config(name, params).name_patterns is True


def test_a_misspelled_setting_is_an_error_naming_it_and_the_known_ones(tmp_path):
    params = write_params(tmp_path / "p.yaml", {"00_data": {"phantom": {"n_imagse": 100}}})
    with pytest.raises(S.SettingError, match=r"n_imagse.*did you mean 'n_images'.*known: n_images"):
        S.stage_config("00_data", params)
    flat = write_params(tmp_path / "q.yaml", {"00_data": {"n_imagse": 100}})
    with pytest.raises(S.SettingError, match=r"n_imagse.*phantom.n_images"):
        S.check_params(flat)
    with pytest.raises(S.SettingError, match="unknown setting 'sim_treshold'"):
        S.stage_config("04_patterns", None, {"merge": {"sim_treshold": 0.6}})


def test_the_runner_refuses_a_misspelled_setting_before_running_anything(tmp_path, capsys, caplog):
    params = write_params(tmp_path / "p.yaml", {"extends": "small", "00_data": {"n_imagse": 100}})
    rc = run_notebooks_main(["--run-dir", str(tmp_path / "run"), "--params", str(params), "--quiet"])
    assert rc == 2
    assert "n_imagse" in capsys.readouterr().out + caplog.text
    assert not (tmp_path / "run").exists()


def test_params_file_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(S.SettingError, match="04_patern"):
        S.read_params(write_params(tmp_path / "a.yaml", {"04_patern": {"k_top": 3}}))
    with pytest.raises(S.SettingError, match="loops"):
        S.read_params(write_params(tmp_path / "b.yaml", {"extends": str(tmp_path / "b.yaml")}))
    with pytest.raises(S.SettingError, match="unknown setting 'devise'"):
        S.check_params(write_params(tmp_path / "c.yaml", {"all": {"devise": "cpu"}}))
    with pytest.raises(S.SettingError, match="merge holds the settings of MergeConfig"):
        S.stage_config("04_patterns", None, {"merge": 0.5})
    with pytest.raises(FileNotFoundError, match="demo"):
        S.params_path("no_such_params")


def test_extends_and_all_and_overrides_layer_in_order(tmp_path):
    base = write_params(tmp_path / "base.yaml", {"04_patterns": {"k_top": 7, "merge": {"sim_threshold": 0.6}}})
    top = write_params(tmp_path / "top.yaml", {"extends": str(base), "all": {"device": "cpu"},
                                               "04_patterns": {"merge": {"min_consistency": 0.4}}})
    cfg = S.stage_config("04_patterns", top, {"merge": {"sim_threshold": 0.8}})
    assert (cfg.k_top, cfg.device, cfg.merge.sim_threshold, cfg.merge.min_consistency) == (7, "cpu", 0.8, 0.4)
    assert S.stage_config("05_maps", top) == S.from_dict(STAGES["05_maps"].config_class(), {})  # no device field


def test_shipped_params_files_build_every_stage():
    for f in sorted(S.PARAMS_DIR.glob("*.yaml")):
        S.check_params(f)
    assert S.stage_config("03_transcoders", "small").transcoder.n_members == 4
    assert S.stage_config("03_transcoders", "demo").transcoder.n_members == 50


def test_the_demo_params_set_only_what_differs_from_the_defaults():
    """demo.yaml is the demo's choices, not a second copy of the defaults."""
    table = S.read_params("demo")
    for name, entry in table.items():
        default = S.from_dict(STAGES[name].config_class(), {})
        for path, value in flatten(entry).items():
            assert S.get_setting(default, path) != value, f"demo.yaml restates {name}.{path}'s default {value!r}"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("options") and k != "prevalence":
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_tree(cls, seen=None) -> set[type]:
    seen = set() if seen is None else seen
    seen.add(cls)
    for f in dataclasses.fields(cls):
        sub = S.nested_config(cls, f.name)
        if sub is not None and sub not in seen:
            config_tree(sub, seen)
    return seen


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_a_stage_config_holds_its_library_configs_with_their_own_defaults(name):
    """No copied fields: a nested config's default is its class's default, and a stage never repeats a field of
    a config it holds (only ``device``, ``seed`` and ``batch_size``, which every loop has of its own, may recur)."""
    cls = STAGES[name].config_class()
    default = cls()
    for f in dataclasses.fields(cls):
        sub = S.nested_config(cls, f.name)
        if sub is None:
            continue
        assert getattr(default, f.name) == sub(), f"{name}.{f.name} defaults to something else than {sub.__name__}()"
        copied = ({g.name for g in dataclasses.fields(sub)}
                  & {g.name for g in dataclasses.fields(cls)} - {"device", "seed", "batch_size"})
        assert not copied, f"{name} copies {sorted(copied)} of {sub.__name__}: hold it instead"


def all_config_classes() -> set[type]:
    return set().union(*(config_tree(st.config_class()) for st in STAGES.values()))


@pytest.mark.parametrize("cls", sorted(all_config_classes(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_setting_says_what_it_is_and_where_its_default_comes_from(cls):
    docs = S.field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        doc = docs.get(f.name, "")
        assert doc, f"{cls.__name__}.{f.name} has no docstring"
        if S.nested_config(cls, f.name) is None:
            assert "Default:" in doc, f"{cls.__name__}.{f.name}: say where its default comes from ('Default: ...')"


def test_settings_table_shows_what_a_run_changed():
    cfg = S.stage_config("04_patterns", "demo")
    table = S.settings_table(cfg)
    assert list(table.setting) == ["annotation.min_images", "annotation.contrast_neighbors", "annotation.report_weight"]
    assert table.set_index("setting").loc["annotation.min_images", "default"] == 5
    assert len(S.settings_table(cfg, changed_only=False)) == len(S.leaf_settings(type(cfg)))
