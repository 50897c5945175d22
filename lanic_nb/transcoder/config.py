"""The transcoder ensemble's configuration and its forward output.

The model and its maths are described in ``lanic_nb.transcoder.model``."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
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
    """One flat config for a single transcoder (n_members=1) or an ensemble of them, for training and inference."""

    d_in: int | None = None
    """Width of the input x (the classifier's input embedding); None until the data is known (the transcoder stage
    takes it from the classifier). Default: from the data."""
    d_out: int | None = None
    """Width of the target h (the classifier's hidden layer; d_out == d_in makes an SAE). Default: from the data."""
    d_dict: int = 2048
    """Latents per member (the largest, if ``dict_sizes`` differ). Default: Matryoshka Transcoders (arXiv
    2511.10094) and LanSE (arXiv 2508.18236): 2,048."""
    n_members: int = 100
    """Ensemble size; 1 is a single transcoder. Default: CXR-LanIC (arXiv 2510.21464) trains 100."""
    k: int = 32
    """Active latents per sample for "topk" (the mean per sample for "batchtopk"). Default: LanSE's k = 32."""
    activation: str = "topk"
    """The latent activation: "topk", "batchtopk" (the k x batch largest of a batch while training, one threshold
    per member after), "relu" (with an L1 penalty) or "jumprelu". Default: TopK (Gao et al., arXiv 2406.04093;
    LanSE)."""
    l1_coeff: float = 0.0
    """Sparsity penalty: L1 of z for "relu", L0 (straight-through) for "jumprelu"; unused by the top-k
    activations. Default: 0 (the top-k activations need none)."""
    aux_coeff: float = 1 / 8
    """Weight of the aux-k loss that trains dead latents on the residual (0: off). Default: chosen on the phantom
    (Gao et al. use 1/32; with a few thousand images the residual is small and dead latents need a louder
    signal)."""
    aux_k: int = 64
    """How many dead latents the aux-k loss may use per sample. Default: chosen on the phantom (Gao et al. use
    d_in / 2)."""
    dead_steps: int = 100
    """A latent is dead after this many training steps without firing. Default: chosen on the phantom (100 steps
    of 128 rows show every phantom image about 6 times)."""
    jump_bandwidth: float = 0.05
    """Width of the rectangle kernel in JumpReLU's pseudo-derivatives, in units of pre-activation. Default:
    Rajamanoharan et al. (arXiv 2407.14435) use 0.001 on unit-norm inputs; chosen on the phantom."""
    jump_init_threshold: float = 0.05
    """Initial JumpReLU threshold. Default: chosen on the phantom."""
    lr: float = 2e-3
    """AdamW learning rate, constant after a linear warm-up. Default: chosen on the phantom."""
    warmup_steps: int = 50
    """Linear learning-rate warm-up steps; independent of ``steps``, so a resumed, longer run matches one long run.
    Default: chosen on the phantom."""
    weight_decay: float = 0.0
    """AdamW weight decay. Default: 0, as in the SAE literature (decoder rows are renormalized instead)."""
    steps: int = 2000
    """Optimizer steps; every member sees one minibatch per step. Default: chosen on the phantom."""
    batch_size: int = 256
    """Rows per member per step. Default: engineering (a common SAE batch on CPU)."""
    seed: int = 0
    """Member i uses seed + i unless ``seeds`` is given. Default: 0."""
    seeds: list[int] | None = None
    """Explicit per-member seeds (length n_members). Default: none (seed + i)."""
    bootstrap: bool = False
    """Each member trains on its own bootstrap resample of the rows, drawn with its own generator (bagging, one
    way to make members differ beyond their seeds). Default: off; CXR-LanIC's members differ by seed."""
    dict_sizes: list[int] | None = None
    """Per-member dictionary sizes (each in [k, d_dict]); latents beyond a member's size are masked off.
    Default: none (every member has d_dict)."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (renormalized after every step), so a latent's code carries its size.
    Default: on, as in Gao et al. and sparsify."""
    tied_init: bool = True
    """Top-k SAEs (d_in == d_out, "topk" / "batchtopk") start with each member's encoder equal to its decoder, and
    a data-based init fits the encoder's scale by least squares. Transcoders (d_in != d_out) and ReLU / JumpReLU
    SAEs keep a random encoder. Default: on, as Gao et al. tie the initialization."""
    sparse_topk: bool = True
    """"topk", and "batchtopk" while training: after the dense encoder product, touch only the chosen latents of
    each row (decode, every gradient, the aux-k loss; ``lanic_nb.transcoder.sparse``) instead of products over all
    d_dict latents. The same numbers (tested against the dense reference) with about d_dict / k less work after the
    encoder; on CPU at widths of ``fused.FUSED_MIN_WEIGHTS`` weights per member the weight update also runs as one
    pass per latent row (``lanic_nb.transcoder.fused``). False: the dense reference. Default: on (speed only)."""
    encoder_precision: str = "float32"
    """Training only: "bfloat16" takes the encoder's forward product (the one product over all latents in a sparse
    step) in bfloat16 with float32 accumulation; every gradient stays the exact float32 one and inference is always
    float32. Faster only where the hardware multiplies bfloat16 natively (GPUs, CPUs with AVX512-BF16 or AMX;
    docs/benchmarks.md), slower elsewhere; pre-activations carry bfloat16's rounding (2^-8 relative), so latents
    that close to the k-th may be chosen differently. Default: float32, right on every machine."""
    input_weight: float = 0.0
    """Training only: the decoder also reconstructs the input x (rescaled to the target's total variance) at this
    weight beside the target's FVU, so the latents become features of the input that also explain h instead of
    h's few high-variance directions; ``train_ensemble`` keeps only the target part of the decoder, so the result
    is an ordinary x -> h transcoder. Default: 0, the plain transcoder (the demo uses 1.0: docs/decisions.md)."""
    checkpoint_every: int = 500
    """Steps between checkpoints when a checkpoint folder is given (a killed run resumes from the last one).
    Default: engineering."""
    member_seeds: list[int] = field(init=False, repr=False)
    """Resolved per-member seeds (derived)."""

    def __post_init__(self) -> None:
        require_at_least_one(
            self, ("d_dict", "n_members", "k", "aux_k", "dead_steps", "steps", "batch_size", "checkpoint_every"))
        require_at_least_one(self, [n for n in ("d_in", "d_out") if getattr(self, n) is not None])
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

    def with_dims(self, d_in: int, d_out: int) -> TranscoderConfig:
        """This config for inputs of width ``d_in`` and targets of width ``d_out`` (ValueError if it names others)."""
        for name, value in (("d_in", d_in), ("d_out", d_out)):
            if getattr(self, name) is not None and getattr(self, name) != value:
                raise ValueError(f"{name} is {getattr(self, name)}, but the data has {value} (leave {name} unset)")
        return replace(self, d_in=int(d_in), d_out=int(d_out))

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
