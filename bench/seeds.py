"""The spread of the phantom's training-dependent figures over ensemble seeds: notebooks 03, 04 and 06 retrained on
a finished run's data, embeddings and classifier with other transcoder seeds, and the figures README quotes,
one row per seed. Not a speed benchmark and not in `make bench` (about 5 minutes per seed on 2 CPU cores).

    .venv/bin/python bench/seeds.py --run-dir runs/demo --seeds 100 200           # the demo's spread
    .venv/bin/python bench/seeds.py --run-dir runs/phantom_b --seeds 100 200      # phantom B's

Member i of an ensemble trains with seed + i (its initialization and its minibatches), so seeds closer than the
ensemble's size share members: seed 1 retrains 49 of the demo's 50. The run's own ensemble is the first row
(read from its metrics). Each seed's stages run in ``<out>/seed<s>`` on copies of the run's data, embeddings and
classifier, with the stages' defaults (the notebooks' parameters) and the given seed; a table goes to
``<out>/spread.csv`` and one summary line (min-max per figure) ends the output.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from lanic_nb.attribute.stage import run_attribution
from lanic_nb.device import machine_line
from lanic_nb.patterns.stage import run_patterns
from lanic_nb.rundir import load_metrics
from lanic_nb.settings import stage_config
from lanic_nb.transcoder.stage import run_transcoders

SHARED = ("data", "embed", "classifier")
"""What the retrained stages read from the finished run (copied, never written)."""

COLUMNS = ("n_patterns", "recovery", "recovery_of_hidden_ceiling", "n_monosemantic", "concept_accuracy",
           "category_accuracy", "n_gallery_pure", "concept_accuracy_gallery", "category_accuracy_gallery",
           "shortcut_named", "shortcut_pattern", "shortcut_share", "evidence_shortcut_finding",
           "evidence_other_max")


def figures(run_dir: Path) -> dict:
    """The README's training-dependent figures of a run with notebooks 03, 04 and 06 done."""
    m4, m6 = load_metrics(run_dir, "04_patterns"), load_metrics(run_dir, "06_attribution")
    row = {k: m4.get(k) for k in COLUMNS[:9]}
    shortcut = m6.get("shortcut") or {}
    evidence = {f: v["confounder_share"] for f, v in (m6.get("evidence") or {}).items()}
    finding = shortcut.get("finding")
    row.update(shortcut_named=m6.get("shortcut_named"), shortcut_pattern=shortcut.get("pattern_name", ""),
               shortcut_share=m6.get("shortcut_share"), evidence_shortcut_finding=evidence.get(finding),
               evidence_other_max=max((v for f, v in evidence.items() if f != finding), default=None))
    return row


def retrain(run_dir: Path, out: Path, seed: int, params: str = "demo") -> dict:
    """Notebooks 03, 04 and 06 with the settings of ``params`` and ensemble seed ``seed`` on a copy of ``run_dir``'s
    inputs; their figures."""
    work = out / f"seed{seed}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in SHARED:  # the planted truth and the shortcut's definition live in data/
        shutil.copytree(run_dir / name, work / name)
    run_transcoders(work, stage_config("03_transcoders", params, {"transcoder": {"seed": seed}}))
    run_patterns(work, stage_config("04_patterns", params))
    run_attribution(work, stage_config("06_attribution", params))
    return figures(work)


def summary_line(table: pd.DataFrame) -> str:
    """min-max of each figure over the seeds, one line."""
    parts = []
    for col in COLUMNS:
        v = table[col]
        if col == "shortcut_pattern":
            parts.append(f"{col} {sorted(set(map(str, v)))}")
        elif col == "shortcut_named":
            parts.append(f"{col} {int(v.astype(bool).sum())}/{len(v)}")
        else:
            v = pd.to_numeric(v, errors="coerce")
            fmt = "{:.0f}" if col.startswith("n_") else "{:.2f}"
            parts.append(f"{col} {fmt.format(v.min())}-{fmt.format(v.max())}")
    return f"spread over seeds {list(table['seed'])}: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run with notebooks 00-06 done")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--params", default="demo", help="the params file the run was made with (e.g. phantom_b)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: <run-dir>_seeds)")
    args = ap.parse_args(argv)
    run_dir = args.run_dir.resolve()
    for name in (*SHARED, "metrics/04_patterns.json", "metrics/06_attribution.json"):
        if not (run_dir / name).exists():
            print(f"{run_dir} has no {name}: run notebooks 00-06 there first", file=sys.stderr)
            return 2
    out = (args.out or run_dir.with_name(run_dir.name + "_seeds")).resolve()
    print(machine_line(), flush=True)
    own = load_metrics(run_dir, "03_transcoders")
    rows = [{"seed": int(own.get("seed", 0)), **figures(run_dir)}]
    for seed in args.seeds:
        t0 = time.perf_counter()
        rows.append({"seed": seed, **retrain(run_dir, out, seed, args.params)})
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s; " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
              else f"{k} {v}" for k, v in rows[-1].items() if k != "seed"), flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "spread.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(summary_line(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
