"""The batched transcoder ensemble: contract per activation, member independence, resume, masking."""

from __future__ import annotations

import pytest
import torch

from lanic_nb.classify.model import ClassifierConfig, DiagnosticClassifier
from lanic_nb.transcoder.config import ACTIVATIONS, TranscoderConfig
from lanic_nb.transcoder.metrics import ensemble_metrics
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import data_digest, train_ensemble


def planted(n: int = 256, d_in: int = 12, d_out: int = 10, n_concepts: int = 24, seed: int = 0):
    """x = sparse mix of planted concept directions (unit norm); h = relu(A x + c), a classifier-like layer."""
    g = torch.Generator().manual_seed(seed)
    concepts = torch.nn.functional.normalize(torch.randn(n_concepts, d_in, generator=g), dim=1)
    active = torch.rand(n, n_concepts, generator=g) < 3 / n_concepts
    X = (active * torch.rand(n, n_concepts, generator=g)) @ concepts
    X = torch.nn.functional.normalize(X + 0.01 * torch.randn(n, d_in, generator=g), dim=1)
    H = torch.relu(X @ torch.randn(d_in, d_out, generator=g) + 0.1)
    return X, H


def tiny(**kw) -> TranscoderConfig:
    base = dict(d_in=12, d_out=10, d_dict=32, k=4, n_members=1, steps=12, batch_size=16, warmup_steps=3, dead_steps=4,
                aux_k=8, lr=5e-3, checkpoint_every=5)
    base.update(kw)
    return TranscoderConfig(**base)


SPARSITY = {"topk": 0.0, "batchtopk": 0.0, "relu": 1e-2, "jumprelu": 1e-2}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_contract(activation, tmp_path):
    X, H = planted()
    cfg = tiny(activation=activation, l1_coeff=SPARSITY[activation], n_members=3)
    model, log = train_ensemble(cfg, X, H, progress=False)
    assert not model.training and set(log.columns) >= {"step", "fvu", "l0", "dead"}
    n = 9
    z = model.encode(X[:n])
    assert z.shape == (3, n, 32)
    assert model.decode(z).shape == (3, n, 10)
    out = model(X[:n], H[:n])
    assert out.h_hat.shape == (3, n, 10) and out.codes.shape == (3, n, 32)
    assert out.fvu.shape == out.mse.shape == out.l1.shape == (3,) and out.loss.dim() == 0
    assert torch.allclose(out.h_hat, model.decode(model.encode(X[:n])))
    # Unit-norm decoder rows, data-based biases.
    assert torch.allclose(model.W_dec.norm(dim=-1), torch.ones(3, 32), atol=1e-5)
    nnz = (z > 0).sum(-1)  # (n_members, batch)
    if activation == "topk":
        assert (nnz == cfg.k).all()
    elif activation == "batchtopk":
        assert 0 < nnz.float().mean() < 4 * cfg.k  # inference uses the learned threshold: about k on average
    else:
        assert (z >= 0).all() and nnz.float().mean() < 32
    # Save / load round trip: same config, same outputs.
    model.save(tmp_path / "ens")
    loaded = TranscoderEnsemble.load(tmp_path / "ens")
    assert loaded.cfg.to_dict() == cfg.to_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    assert torch.equal(loaded(X[:n]).h_hat, model(X[:n]).h_hat)


def test_load_reads_weights_saved_in_the_old_encoder_layout(tmp_path):
    """Ensembles saved before W_enc became (n_members, d_dict, d_in) still load, with the same outputs."""
    from lanic_nb.io import read_json, read_tensors, write_json, write_tensors

    model = TranscoderEnsemble(tiny(n_members=2, d_in=12, d_dict=32)).eval()
    folder = model.save(tmp_path / "ens")
    state, meta = read_tensors(folder / "ensemble.safetensors"), read_json(folder / "config.json")
    state["W_enc"] = state["W_enc"].transpose(1, 2).contiguous()  # (n_members, d_in, d_dict), as saved before
    meta.pop("w_enc_layout")
    write_tensors(folder / "ensemble.safetensors", state)
    write_json(folder / "config.json", meta)
    x = torch.randn(5, 12)
    assert torch.equal(TranscoderEnsemble.load(folder)(x).h_hat, model(x).h_hat)


