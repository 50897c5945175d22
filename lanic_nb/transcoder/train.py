"""Training the ensemble: per-member sampling, resumable checkpoints, the optimizer and the training loop.

Every member keeps its own generators, so member i trained in the ensemble equals a single transcoder
trained with seed i."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.checkpoint import load_training_tensors, training_tensors
from lanic_nb.device import keep_freed_memory
from lanic_nb.io import read_json, read_tensors, write_json, write_tensors
from lanic_nb.progress import progress as progress_bar
from lanic_nb.transcoder import fused
from lanic_nb.transcoder.config import TranscoderConfig, TranscoderOutput
from lanic_nb.transcoder.model import TranscoderEnsemble

log = logging.getLogger(__name__)


class _MemberSampler:
    """Per-member row sampling: an optional bootstrap resample, then minibatches, each from its own generator."""

    def __init__(self, n_rows: int, cfg: TranscoderConfig):
        # A stream of its own per member, distinct from the one its initialization drew from.
        self.gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([s, 1]).generate_state(1)[0]))
                     for s in cfg.member_seeds]
        self.rows = [torch.randint(n_rows, (n_rows,), generator=g) if cfg.bootstrap else torch.arange(n_rows)
                     for g in self.gens]
        self.batch_size = cfg.batch_size

    def next(self) -> torch.Tensor:
        """Row indices for one step  # (n_members, batch)."""
        return torch.stack([r[torch.randint(len(r), (self.batch_size,), generator=g)]
                            for r, g in zip(self.rows, self.gens, strict=True)])

    def state(self) -> torch.Tensor:
        return torch.stack([g.get_state() for g in self.gens])  # (n_members, state bytes) uint8

    def set_state(self, states: torch.Tensor) -> None:
        for g, s in zip(self.gens, states, strict=True):
            g.set_state(s.clone())


def data_digest(*tensors: torch.Tensor, rows: int = 65536) -> str:
    """SHA-256 of the tensors' shapes and float32 values, read in blocks of ``rows`` rows (no full host copy of
    a device tensor): what a checkpoint was trained on."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        for i in range(0, len(t), rows):
            h.update(t[i:i + rows].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(folder: Path, model: TranscoderEnsemble, opt: torch.optim.Optimizer,
                     sampler: _MemberSampler, step: int, log_rows: list[dict], data: str) -> None:
    tensors = training_tensors(model, opt)
    tensors["rng"] = sampler.state()
    write_tensors(folder / "checkpoint.safetensors", tensors)
    # The JSON goes last: a checkpoint counts only once its JSON names the step (both writes are atomic).
    write_json(folder / "checkpoint.json", {"step": step, "config": model.cfg.to_dict(), "data": data,
                                            "log": log_rows})


def _load_checkpoint(folder: Path, model: TranscoderEnsemble, opt: torch.optim.Optimizer,
                     sampler: _MemberSampler, data: str) -> tuple[int, list[dict]] | None:
    meta_path = folder / "checkpoint.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("data") != data:  # other films, another classifier's targets, or written before this check
        log.warning("checkpoint in %s was trained on other data (or does not say which); starting afresh", folder)
        return None
    # Through from_dict, so a checkpoint written before a config field existed reads it at its default.
    saved = {k: v for k, v in TranscoderConfig.from_dict(meta["config"]).to_dict().items() if k != "steps"}
    ours = {k: v for k, v in model.cfg.to_dict().items() if k != "steps"}
    if saved != ours:
        log.warning("checkpoint in %s has a different config; starting afresh", folder)
        return None
    tensors = read_tensors(folder / "checkpoint.safetensors")
    load_training_tensors(model, opt, tensors)
    sampler.set_state(tensors["rng"])
    return int(meta["step"]), list(meta["log"])


def _subset_means(t: torch.Tensor, rows: list[torch.Tensor], bootstrap: bool) -> torch.Tensor:
    """Column means over each member's rows  # (n_members, width); without bootstrap all share the same rows."""
    if not bootstrap:
        return t.mean(0).expand(len(rows), -1)
    return torch.stack([t[r.to(t.device)].mean(0) for r in rows])


