"""TranscoderConfig.input_weight: members trained on [h, x * scale] and cut back to the transcoder x -> h."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import train_ensemble, widened_target


def _data(n=3000, d=16, n_dirs=8, seed=0):
    """x: sparse non-negative mixtures of n_dirs orthonormal directions; h reads only the first two of them."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:n_dirs]  # (n_dirs, d)
    coef = torch.rand(n, n_dirs, generator=g) * (torch.rand(n, n_dirs, generator=g) < 0.25)
    X = coef @ dirs + 0.01 * torch.randn(n, d, generator=g)
    A = torch.zeros(12, d)
    A[:6] = 3.0 * dirs[0]
    A[6:] = 3.0 * dirs[1]
    return X, torch.relu(X @ A.T), coef


def test_keep_outputs_is_the_first_columns_exactly():
    wide = TranscoderEnsemble(TranscoderConfig(d_in=8, d_out=20, d_dict=32, k=4, n_members=3))
    with torch.no_grad():
        for p in wide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cfg = TranscoderConfig(d_in=8, d_out=12, d_dict=32, k=4, n_members=3)
    kept = wide.keep_outputs(cfg)
    x = torch.randn(10, 8)
    assert kept.cfg.d_out == 12 and kept.W_dec.shape == (3, 32, 12)
    torch.testing.assert_close(kept(x).h_hat, wide(x).h_hat[..., :12], rtol=0, atol=0)
    torch.testing.assert_close(kept.encode(x), wide.encode(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="smaller d_out"):
        wide.keep_outputs(TranscoderConfig(d_in=8, d_out=12, d_dict=64, k=4, n_members=3))


def test_widened_target_weighs_x_like_h():
    X, H, _ = _data()
    cfg = TranscoderConfig(d_in=16, d_out=12, input_weight=1.0)
    wide, T = widened_target(cfg, X, H)
    assert wide.d_out == 28 and T.shape == (3000, 28) and torch.equal(T[:, :12], H)
    assert T[:, 12:].var(0).sum() == pytest.approx(H.var(0).sum().item(), rel=1e-4)


def test_input_weight_gives_directions_h_ignores_latents_of_their_own():
    """The transcoder alone has no reason to spend a latent on a direction h never reads; with input_weight it does."""
    X, H, coef = _data()
    best = {}
    for w in (0.0, 1.0):
        cfg = TranscoderConfig(d_in=16, d_out=12, d_dict=16, k=3, n_members=2, steps=600, batch_size=128, lr=3e-3,
                               input_weight=w)
        model, log = train_ensemble(cfg, X, H, progress=False)
        assert model.cfg.d_out == 12 and model.cfg.input_weight == w  # always the transcoder x -> h
        z = model.encode(X).detach()  # (2, n, 16)
        ignored = coef[:, 2:].numpy()  # the 6 directions h does not read (never all zero)
        with np.errstate(invalid="ignore", divide="ignore"):  # latents that never fire have no correlation
            corr = np.corrcoef(np.concatenate([z[0].numpy(), ignored], 1).T)[:16, 16:]
        best[w] = np.nan_to_num(corr).max(0)  # per ignored direction, its best latent in member 0
        fvu = ((model(X).h_hat - H).pow(2).sum(-1).mean(-1) / H.var(0, correction=0).sum())
        assert (fvu < 0.1).all()  # h is still reconstructed either way
    # Measured: mean best correlation 0.79 with input_weight, 0.30 without.
    assert best[1.0].mean() > 0.65 and best[0.0].mean() < 0.45, best


def test_input_decoder_is_the_rest_of_each_trained_decoder_row(tmp_path):
    """With input_weight the returned transcoder keeps the decoder's input part beside it: [W_dec, input part] is
    the trained (unit-norm) decoder row; the stage writes it for the merge, and removes a stale one without it."""
    from lanic_nb.artifacts import INPUT_DECODER, merge_features, save_input_decoder

    X, H, _ = _data(n=400)
    cfg = TranscoderConfig(d_in=16, d_out=12, d_dict=16, k=3, n_members=2, steps=20, batch_size=64, input_weight=1.0)
    model, _ = train_ensemble(cfg, X, H, progress=False)
    assert model.input_decoder.shape == (2, 16, 16)
    rows = torch.cat([model.W_dec.detach(), model.input_decoder], -1)
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(2, 16))
    assert merge_features(tmp_path, model).shape == (2, 16, 12)  # nothing written yet: the h rows
    save_input_decoder(tmp_path, model.input_decoder)
    torch.testing.assert_close(merge_features(tmp_path, model), rows)
    save_input_decoder(tmp_path, None)
    assert not (tmp_path / INPUT_DECODER).exists()
    plain, _ = train_ensemble(TranscoderConfig(**{**cfg.to_dict(), "input_weight": 0.0}), X, H, progress=False)
    assert not hasattr(plain, "input_decoder")