def test_training_reduces_fvu():
    X, H = planted(n=512)
    cfg = tiny(steps=300, n_members=2, d_dict=48, k=6)
    model, log = train_ensemble(cfg, X, H, progress=False)
    assert log.fvu.iloc[-1] < 0.5 * log.fvu.iloc[0]
    assert (model(X, H).fvu < 0.3).all()


def test_topk_exactly_k_nonzeros_on_fresh_model():
    model = TranscoderEnsemble(tiny(k=5, n_members=2)).eval()
    z = model.encode(torch.randn(40, 12))
    assert ((z != 0).sum(-1) == 5).all()


@pytest.mark.parametrize("dict_sizes,aux_k", [(None, 8), ([20, 32, 32], 8), ([20, 32, 32], 16)])
def test_sparse_topk_matches_dense(dict_sizes, aux_k):
    """The gather/scatter TopK path gives the dense path's loss, outputs and every gradient, aux-k included
    (aux_k 8: fewer than the 7-11 dead latents per member, so a top-k among them; 16: all of them)."""
    X, H = planted()
    cfg = tiny(n_members=3, dict_sizes=dict_sizes, aux_k=aux_k)
    sparse = TranscoderEnsemble(cfg).train()
    dense = TranscoderEnsemble(TranscoderConfig.from_dict({**cfg.to_dict(), "sparse_topk": False})).train()
    with torch.no_grad():
        for p in sparse.parameters():
            p.normal_()  # biases away from zero, so their gradients are tested too
        sparse.steps_since_fired[:, ::3] = cfg.dead_steps  # a third of the latents dead: the aux-k loss is on
    dense.load_state_dict(sparse.state_dict())
    x, h = X[:48].view(3, 16, 12), H[:48].view(3, 16, 10)
    outs = []
    for model in (sparse, dense):
        out = model(x, h)
        out.loss.backward()
        outs.append(out)
    assert (outs[0].aux_loss > 0).all()
    for name in ("h_hat", "codes", "loss", "fvu", "aux_loss", "l1"):
        assert torch.allclose(getattr(outs[0], name), getattr(outs[1], name), atol=1e-5, rtol=1e-5), name
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        assert p.grad.abs().max() > 0, name
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
    # Training on: the same weights after a few steps either way.
    a, _ = train_ensemble(cfg, X, H, progress=False)
    b, _ = train_ensemble(TranscoderConfig.from_dict({**cfg.to_dict(), "sparse_topk": False}), X, H, progress=False)
    for name, t in a.state_dict().items():
        assert torch.allclose(t.float(), b.state_dict()[name].float(), atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("activation,bootstrap", [("topk", False), ("relu", True), ("jumprelu", False),
                                                  ("batchtopk", True)])
def test_member_equals_single_transcoder(activation, bootstrap):
    X, H = planted()
    common = dict(activation=activation, l1_coeff=SPARSITY[activation], bootstrap=bootstrap, steps=15)
    ens, _ = train_ensemble(tiny(n_members=3, seeds=[5, 6, 7], **common), X, H, progress=False)
    alone, _ = train_ensemble(tiny(n_members=1, seeds=[6], **common), X, H, progress=False)
    other, _ = train_ensemble(tiny(n_members=1, seeds=[8], **common), X, H, progress=False)
    for name, p in alone.state_dict().items():
        assert torch.allclose(ens.state_dict()[name][1], p[0], atol=1e-5, rtol=1e-4), name
    # ...and the test can fail: a different seed gives a different member.
    assert not torch.allclose(other.W_enc[0], alone.W_enc[0], atol=1e-3)


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_resume_equals_uninterrupted(activation, tmp_path):
    X, H = planted()
    full, full_log = train_ensemble(tiny(activation=activation, n_members=2, steps=14), X, H, progress=False)
    ckpt = tmp_path / "ckpt"
    train_ensemble(tiny(activation=activation, n_members=2, steps=7), X, H, checkpoint_dir=ckpt, progress=False)
    resumed, resumed_log = train_ensemble(tiny(activation=activation, n_members=2, steps=14), X, H,
                                          checkpoint_dir=ckpt, progress=False)
    for name, t in full.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], t, atol=1e-6), name
    assert resumed_log.step.tolist() == full_log.step.tolist()
    # Without resume it starts afresh (and a fresh 14-step run is the same as the full one).
    again, _ = train_ensemble(tiny(activation=activation, n_members=2, steps=14), X, H, checkpoint_dir=ckpt,
                              resume=False, progress=False)
    assert torch.allclose(again.W_enc, full.W_enc, atol=1e-6)


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path, caplog):
    """A stage rerun because its inputs changed (other films, another classifier) must not continue, or return, a
    checkpoint trained on the old ones: the same config on other data trains afresh."""
    X, H = planted()
    ckpt = tmp_path / "ckpt"
    train_ensemble(tiny(n_members=2, steps=14), X, H, checkpoint_dir=ckpt, progress=False)  # finished
    X2, H2 = X.flip(0), H.flip(0) * 1.5  # the same shapes, other rows and targets
    fresh, fresh_log = train_ensemble(tiny(n_members=2, steps=14), X2, H2, progress=False)
    with caplog.at_level("WARNING", logger="lanic_nb.transcoder.train"):
        rerun, rerun_log = train_ensemble(tiny(n_members=2, steps=14), X2, H2, checkpoint_dir=ckpt, progress=False)
    assert "trained on other data" in caplog.text
    for name, t in fresh.state_dict().items():
        assert torch.allclose(rerun.state_dict()[name], t, atol=1e-6), name
    assert rerun_log.loss.tolist() == pytest.approx(fresh_log.loss.tolist())
    # ...and the new checkpoint now names the new data: the same call resumes at its end without a warning.
    caplog.clear()
    with caplog.at_level("WARNING", logger="lanic_nb.transcoder.train"):
        again, _ = train_ensemble(tiny(n_members=2, steps=14), X2, H2, checkpoint_dir=ckpt, progress=False)
    assert "trained on other data" not in caplog.text and torch.equal(again.W_enc, rerun.W_enc)
    assert data_digest(X, H) != data_digest(X2, H2) and data_digest(X, H) == data_digest(X.clone(), H.clone())
    assert data_digest(X, H, rows=5) == data_digest(X, H)  # the block size does not change it


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dict_sizes_mask_latents_every_activation(activation):
    X, H = planted()
    cfg = tiny(n_members=2, dict_sizes=[8, 32], steps=6, activation=activation, l1_coeff=SPARSITY[activation])
    model, _ = train_ensemble(cfg, X, H, progress=False)
    for mode in (True, False):
        z = model.train(mode).encode(X)
        assert torch.isfinite(z).all() and (z[0, :, 8:] == 0).all(), mode


