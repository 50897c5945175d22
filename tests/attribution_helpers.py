"""Tiny real models and a tiny run directory for the attribution and gallery tests (random weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from embed_helpers import tiny_encoder, tiny_manifest

from lanic_nb.classify import ClassifierConfig, DiagnosticClassifier, save_classifier
from lanic_nb.embed.store import embed_manifest
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble


def tiny_models(d_in=12, hidden=10, d_dict=24, n_members=3, k=5, activation="topk", seed=0):
    """A random classifier and ensemble with every bias non-zero, so a dropped term shows."""
    g = torch.Generator().manual_seed(seed)
    clf = DiagnosticClassifier(ClassifierConfig(d_in=d_in, hidden=hidden, dropout=0.5))
    ens = TranscoderEnsemble(TranscoderConfig(d_in=d_in, d_out=hidden, d_dict=d_dict, n_members=n_members, k=k,
                                              activation=activation, seed=seed))
    with torch.no_grad():
        for p in list(clf.parameters()) + list(ens.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return clf.eval(), ens.eval()


def tiny_patterns(n_members, d_dict, n_patterns, seed=0):
    """A random latent -> pattern map (-1: no pattern) in which every pattern has members."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.randint(-1, n_patterns, (n_members, d_dict), generator=g)
    lp[:, :n_patterns] = torch.arange(n_patterns)
    return lp


def make_tiny_run(root: Path, n_images: int = 12) -> Path:
    """A run directory written by the real stages: manifest, embeddings, classifier, ensemble, patterns.

    Weights are random (no training): this checks the wiring from files to tables and views, not the
    science. The dataset is "tiny" (not the phantom): no ground truth, no planted shortcut.
    """
    rd = RunDir(root)
    manifest = tiny_manifest(rd.data, n=n_images)
    store = embed_manifest(root, tiny_encoder(root / "clip"), manifest, batch_size=4)
    d_in = store.image.shape[1]
    torch.manual_seed(0)
    cfg = ClassifierConfig(d_in=d_in, hidden=8)
    save_classifier(DiagnosticClassifier(cfg).eval(), cfg, rd.classifier)
    ens = TranscoderEnsemble(TranscoderConfig(d_in=d_in, d_out=8, d_dict=16, n_members=3, k=4))
    with torch.no_grad():
        ens.W_dec.copy_(ens.W_dec[:1].expand_as(ens.W_dec) + 0.01 * torch.randn_like(ens.W_dec))
    ens.save(rd.transcoders)
    merge_latents(ens.W_dec.detach(), MergeConfig(sim_threshold=0.9, min_consistency=0.5)).save(rd.patterns)
    return root


def config_defaults(config_class) -> dict:
    """Field name -> default of a stage's config dataclass."""
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(config_class)}

