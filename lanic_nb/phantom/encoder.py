"""The phantom encoder: an open_clip model pretrained once on a stream of phantom images, shipped with the package.

Why: a CLIP trained from scratch inside a short demo (small images, a few thousand image-report pairs) hardly
sees thin devices or detector artifacts, so the pipeline on top of it cannot find them either
(docs/decisions.md#encoder-the-embedded-phantom-encoder-instead-of-a-from-scratch-clip). Real users
start from BiomedCLIP, pretrained at scale; the phantom gets the same: a model with BiomedCLIP's structure
in miniature (a ModifiedResNet image tower at 128 px, a BERT text tower built by ``transformers`` with a
WordPiece vocabulary covering the concept vocabulary), pretrained by this module's recipe on a large
stream of fresh phantom images, each paired with its clinical report or with a figure-style caption
(:mod:`lanic_nb.phantom.captions`). The pretraining stream uses its own phantom seed and plants every
concept independently, so no run's images or co-occurrences are ever seen.

One command trains it, resumably (a checkpoint every ``checkpoint_every`` steps; rerun to continue), and
writes the open_clip folder + ``card.json`` (recipe, fingerprint of the phantom generator, training and
evaluation figures; see :mod:`lanic_nb.phantom.encoder_card`)::

    python -m lanic_nb.phantom.encoder --work runs/phantom_encoder --out lanic_nb/resources/phantom_encoder

``--language-gap`` trains its sibling by the same recipe with captions and phrases that never use the concept
vocabulary's words (:mod:`lanic_nb.phantom.captions`) and no tagging loss, into ``runs/phantom_encoder_gap``: the
encoder to measure how naming degrades when the encoder does not know the words, as with BiomedCLIP.

The demo loads it like any user's model: ``load_encoder("local-dir:<that folder>")`` (``model="phantom"``).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lanic_nb.checkpoint import load_training_tensors, training_tensors
from lanic_nb.concepts.annotate import TEMPLATE
from lanic_nb.concepts.vocabulary import load_vocabulary
from lanic_nb.device import machine_line, pick_device, seed_everything
from lanic_nb.embed.clip_small import (
    augment_images,
    build_clip,
    clip_update,
    cosine_lr,
    init_model_folder,
    sample_sentences,
)
from lanic_nb.embed.encoders import CARD_NAME, CONFIG_NAME, PHANTOM_ENCODER_DIR, WEIGHTS_NAME, preprocess_gray
from lanic_nb.io import read_json, read_tensors, write_json, write_tensors
from lanic_nb.phantom.captions import caption_names, describe
from lanic_nb.phantom.config import CONCEPT_NAMES
from lanic_nb.phantom.generate import generate_study, study_report
from lanic_nb.phantom.recipe import PretrainConfig
from lanic_nb.progress import progress

log = logging.getLogger(__name__)


def stream_batch(cfg: PretrainConfig, step: int, names: dict[str, list[str]]
                 ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Step ``step``'s pairs: (batch, image_size, image_size) gray images in [0, 1], their texts, and what
    their captions name: (batch, n_concepts) 0/1.

    A pure function of (cfg, step): the stream needs no state to resume.
    """
    phantom = cfg.stream_phantom()
    rng = np.random.default_rng([cfg.seed, 7, step])
    images, texts, named = [], [], []
    for j in range(cfg.batch_size):
        index = step * cfg.batch_size + j
        img, rows, states = generate_study(phantom, index)
        named.append([float(r.present) for r in rows])
        x = torch.from_numpy(img).float().div_(255.0)
        images.append(preprocess_gray(x, cfg.image_size, (0.0,) * 3, (1.0,) * 3)[0])
        if rng.random() < cfg.caption_fraction:
            texts.append(describe(rows, rng, names, rotated=states["rotated"]))
        else:
            report = study_report(phantom, index, rows, states)
            texts.append(sample_sentences(report.text, rng))
    return torch.stack(images), texts, torch.tensor(named)