def test_dict_sizes_mask_latents():
    X, H = planted()
    cfg = tiny(n_members=2, dict_sizes=[8, 32], steps=10)
    model, _ = train_ensemble(cfg, X, H, progress=False)
    z = model.encode(X)
    # Top-k within 8 latents: at most k fire (ReLU after top-k drops negative pre-activations).
    assert (z[0, :, 8:] == 0).all() and ((z[0] > 0).sum(-1) <= cfg.k).all()
    assert (z[1, :, 8:] != 0).any()
    clf = DiagnosticClassifier(ClassifierConfig(d_in=12, hidden=10)).eval()
    Y = (torch.rand(len(X), 5) < 0.5).float().numpy()
    m = ensemble_metrics(model, clf, X, None, Y)
    assert m.dict_size.tolist() == [8, 32]
    assert (m.dead_frac <= 1).all() and (m.l0 <= cfg.k).all() and m.l0[1] == cfg.k


def test_spliced_auroc_tracks_fidelity():
    """A member that reconstructs h well keeps the classifier's AUROC; the metric is computed per member."""
    X, H0 = planted(n=512)
    clf = DiagnosticClassifier(ClassifierConfig(d_in=12, hidden=10)).eval()
    with torch.no_grad():
        H = clf.hidden(X)
        logits = clf.head(H)
    Y = (logits + 0.3 * torch.randn_like(logits) > logits.median(0).values).float().numpy()
    model, _ = train_ensemble(tiny(n_members=2, steps=300, d_dict=48, k=8), X, H, progress=False)
    m = ensemble_metrics(model, clf, X, H, Y)
    assert len(m) == 2 and (m.fvu < 0.2).all()
    assert (m.auroc_delta.abs() < 0.03).all()
    # A random (untrained) ensemble is much worse: the metric would notice a broken transcoder.
    fresh = TranscoderEnsemble(tiny(n_members=1, d_dict=48, k=8)).eval()
    assert ensemble_metrics(fresh, clf, X, H, Y).fvu.item() > 0.5


