"""A multimodal model's words beside the template: an ``Annotator`` (and pattern namer) on a local Hugging Face
image-text-to-text model (MedGemma, LLaVA-Med, Qwen2-VL, ... anything ``AutoModelForImageTextToText`` loads).

The model sees the radiograph and a prompt that states what the attribution found: the finding, its
probability and the top patterns with their names, categories and signed contributions. Its answer (a few
sentences) is appended to the template explanation, marked as the model's. ``HFPatternNamer`` shows the
model a pattern's top-activating training images and asks for a short name.

Offline by default: the model must be in the Hugging Face cache (``HF_HOME``) or a local folder;
``local_files_only=True`` and huggingface_hub's offline mode make a missing model fail at once, with a message
saying how to provide it. ``allow_download=True`` lifts both. Nothing here runs unless asked for: every
notebook leaves the annotator off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lanic_nb.device import pick_device
from lanic_nb.embed.encoders import hub_offline
from lanic_nb.explain.text import PatternEvidence, likelihood, signed
from lanic_nb.images import load_image

log = logging.getLogger(__name__)


class AnnotatorUnavailable(RuntimeError):
    """The model cannot be loaded here; the message says how to provide it."""


@dataclass
class VLMConfig:
    """Which local image-text-to-text model to load, and how it generates."""

    model: str = ""
    """A Hugging Face repo id already in the cache (e.g. "google/medgemma-4b-it") or a local folder; empty: no
    model (the annotator is off). Default: off (CXR-LanIC only planned explanations by a multimodal model)."""
    device: str = "auto"
    """Where it runs ("auto": CUDA when present, else CPU). Default: auto."""
    dtype: str = "auto"
    """Weights dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16" or "float16". Default: auto
    (bfloat16 runs slowly on CPUs without native support)."""
    max_new_tokens: int = 96
    """Longest answer generated (greedy decoding, so answers are reproducible). Default: engineering (two short
    sentences)."""
    allow_download: bool = False
    """Let transformers download the model. Default: never; the cache or a folder only."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not isinstance(self.allow_download, bool):
            raise ValueError(f"allow_download must be True or False, got {self.allow_download!r}")


class VisionLanguageModel:
    """A processor and an image-text-to-text model, loaded once; ``generate(images, text)`` -> the answer."""

    def __init__(self, cfg: VLMConfig):
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
            from transformers.utils import logging as hf_logging
        except ImportError as e:  # an old transformers without image-text-to-text models
            raise AnnotatorUnavailable(f"the annotator needs transformers >= 4.46 ({e})") from e
        if not str(cfg.model):
            raise ValueError("VLMConfig.model must name a local Hugging Face model (repo id in the cache, or a folder)")
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            cfg.dtype, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        hf_logging.disable_progress_bar()  # its bars go to stderr, which a notebook paints red
        source = str(Path(cfg.model).expanduser()) if Path(cfg.model).expanduser().is_dir() else cfg.model
        try:
            with hub_offline(not cfg.allow_download):
                self.processor = AutoProcessor.from_pretrained(source, local_files_only=not cfg.allow_download)
                self.model = AutoModelForImageTextToText.from_pretrained(
                    source, local_files_only=not cfg.allow_download, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError) as e:
            raise AnnotatorUnavailable(
                f"annotator model {cfg.model!r} is not available here ({type(e).__name__}: {e}). lanic-nb never "
                "downloads it: on a networked machine run `huggingface-cli download <repo-id>` (accept the "
                "model's licence on huggingface.co first where it has one) and copy ~/.cache/huggingface here, "
                "or pass a local folder saved with save_pretrained; allow_download=True lets transformers "
                "fetch it.") from e
        self.name = Path(cfg.model).name if Path(cfg.model).expanduser().is_dir() else cfg.model
        self.last_prompt = ""
        self.last_output = ""

    @torch.no_grad()
    def generate(self, images: Sequence[np.ndarray], text: str) -> str:
        """The model's answer to ``text`` about ``images`` (grayscale arrays in [0, 1]), whitespace-collapsed."""
        from PIL import Image

        pil = [Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).convert("RGB") for a in images]
        content = [{"type": "image", "image": im} for im in pil] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: (v.to(self.device, dtype=self.model.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        answer = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        self.last_prompt, self.last_output = text, re.sub(r"\s+", " ", answer).strip()
        return self.last_output


def annotation_prompt(finding: str, probability: float, evidence: Sequence[PatternEvidence]) -> str:
    """What the annotator asks: the prediction, the patterns behind it, and a bounded task."""
    lines = [f"A chest X-ray classifier gives this radiograph a probability of {probability:.2f} for {finding} "
             f"({likelihood(probability)}). An exact attribution of its logit names these learned patterns "
             "(category: concepts, signed contribution to the logit):"]
    for e in evidence:
        lines.append(f"- pattern {e.pattern_id} ({e.category or 'uncategorized'}: "
                     f"{', '.join(e.concepts) or 'no concept'}) {signed(e.contribution)}")
    if not evidence:
        lines.append("- no pattern is active")
    lines.append(f"Looking at the image, say in at most two sentences whether what is visible agrees with these "
                 f"patterns and with the probability of {finding}. Do not give a diagnosis or advice.")
    return "\n".join(lines)


class HFAnnotator:
    """An ``Annotator`` (see ``lanic_nb.explain.text``) on a local image-text-to-text model."""

    def __init__(self, model: VisionLanguageModel | VLMConfig | str):
        self.vlm = model if isinstance(model, VisionLanguageModel) else VisionLanguageModel(
            model if isinstance(model, VLMConfig) else VLMConfig(model=str(model)))

    def annotate(self, finding: str, probability: float, evidence: Sequence[PatternEvidence],
                 image_path: Path | None) -> str:
        images = [load_image(image_path)] if image_path is not None else []
        answer = self.vlm.generate(images, annotation_prompt(finding, probability, evidence))
        return f"The multimodal model ({self.vlm.name}) adds: {answer}" if answer else ""

    @property
    def last_prompt(self) -> str:
        return self.vlm.last_prompt

    @property
    def last_output(self) -> str:
        return self.vlm.last_output


def naming_prompt(category: str, concepts: Sequence[str], n_images: int) -> str:
    known = f" The annotation so far: {category or 'uncategorized'}; {', '.join(concepts) or 'no concept'}."
    return (f"These {n_images} chest radiographs are the ones where one learned pattern of a classifier is most "
            f"active.{known} What visible feature do they share? Answer with a name of at most five words.")


class HFPatternNamer:
    """Names a pattern from its top-activating images with a local image-text-to-text model."""

    def __init__(self, model: VisionLanguageModel | VLMConfig | str, max_words: int = 8):
        self.vlm = model if isinstance(model, VisionLanguageModel) else VisionLanguageModel(
            model if isinstance(model, VLMConfig) else VLMConfig(model=str(model)))
        self.max_words = max_words

    def name(self, images: Sequence[np.ndarray], category: str, concepts: Sequence[str]) -> str:
        answer = self.vlm.generate(list(images), naming_prompt(category, concepts, len(images)))
        return " ".join(answer.strip(" .").split()[: self.max_words])
