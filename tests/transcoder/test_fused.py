"""The fused weight update (lanic_nb.transcoder.fused) against torch's AdamW on the sparse step's own gradients:
the same ensemble trained both ways from the same weights and batches, weights, moments and step counts to
1e-5, over TopK and BatchTopK with aux-k, masked dictionaries, weight decay, a warm-up and the decoder's
normalization on and off; plus the rule that picks it and the checkpoint it writes."""

from __future__ import annotations

import pytest
import torch

from lanic_nb.transcoder import fused, sparse
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import make_optimizer, train_ensemble, train_step

TOL = dict(atol=1e-5, rtol=1e-5)


def cfg(**kw) -> TranscoderConfig:
    base = dict(d_in=12, d_out=10, d_dict=40, k=4, n_members=3, batch_size=16, steps=8, warmup_steps=3,
                dead_steps=2, aux_k=8, lr=5e-3, checkpoint_every=100)
    return TranscoderConfig(**(base | kw))


@pytest.fixture
def tiny_fused(monkeypatch):
    """The fused update and the per-latent sums on these tiny shapes (by size alone neither would run)."""
    monkeypatch.setattr(sparse, "DENSE_MAX_WEIGHTS", 0)
    monkeypatch.setattr(fused, "FUSED_MIN_WEIGHTS", 0)


def train_both(c: TranscoderConfig, steps: int, monkeypatch) -> tuple[TranscoderEnsemble, TranscoderEnsemble, ...]:
    torch.manual_seed(0)
    models = [TranscoderEnsemble(c).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [make_optimizer(m) for m in models]
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, c.d_in, generator=g)
    H = torch.relu(X @ torch.randn(c.d_in, c.d_out, generator=g))
    used = []
    for step in range(steps):
        rows = torch.randint(200, (c.n_members, c.batch_size), generator=g)
        for i, (m, o) in enumerate(zip(models, opts, strict=True)):
            for group in o.param_groups:
                group["lr"] = c.lr * min(1.0, (step + 1) / c.warmup_steps)
            with monkeypatch.context() as mp:
                if i == 1:  # the reference: torch's AdamW on formed gradients
                    mp.setattr(fused, "applies", lambda *a: False)
                else:
                    used.append(fused.applies(m, o))
                train_step(m, o, X[rows], H[rows])
    return models[0], opts[0], models[1], opts[1], used


@pytest.mark.parametrize("kw", [
    dict(),  # TopK, aux-k on from step 2, decoder normalized
    dict(activation="batchtopk", k=3),  # rows keep different numbers of latents, padding left out
    dict(dict_sizes=[24, 40, 40], weight_decay=0.1),  # masked latents, decoupled weight decay
    dict(normalize_decoder=False, aux_coeff=0.0),
])
def test_fused_update_matches_torch_adamw(tiny_fused, monkeypatch, kw):
    fast, fast_opt, ref, ref_opt, used = train_both(cfg(**kw), 8, monkeypatch)
    assert all(used)
    assert fast.W_enc.grad is None and fast.W_dec.grad is None  # the sink took them: nothing formed
    assert ref.W_enc.grad is not None
    for name, p in fast.named_parameters():
        q = dict(ref.named_parameters())[name]
        torch.testing.assert_close(p, q, **TOL, msg=name)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fast_opt.state[p][key], ref_opt.state[q][key], **TOL, msg=f"{name} {key}")
    assert torch.equal(fast.steps_since_fired, ref.steps_since_fired)
    moved = (fast.W_dec - TranscoderEnsemble(cfg(**kw)).W_dec).abs().amax()
    assert moved > 1e-3  # the weights did train
    if fast.cfg.normalize_decoder:
        torch.testing.assert_close(fast.W_dec.norm(dim=-1), torch.ones(3, 40), **TOL)


def test_fired_from_choices_equals_the_codes():
    torch.manual_seed(0)
    for act in ("topk", "batchtopk"):
        m = TranscoderEnsemble(cfg(activation=act)).train()
        x = torch.randn(3, 16, 12)
        out = m(x, torch.randn(3, 16, 10))
        assert out.fired is not None and torch.equal(out.fired, out.codes.amax(1) > 0)
        assert 0 < int(out.fired.sum()) < out.fired.numel()