def test_config_validation_names_parameter():
    with pytest.raises(ValueError, match="activation"):
        tiny(activation="gelu")
    with pytest.raises(ValueError, match="seeds"):
        tiny(n_members=2, seeds=[1])
    with pytest.raises(ValueError, match="dict_sizes"):
        tiny(n_members=2, dict_sizes=[2, 32])
    with pytest.raises(ValueError, match="k must"):
        tiny(k=64)
    assert tiny(n_members=3, seed=10).member_seeds == [10, 11, 12]


@pytest.mark.notebook
def test_notebooks_02_03_small(small_run):
    from lanic_nb.artifacts import load_stage_data
    from lanic_nb.classify.model import load_classifier, predict_logits
    from lanic_nb.io import read_table
    from lanic_nb.metrics import mean_auroc
    from lanic_nb.rundir import RunDir, load_metrics

    run_dir = small_run.until("03")
    rd = RunDir(run_dir)
    m2 = load_metrics(run_dir, "02_classifier")
    table = read_table(rd.classifier / "metrics.csv")
    clf = load_classifier(rd.classifier)
    # the recorded figure is the saved classifier's test AUROC, recomputed here from its logits
    data = load_stage_data(run_dir)
    te = data.split == "test"
    recomputed = mean_auroc(data.Y[te], predict_logits(clf, data.X[te]))
    assert m2["mlp_auroc_mean"] == pytest.approx(recomputed, abs=1e-6)
    mean_rows = table[table.finding == "mean"].set_index("model").auroc
    assert m2["linear_auroc_mean"] == pytest.approx(mean_rows["linear probe"], abs=1e-9)
    assert m2["mlp_auroc_mean"] > 0.5 and m2["linear_auroc_mean"] > 0.6  # above chance even in small mode
    assert 1 <= m2["epochs"] <= 40 and m2["best_val_auroc"] >= 0.5  # small mode's max_epochs reached the stage
    assert {"mlp", "linear probe"} <= set(table.model) and {"auroc_lo", "auprc_hi"} <= set(table.columns)
    assert clf.fc1.out_features == 64  # the small-mode hidden size reached the notebook

    m3 = load_metrics(run_dir, "03_transcoders")
    assert m3["n_members"] == 4
    # small-mode k; BatchTopK (the default) holds k per image on average in training, a threshold after it
    assert 4 <= m3["l0_mean"] <= 2 * 16
    assert m3["fvu_mean"] < 0.2
    assert abs(m3["auroc_delta_mean"]) < 0.05
    members = read_table(rd.transcoders / "metrics.parquet")
    assert len(members) == 4 and members.fvu.mean() == pytest.approx(m3["fvu_mean"], rel=1e-6)
    ens = TranscoderEnsemble.load(rd.transcoders)
    assert ens.W_enc.shape == (4, 256, clf.cfg.d_in) and ens.W_dec.shape == (4, 256, 64)
    assert ens.cfg.k == 16 and ens.cfg.activation == "batchtopk" and float(ens.threshold.min()) > 0
    assert (rd.transcoders / "checkpoints" / "checkpoint.json").exists()
