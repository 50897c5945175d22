"""Neuron annotation (MAMMI + two baselines): hook capture, the CNN, naming planted concepts, evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lanic_nb.concepts.annotate import AnnotationConfig
from lanic_nb.mammi.annotate import annotate_neurons, clip_dissect_scores, topk_mean_scores
from lanic_nb.mammi.cnn import CNNConfig, FindingCNN, capture_activations, image_batches, train_cnn
from lanic_nb.mammi.evaluate import ceiling_metrics, evaluate_annotations, flat_metrics, vlm_ceiling
from lanic_nb.metrics import auroc


def tiny_cnn(**kw) -> FindingCNN:
    return FindingCNN(CNNConfig(image_size=16, channels=(3, 4), hidden=6, **kw))


def test_capture_matches_a_manual_forward():
    model = tiny_cnn()
    x = torch.rand(7, 1, 16, 16)
    loader = [x[:4], (x[4:], "ignored label")]  # tensors and tuples both work
    conv = capture_activations(model, "conv2", loader)
    fc = capture_activations(model, "fc1", loader)
    with torch.no_grad():
        h = F.max_pool2d(F.relu(model.conv1(x)), 2)
        c2 = model.conv2(h)  # the hook sees conv2's own output (before its ReLU)
        expected_fc = model.fc1(F.relu(c2).mean(dim=(2, 3)))
    assert conv.shape == (7, 4) and fc.shape == (7, 6)
    np.testing.assert_allclose(conv, c2.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fc, expected_fc.numpy(), rtol=1e-5, atol=1e-6)
    assert not model._forward_hooks and not model.conv2._forward_hooks  # hook removed
    with pytest.raises(ValueError, match="layer_name"):
        capture_activations(model, "conv9", loader)


def test_cnn_config_names_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        CNNConfig(image_size=0)
    with pytest.raises(ValueError, match="channels"):
        CNNConfig(channels=())


def test_cnn_learns_a_bright_blob():
    # Planted signal: finding 0 is a bright square; the CNN must beat chance by far within a few epochs.
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(96, 16, 16, generator=gen) * 0.3
    y = np.full((96, 5), np.nan, np.float32)
    y[:, 0] = (np.arange(96) % 2).astype(np.float32)
    imgs[y[:, 0] == 1, 4:10, 4:10] += 0.7
    model, log = train_cnn(imgs, y, CNNConfig(image_size=16, channels=(4, 8), hidden=8, epochs=15, lr=1e-2),
                           progress=False)
    act = capture_activations(model, "fc2", image_batches(imgs, 16))[:, 0]
    assert auroc(y[:, 0], act) > 0.95 and log.loss.iloc[-1] < log.loss.iloc[0]


def _planted_case(n=300, seed=0):
    """Three planted concepts; unit u fires on concept u; the VLM's similarity knows the concepts noisily."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, 3)) < 0.3
    act = present * 2.0 + rng.normal(0, 0.3, (n, 3))
    act = np.concatenate([act, rng.normal(0, 1, (n, 1))], axis=1)  # unit 3: noise
    vocab = pd.DataFrame({"concept": ["pleural effusion", "pacemaker", "nodule", "rib fracture", "scar"],
                          "category": ["pleural", "device", "pulmonary", "structural", "structural"],
                          "synonyms": [[], [], [], [], []]})
    sim = rng.normal(0, 0.05, (n, 5))
    sim[:, :3] += 0.15 * present
    truth = pd.DataFrame(present, columns=["pleural_effusion", "pacemaker", "nodule"])
    return act, sim, vocab, truth


def test_every_method_names_the_planted_concept():
    act, sim, vocab, truth = _planted_case()
    ann = annotate_neurons(act, sim, vocab, AnnotationConfig(min_images=5), k=20)
    for m in ("mammi", "clip_dissect", "topk_mean"):
        assert list(ann[f"{m}_concept"][:3]) == ["pleural effusion", "pacemaker", "nodule"], m
    per_unit, summary = evaluate_annotations(act, ann, truth, vocab)
    assert summary.n_monosemantic.iloc[0] == 3  # the noise unit detects nothing
    for m in ("mammi", "clip_dissect", "topk_mean"):
        assert summary[f"{m}_top1_accuracy"].iloc[0] == 1.0
        assert per_unit[f"{m}_auroc"][:3].min() > 0.95


def test_vlm_ceiling_reads_each_planted_concepts_own_column():
    _, sim, vocab, truth = _planted_case()
    ceiling = vlm_ceiling(sim, truth, vocab)
    assert list(ceiling["concept"]) == ["pleural effusion", "pacemaker", "nodule"]
    assert ceiling["zero_shot_auroc"].min() > 0.9  # the similarity knows each concept
    flipped = vlm_ceiling(-sim, truth, vocab)
    assert flipped["zero_shot_auroc"].max() < 0.1  # a wrong sign would show
    shifted = vlm_ceiling(np.roll(sim, 1, axis=1), truth, vocab)  # wrong columns: chance
    assert shifted["zero_shot_auroc"].max() < 0.7
    m = ceiling_metrics(ceiling)
    assert set(m["vlm_ceiling"]) == {"pleural_effusion", "pacemaker", "nodule"} and m["vlm_ceiling_mean"] > 0.9
    assert ceiling_metrics(None) == {}


def test_baseline_scores_by_hand():
    """topk_mean: mean centred similarity over the k top images; CLIP-Dissect: log p(t|unit) - log p(t)."""
    act = np.array([[3.0], [2.0], [0.0], [1.0]])
    sim = np.array([[0.4, 0.0], [0.2, 0.2], [0.0, 0.6], [0.2, 0.2]])
    centred = sim - sim.mean(axis=0)
    assert np.allclose(topk_mean_scores(act, sim, k=2), centred[[0, 1]].mean(axis=0))
    p = np.exp(sim / 0.05) / np.exp(sim / 0.05).sum(axis=1, keepdims=True)
    a = act[:, 0]
    w = np.exp((a[[0, 1]] - 3.0) / 3.0 * 2)  # activation softmax of the top 2, range-normalized, sharpened by k
    w /= w.sum()
    expect = np.log(w @ p[[0, 1]]) - np.log(p.mean(axis=0))
    assert np.allclose(clip_dissect_scores(act, sim, k=2), expect[None], atol=1e-9)


def test_flat_metrics_suffix_every_figure_with_its_unit_set():
    summary = pd.DataFrame({"unit_set": ["cnn last conv", "transcoder patterns"], "n_units": [8, 3],
                            "mammi_assigned_auroc": [0.6, 0.9]})
    assert flat_metrics(summary) == {"n_units_cnn_last_conv": 8.0, "mammi_assigned_auroc_cnn_last_conv": 0.6,
                                     "n_units_transcoder_patterns": 3.0,
                                     "mammi_assigned_auroc_transcoder_patterns": 0.9}