class PhraseHead(torch.nn.Module):
    """Temperature and biases of the image-phrase loss (SigLIP's t and b); trained beside the encoder, not shipped.

    One bias per concept and polarity: a phrase's prior ("no pacemaker" is true of most films, "pacemaker" of
    few) is not the text tower's business, so the cosine only has to carry the image evidence.
    """

    def __init__(self, embed_dim: int, n_concepts: int = len(CONCEPT_NAMES)):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
        self.logit_bias = torch.nn.Parameter(torch.zeros(2 * n_concepts))
        # The tagging head: the caption's concepts read linearly off the image embedding (as image-tagging
        # pretraining does, e.g. Recognize Anything). It shapes the image tower from the first steps, while
        # the text tower is still too undifferentiated to pull it anywhere; dropped at export.
        self.tags = torch.nn.Linear(embed_dim, n_concepts)


def step_phrases(rng: np.random.Generator, names: dict[str, list[str]]) -> list[str]:
    """One phrase per concept, then its negation ("no ..."): a vocabulary name or synonym, bare or in the
    annotation prompt's form, so both the names and the prompt are learned."""
    out = []
    for concept in CONCEPT_NAMES:
        options = [n for n in names[concept] if n not in ("l marker", "r marker")]
        name = options[0] if rng.random() < 0.5 else options[int(rng.integers(len(options)))]
        out.append(TEMPLATE.format(name) if rng.random() < 0.5 else name)
    return out + [f"no {p}" if not p.startswith("A ") else f"no {p.split(' of a ', 1)[1]}" for p in out]


