"""topk_codes and the pattern passes built on it against the dense reference (``encode``), in float32 and with
the bfloat16 choice re-ranked exactly (forced on, so every machine runs both paths)."""

from __future__ import annotations

import pytest
import torch

from lanic_nb.patterns.merge import MergeConfig, PatternSet
from lanic_nb.patterns.units import latent_alive, pattern_activations
from lanic_nb.transcoder import inference
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.inference import candidates, dense_codes, topk_codes
from lanic_nb.transcoder.model import TranscoderEnsemble


def ensemble(dict_sizes=None, seed=0) -> TranscoderEnsemble:
    cfg = TranscoderConfig(d_in=48, d_out=32, d_dict=512, n_members=3, k=12, seed=seed, dict_sizes=dict_sizes,
                           input_weight=0.0)
    model = TranscoderEnsemble(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # biases as training leaves them: some latents start far behind, a few negative
        model.b_enc.copy_(0.3 * torch.randn(model.b_enc.shape, generator=g))
        model.b_pre.copy_(0.1 * torch.randn(model.b_pre.shape, generator=g))
    return model.eval()


def rows(n=300, d=48, seed=2) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("low_precision", [False, True])
@pytest.mark.parametrize("dict_sizes", [None, [512, 200, 64]])
def test_topk_codes_equal_dense_codes(low_precision, dict_sizes):
    model, x = ensemble(dict_sizes), rows()
    vals, idx = topk_codes(model, x, low_precision=low_precision)
    assert vals.shape == idx.shape == (3, 300, 12) and vals.dtype == torch.float32
    with torch.no_grad():
        ref = model.encode(x)
    torch.testing.assert_close(dense_codes(vals, idx, 512), ref, rtol=1e-5, atol=1e-5)
    if dict_sizes:  # nothing beyond a member's size fires
        assert not ((idx >= torch.tensor(dict_sizes).view(3, 1, 1)) & (vals > 0)).any()


def test_candidates_band_and_cache_follow_the_weights():
    assert candidates(32, 4096) == 48 and candidates(4, 4096) == 12 and candidates(12, 16) == 16
    model, x = ensemble(), rows()
    topk_codes(model, x, low_precision=True)
    with torch.no_grad():
        model.W_enc.mul_(-1.0)  # an in-place update, as an optimizer step makes: the bfloat16 copy must follow
        ref = model.encode(x)
    vals, idx = topk_codes(model, x, low_precision=True)
    torch.testing.assert_close(dense_codes(vals, idx, 512), ref, rtol=1e-5, atol=1e-5)


def patterns_for(model: TranscoderEnsemble, n_patterns=40, seed=3) -> PatternSet:
    g = torch.Generator().manual_seed(seed)
    lp = torch.randint(-1, n_patterns, (3, 512), generator=g)  # about 1 latent in 41 in no pattern
    return PatternSet(latent_pattern=lp, directions=torch.zeros(n_patterns, 32), consistency=torch.ones(n_patterns),
                      n_latents=torch.ones(n_patterns, dtype=torch.long), config=MergeConfig())


@pytest.mark.parametrize("low_precision", [False, True])
def test_pattern_activations_and_alive_latents_equal_the_dense_reference(low_precision, monkeypatch):
    monkeypatch.setattr(inference, "low_precision_ok", lambda device: low_precision)
    model, x = ensemble(), rows()
    ps = patterns_for(model)
    with torch.no_grad():
        z = model.encode(x)  # (3, rows, 512)
    ref = torch.zeros(len(x), ps.n_patterns, dtype=torch.float64)
    for m in range(3):
        for j in range(512):
            if ps.latent_pattern[m, j] >= 0:
                ref[:, ps.latent_pattern[m, j]] += z[m, :, j].double()
    got = pattern_activations(model, ps, x, batch_size=64)
    torch.testing.assert_close(got.double(), ref / 3, rtol=1e-5, atol=1e-5)
    assert torch.equal(latent_alive(model, x, batch_size=64), (z > 0).any(1))
