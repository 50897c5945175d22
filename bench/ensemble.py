"""Benchmark of the batched transcoder ensemble; prints one line of figures, each measured in this run.

(a) achieved FLOP/s of an ensemble training step vs torch.bmm alone on the same products (ratio), at the demo
    shapes and at MIMIC shapes; for the dense step (five products over all d_dict latents) and for the default
    sparse TopK step (three dense products; decode and value gradients are gathers), and how much faster the
    sparse step is than the dense one;
(b) wall time of N members trained batched vs a Python loop training N single transcoders (ratio), at the
    demo's shapes (notebook 03: d_in 128, h 256, d_dict 256, k 16, batch 128, 2,100 training rows);
(c) a MIMIC-sized input (377,110 x 512, N=100, d_dict 4096, k=32, batch 256): samples/s on a subsample and
    the projected seconds per epoch (an epoch: every member sees every row once).

    .venv/bin/python bench/ensemble.py                 # about 8 minutes on 2 CPU cores
    .venv/bin/python bench/ensemble.py --device cuda   # adds nothing else; same figures on a GPU
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from lanic_nb.device import keep_freed_memory, machine_line, pick_device
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import make_optimizer, train_ensemble, train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def step_timer(cfg: TranscoderConfig, device: torch.device, repeat: int) -> float:
    """Seconds per training step (forward, backward, AdamW, decoder renorm) on random member batches."""
    model = TranscoderEnsemble(cfg).to(device).train()
    opt = make_optimizer(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.n_members, cfg.batch_size, cfg.d_in, generator=g).to(device)
    h = torch.randn(cfg.n_members, cfg.batch_size, cfg.d_out, generator=g).relu().to(device)
    return timed(lambda: train_step(model, opt, x, h), device, repeat)


def products(cfg: TranscoderConfig, sparse: bool) -> list[tuple[int, int, int]]:
    """(rows, inner, cols) of each product in a step, per member.

    Dense: encode, grad W_enc, decode, grad z, grad W_dec. Sparse TopK: encode, grad W_enc, grad W_dec (the
    gradients as products of the scattered k-sparse codes); its gathers are not counted.
    """
    b, di, dd, do = cfg.batch_size, cfg.d_in, cfg.d_dict, cfg.d_out
    enc = [(b, di, dd), (di, b, dd)]
    return enc + ([(dd, b, do)] if sparse else [(b, dd, do), (b, do, dd), (dd, b, do)])


def flops(cfg: TranscoderConfig, sparse: bool) -> float:
    return float(sum(2 * cfg.n_members * m * k * n for m, k, n in products(cfg, sparse)))


def bmm_seconds(cfg: TranscoderConfig, sparse: bool, device: torch.device, repeat: int) -> float:
    """torch.bmm alone on the same products (the achievable rate on these shapes)."""
    ops = [(torch.randn(cfg.n_members, m, k, device=device), torch.randn(cfg.n_members, k, n, device=device))
           for m, k, n in products(cfg, sparse)]
    return timed(lambda: [torch.bmm(a, b) for a, b in ops], device, repeat)


def flop_ratio(cfg: TranscoderConfig, device: torch.device, repeat: int) -> tuple[float, float, float]:
    """(dense step / bmm, sparse step / bmm, dense step time / sparse step time)."""
    t_dense = step_timer(replace(cfg, sparse_topk=False), device, repeat)
    t_sparse = step_timer(cfg, device, repeat)
    r_dense = bmm_seconds(cfg, False, device, repeat) / t_dense
    r_sparse = bmm_seconds(cfg, True, device, repeat) / t_sparse
    return r_dense, r_sparse, t_dense / t_sparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--rows", type=int, default=2100, help="training rows at demo shapes")
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-dict", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600, help="steps for (b): the demo trains 600")
    ap.add_argument("--mimic-batch", type=int, default=256)
    ap.add_argument("--mimic-members", type=int, default=25, help="members timed at MIMIC shapes (scaled to 100)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    keep_freed_memory()  # before any timing, so the loop and the batched runs share the allocator setting
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    kw = dict(d_in=args.d_in, d_out=256, d_dict=args.d_dict, k=args.k, batch_size=128, steps=args.steps)
    demo = TranscoderConfig(n_members=args.members, **kw)
    mimic = TranscoderConfig(d_in=512, d_out=256, d_dict=4096, k=32, n_members=args.mimic_members,
                             batch_size=args.mimic_batch)

    # (a) FLOP rate of a training step vs bare bmm on the same products, dense and sparse.
    dd, ds, sd = flop_ratio(demo, device, repeat=5)
    md, ms, sm = flop_ratio(mimic, device, repeat=2)
    a = (f"(a) step vs bmm on its products: demo dense {dd:.0%} sparse {ds:.0%}, MIMIC dense {md:.0%} sparse "
         f"{ms:.0%}; sparse step {sd:.1f}x (demo) {sm:.1f}x (MIMIC) faster than dense")

    # (b) batched N members vs a loop over N single transcoders, same data, same steps.
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(args.rows, args.d_in, generator=g), dim=1)
    H = (X @ torch.randn(args.d_in, 256, generator=g)).relu()
    sync(device)
    t0 = time.perf_counter()
    train_ensemble(demo, X, H, device, progress=False)
    sync(device)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.members):
        train_ensemble(TranscoderConfig(n_members=1, seeds=[i], **kw), X, H, device, progress=False)
    sync(device)
    t_loop = time.perf_counter() - t0
    b = f"(b) N={args.members} x {args.steps} steps: batched {t_batched:.1f} s vs loop {t_loop:.1f} s = " \
        f"{t_loop / t_batched:.1f}x"

    # (c) MIMIC-CXR size: per-step time on random rows, projected to a full pass over 377,110 rows.
    t_mimic = step_timer(mimic, device, repeat=2)
    rate = args.mimic_batch / t_mimic * args.mimic_members / 100  # rows/s for all 100 members
    c = f"(c) MIMIC 377110x512 N=100 d_dict=4096 k=32 batch {args.mimic_batch}: {rate:.0f} samples/s -> " \
        f"{377110 / rate:.0f} s/epoch" + (
        f" (timed with {args.mimic_members} members, scaled)" if args.mimic_members != 100 else "")
    print(f"ensemble bench on {device} ({torch.get_num_threads()} threads): {a}; {b}; {c} | {machine_line()}")


if __name__ == "__main__":
    main()
