"""bench/seeds.py (the spread of the phantom figures over ensemble seeds): the row it reads from a run's metrics,
its one-line summary, and its refusal of a run without notebooks 00-06. Retraining itself is the stages' own code,
tested with them; a full run takes minutes per seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_seeds", ROOT / "bench" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def fake_run(folder: Path, share: float, effusion: float, named: bool) -> Path:
    (folder / "metrics").mkdir(parents=True)
    m4 = {k: 0.5 for k in seeds.COLUMNS[:9]} | {"n_patterns": 70, "n_monosemantic": 30}
    evidence = {"Pleural Effusion": {"confounder_share": effusion}, "Edema": {"confounder_share": 0.1},
                "Consolidation": {"confounder_share": 0.15}}
    m6 = {"shortcut": {"finding": "Pleural Effusion", "pattern_name": "portable film" if named else "pleural effusion"},
          "shortcut_named": named, "shortcut_share": share, "evidence": evidence}
    (folder / "metrics" / "04_patterns.json").write_text(json.dumps(m4))
    (folder / "metrics" / "06_attribution.json").write_text(json.dumps(m6))
    return folder


def test_figures_and_summary_line(tmp_path):
    a = seeds.figures(fake_run(tmp_path / "a", 0.8, 0.24, True))
    b = seeds.figures(fake_run(tmp_path / "b", 1.0, 0.12, False))
    assert a["evidence_shortcut_finding"] == 0.24 and a["evidence_other_max"] == 0.15  # the finding vs the others
    assert a["shortcut_pattern"] == "portable film" and b["shortcut_named"] is False
    line = seeds.summary_line(pd.DataFrame([{"seed": 0, **a}, {"seed": 100, **b}]))
    assert line.startswith("spread over seeds [0, 100]:")
    assert "n_patterns 70-70" in line and "shortcut_named 1/2" in line and "shortcut_share 0.80-1.00" in line
    assert "['pleural effusion', 'portable film']" in line


def test_refuses_a_run_without_its_stages(tmp_path, capsys):
    assert seeds.main(["--run-dir", str(tmp_path)]) == 2
    assert "run notebooks 00-06 there first" in capsys.readouterr().err