def rows_of(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for row indices idx of any shape  # (*idx.shape, t.shape[1]). index_select rather than
    advanced indexing, which is much slower on CPU (docs/decisions.md#step-rows-by-index_select)."""
    return t.index_select(0, idx.reshape(-1)).view(*idx.shape, t.shape[1])


def make_optimizer(model: TranscoderEnsemble) -> torch.optim.AdamW:
    """AdamW over all members' stacked parameters (elementwise, so members stay independent)."""
    # fused: one pass per tensor (same elementwise arithmetic) instead of a pass per elementwise operation, so
    # with many members the optimizer stays a small part of the step (docs/decisions.md#step-torchs-fused-adamw).
    return torch.optim.AdamW(model.parameters(), lr=model.cfg.lr, weight_decay=model.cfg.weight_decay,
                             fused=True)


def train_step(model: TranscoderEnsemble, opt: torch.optim.Optimizer, x: torch.Tensor,
               h: torch.Tensor) -> TranscoderOutput:
    """One optimizer step for all members on their own minibatches x (n_members, batch, d_in), h (..., d_out).

    Where ``fused.applies`` (large CPU ensembles) the weights' gradient sums, AdamW and the decoder's
    normalization run as one pass per latent row (``fused.apply``), with the same arithmetic."""
    model.sink = fused.Sink() if fused.applies(model, opt) else None
    try:
        out = model(x, h)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
    finally:
        sink, model.sink = model.sink, None
    decoder_done = sink is not None and fused.apply(model, opt, sink)  # first: it forms b_pre's gradient
    opt.step()  # every parameter with a gradient: all of them, or the biases where the sink took the weights
    with torch.no_grad():
        fired = out.fired if out.fired is not None else out.codes.amax(dim=1) > 0  # (n_members, d_dict)
        model.steps_since_fired.add_(1).masked_fill_(fired, 0)
        if model.cfg.normalize_decoder and not decoder_done:
            model.normalize_decoder_()
    return out


def widened_target(cfg: TranscoderConfig, X: torch.Tensor, H: torch.Tensor) -> tuple[TranscoderConfig, torch.Tensor]:
    """The training config and target of ``input_weight``: [H, X * s * input_weight], s = sqrt(total variance of H
    / total variance of X), so at weight 1 both parts weigh alike in the loss; the FVU it reports is of both."""
    s = (H.var(0).sum() / X.var(0).sum().clamp_min(1e-12)).sqrt()
    return replace(cfg, d_out=cfg.d_out + cfg.d_in), torch.cat([H, X * (s * cfg.input_weight)], dim=1)


def train_ensemble(
    cfg: TranscoderConfig, X: torch.Tensor | np.ndarray, H: torch.Tensor | np.ndarray, device="cpu",
    checkpoint_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
) -> tuple[TranscoderEnsemble, pd.DataFrame]:
    """Train all members at once on inputs X (n, d_in) and targets H (n, d_out).

    With ``checkpoint_dir`` the full state (weights, optimizer moments, every member's RNG state, step,
    log, and a digest of X and H) is written every ``cfg.checkpoint_every`` steps and at the end; with ``resume`` a
    later call on the same X and H continues from it, and the result equals one uninterrupted run (``steps`` may be
    raised to go on); other data or another config starts afresh.
    The log has one row per logging step: step, and per-member means of loss terms, FVU and L0.
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()  # else a large CPU step pays page faults on every fresh block (lanic_nb.device)
    X = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)
    H = torch.as_tensor(np.asarray(H, dtype=np.float32)).to(device)
    if X.shape[1] != cfg.d_in or H.shape[1] != cfg.d_out or len(X) != len(H):
        raise ValueError(f"X must be (n, d_in={cfg.d_in}) and H (n, d_out={cfg.d_out}); got {tuple(X.shape)}, "
                         f"{tuple(H.shape)}")
    if cfg.input_weight > 0:  # train on [h, x * scale] and keep the h part (TranscoderConfig.input_weight)
        wide, H = widened_target(cfg, X, H)
        model, log_df = _fit(wide, X, H, device, checkpoint_dir, resume, progress)
        kept = model.keep_outputs(cfg)
        # The decoder's input part is no part of the transcoder, but it tells latents apart where their h
        # directions are alike (faint devices): the merge reads it (``INPUT_DECODER``).
        kept.input_decoder = model.W_dec.detach()[..., cfg.d_out :].clone()  # (n_members, d_dict, d_in)
        return kept, log_df
    return _fit(cfg, X, H, device, checkpoint_dir, resume, progress)


def _fit(cfg: TranscoderConfig, X: torch.Tensor, H: torch.Tensor, device: torch.device,
         checkpoint_dir: str | Path | None, resume: bool, progress: bool) -> tuple[TranscoderEnsemble, pd.DataFrame]:
    """train_ensemble's loop, on validated tensors whose H has cfg.d_out columns."""
    model = TranscoderEnsemble(cfg).to(device)
    sampler = _MemberSampler(len(X), cfg)
    model.init_biases(_subset_means(X, sampler.rows, cfg.bootstrap), _subset_means(H, sampler.rows, cfg.bootstrap))
    # 512 rows fix one scale factor per member well enough; more would cost (n_members, rows, d_dict) memory.
    init_rows = torch.stack([r[:512] for r in sampler.rows]).to(device)  # (n_members, <=512)
    model.init_encoder_scale(X[init_rows], H[init_rows])
    opt = make_optimizer(model)
    step, log_rows = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    digest = data_digest(X, H) if ckpt is not None else ""
    if ckpt is not None and resume and (loaded := _load_checkpoint(ckpt, model, opt, sampler, digest)) is not None:
        step, log_rows = loaded
        log.info("resumed transcoder training at step %d", step)
    log_every = max(1, cfg.steps // 50)
    model.train()
    bar = progress_bar(range(step, cfg.steps), desc="transcoders", disable=not progress, initial=step, total=cfg.steps)
    for step in bar:
        model._steps_done = step
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        idx = sampler.next().to(device)  # (n_members, batch)
        out = train_step(model, opt, rows_of(X, idx), rows_of(H, idx))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            l0 = (out.codes > 0).sum(-1).float().mean(-1)
            log_rows.append(dict(step=step + 1, loss=out.loss.item() / cfg.n_members, fvu=out.fvu.mean().item(),
                                 aux=out.aux_loss.mean().item(), l0=l0.mean().item(),
                                 dead=((model.steps_since_fired >= cfg.dead_steps) & model.latent_mask).float()
                                 .sum(-1).div(model.latent_mask.sum(-1)).mean().item()))
            bar.set_postfix(fvu=f"{log_rows[-1]['fvu']:.3f}", l0=f"{log_rows[-1]['l0']:.1f}", refresh=False)
        if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save_checkpoint(ckpt, model, opt, sampler, step + 1, log_rows, digest)
    model._steps_done = cfg.steps
    model.eval()
    return model, pd.DataFrame(log_rows)
