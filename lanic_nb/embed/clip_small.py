"""The small default CLIP: BiomedCLIP's shape in miniature, trained here on image-report pairs.

BiomedCLIP is a ViT image tower plus a PubMedBERT text tower (transformers), joined by open_clip and
trained contrastively on figure-caption pairs. The small model keeps that structure so it runs through
exactly the same loader (:func:`lanic_nb.embed.encoders.load_encoder`): a small open_clip image tower (a ViT
of a few layers by default; a ModifiedResNet with ``vision_arch="resnet"``) and a tiny
BERT built by transformers from a local config, with a WordPiece vocabulary trained on the run's own
report text. Everything is saved as one folder (open_clip's ``local-dir:`` layout):

    clip/open_clip_config.json   model_cfg (text paths relative to the folder) + preprocess_cfg
    clip/open_clip_model.safetensors
    clip/config.json             the BERT config (transformers)
    clip/tokenizer.json, vocab.txt, tokenizer_config.json, ...   the WordPiece tokenizer
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lanic_nb.checks import require_at_least_one
from lanic_nb.device import seed_everything
from lanic_nb.embed.encoders import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Encoder,
    load_encoder,
    local_text_cfg,
    preprocess_gray,
)
from lanic_nb.embed.store import split_sentences
from lanic_nb.images import ImageReadError, load_image
from lanic_nb.io import read_table, write_json, write_tensors
from lanic_nb.manifest import resolve_image_path
from lanic_nb.progress import progress
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)


# Zero-shot prompt pairs, phrased the way reports phrase a finding and its negation.
# Several prompts per side are averaged (CLIP's prompt ensembling).
CLIP_MEAN, CLIP_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # gray radiographs: one mean/std on all channels


@dataclass
class SmallClipConfig:
    """Architecture and training of the small CLIP that the embedding stage can train from scratch (a teaching
    option: ``EmbedConfig.model = "small"``)."""

    vision_arch: str = "vit"
    """Image tower: "vit" (BiomedCLIP's kind) or "resnet" (open_clip's ModifiedResNet, as in CLIP RN50). Default:
    vit, BiomedCLIP's kind (from scratch on the phantom a small resnet learns more thin devices:
    docs/decisions.md)."""
    image_size: int = 64
    """Input side in pixels (BiomedCLIP: 224; a multiple of 32 for "resnet"). Default: chosen on the phantom (64 px
    trains in minutes on 2 cores)."""
    patch_size: int = 16
    """ViT patch side in pixels (unused by "resnet"). Default: ViT-B/16's 16 px patches."""
    vision_layers: int = 2
    """Transformer blocks of the image tower ("resnet": bottleneck blocks per stage, four stages). Default: chosen on
    the phantom (small enough to train in minutes)."""
    vision_width: int = 64
    """Width of the image tower ("resnet": stage-one width; the last stage has 32x as many channels). Default: chosen
    on the phantom."""
    text_layers: int = 2
    """BERT layers of the text tower. Default: chosen on the phantom."""
    text_width: int = 64
    """BERT hidden size. Default: chosen on the phantom."""
    text_heads: int = 2
    """BERT attention heads (must divide text_width). Default: chosen on the phantom."""
    embed_dim: int = 128
    """Joint embedding dimension. Default: chosen on the phantom."""
    context_length: int = 96
    """Token budget per text (longer reports are truncated). Default: chosen on the phantom (the templated reports'
    length)."""
    vocab_size: int = 1000
    """Most WordPiece tokens learned from the reports (characters are always kept). Default: chosen on the phantom
    (the templated reports use a few hundred words)."""
    steps: int = 4000
    """Optimizer steps (0: save the initialised model, for tests). Default: chosen on the phantom
    (docs/decisions.md)."""
    batch_size: int = 64
    """Image-report pairs per step (the contrastive negatives). Default: chosen on the phantom."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule after a linear warmup). Default: chosen on the phantom."""
    warmup_steps: int = 50
    """Linear warmup steps. Default: chosen on the phantom."""
    weight_decay: float = 0.05
    """AdamW weight decay. Default: CLIP's recipes use about 0.05-0.2."""
    init_temperature_inv: float = 14.3
    """Initial logit scale 1/T (CLIP: 1/0.07); larger speeds up leaving the chance plateau. Default: chosen on the
    phantom (CLIP starts at 1/0.07)."""
    augment: bool = True
    """Random shifts/scales and intensity jitter of images; shuffled or sampled report sentences. Default: on (few
    images, many steps)."""
    seed: int = 0
    """Seed of initialisation, batches and augmentation. Default: 0."""

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            (
                "image_size", "patch_size", "vision_layers", "vision_width", "text_layers", "text_width",
                "text_heads", "embed_dim", "context_length", "vocab_size", "batch_size"
            ),
        )
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0 saves the initialised model), got {self.steps}")
        if self.vision_arch not in ("vit", "resnet"):
            raise ValueError(f"vision_arch must be 'vit' or 'resnet', got {self.vision_arch!r}")
        if self.vision_arch == "resnet" and self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 for a resnet tower (5 halvings), "
                             f"got {self.image_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_heads ({self.text_heads}) must divide text_width ({self.text_width})")
        if self.vision_width % 32:
            raise ValueError(f"vision_width must be a multiple of 32 (head width), got {self.vision_width}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size}")
        if not 1 <= self.init_temperature_inv <= 100:
            raise ValueError(f"init_temperature_inv must be in [1, 100], got {self.init_temperature_inv}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0")


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_vocab(texts: Sequence[str], vocab_size: int) -> dict[str, int]:
    """A WordPiece vocabulary from ``texts``: specials, every character (+ ``##`` forms), frequent words.

    Counted deterministically (the tokenizers library's trainer breaks frequency ties in hash order, so
    its ids change from run to run): words by descending count then alphabetically. Templated reports
    have a few hundred distinct words, so most words are one token; rarer ones fall back to pieces.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(str(t))))
    chars = sorted({c for w in counts for c in w})
    # [PAD] first: id 0 is BERT's pad_token_id, which open_clip's HF tower uses for the attention mask.
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += words[: max(0, vocab_size - len(tokens))]
    return {tok: i for i, tok in enumerate(tokens)}


def train_tokenizer(texts: Sequence[str], vocab_size: int, folder: Path, context_length: int):
    """Build a lower-case WordPiece tokenizer on ``texts`` and save it as a HF tokenizer in ``folder``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(wordpiece_vocab(texts, vocab_size), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, model_max_length=context_length, do_lower_case=True,
                            pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            mask_token="[MASK]")
    tok.save_pretrained(str(folder))
    return tok


