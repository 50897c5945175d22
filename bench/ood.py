"""The out-of-distribution check of explained films, against inputs the run never saw.

    .venv/bin/python bench/ood.py --run runs/demo        # about 1 minute on 2 cores after make demo

In distribution: the run's own test films. Outside it: pydicom-data's real chest CR (RG1, three transfer
syntaxes) and its other images (MR, CT, ultrasound, secondary capture), random noise (grey and colour),
scikit-image's bundled photographs (colour and grey), and the run's test films inverted, turned 90 degrees or cut
to a corner, and phantom films drawn at another size (96 and 448 px, new patients). Every file goes through the
explainer (``open_explainer``), as ``python -m lanic_nb.explain`` would. One line: the AUROC of the score between
in- and out-of-distribution films, the false-alarm rate on the test films, the share of each kind flagged.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lanic_nb.device import machine_line
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.stage import open_explainer
from lanic_nb.io import read_table
from lanic_nb.manifest import resolve_image_path
from lanic_nb.metrics import auroc
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import make_phantom_dataset
from lanic_nb.rundir import RunDir

CHEST_CR = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm")
OTHER_DICOM = ("MR_small.dcm", "CT_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "emri_small.dcm", "JPEG2000.dcm")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "moon", "page", "coins", "horse", "clock", "grass",
          "gravel", "brick", "text", "immunohistochemistry")


def _save(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.asarray(arr)).save(path)
    return path


def pydicom_files(names) -> list[Path]:
    from pydicom.data import get_testdata_file

    out = []
    for name in names:
        try:
            p = get_testdata_file(name, download=False)
        except Exception:  # noqa: BLE001 (a file pydicom-data lacks in this version)
            p = None
        if p:
            out.append(Path(p))
    return out


def photos(folder: Path) -> list[Path]:
    import skimage.data as data

    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 (an image scikit-image would have to download)
            continue
        out.append(_save(img, folder / f"{name}.png"))
        if img.ndim == 3:
            grey = (img[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
            out.append(_save(grey, folder / f"{name}_grey.png"))
    return out


def inputs(run: Path, folder: Path, n: int, seed: int = 0) -> dict[str, list[Path]]:
    """Each kind of input as files: name -> paths."""
    rd = RunDir(run)
    manifest = read_table(rd.manifest)
    test = [resolve_image_path(rd.manifest, p) for p in manifest[manifest.split == "test"].image_path]
    rng = np.random.default_rng(seed)
    pick = [test[i] for i in rng.choice(len(test), min(n, len(test)), replace=False)]
    films = [np.asarray(Image.open(p).convert("L")) for p in pick]
    size = films[0].shape[0]
    kinds: dict[str, list[Path]] = {"test films (in distribution)": test}
    kinds["chest CR (pydicom-data)"] = pydicom_files(CHEST_CR)
    kinds["other DICOM (pydicom-data)"] = pydicom_files(OTHER_DICOM)
    noise = folder / "noise"
    noise.mkdir()
    kinds["random noise"] = [_save(rng.integers(0, 256, (size, size), dtype=np.uint8), noise / f"g{i}.png")
                             for i in range(n // 2)]
    kinds["random noise"] += [_save(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), noise / f"c{i}.png")
                              for i in range(n // 2)]
    (folder / "photos").mkdir()
    kinds["photographs (scikit-image)"] = photos(folder / "photos")
    for kind, fn in (("films inverted", lambda a: 255 - a), ("films turned 90 degrees", np.rot90),
                     ("films cut to a corner", lambda a: a[: size // 2, : size // 2])):
        sub = folder / kind.replace(" ", "_")
        sub.mkdir()
        kinds[kind] = [_save(np.ascontiguousarray(fn(a)), sub / f"{i}.png") for i, a in enumerate(films)]
    for side in (96, 448):
        d = folder / f"phantom_{side}"
        make_phantom_dataset(d, PhantomConfig(n_images=n, image_size=side, seed=4242), workers=1)
        kinds[f"phantom drawn at {side} px"] = sorted((d / "data" / "images").glob("*.png"))
    return {k: v for k, v in kinds.items() if v}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with notebooks 00-06 done")
    ap.add_argument("--n", type=int, default=20, help="films of each altered kind (default: %(default)s)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (args.run / "attribution" / "ood_reference.json").exists():
        print(f"{args.run} has no attribution/ood_reference.json: run notebooks 00-06 there first", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    explainer = open_explainer(args.run, ExplainConfig(device=args.device, html=False, allow_patient_data=True))
    with tempfile.TemporaryDirectory() as tmp:
        kinds = inputs(args.run, Path(tmp), args.n)
        scores, flags = {}, {}
        for kind, paths in kinds.items():
            es = explainer.explain_files([(f"{i}", p) for i, p in enumerate(paths)], show_progress=False)
            ood = [e.ood for e in es if e.ood is not None]  # unreadable files have none
            scores[kind] = np.array([np.inf if o["score"] is None else o["score"] for o in ood])
            flags[kind] = np.array([o["flagged"] for o in ood], dtype=bool)
    inside = "test films (in distribution)"
    out = np.concatenate([scores[k] for k in scores if k != inside])
    s_in = np.nan_to_num(scores[inside], posinf=1e9)
    s_all = np.concatenate([s_in, np.nan_to_num(out, posinf=1e9)])
    y = np.r_[np.zeros(len(s_in)), np.ones(len(out))]
    parts = [f"{k}: {flags[k].mean():.0%} flagged of {len(flags[k])}" for k in scores if k != inside]
    print(machine_line(), flush=True)
    print(f"ood bench ({time.perf_counter() - t0:.0f} s): AUROC in vs out {auroc(y, s_all):.4f}; false alarms on "
          f"{len(s_in)} test films {flags[inside].mean():.1%} (alpha {explainer.run.ood.alpha}); " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
