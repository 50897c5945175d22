"""lanic-nb's batched ensemble against plain Python loops over the single SAEs of the libraries a user would
pick instead: EleutherAI sparsify (``SparseCoder``), overcomplete (``TopKSAE``) and SAELens
(``TopKTrainingSAE``), all installed from PyPI as the ``bench`` extra (``pip install -e '.[bench]'``).

Fair by construction:
- the same random data (sparse mixtures of unit directions plus noise) and the same batches: member i sees
  the same rows at step s in every library;
- identical shapes, steps and optimizer: torch Adam, fused, one constant lr, no warm-up (lanic-nb's AdamW
  with weight decay 0 is the same update); 2 torch threads; target = input (SAE mode), which every library runs;
- otherwise each library's own defaults: initialization and data-based init (lanic-nb: means and encoder
  scale; sparsify's trainer: b_dec = mean of the targets), loss (lanic-nb and sparsify FVU, overcomplete's
  README MSE, SAELens summed MSE), decoder norm (sparsify's trainer renormalizes and drops the gradient
  parallel to each row, overcomplete normalizes in its forward, SAELens rescales by the norm).
  Left out of the peers' loops, in their favour: gradient clipping, logging, dead-latent bookkeeping.

Time: the libraries train in interleaved chunks of steps (in rotating order), so a background load hits all
alike; ms per member-step is the median over chunks. Quality, with one formula for all: FVU = squared error /
variance of the target on 1,024 held-out rows, mean over members, after equal steps and after equal wall
time (each peer retrained from its same init for the steps it completes in lanic-nb's time for the run).
lanic-nb also runs as a transcoder (d_in != d_out, target relu(A x + c)), a task the peers' loops do not share.

    .venv/bin/python bench/peers.py                      # demo and MIMIC shapes, about 6 minutes on 2 cores
    .venv/bin/python bench/peers.py --shapes tiny        # seconds: the same code path, for a smoke test

The bfloat16 rows (lanic-nb's bfloat16 encoder product, the peers under bfloat16 autocast) run only where the
hardware multiplies bfloat16 natively (a GPU, or a CPU with AVX512-BF16 or AMX: about one minute more there);
elsewhere bfloat16 is emulated at a few GFLOP/s and would take hours, so they are left out and the output says so
(``--bf16`` runs them anyway).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from lanic_nb.device import keep_freed_memory, machine_line, pick_device
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.inference import low_precision_ok
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import make_optimizer, rows_of, train_step

OURS = "lanic-nb (batched)"
BF16 = "bf16 encoder product"
AUTOCAST = "bf16 autocast"


@dataclass(frozen=True)
class Shapes:
    name: str
    d: int  # input = target width in SAE mode
    d_dict: int
    k: int
    batch: int
    members: int
    steps: int
    chunks: int  # timing chunks per library (interleaved)


SHAPES = {
    "demo": Shapes("demo", d=256, d_dict=256, k=16, batch=128, members=20, steps=400, chunks=20),
    "mimic": Shapes("MIMIC", d=512, d_dict=4096, k=32, batch=256, members=10, steps=30, chunks=10),
    "tiny": Shapes("tiny", d=32, d_dict=64, k=4, batch=16, members=3, steps=6, chunks=3),
}
N_TRAIN, N_EVAL = 8192, 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ data


@dataclass
class Data:
    X: torch.Tensor  # (N_TRAIN, d) training rows
    H: torch.Tensor  # (N_TRAIN, d // 2) transcoder targets
    X_eval: torch.Tensor  # (N_EVAL, d)
    H_eval: torch.Tensor  # (N_EVAL, d // 2)
    rows: torch.Tensor  # (steps, members, batch) row indices: member i's batch at step s, shared by all libraries


def make_data(sh: Shapes, seed: int, device: torch.device, n_train: int = N_TRAIN) -> Data:
    """Rows are sparse non-negative mixtures (about 8 of 4d unit directions) plus noise: SAE-like structure."""
    g = torch.Generator().manual_seed(seed)
    n, n_atoms = n_train + N_EVAL, 4 * sh.d
    atoms = F.normalize(torch.randn(n_atoms, sh.d, generator=g), dim=1)
    coef = (torch.rand(n, n_atoms, generator=g) < 8 / n_atoms) * torch.rand(n, n_atoms, generator=g)
    X = coef @ atoms + 0.05 * torch.randn(n, sh.d, generator=g)
    H = torch.relu(X @ (torch.randn(sh.d, sh.d // 2, generator=g) / sh.d**0.5) + 0.1)
    gens = [torch.Generator().manual_seed(seed * 1000 + 1 + i) for i in range(sh.members)]
    rows = torch.stack([torch.stack([torch.randint(n_train, (sh.batch,), generator=gi) for gi in gens])
                        for _ in range(sh.steps)])
    X, H = X.to(device), H.to(device)
    return Data(X[:n_train], H[:n_train], X[n_train:], H[n_train:], rows.to(device))


def fvu(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over members of squared error / variance of the target; pred (members, n, d), target (n, d)."""
    err = (pred - target).pow(2).sum((1, 2))
    var = (target - target.mean(0)).pow(2).sum()
    return float((err / var).mean())


