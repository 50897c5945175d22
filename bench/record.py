"""Run one benchmark script, show its output as it comes, and record its last line (its figures) with the machine
line it printed and its wall time into ``runs/bench/<name>.json``, which
``python -m lanic_nb.report --bench runs/bench`` turns into docs/benchmarks.md's table
(figures are never typed by hand).

    .venv/bin/python bench/record.py bench/topk.py [its arguments ...]
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    script = Path(argv[0])
    if script.suffix != ".py" or not script.is_file():
        print(f"not a benchmark script: {argv[0]}\n\n{__doc__}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *argv[1:]], stdout=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.strip():
            lines.append(line.rstrip("\n"))
    if proc.wait() != 0 or not lines:
        return proc.returncode or 1
    machine = next((ln for ln in reversed(lines) if "GFLOP/s" in ln), "not printed")
    folder = Path(os.environ.get("LANIC_BENCH_DIR", ROOT / "runs" / "bench"))
    folder.mkdir(parents=True, exist_ok=True)
    record = {"line": lines[-1], "machine": machine[machine.find("machine:"):] if "machine:" in machine else machine,
              "args": argv[1:], "date": datetime.date.today().isoformat(),
              "seconds": round(time.perf_counter() - t0, 1)}
    tmp = folder / f".{script.stem}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / f"{script.stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
