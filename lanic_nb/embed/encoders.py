"""Load an open_clip image-text encoder: BiomedCLIP from the Hugging Face cache, or a local model folder.

Two sources, one code path (open_clip's ``create_model_from_pretrained`` + ``get_tokenizer``):

* ``"hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"``: the real target, loaded exactly
  as open_clip documents it. Weights must already be in the Hugging Face cache (nothing is downloaded
  unless ``allow_download=True``), so a machine without them fails at once instead of after a
  round of network retries (docs/decisions.md#stages-offline-loading).
* ``"local-dir:PATH"`` or a plain folder path: ``open_clip_config.json`` + ``open_clip_model.safetensors``
  + a Hugging Face tokenizer and (for an HF text tower) a transformers ``config.json`` in the same
  folder. This is how :mod:`lanic_nb.embed.clip_small` saves the small default model. Relative paths in the
  config's ``text_cfg`` are resolved against the folder, so the folder can move.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
PHANTOM = "phantom"
"""The name of the shipped phantom encoder (``lanic_nb.phantom.encoder``): an open_clip folder inside the package."""
PHANTOM_ENCODER_DIR = Path(__file__).resolve().parent.parent / "resources" / "phantom_encoder"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
CARD_NAME = "card.json"  # an encoder folder's optional card: recipe, fingerprint, figures


class EncoderUnavailable(RuntimeError):
    """The encoder's weights or code are not available here; the message says how to provide them."""


@dataclass
class Encoder:
    """An open_clip model with its image preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: Any  # open_clip's PIL transform (as returned by create_model_from_pretrained)
    tokenizer: Any  # open_clip tokenizer: list[str] -> (n, context_length) token ids
    name: str
    embed_dim: int
    image_size: int
    mean: tuple[float, ...] = field(default=(0.48145466, 0.4578275, 0.40821073))
    std: tuple[float, ...] = field(default=(0.26862954, 0.26130258, 0.27577711))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess_array(self, image: torch.Tensor) -> torch.Tensor:
        """(H, W) grayscale in [0, 1] -> (3, S, S) normalized, the tensor twin of ``preprocess``.

        Same steps as open_clip's transform (bicubic resize of the shortest side, center crop, gray ->
        three equal channels, mean/std), on tensors so worker processes never round-trip through PIL.
        """
        return preprocess_gray(image, self.image_size, self.mean, self.std)

    def preprocess_description(self) -> dict[str, Any]:
        return {
            "steps": "gray[0,1] -> bicubic resize shortest side (antialias) -> center crop -> 3 channels -> normalize",
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def fingerprint(self) -> str:
        """A short hash of the weights: a store made by other weights under the same name is stale."""
        h = hashlib.sha256()
        for key, t in sorted(self.model.state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def hf_pad_id(self) -> int | None:
        """The pad id of a Hugging Face text tower (which masks padding), else None."""
        config = getattr(getattr(self.model, "text", None), "config", None)
        return getattr(config, "pad_token_id", None)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) preprocessed -> (n, d) L2-normalized float32."""
        # channels_last, as the tower's weights (load_encoder): CPU convolutions run best in that layout; a ViT's
        # only convolution is its patch embedding, which does not mind
        # (docs/decisions.md#stages-text-encoding-and-channels_last).
        feats = self.model.encode_image(images.to(self.device).contiguous(memory_format=torch.channels_last))
        return F.normalize(feats.float(), dim=-1)

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Image files (PNG, JPEG, DICOM) -> (n, d) L2-normalized float32, read and preprocessed like the store's."""
        from lanic_nb.images import load_image

        return self.encode_images(torch.stack([self.preprocess_array(torch.from_numpy(load_image(p))) for p in paths]))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """list of n strings -> (n, d) L2-normalized float32 (on the model's device).

        Each distinct string is encoded once (report sentences repeat a lot), in chunks of similar length: an HF
        tower masks [PAD], so trailing all-pad columns are dropped, which changes nothing but the cost
        (docs/decisions.md#stages-text-encoding-and-channels_last).
        The chunks depend only on ``texts``, so the same call gives the same bits."""
        unique: dict[str, int] = {}
        where = torch.tensor([unique.setdefault(t, len(unique)) for t in texts], dtype=torch.long)
        if not unique:
            return torch.zeros(0, self.embed_dim, device=self.device)
        strings = list(unique)
        tokens = self.tokenizer(strings)  # (u, context_length)
        pad = self.hf_pad_id
        if pad is not None:
            lengths = (tokens != pad).sum(1)
            order = torch.sort(lengths, stable=True).indices
        else:  # open_clip's own towers pool at the end-of-text token and keep every column
            order = torch.arange(len(strings))
        out = torch.empty(len(strings), self.embed_dim, device=self.device)
        for i in range(0, len(strings), batch_size):
            rows = order[i : i + batch_size]
            chunk = tokens[rows]
            if pad is not None:
                chunk = chunk[:, : max(1, int(lengths[rows].max()))]
            out[rows.to(self.device)] = F.normalize(self.model.encode_text(chunk.to(self.device)).float(), dim=-1)
        return out[where.to(self.device)]