# ------------------------------------------------------------------ trainers


class Ours:
    """lanic-nb's ensemble, its own data-based init, then the library's ``train_step`` for all members at once."""

    def __init__(self, sh: Shapes, data: Data, lr: float, seed: int, device: torch.device, transcoder: bool,
                 precision: str = "float32"):
        self.transcoder = transcoder
        Y = data.H if transcoder else data.X
        cfg = TranscoderConfig(d_in=sh.d, d_out=Y.shape[1], d_dict=sh.d_dict, k=sh.k, n_members=sh.members,
                               batch_size=sh.batch, steps=sh.steps, lr=lr, warmup_steps=0, seed=seed,
                               encoder_precision=precision)
        self.model = TranscoderEnsemble(cfg).to(device)
        n = sh.members
        self.model.init_biases(data.X.mean(0).expand(n, -1), Y.mean(0).expand(n, -1))
        self.model.init_encoder_scale(data.X[:512].expand(n, -1, -1), Y[:512].expand(n, -1, -1))
        self.opt = make_optimizer(self.model)
        self.model.train()
        self.name = f"lanic-nb transcoder {sh.d}->{Y.shape[1]}" if transcoder else OURS
        if precision != "float32":
            self.name = f"{OURS[:-1]}, {BF16})"

    def step(self, step: int, data: Data, rows: torch.Tensor) -> None:
        x = rows_of(data.X, rows)  # (members, batch, d)
        train_step(self.model, self.opt, x,
                   rows_of(data.H, rows) if self.transcoder else x)  # an SAE's target is its input

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = self.model(x).h_hat  # (members, n, d_out)
        self.model.train()
        return out


@dataclass
class Peer:
    """How to build, train and read one library's single SAE; the loop over members is the same for all."""

    name: str
    build: Callable[[], torch.nn.Module]
    loss: Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor]
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    first_batch: Callable[[torch.nn.Module, torch.Tensor], None] = lambda m, x: None
    after_backward: Callable[[torch.nn.Module], None] = lambda m: None
    after_step: Callable[[torch.nn.Module], None] = lambda m: None


