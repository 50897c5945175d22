"""Phantom generation speed at 224 px: make_phantom_dataset end to end, and the generator in one process
(image + report + labels + PNG), against a baseline measured in the same run (drawing only the sensor
noise of an empty image and PNG-encoding it).

    .venv/bin/python bench/phantoms.py [n_images]     # under 1 minute on 2 cores (300 images)
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
from PIL import Image

from lanic_nb.data.labeler import label_report
from lanic_nb.device import machine_line
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import generate_image, make_phantom_dataset, view_of
from lanic_nb.phantom.reports import make_report


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)  # as make_phantom_dataset writes
    return buf.getvalue()


def full(cfg: PhantomConfig, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        img, rows = generate_image(cfg, i)
        png_bytes(img)
        label_report(make_report(rows, np.random.default_rng([cfg.seed, 2, i]), view=view_of(rows)).text)
    return n / (time.perf_counter() - t)


def drawing_only(cfg: PhantomConfig, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        generate_image(cfg, i)
    return n / (time.perf_counter() - t)


def dataset(cfg: PhantomConfig) -> float:
    """make_phantom_dataset end to end (worker processes, PNG files, parquet tables)."""
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_phantom_dataset(d, cfg)
        return cfg.n_images / (time.perf_counter() - t)


def baseline(size: int, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng([0, i])
        img = (rng.random((size, size), dtype=np.float32) * 8).astype(np.uint8)
        png_bytes(img)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n_images", type=int, nargs="?", default=300)
    n = ap.parse_args().n_images
    cfg = PhantomConfig(n_images=n, image_size=224)
    full(cfg, 10)  # warm caches (grids, font)
    ips, draw, base, ds = full(cfg, n), drawing_only(cfg, n), baseline(224, n), dataset(cfg)
    print(
        f"phantoms 224px: make_phantom_dataset {ds:.0f} images/s (all cores); one process {ips:.0f} images/s "
        f"(image+PNG+report+labels), {draw:.0f} drawing only; baseline noise+PNG {base:.0f} images/s; "
        f"dataset/baseline = {ds / base:.2f}; target >= 100 images/s | {machine_line()}"
    )


if __name__ == "__main__":
    main()
