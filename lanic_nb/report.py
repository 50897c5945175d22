"""Docs generated from code and from runs' metrics: the settings reference, the results page, the README's table
of current figures and the benchmarks' table. Figures are never typed by hand: rerun this after a run.

    python -m lanic_nb.report --run demo=runs/demo --run "phantom B=runs/phantom_b" --bench runs/bench \
        --suite runs/suite/suite.json --suite-gap runs/suite_gap/suite.json
    python -m lanic_nb.report --settings-only        # docs/settings.md from the code alone (make docs runs this)

A generated part of a hand-written page sits between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->``; everything outside the markers is left as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from lanic_nb.embed.encoders import PHANTOM_ENCODER_DIR
from lanic_nb.io import atomic_path
from lanic_nb.manifest import FINDINGS
from lanic_nb.settings import field_docs, from_dict, get_setting, leaf_settings, read_params, setting_doc
from lanic_nb.stages import STAGES

log = logging.getLogger("lanic_nb.report")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = tuple(STAGES)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def update_block(path: Path, name: str, body: str) -> Path:
    """Replace what lies between a page's ``BEGIN/END generated: name`` markers with ``body``."""
    text = path.read_text(encoding="utf-8")
    begin, end = f"<!-- BEGIN generated: {name} -->", f"<!-- END generated: {name} -->"
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return write_text(path, f"{head}{begin}\n{body.strip()}\n{end}{tail}")


def _cell(v) -> str:
    if v == "":
        return '""'
    if isinstance(v, float):
        return f"{v:.3g}"
    text = json.dumps(v) if isinstance(v, dict | list | tuple) else str(v)
    return text.replace("|", "\\|")


# ------------------------------------------------------------------------------------------ settings reference


def settings_markdown() -> str:
    """Every setting of every stage: its default, the demo's value where it differs, what it is and where its
    default comes from (the ``Default:`` sentence of its docstring)."""
    demo = read_params("demo")
    out = ["# Settings", "",
           "Every setting of every stage, generated from the config dataclasses (`python -m lanic_nb.report "
           "--settings-only`). Set any of them in a params file under the stage's name (nested keys as written "
           "here: `merge.sim_threshold` is `merge: {sim_threshold: ...}`), or in a notebook's `settings`. The demo "
           "column is `notebooks/params/demo.yaml`, where the demo's choices differ from the defaults; why they "
           "were chosen is in [decisions](decisions.md).", ""]
    for name, st in STAGES.items():
        cls = st.config_class()
        default = from_dict(cls, {})
        chosen = from_dict(cls, demo.get(name, {}))
        out += [f"## {name}: {st.what}", "", f"`{cls.__module__}.{cls.__name__}`; run with `{st.run.split(':')[1]}`.",
                "", "| setting | default | demo | what it is | default from |", "| --- | --- | --- | --- | --- |"]
        for path in leaf_settings(cls):
            doc = " ".join(setting_doc(cls, path).split())
            what, _, source = doc.partition("Default:")
            dflt, mine = get_setting(default, path), get_setting(chosen, path)
            out.append(f"| `{path}` | `{_cell(dflt)}` | {'`' + _cell(mine) + '`' if mine != dflt else ''} | "
                       f"{what.strip().replace('|', '/')} | {source.strip().replace('|', '/')} |")
        nested = [f.name for f in dataclasses.fields(cls) if f.name not in leaf_settings(cls)]
        for n in nested:
            out.append(f"\n`{n}`: {field_docs(cls).get(n, '')}")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ runs' figures


def load_run_metrics(run_dir: Path) -> dict[str, dict]:
    """``{notebook: metrics}`` of a run (``run`` holds the timings and the machine)."""
    folder = Path(run_dir) / "metrics"
    if not folder.is_dir():
        raise FileNotFoundError(f"{run_dir} has no metrics/: run its notebooks first")
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _get(m: dict, path: str, default=None):
    for part in path.split("."):
        if not isinstance(m, dict) or part not in m:
            return default
        m = m[part]
    return m


def _notebooks_time(m: dict[str, dict]) -> str:
    from lanic_nb.stages import STAGES

    total, seconds = _get(m, "run.total_seconds"), _get(m, "run.seconds") or {}
    return "" if total is None else f"{total / 60:.1f} ({len(seconds)} of {len(STAGES)})"