class Loop:
    """A plain Python loop over the members, each with its own model and optimizer (what a user would write)."""

    def __init__(self, peer: Peer, sh: Shapes, lr: float, seed: int, device: torch.device, autocast: bool = False):
        self.peer, self.name, self.autocast, self.device = peer, peer.name, autocast, device
        if autocast:  # what a user of the library can switch on: torch's mixed precision around its steps
            self.name = f"{peer.name}, {AUTOCAST}"
        self.models = []
        for i in range(sh.members):
            torch.manual_seed(seed + i)
            self.models.append(peer.build().to(device).train())
        self.opts = [torch.optim.Adam(m.parameters(), lr=lr, fused=True) for m in self.models]

    def step(self, step: int, data: Data, rows: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            self._step(step, data, rows)

    def _step(self, step: int, data: Data, rows: torch.Tensor) -> None:
        for i, (m, opt) in enumerate(zip(self.models, self.opts, strict=True)):
            x = rows_of(data.X, rows[i])  # (batch, d), gathered as for lanic-nb
            if step == 0:
                self.peer.first_batch(m, x)
            self.peer.loss(m, x, step).backward()
            self.peer.after_backward(m)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.peer.after_step(m)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for m in self.models:
            m.eval()
            outs.append(self.peer.predict(m, x))
            m.train()
        return torch.stack(outs)  # (members, n, d)


def peers(sh: Shapes, device: torch.device, which: list[str]) -> list[Peer]:
    """The peers' single models, built from their public APIs (read from their installed sources)."""
    found = []
    if "sparsify" in which:
        if device.type != "cuda":  # its Triton decoder needs a GPU; the library's own switch picks its eager one
            os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
        from sparsify import SparseCoder, SparseCoderConfig

        def sp_first(m, x):  # sparsify's trainer, first step: b_dec = mean of the targets
            m.b_dec.data = x.mean(0)

        def sp_after_step(m):  # its trainer keeps the decoder at unit norm (normalize_decoder=True)
            m.set_decoder_norm_to_unit_norm()

        found.append(Peer(
            "sparsify SparseCoder loop",
            build=lambda: SparseCoder(sh.d, SparseCoderConfig(num_latents=sh.d_dict, k=sh.k), device=device),
            loss=lambda m, x, s: m(x).fvu,  # its default loss_fn "fvu"; auxk_alpha 0 by default
            predict=lambda m, x: m(x).sae_out,
            first_batch=sp_first,
            after_backward=lambda m: m.remove_gradient_parallel_to_decoder_directions(),
            after_step=sp_after_step,
        ))
    if "overcomplete" in which:
        import matplotlib.cm

        if not hasattr(matplotlib.cm, "get_cmap"):  # its package __init__ calls an API matplotlib 3.9 removed
            matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
        from overcomplete.sae import TopKSAE

        found.append(Peer(
            "overcomplete TopKSAE loop",
            build=lambda: TopKSAE(sh.d, nb_concepts=sh.d_dict, top_k=sh.k, device=str(device)),
            loss=lambda m, x, s: (x - m(x)[2]).square().mean(),  # the criterion of its README
            predict=lambda m, x: m(x)[2],
        ))
    if "saelens" in which:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        def sl_loss(m, x, s):
            return m.training_forward_pass(TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=s, is_logging_step=False)).loss

        found.append(Peer(
            "SAELens TopKTrainingSAE loop",
            build=lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=sh.d, d_sae=sh.d_dict, k=sh.k,
                                                                device=str(device))),
            loss=sl_loss,
            predict=lambda m, x: m(x),
        ))
    return found


# ------------------------------------------------------------------ runs


def train(trainer, data: Data, steps: int) -> None:
    for s in range(steps):
        trainer.step(s, data, data.rows[s % len(data.rows)])


def interleaved(trainers: list, data: Data, sh: Shapes, device: torch.device,
                verbose: bool = False) -> dict[str, float]:
    """Train every trainer sh.steps steps in interleaved chunks; ms per member-step, median over chunks."""
    bounds = [round(sh.steps * c / sh.chunks) for c in range(sh.chunks + 1)]
    per_chunk: dict[str, list[float]] = {t.name: [] for t in trainers}
    for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if b == a:
            continue
        for t in trainers[c % len(trainers):] + trainers[: c % len(trainers)]:
            sync(device)
            t0 = time.perf_counter()
            for s in range(a, b):
                t.step(s, data, data.rows[s])
            sync(device)
            per_chunk[t.name].append((time.perf_counter() - t0) / ((b - a) * sh.members) * 1e3)
            if verbose:
                print(f"    [{sh.name} steps {a}-{b}] {t.name}: {per_chunk[t.name][-1]:.2f} ms/member-step",
                      file=sys.stderr, flush=True)
    return {name: statistics.median(v) for name, v in per_chunk.items()}


