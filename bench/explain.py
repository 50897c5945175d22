"""Explaining new images after the run is loaded: one image, then 100, vs the bare embedding forward of the same.

    .venv/bin/python bench/explain.py [--n 100] [--archs phantom small] [--device auto] [--run RUN_DIR]  # ~1 min

Without ``--run`` a run with the demo's shapes is built in a temporary folder for each encoder size (speed
does not depend on the weights, so nothing is trained): phantom images at 224 px, an untrained encoder
("phantom": the shipped phantom encoder's shape; "small": the demo's CLIP; "vit-b16": BiomedCLIP's image-tower
size), the demo classifier (256 hidden units),
an ensemble of 100 transcoders x 256 latents (TopK k=16) whose latents merge into 256 patterns, and a
pattern table. With ``--run`` an existing run is explained (its own encoder) instead.
Timed: ``explain_paths`` (read, check, embed, classify, decompose, name, write JSON + HTML + parquet) on one
image, then on ``n``; the baseline is ``encode_images`` on the same ``n`` images already decoded and
preprocessed. Targets: one image < 2 s and 100 images < 60 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.classify.model import ClassifierConfig, DiagnosticClassifier, save_classifier
from lanic_nb.device import machine_line, pick_device
from lanic_nb.embed.clip_small import SmallClipConfig, train_small_clip
from lanic_nb.embed.store import embed_manifest
from lanic_nb.explain.config import ExplainConfig
from lanic_nb.explain.stage import explain_paths, open_explainer
from lanic_nb.io import write_table
from lanic_nb.manifest import resolve_image_path
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.phantom.config import PhantomConfig
from lanic_nb.phantom.generate import make_phantom_dataset
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble

ARCHS = {
    # The shipped phantom encoder's shape (a ResNet tower at 128 px), the demo's small CLIP, BiomedCLIP's ViT-B/16.
    "phantom": dict(vision_arch="resnet", image_size=128, vision_layers=1, vision_width=32, embed_dim=256, steps=0,
                    batch_size=8),
    "small": dict(steps=0, batch_size=8),
    "vit-b16": dict(steps=0, batch_size=8, image_size=224, patch_size=16, vision_layers=12, vision_width=768),
}


def build_run(root: Path, arch: str, n_images: int, device: torch.device) -> Path:
    """A run with the demo's shapes and untrained weights (see the module docstring)."""
    rd = RunDir(root)
    manifest = make_phantom_dataset(root, PhantomConfig(n_images=n_images, image_size=224))
    cfg = SmallClipConfig(**ARCHS[arch])
    images = torch.rand(8, cfg.image_size, cfg.image_size)
    encoder, _ = train_small_clip(rd.clip, images, ["a report."] * 8, cfg, device)
    store = embed_manifest(root, encoder, manifest, batch_size=64, num_workers=0)
    d_in = store.image.shape[1]
    clf_cfg = ClassifierConfig(d_in=d_in, hidden=256)
    save_classifier(DiagnosticClassifier(clf_cfg).eval(), clf_cfg, rd.classifier)
    ens = TranscoderEnsemble(TranscoderConfig(d_in=d_in, d_out=256, d_dict=256, n_members=100, k=16))
    with torch.no_grad():  # members share their decoder directions, so the 25,600 latents merge into patterns
        ens.W_dec.copy_(ens.W_dec[:1].expand_as(ens.W_dec) + 0.01 * torch.randn_like(ens.W_dec))
    ens.save(rd.transcoders)
    ps = merge_latents(ens.W_dec.detach(), MergeConfig(sim_threshold=0.9, min_consistency=0.5))
    ps.save(rd.patterns)
    cats = ("cardiac", "pulmonary", "pleural", "structural", "device", "artifact")
    write_table(rd.patterns / "patterns.parquet", pd.DataFrame({
        "pattern_id": np.arange(ps.n_patterns), "category": [cats[p % 6] for p in range(ps.n_patterns)],
        "concept_1": [f"concept {p}" for p in range(ps.n_patterns)], "concept_2": None, "concept_3": None}))
    return root


def measure(run: Path, n: int, device: torch.device, tmp: Path) -> dict:
    """Seconds for 1 image and for n (run loaded beforehand), and the bare forward's images/s on the same n."""
    explainer = open_explainer(run, ExplainConfig(device=str(device), allow_patient_data=True))
    rd = RunDir(run)
    manifest = pd.read_parquet(rd.manifest)
    paths = [resolve_image_path(rd.manifest, p) for p in manifest["image_path"].iloc[: n + 1]]
    t0 = time.perf_counter()
    one = explain_paths(explainer, paths[:1], tmp / "one", show_progress=False)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = explain_paths(explainer, paths[1 : n + 1], tmp / "many", show_progress=False)
    t_many = time.perf_counter() - t0
    assert one.index["n_ok"] == 1 and many.index["n_ok"] == len(paths) - 1
    enc = explainer.run.encoder
    x = torch.stack([explainer.read(p)[0] for p in paths[1 : n + 1]])  # decoded + preprocessed beforehand
    enc.encode_images(x[:8])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), 32):  # the explainer's batch size
        enc.encode_images(x[i : i + 32]).cpu()
    bare = len(x) / (time.perf_counter() - t0)
    return {"load": explainer.load_seconds, "one": t_one, "many": t_many, "n": len(x), "bare": bare,
            "patterns": explainer.run.n_patterns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="images in the batch timing")
    ap.add_argument("--archs", nargs="+", default=["phantom", "small"], choices=list(ARCHS),
                    help="encoder sizes (vit-b16 takes minutes to build its run on a 2-core CPU)")
    ap.add_argument("--n-run", type=int, default=300, help="phantom images of the built run")
    ap.add_argument("--run", type=Path, help="explain with this run instead of building one")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = pick_device(args.device)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ([args.run.name] if args.run else args.archs):
            run = args.run or build_run(Path(tmp) / arch, arch, max(args.n_run, args.n + 1), device)
            m = measure(run, args.n, device, Path(tmp) / f"out-{arch}")
            parts.append(f"{arch} ({m['patterns']} patterns): load {m['load']:.1f} s, 1 image {m['one']:.2f} s, "
                         f"{m['n']} images {m['many']:.1f} s ({m['n'] / m['many']:.0f} img/s) vs bare forward "
                         f"{m['bare']:.0f} img/s, ratio {m['n'] / m['many'] / m['bare']:.3f}")
    print(f"explain bench ({device.type}; targets: 1 image < 2 s, 100 images < 60 s) " + " | ".join(parts)
          + f" | {machine_line()}")


if __name__ == "__main__":
    main()
