"""The sparse TopK step (lanic_nb.transcoder.sparse) against the dense reference: values and every gradient to
1e-5, on both backward paths (dense products over few latents, per-latent sums over many), with and without
aux-k, masked dictionaries and inputs that ask for a gradient; and the tied SAE init."""

from __future__ import annotations

import pytest
import torch

from lanic_nb.transcoder import sparse
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import train_ensemble

TOL = dict(atol=1e-5, rtol=1e-5)


def cfg(**kw) -> TranscoderConfig:
    base = dict(d_in=12, d_out=10, d_dict=40, k=4, n_members=3, batch_size=16, steps=8, warmup_steps=2,
                dead_steps=3, aux_k=8, lr=5e-3, checkpoint_every=100)
    return TranscoderConfig(**(base | kw))


def pair(c: TranscoderConfig, dead_every: int | None = 3) -> tuple[TranscoderEnsemble, TranscoderEnsemble]:
    """The same weights (biases away from zero, some latents dead) in the sparse and the dense formulation."""
    torch.manual_seed(1)
    fast = TranscoderEnsemble(c).train()
    ref = TranscoderEnsemble(TranscoderConfig.from_dict({**c.to_dict(), "sparse_topk": False})).train()
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_()
        if dead_every:
            fast.steps_since_fired[:, ::dead_every] = c.dead_steps
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def run(model: TranscoderEnsemble, x: torch.Tensor, h: torch.Tensor):
    x = x.clone().requires_grad_()
    out = model(x, h)
    (out.loss + out.h_hat.square().mean()).backward()  # a second use of h_hat: its own gradient path
    return out, x.grad


@pytest.fixture(params=["dense backward", "per-latent sums"])
def dots_path(request, monkeypatch):
    # both paths on every shape: these tests' shapes are tiny, which alone would pick the dense backward
    monkeypatch.setattr(sparse, "DENSE_MAX_WEIGHTS", 0 if request.param == "per-latent sums" else 1 << 40)
    return request.param


@pytest.mark.parametrize("dict_sizes,dead_every,shared_x,precision", [
    (None, 3, False, "float32"),  # aux-k on, 13-14 dead latents > aux_k: a top-k among them
    (None, None, True, "float32"),  # aux-k off (nothing dead), x shared by all members
    ([24, 40, 40], 2, False, "float32"),  # masked dictionaries; aux_k 8 < dead count
    ([24, 40, 40], 9, False, "float32"),  # few dead latents: every one fits, padding choices count as zero
    (None, 3, False, "bfloat16"),  # the encoder's forward product rounded (encoder_precision), both paths
    ([24, 40, 40], 2, True, "bfloat16"),
])
def test_sparse_step_matches_dense(dots_path, dict_sizes, dead_every, shared_x, precision):
    c = cfg(dict_sizes=dict_sizes, encoder_precision=precision)
    fast, ref = pair(c, dead_every)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 12, generator=g) if shared_x else torch.randn(3, 16, 12, generator=g)
    h = torch.randn(3, 16, 10, generator=g).relu()
    (a, ga), (b, gb) = run(fast, x, h), run(ref, x, h)
    assert (a.aux_loss > 0).all() == (dead_every is not None)
    for name in ("h_hat", "codes", "loss", "mse", "fvu", "aux_loss", "l1"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL, msg=name)
    torch.testing.assert_close(ga, gb, **TOL)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


@pytest.mark.parametrize("dict_sizes,dead_every,precision", [
    (None, 3, "float32"), (None, None, "float32"), ([24, 40, 40], 2, "float32"), (None, 3, "bfloat16")])
def test_sparse_batchtopk_step_matches_dense(dots_path, dict_sizes, dead_every, precision):
    """BatchTopK through per-row choices (a varying number per row, padded): the dense path's values, gradients
    and inference threshold."""
    c = cfg(activation="batchtopk", dict_sizes=dict_sizes, encoder_precision=precision)
    fast, ref = pair(c, dead_every)
    assert fast._sparse and not ref._sparse
    g = torch.Generator().manual_seed(4)
    x, h = torch.randn(3, 16, 12, generator=g), torch.randn(3, 16, 10, generator=g).relu()
    (a, ga), (b, gb) = run(fast, x, h), run(ref, x, h)
    nnz = (a.codes > 0).sum(-1)  # (n_members, batch): rows hold different numbers, k per row on average
    assert nnz.float().std() > 0 and (nnz.sum(-1) <= c.k * 16).all()
    for name in ("h_hat", "codes", "loss", "mse", "fvu", "aux_loss", "l1"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL, msg=name)
    torch.testing.assert_close(ga, gb, **TOL)
    torch.testing.assert_close(fast.threshold, ref.threshold, **TOL)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)
    fast.eval(), ref.eval()  # inference: the threshold, through the dense path on both
    assert not fast._sparse
    torch.testing.assert_close(fast(x).h_hat, ref(x).h_hat, **TOL)