def headline(m: dict[str, dict]) -> dict[str, str]:
    """The figures a user judges the project by, from one run's metrics (missing stages leave blanks)."""
    def f(path, fmt="{:.2f}"):
        v = _get(m, path)
        return "" if v is None else fmt.format(v)

    p4, p6 = m.get("04_patterns", {}), m.get("06_attribution", {})
    shortcut = p6.get("shortcut") or {}
    p90 = [v.get("median") for v in (p6.get("patterns_for_90") or {}).values()]
    named = ("" if not shortcut else f"{'yes' if p6.get('shortcut_named') else 'no'}: "
             f"'{shortcut.get('pattern_name', '')}' ({shortcut.get('concept', '')} on {shortcut.get('finding', '')})")
    lean = shortcut.get("reliance") or {}
    leans = ("" if not lean else f"{lean.get('confounder_rank', '')}"
             f"{', flagged' if lean.get('flagged') else ''} ({lean.get('reliance', float('nan')):.2f} logit)")
    return {
        "machine": _get(m, "run.machine", ""),
        "notebooks' time, min (notebooks timed)": _notebooks_time(m),
        "classifier test AUROC (mean of 5)": f("02_classifier.mlp_auroc_mean", "{:.3f}"),
        "calibration error (ECE, test, mean of 5): raw -> calibrated":
            f"{f('02_classifier.ece_before_mean', '{:.3f}')} -> {f('02_classifier.ece_after_mean', '{:.3f}')}",
        "transcoders: FVU of h / spliced AUROC change": f"{f('03_transcoders.fvu_mean', '{:.3f}')} / "
                                                      f"{f('03_transcoders.auroc_delta_mean', '{:+.1e}')}",
        "patterns (mean consistency)": f"{p4.get('n_patterns', '')} ({f('04_patterns.mean_consistency')})",
        "planted concepts recovered (of the probe ceiling)": f"{f('04_patterns.recovery')} "
                                                              f"({f('04_patterns.recovery_of_hidden_ceiling')})",
        "names right, AUROC-monosemantic: top-1 / category (n)":
            f"{f('04_patterns.concept_accuracy')} / {f('04_patterns.category_accuracy')} "
            f"({f('04_patterns.n_monosemantic', '{:.0f}')})",
        "names right, gallery-pure: top-1 / category (n)":
            f"{f('04_patterns.concept_accuracy_gallery')} / {f('04_patterns.category_accuracy_gallery')} "
            f"({f('04_patterns.n_gallery_pure', '{:.0f}')})",
        "shortcut named": named,
        "shortcut in the top 5 on the finding's films": f("06_attribution.shortcut_share"),
        "shortcut's rank by reliance among its finding's device/artifact patterns": leans,
        "findings with a device/artifact pattern flagged (of 5)": f("06_attribution.reliance_flagged", "{:.0f}"),
        "decomposition: max relative error": f("06_attribution.identity_max_error", "{:.1e}"),
        "patterns for 90% of a logit (median)": "" if not p90 else f"{sorted(p90)[len(p90) // 2]:.0f}",
        "deletion: top-5 vs random (worst finding)": f("06_attribution.deletion_ratio_min", "{:.1f}x"),
        "out-of-distribution false alarms on the test films (alpha)":
            f"{f('06_attribution.ood.false_alarm_rate', '{:.1%}')} ({f('06_attribution.ood.alpha', '{:g}')})",
    }


def figures_table(runs: dict[str, dict]) -> str:
    """One table: a row per figure, a column per run."""
    rows = {label: headline(m) for label, m in runs.items()}
    keys = [k for k in next(iter(rows.values())) if k != "machine"]
    out = ["| figure | " + " | ".join(rows) + " |", "| --- |" + " --- |" * len(rows)]
    out += [f"| {k} | " + " | ".join(rows[r][k] for r in rows) + " |" for k in keys]
    out += ["", *(f"{label}: {rows[label]['machine']}" for label in rows)]
    return "\n".join(out)


