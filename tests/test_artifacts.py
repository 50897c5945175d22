"""The stage table and the artifacts layer: a stage run before its inputs exist names the stages that make them
and the command that runs them; ``Run`` loads a finished run's pieces."""

from __future__ import annotations

import inspect

import pytest

from lanic_nb.artifacts import MissingInputs, Run, missing_stages, require_inputs
from lanic_nb.stages import STAGES, downstream, stage, upstream


def test_the_stage_table_is_consistent():
    names = list(STAGES)
    assert names == sorted(names) and names[0] == "00_data"
    for st in STAGES.values():
        assert all(r in STAGES and r < st.name for r in st.reads), f"{st.name} reads a later or unknown stage"
        cfg, run = st.config_class(), st.run_function()
        params = list(inspect.signature(run).parameters.values())
        assert [p.name for p in params[:2]] == ["run_dir", "config"], f"{st.run}: run_<stage>(run_dir, config=None)"
        assert params[1].default is None, f"{st.run}: config must default to None (the defaults)"
        assert cfg() is not None  # every stage config builds with its defaults
    assert upstream("04_patterns") == ["00_data", "01_embed", "02_classifier", "03_transcoders"]
    assert "05_maps" in downstream("04_patterns") and "04_patterns" not in downstream("05_maps")
    assert stage("04") is STAGES["04_patterns"]
    with pytest.raises(KeyError, match="unknown stage"):
        stage("99_nothing")


def test_a_stage_on_an_empty_run_directory_names_the_missing_stages_and_the_command(tmp_path):
    with pytest.raises(MissingInputs) as e:
        require_inputs(tmp_path, "04_patterns")
    msg = str(e.value)
    assert "00_data, 01_embed, 02_classifier, 03_transcoders" in msg
    assert f"--run-dir {tmp_path} --only 00 01 02 03" in msg and "data/manifest.parquet" in msg


def test_only_the_stages_whose_outputs_are_missing_are_named(tmp_path):
    for name in ("00_data", "01_embed"):
        for f in STAGES[name].outputs:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).touch()
    assert missing_stages(tmp_path, upstream("04_patterns")) == ["02_classifier", "03_transcoders"]
    with pytest.raises(MissingInputs, match="--only 02 03"):
        require_inputs(tmp_path, "04_patterns")
    require_inputs(tmp_path, "02_classifier")  # its inputs are there


@pytest.mark.parametrize("name", [n for n in STAGES if STAGES[n].reads])
def test_every_stage_function_checks_its_inputs_first(name, tmp_path):
    """Called on an empty run directory, each stage stops with MissingInputs before touching anything."""
    with pytest.raises(MissingInputs, match=name):
        STAGES[name].run_function()(tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*")), f"{name} wrote files before checking its inputs"


def test_run_says_which_stage_is_missing(tmp_path):
    run = Run(tmp_path)
    assert run.finished == []
    with pytest.raises(MissingInputs, match="--only 00 01 02 03"):
        _ = run.ensemble
    with pytest.raises(MissingInputs, match="00_data, 01_embed"):
        Run(tmp_path / "nothing").embeddings()


@pytest.mark.notebook
def test_notebook_04_on_an_empty_run_directory_names_the_missing_stages(tmp_path):
    import papermill as pm

    from lanic_nb.run_notebooks import NOTEBOOK_DIR

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NOTEBOOK_DIR / "04_patterns.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(tmp_path),
                            parameters={"run_dir": str(tmp_path / "empty"), "params": "small"}, progress_bar=False)
    assert e.value.ename == "MissingInputs"
    assert "00_data, 01_embed, 02_classifier, 03_transcoders" in e.value.evalue
    assert "--only 00 01 02 03" in e.value.evalue
