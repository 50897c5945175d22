"""The patterns' activations over many rows (notebook 04 and the MIMIC-scale run's longest pass): the sparse path
(``lanic_nb.transcoder.inference.topk_codes``, k codes per member and row, the latents chosen from a bfloat16
product and re-ranked in float32 where that pays) against the dense reference it replaced (``encode``'s
(n_members, rows, d_dict) codes, permuted and summed into patterns), and against the same sparse path in
float32, all in one run on the same ensemble and rows. Medians of 3 timed runs after a warm-up.

    .venv/bin/python bench/activations.py       # MIMIC widths: 20 x 4,096 latents, d 512; ~2 min on 2 cores
    .venv/bin/python bench/activations.py --members 4 --rows 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lanic_nb.device import machine_line
from lanic_nb.patterns.merge import MergeConfig, PatternSet
from lanic_nb.patterns.units import pattern_activations, rows_per_batch
from lanic_nb.transcoder import inference
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble


@torch.no_grad()
def dense_reference(model: TranscoderEnsemble, ps: PatternSet, x: torch.Tensor) -> torch.Tensor:
    """The pass as it was: dense codes, permuted, the kept latents summed into their patterns."""
    flat = ps.latent_pattern.reshape(-1)
    keep = torch.nonzero(flat >= 0).squeeze(1)
    out, step = [], rows_per_batch(model)
    for s in range(0, len(x), step):
        z = model.encode(x[s : s + step])
        zf = z.permute(1, 0, 2).reshape(z.shape[1], -1)
        act = torch.zeros(zf.shape[0], ps.n_patterns)
        act.index_add_(1, flat[keep], zf[:, keep])
        out.append(act / ps.n_members)
    return torch.cat(out)


def median_time(fn, repeats: int = 3) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--d-dict", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--patterns", type=int, default=500)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    cfg = TranscoderConfig(d_in=args.d_in, d_out=args.d_in // 2, d_dict=args.d_dict, n_members=args.members,
                           k=args.k, input_weight=0.0)
    model = TranscoderEnsemble(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.b_enc.copy_(0.02 * torch.randn(model.b_enc.shape, generator=g))
    x = torch.nn.functional.normalize(torch.randn(args.rows, args.d_in, generator=g), dim=1)
    lp = torch.randint(-1, args.patterns, (args.members, args.d_dict), generator=g)
    ps = PatternSet(latent_pattern=lp, directions=torch.zeros(args.patterns, cfg.d_out),
                    consistency=torch.ones(args.patterns), n_latents=torch.ones(args.patterns, dtype=torch.long),
                    config=MergeConfig())
    t_dense, ref = median_time(lambda: dense_reference(model, ps, x))
    ok = inference.low_precision_ok
    inference.low_precision_ok = lambda device: False
    t_fp32, a32 = median_time(lambda: pattern_activations(model, ps, x))
    inference.low_precision_ok = ok
    t_fast, fast = median_time(lambda: pattern_activations(model, ps, x))
    err = max(float((a32 - ref).abs().max()), float((fast - ref).abs().max()))
    per = 1e3 / args.rows
    print(f"pattern activations, {args.members} x {args.d_dict} latents, d {args.d_in}, k {args.k}, {args.rows} rows: "
          f"dense reference {t_dense * per:.2f} ms/row, sparse fp32 {t_fp32 * per:.2f} ({t_dense / t_fp32:.2f}x), "
          f"sparse with bf16 choice {t_fast * per:.2f} ({t_dense / t_fast:.2f}x; bf16 used: {ok(x.device)}); "
          f"max |difference| {err:.1e}")


if __name__ == "__main__":
    main()
