"""Tiny builders shared by the encoder and embedding tests (a 2-layer width-32 CLIP at 32 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lanic_nb.embed.clip_small import SmallClipConfig, train_small_clip
from lanic_nb.manifest import conform

REPORTS = [
    "FINDINGS: The heart is enlarged. Small left pleural effusion.\nIMPRESSION: Cardiomegaly.",
    "FINDINGS: Lungs are clear. No pleural effusion.\nIMPRESSION: No acute disease.",
    "FINDINGS: Patchy opacity at the right base. IMPRESSION: Consolidation versus atelectasis.",
    "",
]


def tiny_config(**kw) -> SmallClipConfig:
    base = dict(image_size=32, patch_size=16, vision_layers=2, vision_width=32, text_layers=1, text_width=32,
                text_heads=2, embed_dim=16, context_length=32, vocab_size=120, steps=0, batch_size=4,
                warmup_steps=0)
    base.update(kw)
    return SmallClipConfig(**base)


def tiny_encoder(folder: Path, steps: int = 0, n: int = 8):
    """Save a tiny CLIP folder (``steps`` training steps on random pairs) and return its loaded encoder."""
    images = torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(0))
    reports = [REPORTS[i % 3] for i in range(n)]
    enc, _ = train_small_clip(folder, images, reports, tiny_config(steps=steps), torch.device("cpu"))
    return enc


def tiny_manifest(data_dir: Path, n: int = 10, size: int = 40, corrupt: tuple[int, ...] = ()) -> pd.DataFrame:
    """``n`` random grayscale PNGs under data_dir/images (rows in ``corrupt`` get a broken file)."""
    rng = np.random.default_rng(0)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rel = f"images/img{i:03d}.png"
        if i in corrupt:
            (data_dir / rel).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size + 8), dtype=np.uint8)).save(data_dir / rel)
        rows.append({"image_id": f"i{i}", "image_path": rel, "patient_id": f"p{i}", "study_id": f"s{i}",
                     "view": "PA", "split": ("train", "val", "test")[i % 3], "report": REPORTS[i % len(REPORTS)],
                     "dataset": "tiny"})
    df = conform(pd.DataFrame(rows))
    df.to_parquet(data_dir / "manifest.parquet", index=False)
    return df
