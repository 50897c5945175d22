"""Test helpers shared by the test modules (``import helpers``: pytest puts tests/ on the path): tiny encoders,
manifests, DICOM files, models and run directories built with the real stages, planted patterns, a tiny VLM, and
checks of executed notebooks."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from scipy import sparse

from lanic_nb.classify.model import ClassifierConfig, DiagnosticClassifier, save_classifier
from lanic_nb.embed.clip_small import SmallClipConfig, train_small_clip
from lanic_nb.embed.store import embed_manifest
from lanic_nb.manifest import conform
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble

# ------------------------------------------------------------------------------------------ tiny encoders and manifests
# Tiny builders shared by the encoder and embedding tests (a 2-layer width-32 CLIP at 32 px).


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


# ------------------------------------------------------------------------------------------ DICOM files
# Test helper: write small, valid DICOM files with pydicom (used by test_images and test_data).


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> Path:
    """A minimal valid DICOM file (Part 10 preamble + file meta) holding uint16 ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


RAMP = np.arange(0, 4000, 250, dtype=np.uint16).reshape(4, 4)  # 0 .. 3750


# -------------------------------------------------------------------------------------- tiny models and run directories
# Tiny real models and a tiny run directory for the attribution and gallery tests (random weights).


def tiny_models(d_in=12, hidden=10, d_dict=24, n_members=3, k=5, activation="topk", seed=0):
    """A random classifier and ensemble with every bias non-zero, so a dropped term shows."""
    g = torch.Generator().manual_seed(seed)
    clf = DiagnosticClassifier(ClassifierConfig(d_in=d_in, hidden=hidden, dropout=0.5))
    ens = TranscoderEnsemble(TranscoderConfig(d_in=d_in, d_out=hidden, d_dict=d_dict, n_members=n_members, k=k,
                                              activation=activation, seed=seed))
    with torch.no_grad():
        for p in list(clf.parameters()) + list(ens.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return clf.eval(), ens.eval()


def tiny_patterns(n_members, d_dict, n_patterns, seed=0):
    """A random latent -> pattern map (-1: no pattern) in which every pattern has members."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.randint(-1, n_patterns, (n_members, d_dict), generator=g)
    lp[:, :n_patterns] = torch.arange(n_patterns)
    return lp


def make_tiny_run(root: Path, n_images: int = 12) -> Path:
    """A run directory written by the real stages: manifest, embeddings, classifier, ensemble, patterns.

    Weights are random (no training): this checks the wiring from files to tables and views, not the
    science. The dataset is "tiny" (not the phantom): no ground truth, no planted shortcut.
    """
    rd = RunDir(root)
    manifest = tiny_manifest(rd.data, n=n_images)
    store = embed_manifest(root, tiny_encoder(root / "clip"), manifest, batch_size=4)
    d_in = store.image.shape[1]
    torch.manual_seed(0)
    cfg = ClassifierConfig(d_in=d_in, hidden=8)
    save_classifier(DiagnosticClassifier(cfg).eval(), cfg, rd.classifier)
    ens = TranscoderEnsemble(TranscoderConfig(d_in=d_in, d_out=8, d_dict=16, n_members=3, k=4))
    with torch.no_grad():
        ens.W_dec.copy_(ens.W_dec[:1].expand_as(ens.W_dec) + 0.01 * torch.randn_like(ens.W_dec))
    ens.save(rd.transcoders)
    merge_latents(ens.W_dec.detach(), MergeConfig(sim_threshold=0.9, min_consistency=0.5)).save(rd.patterns)
    return root


# ------------------------------------------------------------- planted patterns (the merge tests and bench/patterns.py)
# Planted-pattern fixtures: synthetic ensemble decoders (and codes) whose true patterns are known.


def plant_decoders(
    n_members: int, d_dict: int, d_out: int, n_true: int, share: float = 0.8, noise: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic ensemble decoder with known patterns.

    ``n_true`` random unit directions; each member holds each one with probability ``share`` (at a random
    latent, plus a Gaussian jitter of norm about ``noise``); remaining latents are random
    member-specific directions. Returns W_dec (n_members, d_dict, d_out) with unit rows and the truth
    (n_members, d_dict) int64: the planted direction of each latent or -1.
    """
    gen = torch.Generator().manual_seed(seed)
    true = F.normalize(torch.randn(n_true, d_out, generator=gen), dim=1)
    W = F.normalize(torch.randn(n_members, d_dict, d_out, generator=gen), dim=2)
    truth = torch.full((n_members, d_dict), -1, dtype=torch.long)
    for m in range(n_members):
        held = torch.nonzero(torch.rand(n_true, generator=gen) < share).squeeze(1)[:d_dict]
        slots = torch.randperm(d_dict, generator=gen)[: len(held)]
        jitter = torch.randn(len(held), d_out, generator=gen) * (noise / math.sqrt(d_out))  # norm ~ noise
        W[m, slots] = F.normalize(true[held] + jitter, dim=1)
        truth[m, slots] = held
    return W, truth


def plant_codes(truth: torch.Tensor, n_rows: int, fire: float = 0.01, keep: float = 0.9,
                seed: int = 0) -> sparse.csr_matrix:
    """Codes on ``n_rows`` inputs that agree with :func:`plant_decoders`' truth: sparse (n_members * d_dict, n_rows).

    Each planted direction fires on its own random rows (probability ``fire``); a latent holding it fires on
    each of them with probability ``keep`` (activation uniform in [0.5, 1.5]); every other latent fires on
    rows of its own. So copies of one direction co-fire, and everything else does not.
    """
    gen = np.random.default_rng(seed)
    flat = truth.reshape(-1).numpy()
    n_true = int(flat.max()) + 1 if (flat >= 0).any() else 0
    planted = [np.nonzero(gen.random(n_rows) < fire)[0] for _ in range(n_true)]
    rows, cols = [], []
    for i, t in enumerate(flat):
        on = planted[t][gen.random(len(planted[t])) < keep] if t >= 0 else np.nonzero(gen.random(n_rows) < fire)[0]
        rows.append(np.full(len(on), i))
        cols.append(on)
    r, c = np.concatenate(rows), np.concatenate(cols)
    vals = gen.uniform(0.5, 1.5, len(r)).astype(np.float32)
    return sparse.csr_matrix((vals, (r, c)), shape=(len(flat), n_rows))


# -------------------------------------------------------------------------------------- a tiny image-text-to-text model
# A tiny, randomly initialised image-text-to-text model (LLaVA layout) saved to a folder: no weights fetched.


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_vlm(folder: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<pad>", "<s>", "</s>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], image_seq_length=4, vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ executed notebooks
# Checks on an executed notebook: every figure cell carries its image, and nothing reads as an error.


def figure_problems(executed: Path) -> list[str]:
    """What a student opening this executed notebook would miss or misread; empty when it is right.

    - a cell that calls ``show(...)`` (the notebooks' way to draw a figure) without an image/png output;
    - a figure's repr text (``<Figure size ...>``) instead of the figure;
    - stderr output (Jupyter paints it red) or an error.
    """
    nb = nbformat.read(executed, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        head = f"{executed.stem} cell {i} ({cell.source.splitlines()[0][:60] if cell.source else ''})"
        draws = any(line.lstrip().startswith("show(") or " show(" in line for line in cell.source.splitlines())
        if draws and not any("image/png" in o.get("data", {}) for o in outs):
            problems.append(f"{head}: draws a figure but has no image output")
        for o in outs:
            text = "".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
            if "<Figure size" in text:
                problems.append(f"{head}: shows a figure's repr instead of the figure")
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                problems.append(f"{head}: stderr output: {text.strip()[:200]}")
            if o.get("output_type") == "error":
                problems.append(f"{head}: error {o.get('ename')}")
    return problems


def count_images(executed: Path) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum("image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def stage_call(cells) -> int:
    """Index of the cell that runs the stage at full size: ``run_<stage>(run_dir``."""
    hits = [i for i, c in enumerate(cells) if c.cell_type == "code" and re.search(r"\brun_[a-z]+\(run_dir", c.source)]
    assert len(hits) == 1, f"one cell runs the stage, found {len(hits)}"
    return hits[0]


def package_names(source: str) -> set[str]:
    """Names a cell imports from lanic_nb."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lanic_nb"):
            names |= {a.asname or a.name for a in node.names}
    return names


def teaching_cells(path: Path) -> list[int]:
    """Indices of the code cells between the settings and the stage call that use the package's functions."""
    cells = nbformat.read(path, as_version=4).cells
    setup = next(i for i, c in enumerate(cells) if "stage_config(" in c.source)
    names = package_names(cells[setup].source)
    return [i for i in range(setup + 1, stage_call(cells)) if cells[i].cell_type == "code"
            and any(re.search(rf"\b{re.escape(n)}\b", cells[i].source) for n in names)]
