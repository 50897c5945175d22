"""Embedding-stage throughput: the full stage (decode + preprocess + forward) vs the bare model forward.

    .venv/bin/python bench/embed.py [--n 384] [--batch-size 128] [--workers 2] [--device auto]  # ~6 min on 2 cores

Measured for the demo's small CLIP and for a ViT-B/16-sized image tower (BiomedCLIP's size), both
untrained (speed does not depend on the weights), on phantom images (224 px PNGs) in the same run. The full
stage is ``embed_manifest`` on a manifest without reports (image side only); the bare forward is
``encode_images`` on the same images already decoded and preprocessed.
Target: ratio = full / bare >= 0.7 (loading and preprocessing cost at most 30%).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from lanic_nb.device import machine_line, pick_device
from lanic_nb.embed.clip_small import SmallClipConfig, train_small_clip
from lanic_nb.embed.store import ImageRows, embed_manifest
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import make_phantom_dataset
from lanic_nb.rundir import RunDir

ARCHS = {
    # The demo's small CLIP, and BiomedCLIP's image-tower size (ViT-B/16 at 224 px), both untrained.
    "small": dict(steps=0, batch_size=8),
    "vit-b16": dict(steps=0, batch_size=8, image_size=224, patch_size=16, vision_layers=12, vision_width=768),
}


def measure(run: Path, manifest, arch: str, n: int, batch_size: int, workers: int, device) -> tuple[float, float]:
    """(full-stage images/s, bare-forward images/s) for one architecture on the first ``n`` images."""
    cfg = SmallClipConfig(**ARCHS[arch])
    images = torch.rand(8, cfg.image_size, cfg.image_size)
    encoder, _ = train_small_clip(RunDir(run).clip / arch, images, ["a report."] * 8, cfg, device)
    manifest = manifest.iloc[:n].assign(report="")  # image side only: decode + preprocess + forward
    rows = ImageRows([RunDir(run).data / p for p in manifest["image_path"]], encoder.image_size,
                     encoder.mean, encoder.std)
    x = torch.stack([rows[i][1] for i in range(len(rows))])  # (n, 3, S, S), decoded beforehand
    encoder.encode_images(x[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        encoder.encode_images(x[i : i + batch_size]).cpu()
    bare = len(x) / (time.perf_counter() - t0)
    embed_manifest(run, encoder, manifest.iloc[:batch_size], batch_size, workers, resume=False)  # warm-up
    t0 = time.perf_counter()
    store = embed_manifest(run, encoder, manifest, batch_size, workers, resume=False)
    full = len(manifest) / (time.perf_counter() - t0)
    assert store.ok.all()
    return full, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=384, help="images for the small model")
    ap.add_argument("--n-large", type=int, default=128, help="images for the ViT-B/16-sized model")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = pick_device(args.device)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        manifest = make_phantom_dataset(run, PhantomConfig(n_images=max(args.n, args.n_large), image_size=224))
        for arch, n in (("small", args.n), ("vit-b16", args.n_large)):
            full, bare = measure(run, manifest, arch, n, args.batch_size, args.workers, device)
            parts.append(f"{arch}: full stage {full:.0f} img/s, bare forward {bare:.0f} img/s, ratio {full / bare:.2f}")
    print(f"embed bench ({device.type}, batch={args.batch_size}, workers={args.workers}; target ratio >= 0.7) "
          + " | ".join([*parts, machine_line()]))


if __name__ == "__main__":
    main()
