"""``python -m lanic_nb.benchmark``: the benchmark suite (``lanic_nb.benchmark``) in one command. About 8 minutes
per configuration on 2 CPU cores (70 minutes for the eight); a rerun skips what is done."""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from lanic_nb.benchmark.configs import SUITE
from lanic_nb.benchmark.suite import run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lanic_nb.benchmark",
        description="Run the phantom configurations of the benchmark suite through stages 00-04 and 06 with the "
                    "frozen settings and print one table (a row each, then the mean and the worst). Expected time: "
                    "about 8 minutes per configuration on 2 CPU cores, 70 minutes for all eight; an interrupted "
                    "suite resumes.",
        epilog="configurations: " + "; ".join(f"{e.name} ({e.what})" for e in SUITE))
    parser.add_argument("--out", default="runs/suite", help="folder of the configurations' runs (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these configurations only")
    parser.add_argument("--params", default="demo", help="the frozen settings: a params file (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even where nothing changed")
    parser.add_argument("--encoder", help="another image-text encoder for every configuration (01_embed.model), e.g. "
                        "local-dir:runs/phantom_encoder_gap/encoder, the language-gap encoder "
                        "(python -m lanic_nb.phantom.encoder --language-gap); use another --out")
    parser.add_argument("--score-only", action="store_true",
                        help="score the configurations' finished runs in --out without running anything")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    table = run_suite(args.out, args.only, args.params, args.force, run=not args.score_only,
                      encoder=args.encoder)
    with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.2f}".format):
        logging.getLogger("lanic_nb.benchmark").info("%s", table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
