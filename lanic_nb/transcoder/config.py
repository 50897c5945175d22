"""The transcoder ensemble's configuration and its forward output.

The model and its maths are described in ``lanic_nb.transcoder.model``."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch

from lanic_nb.checks import require_at_least_one

log = logging.getLogger(__name__)

ACTIVATIONS = ("topk", "batchtopk", "relu", "jumprelu")
PRECISIONS = ("float32", "bfloat16")
W_ENC_LAYOUT = "n_members,d_dict,d_in"
"""Written beside saved weights; files without it hold W_enc as (n_members, d_in, d_dict) and load transposed."""


@dataclass
class TranscoderConfig:
    """One flat config for a single transcoder (n_members=1) or an ensemble of them."""

    d_in: int
    """Width of the input x (the classifier's input embedding)."""
    d_out: int
    """Width of the target h (the classifier's hidden layer)."""
    d_dict: int = 2048
    """Number of latents per member (the largest, if dict_sizes differ)."""
    n_members: int = 1
    """Ensemble size; 1 is a single transcoder."""
    k: int = 32
    """Active latents per sample for "topk" / "batchtopk" (mean per sample for the latter)."""
    activation: str = "topk"
    """One of "topk", "batchtopk", "relu", "jumprelu"."""
    l1_coeff: float = 0.0
    """Sparsity penalty: L1 of z for "relu", L0 (straight-through) for "jumprelu"; unused by top-k."""
    aux_coeff: float = 1 / 8
    """Weight of the aux-k loss that trains dead latents on the residual (0 turns it off; Gao et al.: 1/32,
    but with a few thousand images the residual is small and dead latents need a louder signal)."""
    aux_k: int = 64
    """How many dead latents the aux-k loss may use per sample."""
    dead_steps: int = 100
    """A latent is dead after this many training steps without firing (100 x 128 rows: every image ~6x)."""
    jump_bandwidth: float = 0.05
    """Width of the rectangle kernel in JumpReLU's pseudo-derivatives (in units of pre-activation)."""
    jump_init_threshold: float = 0.05
    """Initial JumpReLU threshold."""
    lr: float = 2e-3
    """AdamW learning rate (constant after a linear warm-up)."""
    warmup_steps: int = 50
    """Linear learning-rate warm-up; independent of `steps`, so a resumed, longer run matches one long run."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    steps: int = 2000
    """Optimizer steps (every member sees one minibatch per step)."""
    batch_size: int = 256
    """Samples per member per step."""
    seed: int = 0
    """Member i uses seed + i unless `seeds` is given."""
    seeds: list[int] | None = None
    """Explicit per-member seeds (length n_members)."""
    bootstrap: bool = False
    """Each member trains on its own bootstrap resample of the rows (drawn with its own generator)."""
    dict_sizes: list[int] | None = None
    """Per-member dictionary sizes (<= d_dict); latents beyond a member's size are masked off."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (renormalized after every step)."""
    tied_init: bool = True
    """Top-k SAEs (d_in == d_out, "topk" / "batchtopk") start with each member's encoder equal to its decoder (both
    latent-major), so the first codes pick the directions along each input, and the data-based init fits the
    encoder's scale by least squares (Gao et al. 2024 tie the init too; bench/peers.py: FVU 0.69 instead of 0.84
    after 400 demo-shaped steps). Transcoders (d_in != d_out) and ReLU / JumpReLU SAEs keep a random encoder."""
    sparse_topk: bool = True
    """"topk", and "batchtopk" while training (its choices per row vary, padded to the most any row holds): after
    the dense encoder product, touch just the chosen latents per row: the decode, every
    gradient and the aux-k loss, through one sort of the choices by latent (``lanic_nb.transcoder.sparse``),
    instead of products over all d_dict latents. Same math (tested), about d_dict / k less work after the
    encoder; False keeps the dense formulation, the reference the tests compare against. On CPU with at least
    ``fused.FUSED_MIN_WEIGHTS`` weights per member (MIMIC's widths, not the demo's) the weight update also runs
    as one pass per latent row (``lanic_nb.transcoder.fused``: the gradient sums, AdamW, the normalization)."""
    encoder_precision: str = "float32"
    """Training only: "bfloat16" rounds the two factors of the encoder's forward product (the one product over all
    latents in a sparse step; it chooses the latents and gives their values) to bfloat16 (float32 accumulation
    inside, a bfloat16 result read back as float32); every gradient stays the exact float32 one, and inference (``eval()``) is always float32.
    Where the hardware multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, GPUs) that product runs about 4x
    faster: on this project's 2-core AMD EPYC (AVX512-BF16) a 2048^3 product took 195 GFLOP/s in float32 and 870
    in bfloat16, and bench/peers.py's MIMIC-shaped step (4,096 latents) went from about 14 to 9 ms per member-step.
    The cost: pre-activations carry bfloat16's rounding (about 0.4% relative), so latents within that of the k-th
    can be chosen differently than in float32. Elsewhere (no native bfloat16) it is slower: keep "float32"."""
    input_weight: float = 0.0
    """Training only: the loss also asks the decoder to reconstruct the input x (rescaled to the total variance of
    the target), with this weight beside the target's FVU. A transcoder's loss alone spends its latents on the few
    directions that carry h's variance (a classifier's hidden layer mostly encodes its findings), so concepts that
    h carries in low-variance directions get no latent of their own; reconstructing x too makes the latents
    features of the input that also explain h. ``train_ensemble`` keeps only the target part of the decoder, so
    the result is an ordinary transcoder x -> h and every decomposition stays exact. 0 = the plain transcoder."""
    checkpoint_every: int = 500
    """Steps between checkpoints when a checkpoint folder is given."""
    member_seeds: list[int] = field(init=False, repr=False)
    """Resolved per-member seeds (derived)."""

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            (
                "d_in", "d_out", "d_dict", "n_members", "k", "aux_k", "dead_steps", "steps", "batch_size",
                "checkpoint_every"
            ),
        )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.encoder_precision not in PRECISIONS:
            raise ValueError(f"encoder_precision must be one of {PRECISIONS}, got {self.encoder_precision!r}")
        if self.k > self.d_dict:
            raise ValueError(f"k must be <= d_dict={self.d_dict}, got {self.k}")
        for name in ("l1_coeff", "aux_coeff", "lr", "weight_decay", "warmup_steps", "input_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        for name in ("jump_bandwidth", "jump_init_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.seeds is not None:
            if len(self.seeds) != self.n_members:
                raise ValueError(f"seeds must have n_members={self.n_members} entries, got {len(self.seeds)}")
            self.seeds = [int(s) for s in self.seeds]
        self.member_seeds = list(self.seeds) if self.seeds is not None else [
            self.seed + i for i in range(self.n_members)]
        if self.dict_sizes is not None:
            if len(self.dict_sizes) != self.n_members:
                raise ValueError(f"dict_sizes must have n_members={self.n_members} entries")
            if any(not self.k <= s <= self.d_dict for s in self.dict_sizes):
                raise ValueError(f"dict_sizes must lie in [k={self.k}, d_dict={self.d_dict}], got {self.dict_sizes}")
            self.dict_sizes = [int(s) for s in self.dict_sizes]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("member_seeds")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TranscoderConfig:
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})


class TranscoderOutput(NamedTuple):
    h_hat: torch.Tensor  # (n_members, batch, d_out)
    codes: torch.Tensor  # (n_members, batch, d_dict)
    loss: torch.Tensor  # scalar: summed over members, so gradients never mix
    mse: torch.Tensor  # (n_members,) mean squared error per element
    aux_loss: torch.Tensor  # (n_members,)
    l1: torch.Tensor  # (n_members,) mean L1 of z per sample
    fvu: torch.Tensor  # (n_members,) fraction of variance of h unexplained
    fired: torch.Tensor | None = None  # (n_members, d_dict) bool: latents with a positive code in the batch (sparse
    # training step: from the choices; otherwise None, and ``codes`` tell)
