"""Merging an ensemble's latents into patterns (planted decoders), and what a pattern does (units)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from helpers import plant_codes, plant_decoders

from lanic_nb.classify.model import ClassifierConfig, DiagnosticClassifier
from lanic_nb.manifest import FINDINGS
from lanic_nb.patterns.merge import MergeConfig, PatternSet, merge_latents
from lanic_nb.patterns.units import (
    baseline_units,
    latent_alive,
    latent_codes,
    logit_effects,
    pattern_activations,
    pattern_stats,
)
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble


def _pure_and_complete(ps: PatternSet, truth: torch.Tensor) -> None:
    """Every planted direction is exactly one pattern, holding all its latents and nothing else."""
    lp = ps.latent_pattern.reshape(-1)
    tr = truth.reshape(-1)
    for t in torch.unique(tr[tr >= 0]).tolist():
        got = lp[tr == t]
        assert (got >= 0).all() and (got == got[0]).all(), f"planted direction {t} split or dropped: {got}"
        assert (tr[lp == got[0]] == t).all(), f"pattern {int(got[0])} mixes planted directions"


@pytest.mark.parametrize("n_cells", [1, 4])
def test_merge_joins_noisy_copies_and_separates_distinct(n_cells):
    W, truth = plant_decoders(n_members=6, d_dict=40, d_out=64, n_true=12, share=1.0, noise=0.2, seed=1)
    ps = merge_latents(W, MergeConfig(sim_threshold=0.8, min_consistency=0.5, n_cells=n_cells))
    assert ps.n_patterns == 12  # the 6 x 28 random member-specific latents never reach 3 members
    _pure_and_complete(ps, truth)
    assert torch.allclose(ps.consistency, torch.ones(12))
    # The canonical direction is close to the planted one.
    true_dirs = torch.stack([F.normalize(W.reshape(-1, 64)[truth.reshape(-1) == t].mean(0), dim=0) for t in range(12)])
    cos = (ps.directions @ true_dirs.T).max(dim=1).values
    assert (cos > 0.99).all()


def test_merge_at_scale_with_partial_sharing():
    W, truth = plant_decoders(n_members=10, d_dict=256, d_out=32, n_true=150, share=0.7, noise=0.2, seed=2)
    ps = merge_latents(W, MergeConfig(sim_threshold=0.85, min_consistency=0.3))
    _pure_and_complete(ps, truth)
    for p in range(ps.n_patterns):
        t = int(truth.reshape(-1)[ps.latent_pattern.reshape(-1) == p][0])
        assert ps.consistency[p] == pytest.approx((truth == t).any(dim=1).float().mean().item())


def test_consistency_exact_and_one_latent_per_member():
    q = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0))).Q.T  # orthonormal rows
    a, b, c, fillers = q[0], q[1], q[2], q[3:]
    W = fillers[:20].reshape(4, 5, 32).clone()  # every other latent: its own orthogonal direction
    W[0, 0] = W[1, 3] = W[2, 1] = a  # a in 3 of 4 members
    W[0, 4] = F.normalize(a + 0.05 * b, dim=0)  # a second copy of a in member 0: must not join a's pattern
    for m, j in enumerate((1, 0, 2, 4)):
        W[m, j] = b  # b in all 4 members
    W[3, 0] = c  # c in one member only
    ps = merge_latents(W, MergeConfig(sim_threshold=0.95, min_consistency=0.5))
    pa, pb = int(ps.latent_pattern[1, 3]), int(ps.latent_pattern[0, 1])
    assert ps.n_patterns == 2 and {pa, pb} == {0, 1}
    assert ps.consistency[pb].item() == 1.0 and ps.consistency[pa].item() == 0.75
    assert int(ps.n_latents[pa]) == 3 and int(ps.n_latents[pb]) == 4
    assert sorted(ps.members_of(pa)) == [(0, 0), (1, 3), (2, 1)]
    assert int(ps.latent_pattern[0, 4]) == -1  # the duplicate in member 0 is left out
    assert int(ps.latent_pattern[3, 0]) == -1  # c: consistency 0.25 < 0.5, dropped
    assert torch.allclose(ps.directions[pb], b, atol=1e-6)


def test_dead_latents_are_not_merged():
    W, truth = plant_decoders(n_members=4, d_dict=20, d_out=32, n_true=5, share=1.0, noise=0.1, seed=3)
    alive = torch.ones(4, 20, dtype=torch.bool)
    alive[0] = False
    ps = merge_latents(W, MergeConfig(sim_threshold=0.8, min_consistency=0.5), alive=alive)
    assert (ps.latent_pattern[0] == -1).all()
    assert torch.allclose(ps.consistency, torch.full((5,), 0.75))


def test_save_load_roundtrip(tmp_path):
    W, _ = plant_decoders(n_members=4, d_dict=16, d_out=16, n_true=4, share=1.0, noise=0.1, seed=4)
    ps = merge_latents(W, MergeConfig(sim_threshold=0.8, min_consistency=0.75))
    ps.save(tmp_path)
    back = PatternSet.load(tmp_path)
    assert torch.equal(back.latent_pattern, ps.latent_pattern)
    assert torch.equal(back.directions, ps.directions) and torch.equal(back.consistency, ps.consistency)
    assert back.config == ps.config


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="sim_threshold"):
        MergeConfig(sim_threshold=1.5)
    with pytest.raises(ValueError, match="min_consistency"):
        MergeConfig(min_consistency=-0.1)
    with pytest.raises(ValueError, match="n_neighbors"):
        MergeConfig(n_neighbors=0)
    with pytest.raises(ValueError, match="act_threshold"):
        MergeConfig(act_threshold=-0.2)


def test_same_direction_with_disjoint_activations_is_not_merged_when_codes_are_used():
    """Four members write direction a; members 0-1 fire on rows 0-9, members 2-3 on rows 10-19. By direction
    alone that is one pattern of 4; with the activation test it is two patterns of 2."""
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(7))).Q.T
    W = q[1:13].reshape(4, 3, 16).clone()  # fillers: orthogonal, never merged
    W[:, 0] = q[0]
    codes = torch.zeros(4, 20, 3)  # (n_members, n_rows, d_dict)
    codes[:2, :10, 0] = torch.rand(2, 10) + 0.5
    codes[2:, 10:, 0] = torch.rand(2, 10) + 0.5
    codes[:, :, 1:] = torch.rand(4, 20, 2)  # fillers fire everywhere (they co-fire, but never share a direction)
    cfg = MergeConfig(sim_threshold=0.9, min_consistency=0.5, act_threshold=0.5)
    by_direction = merge_latents(W, MergeConfig(sim_threshold=0.9, min_consistency=0.5, act_threshold=0.0), codes=codes)
    assert by_direction.n_patterns == 1 and (by_direction.latent_pattern[:, 0] == 0).all()
    assert torch.equal(merge_latents(W, cfg).latent_pattern, by_direction.latent_pattern)  # no codes: directions only
    ps = merge_latents(W, cfg, codes=codes)
    p = ps.latent_pattern[:, 0]
    assert ps.n_patterns == 2 and p[0] == p[1] and p[2] == p[3] and p[0] != p[2] and (p >= 0).all()
    assert torch.allclose(ps.consistency, torch.full((2,), 0.5))
    # Given as a sparse (n_members * d_dict, n_rows) matrix, the codes mean the same.
    flat = sp.csr_matrix(codes.permute(0, 2, 1).reshape(12, 20).numpy())
    assert torch.equal(merge_latents(W, cfg, codes=flat).latent_pattern, ps.latent_pattern)


def test_merge_with_planted_codes_is_pure_and_complete():
    W, truth = plant_decoders(n_members=8, d_dict=64, d_out=32, n_true=30, share=0.8, noise=0.2, seed=8)
    codes = plant_codes(truth, n_rows=400, fire=0.05, seed=8)
    ps = merge_latents(W, MergeConfig(sim_threshold=0.5, act_threshold=0.5, min_consistency=0.4), codes=codes)
    _pure_and_complete(ps, truth)
    assert ps.n_patterns == len(torch.unique(truth[truth >= 0]))


def test_latent_codes_are_the_ensemble_codes_on_a_sample():
    ens = _tiny_ensemble()
    x = torch.randn(30, 8)
    codes = latent_codes(ens, x, n_rows=10, seed=1)
    assert codes.shape == (3 * 12, 10)
    pick = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:10].sort().values
    z = ens.encode(x[pick])  # (n_members, 10, d_dict)
    assert np.allclose(codes.toarray(), z.detach().permute(0, 2, 1).reshape(36, 10).numpy(), atol=1e-6)


def _tiny_ensemble(n_members=3, d_dict=12):
    cfg = TranscoderConfig(d_in=8, d_out=6, d_dict=d_dict, n_members=n_members, k=3)
    return TranscoderEnsemble(cfg)


def test_pattern_activations_are_member_sums_over_n_members():
    ens = _tiny_ensemble()
    lp = torch.full((3, 12), -1, dtype=torch.long)
    lp[0, 1] = lp[1, 5] = lp[2, 7] = 0
    lp[0, 2] = lp[2, 3] = 1
    ps = PatternSet(lp, torch.eye(2, 6), torch.tensor([1.0, 2 / 3]), torch.tensor([3, 2]), MergeConfig())
    x = torch.randn(10, 8)
    act = pattern_activations(ens, ps, x, batch_size=4)
    z = ens.encode(x)  # (n_members, batch, d_dict)
    assert torch.allclose(act[:, 0], (z[0, :, 1] + z[1, :, 5] + z[2, :, 7]) / 3, atol=1e-6)
    assert torch.allclose(act[:, 1], (z[0, :, 2] + z[2, :, 3]) / 3, atol=1e-6)
    alive = latent_alive(ens, x)
    assert torch.equal(alive, (z > 0).any(dim=1))


def test_pattern_stats_and_logit_effects():
    act = np.zeros((10, 2), np.float32)
    act[[2, 5, 7], 0] = [1.0, 3.0, 2.0]
    stats = pattern_stats(act, image_ids=np.array([f"im{i}" for i in range(10)]), k_top=2, n_quantiles=3)
    assert stats.loc[0, "firing_freq"] == pytest.approx(0.3)
    assert stats.loc[0, "top_images"] == ["im5", "im7"]
    assert stats.loc[0, "quantile_images"] == ["im2", "im7", "im5"]
    assert stats.loc[1, "top_images"] == [] and stats.loc[1, "firing_freq"] == 0
    clf = DiagnosticClassifier(ClassifierConfig(d_in=8, hidden=6))
    dirs = F.normalize(torch.randn(2, 6), dim=1)
    ps = PatternSet(torch.zeros(1, 2, dtype=torch.long), dirs, torch.ones(2), torch.ones(2, dtype=torch.long),
                    MergeConfig())
    eff = logit_effects(clf, ps, FINDINGS)
    assert list(eff.columns) == [f"effect_{f}" for f in FINDINGS]
    expect = clf.fc2.weight.detach() @ dirs.T  # (5, 2)
    assert np.allclose(eff.to_numpy(), expect.T.numpy(), atol=1e-6)


def test_no_alive_latents_gives_no_patterns():
    W, _ = plant_decoders(n_members=2, d_dict=4, d_out=8, n_true=2, seed=5)
    ps = merge_latents(W, MergeConfig(), alive=torch.zeros(2, 4, dtype=torch.bool))
    assert ps.n_patterns == 0 and (ps.latent_pattern == -1).all()


def test_a_bridging_latent_does_not_chain_two_patterns():
    """a and b (cosine 0.7) are distinct; member 0's latent halfway between links to both above threshold.
    Plain connected components would fuse them; the one-latent-per-member rule keeps them apart."""
    g = torch.Generator().manual_seed(6)
    q = torch.linalg.qr(torch.randn(32, 32, generator=g)).Q.T
    a = q[0]
    b = 0.7 * q[0] + (1 - 0.7**2) ** 0.5 * q[1]
    W = q[2:26].reshape(6, 4, 32).clone()  # orthogonal fillers
    for m in range(6):
        W[m, 0] = F.normalize(a + 0.03 * torch.randn(32, generator=g), dim=0)
        W[m, 1] = F.normalize(b + 0.03 * torch.randn(32, generator=g), dim=0)
    W[0, 2] = F.normalize(a + b, dim=0)  # the bridge: cosine ~0.92 to both
    ps = merge_latents(W, MergeConfig(sim_threshold=0.8, min_consistency=0.5))
    pa, pb = ps.latent_pattern[:, 0], ps.latent_pattern[:, 1]
    assert (pa == pa[0]).all() and (pb == pb[0]).all() and pa[0] != pb[0] and pa[0] >= 0 and pb[0] >= 0
    assert ps.n_patterns == 2 and int(ps.latent_pattern[0, 2]) == -1


def test_baseline_units_are_one_members_codes_and_both_signs_of_the_embedding():
    ens = _tiny_ensemble()
    x = torch.randn(9, 8)
    units = baseline_units(ens, x, member=1)
    assert np.allclose(units["single transcoder"], ens.encode(x)[1].detach().numpy(), atol=1e-6)
    assert np.array_equal(units["embedding dims"], np.concatenate([x.numpy(), -x.numpy()], axis=1))


def test_merge_on_features_separates_what_w_dec_confuses():
    """Two features with the same decoder direction in h (faint devices) but different input parts: merged by W_dec
    alone the patterns mix them (one latent per member each, either feature); merged on the whole rows (``features``)
    each pattern is one feature, and the directions still average W_dec."""
    g = torch.Generator().manual_seed(0)
    n_members, d_out, d_in = 6, 16, 24
    shared = F.normalize(torch.randn(d_out, generator=g), dim=0)
    parts = F.normalize(torch.randn(2, d_in, generator=g), dim=1)
    W = shared.expand(n_members, 2, d_out) + 0.05 * torch.randn(n_members, 2, d_out, generator=g)
    feats = torch.cat([W, parts.expand(n_members, 2, d_in) + 0.05 * torch.randn(n_members, 2, d_in, generator=g)], -1)
    cfg = MergeConfig(sim_threshold=0.8, min_consistency=0.5, act_threshold=0.0)
    one = merge_latents(W, cfg)
    two = merge_latents(W, cfg, features=feats)
    lp1, lp2 = one.latent_pattern, two.latent_pattern
    assert not ((lp1[:, 0] == lp1[0, 0]).all() and (lp1[:, 1] == lp1[0, 1]).all())  # mixed
    assert two.n_patterns == 2 and (lp2[:, 0] == lp2[0, 0]).all() and (lp2[:, 1] == lp2[0, 1]).all()
    assert lp2[0, 0] != lp2[0, 1]
    assert two.directions.shape == (2, d_out) and (two.directions @ shared > 0.99).all()
    with pytest.raises(ValueError, match="features"):
        merge_latents(W, cfg, features=feats[:, :1])