def results_markdown(runs: dict[str, dict], command: str) -> str:
    """docs/results.md: the headline table, then every stage's recorded figures per run."""
    out = ["# Results", "", f"Generated by `{command}` from the runs' `metrics/*.json`; rerun it after a run.",
           "Figures that come from training move between machines and seeds: compare the runs side by side.", "",
           figures_table(runs), ""]
    for label, m in runs.items():
        out += [f"## {label}", "", f"Machine: {_get(m, 'run.machine', 'not recorded')}", "",
                "| notebook | seconds |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in (_get(m, "run.seconds") or {}).items()]
        for nb in NOTEBOOKS:
            if nb not in m:
                continue
            out += ["", f"### {nb}", "", "| figure | value |", "| --- | --- |"]
            out += [f"| {k} | {_cell(v)} |" for k, v in _flat(m[nb]).items()]
        out.append("")
    return "\n".join(out)


def _flat(d: dict, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth < 1 and len(v) <= 12:
            out |= _flat(v, f"{prefix}{k}.", depth + 1)
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------------ benchmarks


def bench_markdown(folder: Path) -> str:
    """The latest line each benchmark recorded (``bench/record.py`` writes ``<bench>.json``), with its machine."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        return "No benchmark has recorded a result here yet: run `make bench`."
    out = ["| bench | figures (one line, as printed) | took | machine | date |", "| --- | --- | --- | --- | --- |"]
    for p in files:
        r = json.loads(p.read_text())
        took = f"{r['seconds'] / 60:.1f} min" if "seconds" in r else ""
        cells = [f"`bench/{p.stem}.py`", _cell(r["line"]), took, _cell(r["machine"]), r.get("date", "")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ benchmark suite

SUITE_COLUMNS = {"config": "configuration", "shortcuts": "planted shortcuts", "recovery": "recovery",
                 "recovery_of_ceiling": "of ceiling", "names_top1": "names top-1", "names_category": "category",
                 "found": "found", "named": "named", "ranked_first": "first by reliance", "ranks": "reliance rank",
                 "true_ranks": "true rank",
                 "false_alarms": "false alarms", "population_flags": "population flags"}


def _suite_cell(row: dict, col: str) -> str:
    v = row.get(col)
    if col in ("found", "named", "ranked_first"):
        n = row.get("n_shortcuts") or 0
        if row["config"] in ("mean", "worst"):
            return "" if v is None or v != v else f"{v:.2f}"
        return "-" if not n else f"{int(v)}/{int(n)}"
    if isinstance(v, float):
        if v != v:
            return ""
        return f"{v:.2f}" if col not in ("false_alarms", "population_flags") or row["config"] == "mean" else \
            f"{v:.0f}"
    return "" if v is None else str(v).replace("|", "/")


def suite_markdown(path: Path) -> str:
    """The suite's table (``python -m lanic_nb.benchmark`` writes ``suite.json``): a row per configuration, the
    mean and the worst, then its machine."""
    r = json.loads(Path(path).read_text())
    out = ["| " + " | ".join(SUITE_COLUMNS.values()) + " |", "|" + " --- |" * len(SUITE_COLUMNS)]
    out += ["| " + " | ".join(_suite_cell(row, c) for c in SUITE_COLUMNS) + " |" for row in r["rows"]]
    minutes = sum(row.get("minutes") or 0 for row in r["rows"] if row["config"] not in ("mean", "worst"))
    out += ["", f"{r['machine']}; the configurations' stages took {minutes:.0f} min in all"]
    return "\n".join(out)


COMPARE_COLUMNS = {"recovery": "recovery", "names_top1": "names top-1", "names_category": "category",
                   "found": "found", "named": "named", "ranked_first": "first by reliance",
                   "false_alarms": "false alarms"}


def suite_comparison_markdown(suites: dict[str, Path]) -> str:
    """The suite's key columns per configuration with two (or more) encoders side by side, ``A → B`` in each cell,
    in the order of ``suites``; configurations missing from one suite show ``?`` there."""
    records = {label: json.loads(Path(p).read_text()) for label, p in suites.items()}
    by_config = {label: {row["config"]: row for row in r["rows"]} for label, r in records.items()}
    order = list(dict.fromkeys(c for rows in by_config.values() for c in rows))
    labels = " → ".join(suites)
    out = [f"| configuration ({labels}) | " + " | ".join(COMPARE_COLUMNS.values()) + " |",
           "| --- |" + " --- |" * len(COMPARE_COLUMNS)]
    for config in order:
        cells = [" → ".join(_suite_cell(rows[config], col) if config in rows else "?" for rows in by_config.values())
                 for col in COMPARE_COLUMNS]
        out.append(f"| {config} | " + " | ".join(cells) + " |")
    out += [""] + [f"{label}: {r['machine']}" for label, r in records.items()]
    return "\n".join(out)


def encoder_cards_markdown(cards: dict[str, Path]) -> str:
    """One row per phantom encoder from its ``card.json`` (``python -m lanic_nb.phantom.encoder`` writes it): how
    many of the planted concepts a linear probe on its image embedding finds (AUROC at the card's target), the
    weakest ones, zero-shot AUROC per finding with the mean, and report retrieval."""
    out = ["| encoder | probe AUROC >= target (of concepts) | weakest probes | zero-shot AUROC Atel / Cardio / "
           "Consol / Edema / Effusion (mean) | recall@10 (chance) | steps, machine |",
           "| --- | --- | --- | --- | --- | --- |"]
    for label, path in cards.items():
        card = json.loads(Path(path).read_text())
        ev, tr = card["evaluation"], card.get("training", {})
        probe = ev["probe_auroc"]
        weakest = ", ".join(f"{c} {a:.2f}" for c, a in sorted(probe.items(), key=lambda kv: kv[1])[:3])
        zs = " / ".join(f"{ev['zeroshot_auroc'][f]:.3f}" for f in FINDINGS)
        out.append(f"| {label} | {ev['probe_at_target']} of {len(probe)} (>= {ev['probe_target']}) | {weakest} | "
                   f"{zs} ({ev['zeroshot_auroc_mean']:.3f}) | {ev['recall@10']:.2f} ({ev['recall@10_chance']:.3f}) | "
                   f"{tr.get('steps', '')}, {_cell(tr.get('machine', ''))} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], help="LABEL=RUN_DIR (repeatable), e.g. demo=runs/demo")
    ap.add_argument("--bench", type=Path, help="a folder of benchmark records (runs/bench)")
    ap.add_argument("--suite", type=Path, help="the benchmark suite's suite.json (runs/suite/suite.json)")
    ap.add_argument("--suite-gap", type=Path, help="the suite run with the language-gap encoder (runs/suite_gap/"
                    "suite.json): README shows both encoders' cards and the two suites side by side, "
                    "docs/benchmarks.md its full table; needs --suite")
    ap.add_argument("--gap-card", type=Path, default=ROOT / "runs" / "phantom_encoder_gap" / "encoder" / "card.json",
                    help="the language-gap encoder's card.json (default: %(default)s)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--settings-only", action="store_true", help="write docs/settings.md only")
    args = ap.parse_args(argv)
    if args.suite_gap is not None and args.suite is None:  # before anything is written
        ap.error("--suite-gap compares with the shipped encoder's suite: give --suite as well")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info("wrote %s", write_text(args.docs / "settings.md", settings_markdown()))
    if args.settings_only:
        return 0
    runs = {}
    for spec in args.run:
        label, _, folder = spec.partition("=")
        if not folder:
            ap.error(f"--run takes LABEL=RUN_DIR, got {spec!r}")
        runs[label] = load_run_metrics(Path(folder))
    if runs:
        command = "python -m lanic_nb.report " + " ".join(f'--run "{s}"' for s in args.run)
        log.info("wrote %s", write_text(args.docs / "results.md", results_markdown(runs, command)))
        log.info("updated %s", update_block(args.readme, "figures", figures_table(runs)))
    if args.suite is not None:
        table = suite_markdown(args.suite)
        log.info("updated %s", update_block(args.readme, "suite", table))
        log.info("updated %s", update_block(args.docs / "benchmarks.md", "suite", table))
    if args.suite_gap is not None:
        cards = {"shipped": PHANTOM_ENCODER_DIR / "card.json", "language gap": args.gap_card}
        suites = {"shipped": args.suite, "language gap": args.suite_gap}
        body = encoder_cards_markdown(cards) + "\n\n" + suite_comparison_markdown(suites)
        log.info("updated %s", update_block(args.readme, "suite-gap", body))
        log.info("updated %s", update_block(args.docs / "benchmarks.md", "suite-gap", suite_markdown(args.suite_gap)))
    if args.bench is not None:
        log.info("updated %s", update_block(args.docs / "benchmarks.md", "benchmarks", bench_markdown(args.bench)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