def pair_losses(model: torch.nn.Module, head: PhraseHead, tokenizer, images: torch.Tensor, texts: list[str],
                named: torch.Tensor, phrases: list[str], loss_fn, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The CLIP loss of the image-text pairs, the image-phrase loss (each image against every concept phrase and
    its negation, a sigmoid per pair as in SigLIP: a multi-positive contrastive loss), and the tagging loss."""
    import torch.nn.functional as F

    from lanic_nb.embed.clip_small import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    x = (images[:, None].to(device).expand(-1, 3, -1, -1) - mean) / std
    raw = model.encode_image(x)
    img = F.normalize(raw, dim=-1)
    txt = F.normalize(model.encode_text(_tokens(tokenizer, texts).to(device)), dim=-1)
    clip = loss_fn(img, txt, model.logit_scale.exp())
    ph = F.normalize(model.encode_text(_tokens(tokenizer, phrases).to(device)), dim=-1)
    logits = head.logit_scale.exp() * img @ ph.T + head.logit_bias  # (batch, 2 * n_concepts)
    target = torch.cat([named, 1.0 - named], dim=1).to(device)
    tags = F.binary_cross_entropy_with_logits(head.tags(raw), named.to(device))
    return clip, F.binary_cross_entropy_with_logits(logits, target), tags


def _tokens(tokenizer, texts: list[str]) -> torch.Tensor:
    tokens = tokenizer(list(texts))
    pad_id = tokenizer.tokenizer.pad_token_id  # trailing all-[PAD] columns change nothing under the mask
    return tokens[:, : int((tokens != pad_id).sum(1).max())]


def tokenizer_texts(cfg: PretrainConfig, names: dict[str, list[str]], n_steps: int = 40) -> list[str]:
    """Texts the WordPiece vocabulary is counted on: the first steps' texts plus every vocabulary name."""
    vocab = load_vocabulary()
    texts = [t for step in range(n_steps) for t in _texts_only(cfg, step, names)]
    texts += [" ".join([c, *syns]) for c, syns in zip(vocab["concept"], vocab["synonyms"], strict=True)]
    return texts


def _texts_only(cfg: PretrainConfig, step: int, names: dict[str, list[str]]) -> list[str]:
    small = PretrainConfig(**{**asdict(cfg), "batch_size": min(cfg.batch_size, 64), "source_size": 32})
    return stream_batch(small, step, names)[1] + step_phrases(np.random.default_rng(step), names)


def _save_checkpoint(folder: Path, model, opt, step: int, history: dict, cfg: PretrainConfig) -> None:
    write_tensors(folder / "checkpoint.safetensors", training_tensors(model, opt))
    # The JSON goes last: a checkpoint counts only once its JSON names the step (both writes are atomic).
    write_json(folder / "checkpoint.json", {"step": step, "config": asdict(cfg), "history": history})


def _load_checkpoint(folder: Path, model, opt, cfg: PretrainConfig) -> tuple[int, dict] | None:
    meta_path = folder / "checkpoint.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta["config"] != asdict(cfg):
        raise ValueError(f"the checkpoint in {folder} was made with another recipe; pass another --work folder "
                         "or delete it to start afresh")
    load_training_tensors(model, opt, read_tensors(folder / "checkpoint.safetensors"))
    return int(meta["step"]), meta["history"]


def pretrain(work_dir: str | Path, cfg: PretrainConfig, device: str | torch.device = "auto",
             resume: bool = True, stop_at: int | None = None) -> tuple[torch.nn.Module, Path, dict]:
    """Train (or continue training) the encoder in ``work_dir``; returns (model, model folder, history).

    ``work_dir/model`` is the open_clip folder (config + tokenizer now, weights at the end);
    ``work_dir/checkpoint`` the resumable state. History: per-step losses, progress checks, seconds.
    ``stop_at`` ends this call after that step (with a checkpoint), as an interruption would; a later call
    continues from there and ends exactly where an uninterrupted run would.
    """
    import open_clip
    from open_clip.loss import ClipLoss

    from lanic_nb.phantom.encoder_card import ProgressProbe

    device = pick_device(device)
    work = Path(work_dir)
    folder, ckpt = work / "model", work / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    names = caption_names(cfg.words)
    arch = cfg.architecture()
    if not (folder / CONFIG_NAME).exists():
        init_model_folder(folder, arch, tokenizer_texts(cfg, names))
    full = read_json(folder / CONFIG_NAME)
    seed_everything(cfg.seed)
    model = build_clip(folder, full, arch.init_temperature_inv).to(device)
    head = PhraseHead(cfg.embed_dim).to(device)
    both = torch.nn.ModuleDict({"clip": model, "phrase": head})  # one state to checkpoint
    opt = torch.optim.AdamW(both.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder.resolve()}")
    history: dict = {"loss": [], "clip_loss": [], "phrase_loss": [], "tag_loss": [], "checks": [],
                     "seconds": 0.0, "machine": machine_line()}
    start = 0
    if resume and (loaded := _load_checkpoint(ckpt, both, opt, cfg)) is not None:
        start, history = loaded
        log.info("resuming the phantom encoder's pretraining at step %d of %d", start, cfg.steps)
    probe = ProgressProbe(cfg) if cfg.eval_every else None
    loss_fn = ClipLoss()
    both.train()
    t_last = time.perf_counter()
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    for step in (bar := progress(range(start, end), desc="pretrain phantom encoder", initial=start,
                                 total=cfg.steps)):
        images, texts, named = stream_batch(cfg, step, names)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout draws from the global generator: per step, to resume
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        phrases = step_phrases(np.random.default_rng([cfg.seed, 8, step]), names)
        clip_loss, phrase_loss, tag_loss = pair_losses(model, head, tokenizer, augment_images(images, gen), texts,
                                                       named, phrases, loss_fn, device)
        loss = clip_loss + cfg.phrase_weight * phrase_loss + cfg.tag_weight * tag_loss
        clip_update(model, opt, loss, cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps))
        for key, value in (("loss", loss), ("clip_loss", clip_loss), ("phrase_loss", phrase_loss),
                           ("tag_loss", tag_loss)):
            history[key].append(round(value.item(), 4))
        bar.set_postfix(clip=f"{history['clip_loss'][-1]:.3f}", phrase=f"{history['phrase_loss'][-1]:.3f}",
                        tags=f"{history['tag_loss'][-1]:.3f}", refresh=False)
        done = step + 1
        if probe is not None and (done % cfg.eval_every == 0 or done == end):
            history["checks"].append({"step": done, **probe(model)})
            log.info("step %d: %s", done, history["checks"][-1])
            both.train()
        if done % cfg.checkpoint_every == 0 or done == end:
            now = time.perf_counter()
            history["seconds"] = round(history["seconds"] + now - t_last, 1)
            t_last = now
            _save_checkpoint(ckpt, both, opt, done, history, cfg)
    model.eval()
    return model, folder, history


