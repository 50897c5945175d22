"""TopK codes without the dense (n_members, rows, d_dict) code matrix, for the passes over every image.

After training, the pattern stage and the MIMIC-scale run push every row through the whole ensemble (which
latents fire at all; each pattern's activation). ``TranscoderEnsemble.encode`` returns dense codes: the top-k
written into a zero matrix of n_members x d_dict per row, then permuted and summed into patterns. Here the
codes stay as (values, latents), k per member and row, and the pattern sums are one scatter.

Where this machine multiplies bfloat16 faster than float32 (a CPU with AVX512-BF16 or AMX, a CUDA GPU with
bf16), the encoder's product that *chooses* the latents runs in bfloat16 and keeps a few more candidates than k
per row; the candidates' pre-activations are then recomputed exactly in float32 and the top k taken among them.
The values are float32's, and the choice is float32's whenever the true top k are among the candidates:
bfloat16's rounding (8 significant bits) moves a pre-activation by a small fraction of their spread, while the
margin covers a whole band of ranks (``candidates``; tests compare against the float32 path; timings and the
measured error: docs/decisions.md#inference-k-codes-per-member-latents-chosen-in-bfloat16).
"""

from __future__ import annotations

import torch

from lanic_nb.transcoder.autograd import _flat_latents
from lanic_nb.transcoder.select import topk_indices
from lanic_nb.transcoder.sparse import _dots


def low_precision_ok(device: torch.device) -> bool:
    """Whether choosing latents from a bfloat16 product pays on ``device``: hardware that multiplies bfloat16
    natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX (see the module's notes)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def candidates(k: int, d_dict: int) -> int:
    """Latents kept per row from the bfloat16 product before the exact re-ranking: k plus a band of ranks."""
    return min(d_dict, k + max(8, k // 2))


def _bf16_encoder(ensemble) -> torch.Tensor:
    """W_enc in bfloat16  # (n_members, d_dict, d_in), cached until the weights change (their version)."""
    w = ensemble.W_enc
    key = (w.data_ptr(), w._version)
    cache = getattr(ensemble, "_bf16_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, w.detach().to(torch.bfloat16))
        ensemble._bf16_cache = cache
    return cache[1]


@torch.no_grad()
def topk_codes(ensemble, x: torch.Tensor, low_precision: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzeros of ``ensemble.encode(x)`` for a TopK ensemble: (values, latents), each (n_members, rows, k).

    Values are ReLU'd (a chosen latent whose pre-activation is negative has value 0, as in ``encode``).
    ``low_precision`` None decides by the device (``low_precision_ok``); True or False forces it.
    """
    cfg = ensemble.cfg
    if cfg.activation != "topk":
        raise ValueError(f"topk_codes needs a TopK ensemble, got activation={cfg.activation!r}")
    x3 = ensemble._x3(x.float())
    xc = x3 - ensemble.b_pre.unsqueeze(1)  # (n, rows, d_in)
    lp = low_precision_ok(x.device) if low_precision is None else low_precision
    if not lp:
        pre = ensemble._masked(torch.baddbmm(ensemble.b_enc.unsqueeze(1), xc, ensemble.W_enc.transpose(1, 2)))
        idx = topk_indices(pre, cfg.k)
        return pre.gather(-1, idx).relu(), idx
    n, rows, d_in = xc.shape
    rough = torch.baddbmm(ensemble.b_enc.unsqueeze(1).to(torch.bfloat16), xc.to(torch.bfloat16),
                          _bf16_encoder(ensemble).transpose(1, 2))
    cand = ensemble._masked(rough).topk(candidates(cfg.k, cfg.d_dict), dim=-1, sorted=False).indices  # (n, rows, c)
    flat = _flat_latents(cand, cfg.d_dict)  # (n * rows, c) rows of the flattened weights
    exact = _dots(flat, ensemble.W_enc.detach().reshape(n * cfg.d_dict, d_in), xc.reshape(n * rows, d_in))
    exact = (exact + ensemble.b_enc.detach().reshape(-1)[flat]).view(n, rows, -1)
    if cfg.dict_sizes is not None:  # latents beyond a member's size never fire
        exact = exact.masked_fill(~ensemble.latent_mask.gather(1, cand.reshape(n, -1)).view_as(cand), -torch.inf)
    pick = topk_indices(exact, cfg.k)
    return exact.gather(-1, pick).relu(), cand.gather(-1, pick)


def dense_codes(vals: torch.Tensor, idx: torch.Tensor, d_dict: int) -> torch.Tensor:
    """(values, latents) back to ``encode``'s dense codes  # (n_members, rows, d_dict)."""
    return vals.new_zeros(*vals.shape[:-1], d_dict).scatter_(-1, idx, vals)