def model_config(cfg: SmallClipConfig) -> dict:
    """The open_clip ``model_cfg``; text paths are "." = the folder holding the config."""
    if cfg.vision_arch == "resnet":
        # A list of per-stage block counts makes open_clip build a ModifiedResNet (attention-pooled).
        vision = {"image_size": cfg.image_size, "layers": [cfg.vision_layers] * 4, "width": cfg.vision_width,
                  "head_width": 32}
    else:
        vision = {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "layers": cfg.vision_layers,
                  "width": cfg.vision_width, "head_width": 32, "mlp_ratio": 4.0, "pool_type": "avg"}
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": vision,
        "text_cfg": {"hf_model_name": ".", "hf_tokenizer_name": ".", "hf_model_pretrained": False,
                     "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
                     "context_length": cfg.context_length},
        "custom_text": True,
    }


def init_model_folder(folder: Path, cfg: SmallClipConfig, texts: Sequence[str]) -> dict:
    """Write tokenizer, BERT config and open_clip config into ``folder``; return the open_clip config."""
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHTS_NAME).unlink(missing_ok=True)  # old weights must never pair with a new config
    tok = train_tokenizer(texts, cfg.vocab_size, folder, cfg.context_length)
    BertConfig(vocab_size=len(tok), hidden_size=cfg.text_width, num_hidden_layers=cfg.text_layers,
               num_attention_heads=cfg.text_heads, intermediate_size=4 * cfg.text_width,
               max_position_embeddings=cfg.context_length, pad_token_id=tok.pad_token_id).save_pretrained(str(folder))
    full = {
        "model_cfg": model_config(cfg),
        "preprocess_cfg": {"size": cfg.image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
        "small_clip": asdict(cfg),
    }
    write_json(folder / CONFIG_NAME, full)
    return full


def build_clip(folder: Path, full: dict, init_temperature_inv: float) -> torch.nn.Module:
    """A freshly initialised open_clip model of the folder's config (``init_model_folder``), its BERT
    word vectors at unit scale (see ``bag_of_words_start``)."""
    from open_clip.model import CustomTextCLIP

    model_cfg = {k: v for k, v in full["model_cfg"].items() if k != "custom_text"}
    model = CustomTextCLIP(**dict(model_cfg, text_cfg=local_text_cfg(folder, model_cfg)),
                           init_logit_scale=math.log(init_temperature_inv))
    bag_of_words_start(model)
    return model


def clip_step_loss(model: torch.nn.Module, tokenizer, images: torch.Tensor, texts: Sequence[str],
                   loss_fn, device: torch.device) -> torch.Tensor:
    """The contrastive loss of one batch: (b, S, S) gray images in [0, 1] and their b texts."""
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    x = (images[:, None].to(device).expand(-1, 3, -1, -1) - mean) / std
    tokens = tokenizer(list(texts))
    # Trailing all-[PAD] columns change nothing under the attention mask; dropping them saves compute.
    pad_id = tokenizer.tokenizer.pad_token_id
    tokens = tokens[:, : int((tokens != pad_id).sum(1).max())]
    img_f, txt_f, logit_scale = model(x, tokens.to(device))[:3]  # normalized features
    return loss_fn(img_f, txt_f, logit_scale)


def cosine_lr(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warmup to ``lr``, then a cosine decay to zero at ``steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


def clip_update(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One AdamW step at ``lr``; the temperature stays within CLIP's bound (1/T <= 100)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def load_gray_stack(paths: Sequence[Path], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Decode images into one (n, size, size) [0, 1] tensor (resized + center-cropped); also an ok mask."""
    out = torch.zeros(len(paths), size, size)
    ok = np.ones(len(paths), dtype=bool)
    for i, p in enumerate(progress(paths, desc="decode", leave=False)):
        try:
            img = torch.from_numpy(load_image(p))
        except ImageReadError as e:
            log.warning("skipping %s", e)
            ok[i] = False
            continue
        out[i] = preprocess_gray(img, size, (0.0,) * 3, (1.0,) * 3)[0]
    return out, ok


def augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(b, S, S) -> (b, S, S): random scale/shift (affine grid) and gamma/contrast jitter."""
    b = x.shape[0]
    scale = 1.0 + (torch.rand(b, generator=gen) * 0.2 - 0.1)
    shift = torch.rand(b, 2, generator=gen) * 0.16 - 0.08
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (b, 1, *x.shape[-2:]), align_corners=False)
    y = F.grid_sample(x[:, None], grid, padding_mode="border", align_corners=False)[:, 0]
    gamma = torch.exp(torch.randn(b, 1, 1, generator=gen) * 0.15)
    return y.clamp(0, 1) ** gamma


def sample_sentences(text: str, rng: np.random.Generator) -> str:
    """Half the time the whole report (sentences shuffled), else 1-3 of its sentences.

    Short texts carry one or two findings each, the way zero-shot prompts do, which gives the
    contrastive loss a far more direct signal than whole reports (as in ConVIRT / MedCLIP).
    """
    parts = split_sentences(text)
    rng.shuffle(parts)
    if parts and rng.random() < 0.5:
        parts = parts[: int(rng.integers(1, 4))]
    return " ".join(parts)


@torch.no_grad()
def bag_of_words_start(model: torch.nn.Module) -> None:
    """Give the from-scratch BERT word embeddings unit scale (BERT's init: 0.02) and no token-type offset.

    With BERT's tiny init, position and token-type embeddings dominate every token after the embedding
    LayerNorm, so mean-pooled texts all start pointing nearly the same way, whatever the report says.
    Unit-scale word vectors make the pooled start a bag of words, which already separates reports
    (docs/decisions.md#encoder-the-small-clip-teaching-option). (BiomedCLIP starts from pretrained PubMedBERT
    instead.)
    """
    emb = model.text.transformer.embeddings
    emb.word_embeddings.weight.normal_(0.0, 1.0)
    emb.token_type_embeddings.weight.zero_()


def train_small_clip(
    folder: Path, images: torch.Tensor, reports: Sequence[str], cfg: SmallClipConfig, device: torch.device
) -> tuple[Encoder, list[float]]:
    """Train on (n, S, S) gray images and their n reports; save into ``folder``; return (encoder, losses)."""
    import open_clip
    from open_clip.loss import ClipLoss

    if len(images) != len(reports) or len(images) < cfg.batch_size:
        raise ValueError(f"need >= batch_size ({cfg.batch_size}) paired images and reports, got "
                         f"{len(images)} images and {len(reports)} reports")
    if tuple(images.shape[1:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"images must be (n, {cfg.image_size}, {cfg.image_size}) = image_size, "
                         f"got {tuple(images.shape)}")
    seed_everything(cfg.seed)
    folder = Path(folder)
    full = init_model_folder(folder, cfg, reports)
    seed_everything(cfg.seed)
    model = build_clip(folder, full, cfg.init_temperature_inv).to(device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder.resolve()}")
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = ClipLoss()
    losses: list[float] = []
    model.train()
    for step in (bar := progress(range(cfg.steps), desc="train small CLIP")):
        idx = torch.randperm(len(images), generator=gen)[: cfg.batch_size]
        x = images[idx]
        texts = [reports[i] for i in idx.tolist()]
        if cfg.augment:
            x = augment_images(x, gen)
            texts = [sample_sentences(t, rng) for t in texts]
        loss = clip_step_loss(model, tokenizer, x, texts, loss_fn, device)
        clip_update(model, opt, loss, cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    write_tensors(folder / WEIGHTS_NAME, model.state_dict())
    return load_encoder(folder, device), losses


def manifest_images(manifest: pd.DataFrame, data_dir: Path) -> list[Path]:
    return [resolve_image_path(Path(data_dir) / "manifest.parquet", p) for p in manifest["image_path"].astype(str)]


def fit_small_clip(
    run_dir: str | Path, cfg: SmallClipConfig, device: torch.device, split: str = "train"
) -> tuple[Encoder, dict]:
    """Train the small CLIP on the run's ``split`` image-report pairs into ``<run_dir>/clip``."""
    rd = RunDir(Path(run_dir))
    manifest = read_table(rd.manifest)
    rows = manifest[(manifest["split"] == split) & (manifest["report"].fillna("").str.len() > 0)]
    t0 = time.perf_counter()
    images, ok = load_gray_stack(manifest_images(rows, rd.data), cfg.image_size)
    reports = rows["report"].astype(str).to_numpy()[ok].tolist()
    t1 = time.perf_counter()
    encoder, losses = train_small_clip(rd.clip, images[torch.from_numpy(ok)], reports, cfg, device)
    log_ = {"n_pairs": len(reports), "decode_seconds": t1 - t0, "train_seconds": time.perf_counter() - t1,
            "losses": losses, "config": asdict(cfg)}
    write_json(rd.clip / "train_log.json", log_)
    return encoder, log_
