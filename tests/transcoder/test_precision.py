"""encoder_precision="bfloat16": the encoder's forward product rounded to bfloat16 while training, with exact
float32 gradients and float32 inference; the sparse step's equivalence with the dense path at this precision is in
test_sparse.py."""

from __future__ import annotations

import pytest
import torch

from lanic_nb.transcoder.autograd import encoder_product
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import train_ensemble


def test_rounded_product_forward_is_the_rounded_factors_and_gradients_exact():
    g = torch.Generator().manual_seed(0)
    xc = torch.randn(3, 20, 48, generator=g, requires_grad=True)
    w = torch.randn(3, 30, 48, generator=g, requires_grad=True)
    got = encoder_product(xc, w, "bfloat16")
    assert got.dtype == torch.float32
    # the product of the bfloat16-rounded factors, itself rounded to bfloat16 (to within one step of 2^-8)
    want = torch.bmm(xc.detach().bfloat16().double(), w.detach().bfloat16().double().transpose(1, 2))
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=2**-8)
    exact = torch.bmm(xc.detach(), w.detach().transpose(1, 2))
    err = (got.detach() - exact).abs()
    assert err.max() > 1e-4 and err.max() < 0.05 * exact.abs().max()  # rounded, but only by bfloat16's step
    upstream = torch.randn(3, 20, 30, generator=g)
    ga, gw = torch.autograd.grad((got * upstream).sum(), (xc, w))
    x2, w2 = xc.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    gb, gw2 = torch.autograd.grad((encoder_product(x2, w2) * upstream).sum(), (x2, w2))
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gw, gw2, atol=1e-6, rtol=1e-6)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="encoder_precision"):
        TranscoderConfig(d_in=4, d_out=4, d_dict=8, k=2, encoder_precision="float16")
    with pytest.raises(ValueError, match="precision"):
        encoder_product(torch.zeros(1, 2, 3), torch.zeros(1, 4, 3), "half")


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "relu"])
def test_rounding_is_training_only(activation):
    base = dict(d_in=16, d_out=12, d_dict=40, k=4, n_members=2, activation=activation)
    torch.manual_seed(0)
    low = TranscoderEnsemble(TranscoderConfig(**base, encoder_precision="bfloat16"))
    ref = TranscoderEnsemble(TranscoderConfig(**base))
    ref.load_state_dict(low.state_dict())
    x = torch.randn(2, 32, 16)
    low.eval(), ref.eval()
    assert torch.equal(low(x).h_hat, ref(x).h_hat)  # inference: float32 on both
    low.train(), ref.train()
    pre_low, pre_ref = low.pre_activations(x), ref.pre_activations(x)
    assert not torch.equal(pre_low, pre_ref)
    torch.testing.assert_close(pre_low, pre_ref, atol=0.05, rtol=0.02)


def test_bfloat16_training_reaches_the_float32_fit():
    """Same data, seeds and steps: the rounded product trains a top-k SAE as well as float32 (FVU within 0.01)."""
    g = torch.Generator().manual_seed(1)
    atoms = torch.nn.functional.normalize(torch.randn(96, 32, generator=g), dim=1)
    coef = (torch.rand(2000, 96, generator=g) < 0.06) * torch.rand(2000, 96, generator=g)
    X = coef @ atoms + 0.02 * torch.randn(2000, 32, generator=g)
    fvus = {}
    for precision in ("float32", "bfloat16"):
        c = TranscoderConfig(d_in=32, d_out=32, d_dict=128, k=6, n_members=2, batch_size=64, steps=300,
                             warmup_steps=10, lr=3e-3, encoder_precision=precision)
        model, log = train_ensemble(c, X, X, progress=False)
        with torch.no_grad():
            err = (model(X).h_hat - X).square().sum((1, 2))
        fvus[precision] = float((err / (X - X.mean(0)).square().sum()).mean())
    assert fvus["float32"] < 0.5  # it learned something
    assert abs(fvus["bfloat16"] - fvus["float32"]) < 0.01, fvus