@dataclass
class Result:
    name: str
    ms: float  # per member-step, median over the interleaved chunks
    fvu: float  # after sh.steps steps (of its own target: the transcoder's is h, the others' x)
    fvu_eq: float | None = None  # after the steps it completes in lanic-nb's time for the run
    steps_eq: int | None = None
    kind: str = "ours"  # "ours" / "ours bf16" (encoder_precision), "peer" (its float32 default), "peer bf16"
    # (under autocast), "transcoder"

    @property
    def peer(self) -> bool:
        return self.kind == "peer"


def compare(sh: Shapes, lr: float, seed: int, device: torch.device, which: list[str], verbose: bool = False,
            equal_time: bool = True, bf16: bool = True) -> list[Result]:
    """Every library trained on the same data and batches, timed interleaved; lanic-nb first. With ``bf16`` also
    lanic-nb with ``encoder_precision="bfloat16"`` and every peer's loop under torch's bfloat16 autocast.
    Equal time means the time of lanic-nb's fastest row."""
    data = make_data(sh, seed, device)
    found = peers(sh, device, which)
    loops = [Loop(p, sh, lr, seed, device) for p in found]
    cast = [Loop(p, sh, lr, seed, device, autocast=True) for p in found] if bf16 else []
    ours = [Ours(sh, data, lr, seed, device, transcoder=False)]
    if bf16:
        ours.append(Ours(sh, data, lr, seed, device, transcoder=False, precision="bfloat16"))
    tc = Ours(sh, data, lr, seed, device, transcoder=True)
    trainers = [*ours, *loops, *cast, tc]
    ms = interleaved(trainers, data, sh, device, verbose)
    kinds = ({id(t): "ours" for t in ours[:1]} | {id(t): "ours bf16" for t in ours[1:]}
             | {id(t): "peer" for t in loops} | {id(t): "peer bf16" for t in cast})
    res = [Result(t.name, ms[t.name], fvu(t.predict(data.X_eval), data.H_eval if t is tc else data.X_eval),
                  kind=kinds.get(id(t), "transcoder")) for t in trainers]
    best = min((r for r in res if r.kind.startswith("ours")), key=lambda r: r.ms)
    for r, t in zip(res, trainers, strict=True):
        if r.kind.startswith("ours"):
            r.fvu_eq, r.steps_eq = (r.fvu, sh.steps) if r is best else (None, None)
        if r.kind != "peer" or not equal_time:
            continue
        # The steps this loop completes in lanic-nb's time for the whole run, retrained from the same init.
        r.steps_eq = max(1, round(sh.steps * best.ms / r.ms))
        if r.steps_eq == sh.steps:
            r.fvu_eq = r.fvu
        else:
            again = Loop(t.peer, sh, lr, seed, device)
            train(again, data, r.steps_eq)
            r.fvu_eq = fvu(again.predict(data.X_eval), data.X_eval)
    return res


def fastest_peer(res: list[Result], kinds: tuple[str, ...] = ("peer",)) -> float:
    """ms per member-step of the fastest peer loop (by default at its own float32 defaults)."""
    return min((r.ms for r in res if r.kind in kinds), default=float("nan"))


def ours(res: list[Result], precision: str | None = None) -> Result:
    """lanic-nb's fastest SAE row, or its row at one precision."""
    kinds = {None: ("ours", "ours bf16"), "float32": ("ours",), "bfloat16": ("ours bf16",)}[precision]
    return min((r for r in res if r.kind in kinds), key=lambda r: r.ms)


