"""Benchmark of the batched transcoder ensemble; prints one line of figures, each measured in this run.

(a) achieved FLOP/s of an ensemble training step vs torch.bmm alone on the same five products (ratio);
(b) wall time of N members trained batched vs a Python loop training N single transcoders (ratio);
(c) a MIMIC-sized input (377,110 x 512, N=100, d_dict 4096, k=32): samples/s on a subsample and the
    projected seconds per epoch (an epoch: every member sees every row once).

    .venv/bin/python bench/ensemble.py                 # about 2-3 minutes on 2 CPU cores
    .venv/bin/python bench/ensemble.py --device cuda   # adds nothing else; same figures on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from lanic_nb.device import pick_device
from lanic_nb.transcoder import (
    TranscoderConfig,
    TranscoderEnsemble,
    make_optimizer,
    train_ensemble,
    train_step,
)


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


def matmul_flops(cfg: TranscoderConfig) -> float:
    """The step's five products: encode (forward, W_enc grad), decode (forward, z grad, W_dec grad)."""
    return 2.0 * cfg.n_members * cfg.batch_size * cfg.d_dict * (2 * cfg.d_in + 3 * cfg.d_out)


def bmm_seconds(cfg: TranscoderConfig, device: torch.device, repeat: int) -> float:
    """torch.bmm alone on the same five products (the achievable rate on these shapes)."""
    n, b, di, dd, do = cfg.n_members, cfg.batch_size, cfg.d_in, cfg.d_dict, cfg.d_out
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    x, we, z, wd, g = r(n, b, di), r(n, di, dd), r(n, b, dd), r(n, dd, do), r(n, b, do)

    def five():
        torch.bmm(x, we)  # encode
        torch.bmm(x.transpose(1, 2), z)  # grad W_enc
        torch.bmm(z, wd)  # decode
        torch.bmm(g, wd.transpose(1, 2))  # grad z
        torch.bmm(z.transpose(1, 2), g)  # grad W_dec

    return timed(five, device, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--rows", type=int, default=2100, help="training rows at demo shapes")
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-dict", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="steps for (b)")
    ap.add_argument("--mimic-batch", type=int, default=64)
    ap.add_argument("--mimic-members", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    demo = TranscoderConfig(d_in=args.d_in, d_out=256, d_dict=args.d_dict, k=args.k, n_members=args.members,
                            batch_size=128, steps=args.steps)

    # (a) FLOP rate of a training step vs bare bmm on the same products.
    t_step = step_timer(demo, device, repeat=3)
    t_bmm = bmm_seconds(demo, device, repeat=3)
    flops = matmul_flops(demo)
    a = f"(a) step {flops / t_step / 1e9:.1f} GFLOP/s vs bmm {flops / t_bmm / 1e9:.1f} GFLOP/s = {t_bmm / t_step:.0%}"

    # (b) batched N members vs a loop over N single transcoders, same data, same steps.
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(args.rows, args.d_in, generator=g), dim=1)
    H = (X @ torch.randn(args.d_in, 256, generator=g)).relu()
    kw = dict(d_in=args.d_in, d_out=256, d_dict=args.d_dict, k=args.k, batch_size=128, steps=args.steps)
    sync(device)
    t0 = time.perf_counter()
    train_ensemble(TranscoderConfig(n_members=args.members, **kw), X, H, device, progress=False)
    sync(device)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.members):
        train_ensemble(TranscoderConfig(n_members=1, seeds=[i], **kw), X, H, device, progress=False)
    sync(device)
    t_loop = time.perf_counter() - t0
    b = f"(b) N={args.members} x {args.steps} steps: batched {t_batched:.1f} s vs loop {t_loop:.1f} s = " \
        f"{t_loop / t_batched:.1f}x"

    # (c) MIMIC-CXR size: per-step time on a subsample of rows, projected to a full pass over 377,110 rows.
    mimic = TranscoderConfig(d_in=512, d_out=256, d_dict=4096, k=32, n_members=args.mimic_members,
                             batch_size=args.mimic_batch)
    t_mimic = step_timer(mimic, device, repeat=2)
    t_mimic_bmm = bmm_seconds(mimic, device, repeat=1)
    a += f", at MIMIC shapes {t_mimic_bmm / t_mimic:.0%}"
    rate = args.mimic_batch / t_mimic * 100 / args.mimic_members  # rows/s for all 100 members
    c = f"(c) MIMIC 377110x512 N=100 d_dict=4096 k=32: {rate:.0f} samples/s -> {377110 / rate:.0f} s/epoch" + (
        f" (measured with {args.mimic_members} members, scaled)" if args.mimic_members != 100 else "")
    print(f"ensemble bench on {device} ({torch.get_num_threads()} threads): {a}; {b}; {c}")


if __name__ == "__main__":
    main()