def test_the_rule_fuses_large_cpu_steps_only(monkeypatch):
    big = TranscoderEnsemble(cfg(d_in=256, d_out=512, d_dict=2048, n_members=1)).train()
    demo = TranscoderEnsemble(cfg(d_in=256, d_out=512, d_dict=256, n_members=1)).train()  # the demo's shapes
    assert fused.applies(big, make_optimizer(big))
    assert not fused.applies(demo, make_optimizer(demo))  # its ensemble keeps torch's AdamW
    assert not fused.applies(big.eval(), make_optimizer(big))
    assert not fused.applies(big.train(), torch.optim.AdamW(big.parameters(), amsgrad=True))
    assert not fused.applies(big, torch.optim.SGD(big.parameters(), lr=0.1))
    assert fused.applies(big, torch.optim.Adam(big.parameters()))
    assert not fused.applies(big, torch.optim.Adam(big.parameters(), weight_decay=0.1))  # L2 through the gradient
    assert not fused.applies(TranscoderEnsemble(cfg(d_dict=2048, d_in=256, d_out=512, n_members=1,
                                                    sparse_topk=False)).train(), make_optimizer(big))


def test_a_fused_run_resumes_from_its_checkpoint(tiny_fused, tmp_path):
    """The moments the fused update keeps live in the optimizer's state, so a checkpoint carries them."""
    c = cfg(steps=6, checkpoint_every=3)
    torch.manual_seed(0)
    X, H = torch.randn(100, 12), torch.randn(100, 10)
    whole, _ = train_ensemble(c, X, H, progress=False)
    train_ensemble(cfg(steps=3, checkpoint_every=3), X, H, checkpoint_dir=tmp_path, progress=False)
    resumed, _ = train_ensemble(c, X, H, checkpoint_dir=tmp_path, progress=False)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("padded", [False, True])
def test_sorted_dots_equal_the_choice_by_choice_dots(tiny_fused, padded):
    """The fused step's value gradients (one pass per chosen decoder row) against sparse._choice_dots, with
    aux-k choices reading the e rows and, padded, BatchTopK's padding (zero on both)."""
    g = torch.Generator().manual_seed(3)
    n, b, d_dict, d_out, k, kk = 3, 16, 40, 10, 4, 7
    idx = torch.stack([torch.stack([torch.randperm(d_dict, generator=g)[:kk] for _ in range(b)]) for _ in range(n)])
    valid = torch.rand(n, b, kk, generator=g) > 0.3 if padded else None
    if padded:
        valid[..., 0] = True  # every row keeps one
    ch = sparse.choose(idx, d_dict, k, True, d_out, valid)
    w = torch.randn(n, d_dict, d_out, generator=g)
    g_rows = torch.randn(n, 2 * b, d_out, generator=g)
    rows = ch.rows + b * (ch.rows.div(b, rounding_mode="floor") + (ch.order % kk >= k))
    got = fused.sorted_dots(g_rows.reshape(-1, d_out), w.reshape(-1, d_out), rows, ch.order, ch.offsets,
                            n * b * kk).view(n, b, kk)
    want = sparse._choice_dots(ch._replace(main=None), g_rows, w)
    if padded:
        want = want * valid
        assert bool((got[~valid] == 0).all())
    torch.testing.assert_close(got, want, **TOL)


def test_a_fused_step_frees_its_tensors(tiny_fused, monkeypatch):
    """The step's graph holds its choices and so the sink: were the sink to keep a tensor of the graph (the codes'
    values), the cycle would run through C++ edges the garbage collector cannot see, and every step's tensors
    would stay alive (RSS grew by 30 MB a step at 20 members x 4,096 latents before this was fixed)."""
    import gc
    import weakref

    kept, apply = [], fused.apply

    def spy(model, opt, sink):
        kept.extend(weakref.ref(t) for s in (sink.enc, sink.dec) for t in (s.weights, s.source))
        return apply(model, opt, sink)

    monkeypatch.setattr(fused, "apply", spy)
    m = TranscoderEnsemble(cfg()).train()
    opt = make_optimizer(m)
    out = train_step(m, opt, torch.randn(3, 16, 12), torch.randn(3, 16, 10))
    assert len(kept) == 4
    del out
    gc.collect()
    assert all(r() is None for r in kept)