def table(sh: Shapes, lr: float, res: list[Result]) -> list[str]:
    fastest = fastest_peer(res)
    rows = [f"{sh.name}: d {sh.d}, {sh.d_dict} latents, k {sh.k}, batch {sh.batch}, N={sh.members}, "
            f"{sh.steps} steps, Adam lr {lr:g}",
            f"  {'library':48s} {'ms/member-step':>14s} {'vs fastest peer':>16s} {'FVU equal steps':>16s} "
            f"{'FVU equal time (steps)':>23s}"]
    for r in res:
        ratio = fastest / r.ms
        rel = ("fastest peer" if r.peer and r.ms == fastest else
               f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower")
        eq = (f"{r.fvu_eq:.3f} ({r.steps_eq})" if r.fvu_eq is not None else
              "(task: h, not x)" if r.kind == "transcoder" else "-")
        rows.append(f"  {r.name:48s} {r.ms:14.2f} {rel:>16s} {r.fvu:16.3f} {eq:>23s}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["demo", "mimic"], choices=sorted(SHAPES))
    ap.add_argument("--peers", nargs="*", default=["sparsify", "overcomplete", "saelens"],
                    choices=["sparsify", "overcomplete", "saelens"])
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=0, help="override N for every shape (0: the shape's own)")
    ap.add_argument("--steps", type=int, default=0, help="override the steps for every shape (0: the shape's own)")
    ap.add_argument("--verbose", action="store_true", help="print every timed chunk to stderr as it ends")
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16 rows (ours and the peers' autocast)")
    ap.add_argument("--bf16", action="store_true", help="run the bfloat16 rows even where bfloat16 is not native "
                    "(hours on such a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if not args.no_bf16 and not args.bf16 and not low_precision_ok(device):
        print(f"bfloat16 rows left out: {device} does not multiply bfloat16 natively (--bf16 runs them anyway)",
              flush=True)
        args.no_bf16 = True
    t_start = time.perf_counter()
    # One allocator setting for every library in this process, as train_ensemble sets it for lanic-nb's runs.
    kept = keep_freed_memory()
    print(machine_line(), flush=True)
    load0 = os.getloadavg()[0]
    print(f"peers bench on {device}; 1-min load average at start {load0:.1f} (this process uses "
          f"{args.threads} threads; a load above that means other work shares the cores); freed memory kept for "
          f"reuse by every library: {kept} (lanic_nb.device.keep_freed_memory)", flush=True)
    ratios: dict[str, dict[str, float]] = {"f32": {}, "bf16": {}, "best": {}}
    label: dict[str, str] = {}
    for key in args.shapes:
        sh = SHAPES[key]
        if args.members:
            sh = replace(sh, members=args.members)
        if args.steps:
            sh = replace(sh, steps=args.steps, chunks=min(sh.chunks, args.steps))
        res = compare(sh, args.lr, args.seed, device, args.peers, args.verbose, bf16=not args.no_bf16)
        print("\n".join(table(sh, args.lr, res)), flush=True)
        ratios["f32"][sh.name] = fastest_peer(res) / ours(res, "float32").ms
        if not args.no_bf16:
            ratios["bf16"][sh.name] = fastest_peer(res, ("peer", "peer bf16")) / ours(res, "bfloat16").ms
        best = ours(res)
        ratios["best"][sh.name] = fastest_peer(res) / best.ms
        label[sh.name] = BF16 if best.kind == "ours bf16" else "float32"
    print(f"1-min load average at end {os.getloadavg()[0]:.1f}; {time.perf_counter() - t_start:.0f} s in all")

    def line(r: dict[str, float]) -> str:
        return ", ".join(f"{name} {v:.2f}x" for name, v in r.items())

    print(f"all in float32 (lanic-nb and the peers' defaults): {line(ratios['f32'])}")
    if ratios["bf16"]:
        print(f"all with bf16 products (lanic-nb's bf16 encoder product vs the fastest peer loop with or without "
              f"autocast): {line(ratios['bf16'])}")
    print("lanic-nb's fastest row: " + ", ".join(f"{k} {v}" for k, v in label.items()) + "; peers at their defaults")
    print("lanic-nb vs fastest peer: " + line(ratios["best"]))


if __name__ == "__main__":
    main()
