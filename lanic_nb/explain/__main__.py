"""Explain radiographs with a trained run, from the command line.

    python -m lanic_nb.explain --run RUN_DIR IMAGE_OR_FOLDER... --out DIR

Each image (PNG, JPEG or DICOM; folders are searched recursively) is embedded with the run's own encoder,
classified, and every logit decomposed exactly into pattern contributions, unassigned latents, bias and
reconstruction error. DIR receives <image>.json and <image>.html per image, index.json, and for several
images explanations.parquet and contributions.parquet. An image that cannot be explained gets its reason in
its JSON and in index.json; the others still run.

Exit status: 0 when every image was explained, 3 when some were not (see index.json), 1 when the run
itself cannot be used (e.g. its encoder's weights changed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lanic_nb.explain.annotator import VLMConfig
from lanic_nb.explain.config import MODALITY_CHECKS, OOD_CHECKS, ExplainConfig
from lanic_nb.manifest import FINDINGS

log = logging.getLogger("lanic_nb.explain")


def parser() -> argparse.ArgumentParser:
    d = ExplainConfig()
    ap = argparse.ArgumentParser(prog="python -m lanic_nb.explain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM) or folders of them")
    ap.add_argument("--run", required=True, type=Path, help="a run directory (notebooks 00-04 done)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--device", default=d.device, help="auto, cpu, cuda, ... (default: %(default)s)")
    ap.add_argument("--top", type=int, default=d.n_top, help="top patterns per finding in the JSON/parquet "
                    "(default: %(default)s)")
    ap.add_argument("--shown", type=int, default=d.n_shown, help="patterns per finding in the text and the page "
                    "(default: %(default)s)")
    ap.add_argument("--neighbors", type=int, default=d.n_neighbors, help="nearest training images (default: "
                    "%(default)s)")
    ap.add_argument("--modality-check", choices=MODALITY_CHECKS, default=d.modality_check,
                    help="a DICOM that is not a chest radiograph (Modality not CR/DX, BodyPartExamined not the "
                    "chest): explain it with a warning, or refuse it (default: %(default)s)")
    ap.add_argument("--ood", choices=OOD_CHECKS, default=d.ood,
                    help="a film unlike the run's own (or not a radiograph): explain it under a warning, or refuse it "
                    "(default: %(default)s)")
    ap.add_argument("--no-html", action="store_true", help="write JSON (and parquet) only")
    ap.add_argument("--allow-patient-data", action="store_true", help="write HTML pages for a run on a real "
                    "dataset (they embed its images: mind its data-use agreement)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--annotator-model", default="", help="a local Hugging Face image-text-to-text model (repo id "
                    "in the cache, or a folder) whose sentences are added to each explanation; off by default")
    ap.add_argument("--name-patterns", action="store_true", help="with --annotator-model: let the model name "
                    "the shown patterns from their top training images")
    ap.add_argument("--max-new-tokens", type=int, default=d.annotator.max_new_tokens)
    ap.add_argument("--allow-download", action="store_true", help="let transformers download the annotator model")
    ap.add_argument("--quiet", action="store_true", help="warnings only")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # images may follow the options too
    # lanic_nb's own lines at INFO; third-party libraries (open_clip's loading chatter) at WARNING only
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("lanic_nb").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        cfg = ExplainConfig(device=args.device, images=[str(p) for p in args.images], out_dir=str(args.out),
                            n_top=args.top, n_shown=args.shown, n_neighbors=args.neighbors,
                            modality_check=args.modality_check, ood=args.ood, html=not args.no_html,
                            allow_patient_data=args.allow_patient_data, batch_size=args.batch_size,
                            annotator=VLMConfig(model=args.annotator_model, device=args.device,
                                                max_new_tokens=args.max_new_tokens,
                                                allow_download=args.allow_download),
                            name_patterns=args.name_patterns)
    except ValueError as e:
        log.error("error: %s", e)
        return 2
    from lanic_nb.explain.model import RunMismatch
    from lanic_nb.explain.stage import explain_paths, open_explainer

    try:
        explainer = open_explainer(args.run, cfg)
    except (RunMismatch, PermissionError, FileNotFoundError, RuntimeError) as e:
        log.error("error: %s", e)
        return 1
    log.info("run loaded in %.1f s", explainer.load_seconds)
    try:
        result = explain_paths(explainer, cfg.images, args.out)
    except ValueError as e:  # no image file among the inputs
        log.error("error: %s", e)
        return 2
    for e in result.explanations:
        if e.ok:
            best = int(e.probabilities.argmax())
            log.info("%s: %s p=%.2f%s%s", e.image_id, FINDINGS[best], e.probabilities[best],
                     f" [OUTSIDE WHAT THE RUN KNOWS: {e.ood['why']}]" if e.outside else "",
                     "".join(f" [warning: {w}]" for w in e.warnings))
        else:
            log.info("%s: %s: %s", e.image_id, e.status, e.reason)
    return 0 if result.index["n_ok"] == len(result.explanations) else 3


if __name__ == "__main__":
    raise SystemExit(main())