def preprocess_gray(
    image: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, size, size): resize shortest side, center crop, replicate, normalize."""
    h, w = image.shape[-2:]
    # torchvision's Resize(int) rounding: short side -> size, long side -> int(size * long / short).
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = image.reshape(1, 1, h, w).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)  # PIL's bicubic saturates at the pixel range; match it
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # as CenterCrop
    x = x[0, :, top : top + size, left : left + size]  # (1, size, size)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.expand(3, size, size) - m) / s


def _how_to_provide(name: str) -> str:
    return (
        f"Encoder {name!r} is not available on this machine. To provide it: (1) on a machine with network "
        f"access run `python -c \"import open_clip; open_clip.create_model_from_pretrained('{name}')\"` to fill "
        "the Hugging Face cache (~/.cache/huggingface, or HF_HOME) and copy that cache here; or (2) save the "
        "model as a local folder (open_clip_config.json + open_clip_model.safetensors + tokenizer files) and "
        "pass 'local-dir:/path/to/folder'. Set HF_HUB_OFFLINE=1 so loading never waits on the network; "
        "pass allow_download=True to let open_clip download. The embedded default needs none of this: "
        "model='phantom' is the phantom encoder shipped inside the package, and model='small' trains a small CLIP "
        "on the phantom (lanic_nb.embed.clip_small)."
    )


def _require_transformers(name: str) -> None:
    try:
        import transformers  # noqa: F401
    except ModuleNotFoundError as e:
        raise EncoderUnavailable(
            f"Encoder {name!r} has a Hugging Face text tower, which needs the `transformers` package "
            f"(missing: {e.name}). Install it with `pip install transformers tokenizers`."
        ) from e


@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """Force huggingface_hub offline for the duration (it reads HF_HUB_OFFLINE only at import).

    ``huggingface_hub.constants.is_offline_mode()`` reads the module constant at call time, and every
    request (including transformers' config/tokenizer look-ups) goes through it, so flipping it here
    makes a missing cache entry fail at once instead of after a round of network retries.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    old_const, old_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def local_text_cfg(folder: Path, model_cfg: dict) -> dict:
    """The config's text_cfg with relative HF model/tokenizer paths resolved against ``folder``."""
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    for key in ("hf_model_name", "hf_tokenizer_name"):
        val = text_cfg.get(key)
        if val and (val.startswith(".") or (folder / val).exists()):
            text_cfg[key] = str((folder / val).resolve())
    if text_cfg.get("hf_model_name"):
        text_cfg["hf_model_pretrained"] = False  # the folder's safetensors hold the whole model
    return text_cfg


def _load_local(folder: Path, device: torch.device) -> tuple[torch.nn.Module, Any, Any]:
    import open_clip

    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir() or not cfg_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise EncoderUnavailable(
            f"Local encoder folder {str(folder)!r} must hold {CONFIG_NAME} and {WEIGHTS_NAME} (+ tokenizer "
            "files); train the small model with lanic_nb.embed.clip_small.train_small_clip, or point to a folder "
            "saved in that layout."
        )
    text_cfg = local_text_cfg(folder, json.loads(cfg_path.read_text())["model_cfg"])
    if text_cfg.get("hf_model_name"):
        _require_transformers(str(folder))
    name = f"{LOCAL_PREFIX}{folder.resolve()}"
    with hub_offline():  # a local folder never needs the network
        model, preprocess = open_clip.create_model_from_pretrained(name, device=device, text_cfg=text_cfg)
        tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def _load_hub(name: str, device: torch.device, allow_download: bool) -> tuple[torch.nn.Module, Any, Any]:
    import open_clip

    _require_transformers(name)
    try:
        with hub_offline(not allow_download):
            # As open_clip's README documents BiomedCLIP: model + preprocess, then the tokenizer.
            model, preprocess = open_clip.create_model_from_pretrained(name, device=device)
            tokenizer = open_clip.get_tokenizer(name)
    except ModuleNotFoundError as e:
        raise EncoderUnavailable(f"{_how_to_provide(name)} (a module is missing: {e.name})") from e
    except (OSError, RuntimeError, ValueError) as e:
        # huggingface_hub's LocalEntryNotFoundError / OfflineModeIsEnabled are OSError subclasses;
        # open_clip re-raises config failures as RuntimeError.
        root = e
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        raise EncoderUnavailable(f"{_how_to_provide(name)} (cause: {type(root).__name__}: {root})") from e
    return model, preprocess, tokenizer


def load_encoder(name: str | os.PathLike, device: str | torch.device = "cpu", allow_download: bool = False) -> Encoder:
    """Load an encoder by name: ``"hf-hub:org/repo"``, ``"local-dir:PATH"``, a folder path, or ``"phantom"``
    (the shipped phantom encoder, itself a ``local-dir:`` folder).

    Raises EncoderUnavailable (quickly, without network) when weights or ``transformers`` are missing.
    """
    device = torch.device(device)
    name = str(name)
    if name == PHANTOM:
        name = f"{LOCAL_PREFIX}{PHANTOM_ENCODER_DIR}"
    if name.startswith(HF_PREFIX):
        model, preprocess, tokenizer = _load_hub(name, device, allow_download)
    else:
        folder = Path(name[len(LOCAL_PREFIX) :] if name.startswith(LOCAL_PREFIX) else name).expanduser()
        model, preprocess, tokenizer = _load_local(folder, device)
        name = f"{LOCAL_PREFIX}{folder.resolve()}"
    model.eval()
    model.visual.to(memory_format=torch.channels_last)  # the layout CPU convolutions prefer (encode_images)
    pcfg = model.visual.preprocess_cfg  # open_clip attaches the final preprocess config here
    size = pcfg["size"]
    size = int(size[0] if isinstance(size, list | tuple) else size)
    return Encoder(
        model, preprocess, tokenizer, name, _probe_dim(model, size, device), size,
        tuple(pcfg["mean"]), tuple(pcfg["std"]),
    )

@torch.no_grad()
def _probe_dim(model: torch.nn.Module, size: int, device: torch.device) -> int:
    return int(model.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[-1])