def test_sparse_batchtopk_training_matches_dense(dots_path):
    g = torch.Generator().manual_seed(5)
    X = torch.randn(200, 12, generator=g)
    H = torch.randn(200, 10, generator=g).relu()
    c = cfg(activation="batchtopk", steps=10)
    a, _ = train_ensemble(c, X, H, progress=False)
    b, _ = train_ensemble(TranscoderConfig.from_dict({**c.to_dict(), "sparse_topk": False}), X, H, progress=False)
    for name, t in a.state_dict().items():
        torch.testing.assert_close(t, b.state_dict()[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_sparse_sae_training_matches_dense(dots_path, precision):
    """A few training steps of a tied top-k SAE, aux-k switching on midway: the same weights either way."""
    g = torch.Generator().manual_seed(3)
    X = torch.nn.functional.normalize(torch.randn(200, 12, generator=g), dim=1)
    c = cfg(d_out=12, steps=10, encoder_precision=precision)
    a, _ = train_ensemble(c, X, X, progress=False)
    b, _ = train_ensemble(TranscoderConfig.from_dict({**c.to_dict(), "sparse_topk": False}), X, X, progress=False)
    for name, t in a.state_dict().items():
        torch.testing.assert_close(t, b.state_dict()[name], atol=1e-5, rtol=1e-4, msg=name)


def test_eval_forward_skips_the_sort_and_matches():
    fast, ref = pair(cfg())
    fast.eval(), ref.eval()
    x = torch.randn(3, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).h_hat, ref(x).h_hat, **TOL)
    torch.testing.assert_close(fast(x).h_hat, ref(x).h_hat, **TOL)  # with grad enabled too


def test_per_latent_sum_and_dots_against_dense(monkeypatch):
    """The two primitives: per-latent sums of chosen rows (weight gradients) and per-choice dot products."""
    monkeypatch.setattr(sparse, "DENSE_MAX_WEIGHTS", 0)  # sort the choices even at these few latents
    g = torch.Generator().manual_seed(4)
    n, b, d_dict, kk, k, width = 2, 9, 30, 7, 5, 6
    idx = torch.stack([torch.stack([torch.randperm(d_dict, generator=g)[:kk] for _ in range(b)]) for _ in range(n)])
    ch = sparse.choose(idx, d_dict, k, width=width)
    w = torch.randn(n, b, kk, generator=g)
    src = torch.randn(n, b, width, generator=g)
    got = sparse.per_latent_sum(ch, ch.rows, src.reshape(n * b, width), w.reshape(-1)[ch.order])
    dense = torch.zeros(n, b, d_dict).scatter_(-1, idx, w)  # (n, b, d_dict)
    torch.testing.assert_close(got.view(n, d_dict, width), torch.bmm(dense.transpose(1, 2), src), **TOL)
    W = torch.randn(n * d_dict, width, generator=g)
    dots = sparse._dots(ch.flat, W, src.reshape(n * b, width))
    torch.testing.assert_close(dots, (W[ch.flat] * src.reshape(n * b, 1, width)).sum(-1), **TOL)


def test_tied_init_only_for_topk_saes():
    assert torch.equal(TranscoderEnsemble(cfg(d_out=12)).W_enc, TranscoderEnsemble(cfg(d_out=12)).W_dec)
    for c in (cfg(), cfg(d_out=12, tied_init=False), cfg(d_out=12, activation="relu")):
        m = TranscoderEnsemble(c)
        assert m.W_enc.shape[-1] != m.W_dec.shape[-1] or not torch.allclose(m.W_enc, m.W_dec)


def test_tied_init_scale_is_the_least_squares_fit():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, 12, generator=g)
    m = TranscoderEnsemble(cfg(d_out=12))
    m.init_biases(x.mean(1), x.mean(1))
    m.init_encoder_scale(x, x)

    def err(scale: float) -> torch.Tensor:
        with torch.no_grad():
            return (torch.bmm(m.encode(x) * scale, m.W_dec) + m.b_dec.unsqueeze(1) - x).pow(2).sum((1, 2))

    assert (err(1.0) < err(1.05)).all() and (err(1.0) < err(0.95)).all()
    assert (err(1.0) < (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2))).all()  # better than the mean: FVU < 1


def test_tied_member_equals_single_sae():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(120, 12, generator=g)
    ens, _ = train_ensemble(cfg(d_out=12, seeds=[5, 6, 7]), X, X, progress=False)
    alone, _ = train_ensemble(cfg(d_out=12, n_members=1, seeds=[6]), X, X, progress=False)
    for name, p in alone.state_dict().items():
        torch.testing.assert_close(ens.state_dict()[name][1], p[0], atol=1e-5, rtol=1e-4, msg=name)


def test_checkpoint_without_new_config_fields_resumes(tmp_path):
    """A checkpoint written before ``tied_init`` existed still resumes (the missing field reads as its default)."""
    from lanic_nb.io import read_json, write_json

    X = torch.randn(100, 12)
    c = cfg(steps=4, checkpoint_every=2)
    train_ensemble(c, X, X[:, :10], checkpoint_dir=tmp_path, progress=False)
    meta = read_json(tmp_path / "checkpoint.json")
    meta["config"].pop("tied_init")
    write_json(tmp_path / "checkpoint.json", meta)
    full, _ = train_ensemble(cfg(steps=6), X, X[:, :10], progress=False)
    resumed, _ = train_ensemble(cfg(steps=6, checkpoint_every=2), X, X[:, :10], checkpoint_dir=tmp_path,
                                progress=False)
    torch.testing.assert_close(resumed.W_enc, full.W_enc, atol=1e-6, rtol=0)
