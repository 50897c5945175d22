"""A MIMIC-scale dry run of every stage on synthetic data: 377,110 x 512 embeddings -> classifier -> ensemble of
100 x 4,096 transcoders -> merge -> annotation -> attribution of 10,000 images -> HTML gallery; then a check
that the patterns found the planted directions. Not part of `make test` (34-52 min at full scale on 2 CPU cores).

Data (bench/scale_data.py): K=64 known unit directions in R^512, each row a sparse non-negative combination
of them plus noise, L2-normalized, written as the library's own embedding store (memory-mapped) in a work
folder; five findings from a known rule of ten of the directions, with flipped, uncertain and missing labels.
Every stage calls the library's own functions, the same ones its notebook stage calls, with the MIMIC
parameters of notebooks/params/mimic_biomedclip.yaml where they apply (except the classifier's width, 256
as in the paper, and the transcoders' steps and batch, a few hundred steps at 256). One line per stage:
wall seconds, the process's peak RSS so far (resource.getrusage) and the largest arrays it held; then one
summary line.

    .venv/bin/python bench/scale.py                                   # full scale: ~52 min on 2 CPU cores
    .venv/bin/python bench/scale.py --alive-rows 20000                # 34 min measured: one full encode pass fewer
    .venv/bin/python bench/scale.py --fraction 0.01 --members 4       # quick check: ~3,771 rows, minutes
    .venv/bin/python bench/scale.py --work /data/scale --keep         # keep the run folder (gallery.html)

At N=100 x 4,096 every pass of the ensemble's encoder over all 377,110 rows costs ~160 TFLOP (about 17 min on
2 cores with the latents chosen from a bfloat16 product, ``lanic_nb.transcoder.inference``); the run makes two
(which latents are alive, as notebook 04 decides it; the patterns' activations), so those two dominate, beside
the few hundred training steps.

Annotation contrasts each pattern's images with their silent look-alikes as notebook 04 did when this was
measured (`contrast_neighbors` 10, the default here; notebook 04 now uses 20): each pattern searches all rows'
embeddings, about 1-3 s per pattern at 377k rows on 2 cores (a few hundred patterns: minutes); `--contrast 0`
turns it off. Left out: the transcoders' checkpoints (they would write ~5 GB of weights and Adam moments every
`checkpoint_every` steps).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lanic_nb.artifacts import PATTERN_TABLE
from lanic_nb.attribute.core import attribute, patterns_for_mass
from lanic_nb.classify.model import (
    ClassifierConfig,
    hidden_targets,
    predict_logits,
    save_classifier,
    train_classifier,
)
from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units, concept_similarity
from lanic_nb.device import machine_line
from lanic_nb.gallery.data import GalleryData
from lanic_nb.gallery.html import export_html
from lanic_nb.io import write_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import auroc_matrix, mean_auroc
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.patterns.stage import assemble_pattern_table
from lanic_nb.patterns.units import (
    latent_alive,
    latent_codes,
    logit_effects,
    pattern_activations,
    pattern_stats,
)
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder import fused
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.train import train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import concept_vocabulary, write_embedding_store, write_thumbnails  # noqa: E402

GIB = 2**30
ROWS_PER_CALL = 16384  # rows per pattern_activations / similarity call: bounds their temporaries


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "data") and hasattr(obj, "indices"):  # scipy sparse
        return obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes
    return int(obj.nbytes)


class Stages:
    """Times each stage and prints its line: seconds, peak RSS, the largest arrays, its own figures."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.arrays: dict[str, int] = {}

    def track(self, name: str, obj) -> None:
        self.arrays[name] = nbytes(obj)

    @contextmanager
    def stage(self, name: str):
        self.arrays, figures = {}, {}
        t0 = time.perf_counter()
        yield figures
        dt = self.seconds[name] = time.perf_counter() - t0
        big = sorted(self.arrays.items(), key=lambda kv: -kv[1])[:3]
        arrays = ", ".join(f"{k} {v / GIB:.2f}" for k, v in big)
        extra = "; ".join(f"{k} {v}" for k, v in figures.items())
        print(f"[{name}] {dt:.1f} s; peak RSS {peak_rss_gib():.2f} GiB; largest arrays (GiB): {arrays}; {extra}",
              flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", help="work folder (default: a temporary folder, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep a temporary work folder")
    p.add_argument("--rows", type=int, default=377_110, help="embedding rows (MIMIC-CXR-JPG: 377,110)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="scale rows, test/val images and the truth sample down (quick check: 0.01)")
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--d-dict", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=300, help="transcoder steps (batch 256 per member)")
    p.add_argument("--epochs", type=int, default=2, help="classifier epochs")
    p.add_argument("--dirs", type=int, default=64, help="planted directions K")
    p.add_argument("--distractors", type=int, default=448, help="concepts at random directions")
    p.add_argument("--min-consistency", type=float, default=0.25, help="as notebook 04 (25 of 100 members)")
    p.add_argument("--act-rows", type=int, default=8192, help="rows of the merge's co-firing test (MIMIC params)")
    p.add_argument("--alive-rows", type=int, default=0, help="rows that decide which latents are alive (0: all)")
    p.add_argument("--contrast", type=int, default=10, help="annotation contrast_neighbors (notebook 04: 20; 0: off)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("LANIC_PROGRESS", "0")  # one line per stage, no progress bars
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line(), flush=True)
    n = max(1000, round(a.rows * a.fraction))
    n_test, n_val = max(100, round(10_000 * a.fraction)), max(200, round(3_000 * a.fraction))
    n_truth = min(n, max(2000, round(20_000 * a.fraction)))
    temp = a.work is None
    work = Path(tempfile.mkdtemp(prefix="lanic_scale_")) if temp else Path(a.work)
    run = RunDir(work / "run")
    dim, hidden = 512, 256
    print(f"scale: {n:,} rows x {dim}, K={a.dirs} planted directions; {a.members} members x {a.d_dict} latents, "
          f"k={a.k}, {a.steps} steps of 256; attribution/HTML on {n_test:,} test images; work {work}", flush=True)
    st = Stages()
    try:
        summary = run_all(a, st, run, n, n_val, n_test, n_truth, dim, hidden)
    finally:
        if temp and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = sum(st.seconds.values())
    per = ", ".join(f"{k} {v:.0f}" for k, v in st.seconds.items())
    print(f"scale summary: {n:,} rows, {a.members}x{a.d_dict} latents; seconds: {per}; total {total:.0f} s; "
          f"peak RSS {peak_rss_gib():.2f} GiB ({'within' if peak_rss_gib() <= 24 else 'OVER'} 24 GiB); {summary}",
          flush=True)


def run_all(a, st: Stages, run: RunDir, n: int, n_val: int, n_test: int, n_truth: int, dim: int,
            hidden: int) -> str:
    with st.stage("data") as fig:
        x, truth = write_embedding_store(run, n, dim, a.dirs, n_val, n_test, seed=a.seed)
        st.track("embeddings (memmap)", x)
        st.track("planted activity", truth.active)
        fig["on disk GiB"] = f"{sum(f.stat().st_size for f in run.root.rglob('*') if f.is_file()) / GIB:.2f}"
        fig["directions active per row"] = f"{truth.active.sum(1).mean():.1f}"
        fig["labelled (1/0)"] = f"{np.isin(truth.labels, (0.0, 1.0)).mean():.0%}"
    xt = torch.from_numpy(x)  # (n, dim), memory-mapped
    split = truth.split

    with st.stage("classifier") as fig:
        ccfg = ClassifierConfig(d_in=dim, hidden=hidden, max_epochs=a.epochs, patience=a.epochs, seed=a.seed)
        clf, _ = train_classifier(ccfg, x, truth.labels, split)
        te = np.flatnonzero(split == "test")
        fig["test mean AUROC"] = f"{mean_auroc(truth.labels[te], predict_logits(clf, x[te])):.3f}"
        H = hidden_targets(clf, x, "cpu")  # (n, hidden)
        st.track("hidden targets", H)

    with st.stage("ensemble") as fig:
        tr = torch.from_numpy(split == "train")
        x_tr, h_tr = xt[tr], H[tr]
        del H
        st.track("train x", x_tr)
        st.track("train h", h_tr)
        tcfg = TranscoderConfig(d_in=dim, d_out=hidden, d_dict=a.d_dict, n_members=a.members, k=a.k,
                                activation="topk", steps=a.steps, batch_size=256, seed=a.seed)
        t0 = time.perf_counter()
        ens, log = train_ensemble(tcfg, x_tr, h_tr, "cpu", checkpoint_dir=None, progress=False)
        fig["s/step (with init)"] = f"{(time.perf_counter() - t0) / a.steps:.2f}"
        del x_tr, h_tr
        n_par = sum(p.numel() for p in ens.parameters())
        # On CPU at these widths the update is fused (lanic_nb.transcoder.fused): W_enc and W_dec get no gradients.
        fused_on = tcfg.d_dict * max(tcfg.d_in, tcfg.d_out) >= fused.FUSED_MIN_WEIGHTS
        n_grad = n_par - (ens.W_enc.numel() + ens.W_dec.numel()) * fused_on
        st.arrays["training state (weights, 2 Adam moments, gradients)"] = (3 * n_par + n_grad) * 4
        last = log.iloc[-1]
        fig["final batch FVU"] = f"{last.fvu:.3f}"
        fig["L0"] = f"{last.l0:.1f}"
        fig["dead"] = f"{last.dead:.0%}"

    with st.stage("merge") as fig:
        alive_x = xt if not a.alive_rows else xt[torch.randperm(n, generator=torch.Generator().manual_seed(1))
                                                   [: a.alive_rows].sort().values]
        t0 = time.perf_counter()
        alive = latent_alive(ens, alive_x)
        t1 = time.perf_counter()
        codes = latent_codes(ens, xt, n_rows=min(a.act_rows, n), seed=a.seed)
        st.track("co-firing codes (sparse)", codes)
        st.track("decoder directions", ens.W_dec)
        mcfg = MergeConfig(sim_threshold=0.5, act_threshold=0.5, min_consistency=a.min_consistency, n_neighbors=8)
        t2 = time.perf_counter()
        ps = merge_latents(ens.W_dec, mcfg, alive=alive, codes=codes)
        fig["s alive/codes/merge"] = f"{t1 - t0:.1f}/{t2 - t1:.1f}/{time.perf_counter() - t2:.1f}"
        del codes
        fig["alive latents"] = f"{int(alive.sum()):,} of {alive.numel():,}"
        fig["patterns"] = f"{ps.n_patterns:,}"
        fig["mean consistency"] = f"{float(ps.consistency.mean()) if ps.n_patterns else 0:.2f}"

    with st.stage("annotation") as fig:
        # Fortran order: every per-pattern pass below (stats, representative images) reads one column.
        t = [time.perf_counter()]
        act = np.empty((n, ps.n_patterns), dtype=np.float32, order="F")
        for s in range(0, n, ROWS_PER_CALL):
            act[s : s + ROWS_PER_CALL] = pattern_activations(ens, ps, xt[s : s + ROWS_PER_CALL]).numpy()
        st.track("pattern activations", act)
        t.append(time.perf_counter())
        ids = np.char.mod("syn%06d", np.arange(n))
        stats = pattern_stats(act, ids, k_top=20, n_quantiles=5)
        t.append(time.perf_counter())
        effects = logit_effects(clf, ps, FINDINGS)
        vocab, concept_emb, template_emb = concept_vocabulary(truth, a.distractors, seed=a.seed)
        sim = np.empty((n, len(vocab)), dtype=np.float32)
        for s in range(0, n, ROWS_PER_CALL):
            sim[s : s + ROWS_PER_CALL] = concept_similarity(xt[s : s + ROWS_PER_CALL], concept_emb, template_emb)
        st.track("concept similarity", sim)
        acfg = AnnotationConfig(contrast_neighbors=a.contrast)  # notebook 04's other settings are the defaults
        t.append(time.perf_counter())
        ann = annotate_units(act, sim, vocab, acfg, embeddings=x if a.contrast else None)
        t.append(time.perf_counter())
        del sim
        fig["s activations/stats/similarity/annotate"] = "/".join(f"{t1 - t0:.1f}"
                                                                 for t0, t1 in zip(t, t[1:], strict=False))
        table = assemble_pattern_table(ps, stats, effects, ann)
        fig["concepts"] = len(vocab)
        fig["contrast_neighbors"] = a.contrast
        fig["categorized"] = f"{(table['category'].fillna('') != '').mean():.0%}"

    with st.stage("attribution") as fig:
        attr = attribute(clf, ens, ps.latent_pattern, ps.n_patterns, xt[torch.from_numpy(te)], batch_size=256)
        st.track("contributions (float64)", attr.contributions)
        st.track("activations (float64)", attr.activations)
        fig["images"] = f"{len(te):,}"
        fig["identity error"] = f"{attr.identity_error():.1e}"
        fig["patterns for 90% (median)"] = f"{patterns_for_mass(attr.contributions).float().median().item():.0f}"
        del attr

    with st.stage("html") as fig:
        write_thumbnails(run)
        save_classifier(clf, ccfg, run.classifier)
        ens.save(run.transcoders)
        ps.save(run.patterns)
        write_table(run.patterns / PATTERN_TABLE, table)
        del ens
        data = GalleryData.from_run(run.root, split="test", device="cpu")  # attributes the test images again
        st.track("gallery contributions (float64)", data.attribution.contributions)
        out = export_html(run.root, data=data,
                          title="lanic-nb scale dry run (synthetic embeddings, phantom thumbnails)")
        page = out.read_text(encoding="utf-8")
        fig["image cards"] = page.count("class='card image-card'")
        fig["pattern cards"] = page.count("class='card pattern-card'")
        fig["html kB"] = f"{out.stat().st_size / 1024:.0f}"
        del data

    with st.stage("truth") as fig:
        pick = np.sort(np.random.default_rng([a.seed, 3]).permutation(n)[:n_truth])
        y = truth.active[pick]
        auc = auroc_matrix(act[pick], y) if ps.n_patterns else np.full((1, a.dirs), 0.5)  # (n_patterns, K)
        best, arg = np.nanmax(auc, axis=0), np.nanargmax(auc, axis=0)
        found = best >= 0.95
        named = int(sum(table["concept_1"].iloc[arg[k]] == vocab["concept"].iloc[k] for k in np.flatnonzero(found)))
        xs = x[pick]
        raw = np.nanmax(auroc_matrix(np.concatenate([xs, -xs], axis=1), y), axis=0)
        fig["recovered (best pattern AUROC >= 0.95)"] = f"{int(found.sum())}/{a.dirs}"
        fig["best AUROC min/median"] = f"{best.min():.3f}/{np.median(best):.3f}"
        fig["named by their own concept"] = f"{named}/{int(found.sum())}"
        fig["raw embedding dims recover"] = f"{int((raw >= 0.95).sum())}/{a.dirs}"
        fig["sample"] = f"{n_truth:,} rows"
    return f"recovered {int(found.sum())}/{a.dirs} planted directions (AUROC >= 0.95), {named} named by their concept"


if __name__ == "__main__":
    main()