def export(model: torch.nn.Module, folder: Path, out_dir: str | Path, cfg: PretrainConfig, history: dict,
           evaluation: dict) -> Path:
    """Write the shipped folder: open_clip config + tokenizer (copied), weights in float16, and the card."""
    from lanic_nb.phantom.encoder_card import generator_fingerprint, write_fingerprint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != WEIGHTS_NAME:
            shutil.copy2(f, out / f.name)
    # float16 halves the file (the checkpoint keeps float32); open_clip casts back on load
    write_tensors(out / WEIGHTS_NAME, {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v
                                       for k, v in model.state_dict().items()})
    write_fingerprint(out)
    card = {
        "name": "lanic-nb phantom encoder",
        "what": "open_clip CustomTextCLIP: ModifiedResNet image tower + BERT text tower (transformers), "
                "pretrained contrastively on phantom chest films paired with reports or captions",
        "recipe": asdict(cfg),
        "command": "python -m lanic_nb.phantom.encoder --work runs/phantom_encoder "
                   "--out lanic_nb/resources/phantom_encoder",
        "phantom_fingerprint": generator_fingerprint(),
        "training": {"steps": len(history["loss"]), "images_seen": len(history["loss"]) * cfg.batch_size,
                     "seconds": history["seconds"], "machine": history["machine"],
                     "final_loss_mean_last_100": float(np.mean(history["loss"][-100:])),
                     "loss_every_100": history["loss"][::100], "checks": history["checks"]},
        "evaluation": evaluation,
    }
    write_json(out / CARD_NAME, card)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="checkpoints and model folder (default: runs/phantom_encoder, or "
                    "runs/phantom_encoder_gap with --language-gap)")
    ap.add_argument("--out", type=Path, help=f"where the finished open_clip folder is written (default: the shipped "
                    f"{PHANTOM_ENCODER_DIR.name}, or runs/phantom_encoder_gap/encoder with --language-gap)")
    ap.add_argument("--language-gap", action="store_true",
                    help="the language-gap encoder: the same recipe with captions and phrases in paraphrases that "
                         "never use the concept vocabulary's words, and no tagging loss (hours on 2 CPU cores)")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    ap.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-every", type=int, default=PretrainConfig.eval_every,
                    help="steps between progress checks (0: none; part of the recipe, so a run resumes only with "
                         "the value it started with)")
    ap.add_argument("--eval-images", type=int, default=4000, help="held-out phantom images of the card")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--stop-at", type=int, help="stop after this step (with a checkpoint); rerun to continue")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from lanic_nb.phantom.encoder_card import evaluate_encoder

    gap = args.language_gap
    args.work = args.work or Path("runs/phantom_encoder_gap" if gap else "runs/phantom_encoder")
    args.out = args.out or (Path("runs/phantom_encoder_gap/encoder") if gap else PHANTOM_ENCODER_DIR)
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                         **({"words": "paraphrase", "tag_weight": 0.0} if gap else {}))
    model, folder, history = pretrain(args.work, cfg, args.device, resume=not args.fresh, stop_at=args.stop_at)
    if len(history["loss"]) < cfg.steps:
        log.info("stopped at step %d of %d; run the same command again to continue", len(history["loss"]), cfg.steps)
        return 0
    write_tensors(folder / WEIGHTS_NAME, model.state_dict())
    evaluation = evaluate_encoder(f"local-dir:{folder.resolve()}", cfg, n_images=args.eval_images)
    out = export(model, folder, args.out, cfg, history, evaluation)
    log.info("wrote %s (%s)", out, evaluation.get("summary"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
