"""Encoder loading: BiomedCLIP fails fast and clearly offline; a local folder reloads exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPORTS, tiny_config, tiny_encoder

from lanic_nb.embed.clip_small import SmallClipConfig, train_small_clip
from lanic_nb.embed.encoders import BIOMEDCLIP, EncoderUnavailable, load_encoder, preprocess_gray


def _run_py(code: str, hf_home, timeout=60):
    """Run ``code`` in a fresh interpreter with HF_HUB_OFFLINE unset and an empty Hugging Face cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(hf_home)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def empty_hf_home(tmp_path):
    return tmp_path / "hf"


def test_biomedclip_without_cache_fails_fast_without_hf_hub_offline(empty_hf_home):
    # HF_HUB_OFFLINE unset in a fresh process: without the loader's own offline switch open_clip would
    # retry the network for ~20 s. The root cause shows that no request was made (the measured time is
    # printed by bench-style runs, not asserted).
    code = f"""
        import os, time
        assert "HF_HUB_OFFLINE" not in os.environ
        from lanic_nb.embed.encoders import load_encoder, EncoderUnavailable
        import open_clip, transformers  # imports are not part of the failure path
        t = time.perf_counter()
        try:
            load_encoder({BIOMEDCLIP!r})
        except EncoderUnavailable as e:
            print("ERR", time.perf_counter() - t, e)
        else:
            print("LOADED")
        import huggingface_hub.constants as c
        print("OFFLINE_RESTORED", c.HF_HUB_OFFLINE is False)
    """
    out = _run_py(code, empty_hf_home, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR" in out.stdout, out.stdout
    msg = out.stdout
    assert BIOMEDCLIP in msg and "local-dir:" in msg and "HF_HUB_OFFLINE=1" in msg and "cache" in msg
    assert "OFFLINE_RESTORED True" in msg
    # The root cause is a cache miss in offline mode: no network request was attempted.
    assert "LocalEntryNotFoundError" in msg or "OfflineModeIsEnabled" in msg


def test_missing_transformers_gives_clear_message(empty_hf_home):
    code = f"""
        import sys
        sys.modules["transformers"] = None  # as if the package were not installed
        from lanic_nb.embed.encoders import load_encoder, EncoderUnavailable
        try:
            load_encoder({BIOMEDCLIP!r})
        except EncoderUnavailable as e:
            print("ERR", e)
    """
    out = _run_py(code, empty_hf_home)
    assert "ERR" in out.stdout, out.stderr[-2000:]
    assert "pip install transformers" in out.stdout and BIOMEDCLIP in out.stdout


def test_missing_local_folder_names_what_is_needed(tmp_path):
    with pytest.raises(EncoderUnavailable, match="open_clip_config.json"):
        load_encoder(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "open_clip_config.json").write_text("{}")
    with pytest.raises(EncoderUnavailable, match="open_clip_model.safetensors"):
        load_encoder(f"local-dir:{tmp_path / 'half'}")


def test_local_dir_round_trip_survives_a_move(tmp_path):
    enc = tiny_encoder(tmp_path / "clip", steps=2)
    x = torch.stack([enc.preprocess_array(torch.rand(40, 48)) for _ in range(3)])
    img, txt = enc.encode_images(x), enc.encode_texts(REPORTS[:3])
    shutil.move(tmp_path / "clip", tmp_path / "moved")
    for name in (tmp_path / "moved", f"local-dir:{tmp_path / 'moved'}"):
        again = load_encoder(name)
        assert again.embed_dim == 16 and again.image_size == 32
        assert torch.equal(again.encode_images(x), img) and torch.equal(again.encode_texts(REPORTS[:3]), txt)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3))
    # The text tower is a transformers BERT, as in BiomedCLIP.
    assert type(again.model.text.transformer).__name__ == "BertModel"


def test_training_changes_weights_and_is_seeded(tmp_path):
    a = tiny_encoder(tmp_path / "a", steps=3)
    b = tiny_encoder(tmp_path / "b", steps=3)
    c = tiny_encoder(tmp_path / "c", steps=0)
    x = torch.stack([a.preprocess_array(torch.rand(32, 32)) for _ in range(2)])
    assert torch.equal(a.encode_images(x), b.encode_images(x))
    assert not torch.allclose(a.encode_images(x), c.encode_images(x))


@pytest.mark.parametrize(("arch", "tower"), [("vit", "VisionTransformer"), ("resnet", "ModifiedResNet")])
def test_both_image_towers_train_save_and_reload(tmp_path, arch, tower):
    images = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(0))
    reports = [REPORTS[i % 3] for i in range(8)]
    enc, losses = train_small_clip(tmp_path / arch, images, reports, tiny_config(steps=2, vision_arch=arch),
                                   torch.device("cpu"))
    again = load_encoder(tmp_path / arch)
    assert type(enc.model.visual).__name__ == type(again.model.visual).__name__ == tower and len(losses) == 2
    x = torch.stack([enc.preprocess_array(torch.rand(32, 32)) for _ in range(2)])
    assert torch.equal(again.encode_images(x), enc.encode_images(x))


def test_preprocess_gray_matches_open_clip_transform(tmp_path):
    enc = tiny_encoder(tmp_path / "clip")
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:50, 0:70]
    arr = (127 + 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + 60 * (np.hypot(xx - 40, yy - 20) < 8)).astype(np.uint8)
    ours = enc.preprocess_array(torch.from_numpy(arr / 255.0).float())
    theirs = enc.preprocess(Image.fromarray(arr))  # open_clip's PIL pipeline (uint8 rounding, PIL bicubic)
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours - theirs).abs().mean() < 0.05 * float(theirs.std())
    assert torch.allclose(preprocess_gray(torch.ones(10, 10), 8, (0.5,) * 3, (0.5,) * 3), torch.ones(3, 8, 8))


@pytest.mark.parametrize("bad", [dict(image_size=30), dict(text_heads=3), dict(batch_size=1), dict(lr=0),
                                 dict(steps=-1), dict(vision_width=40), dict(vision_arch="cnn"),
                                 dict(image_size=48, vision_arch="resnet")])
def test_config_validation_names_the_parameter(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key if key != "text_heads" else "text_heads"):
        tiny_config(**bad)
    assert isinstance(tiny_config(), SmallClipConfig)


def test_evaluate_clip_recall_and_auroc():
    import numpy as np
    import pandas as pd

    from lanic_nb.embed.clip_eval import evaluate_clip
    from lanic_nb.manifest import FINDINGS

    rng = np.random.default_rng(0)
    n = 40
    rep = rng.normal(size=(n, 8)).astype(np.float32)
    rep /= np.linalg.norm(rep, axis=1, keepdims=True)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, 5))
    labels[:4] = [1, 0, 0, 0, 0]  # both classes present
    m = pd.DataFrame({"split": ["test"] * n, "report": [f"r{i}" for i in range(n)],
                      **{f: labels[:, j] for j, f in enumerate(FINDINGS)}})
    scores = pd.DataFrame({f: (labels[:, j] == 1).astype(float) for j, f in enumerate(FINDINGS)})
    good = evaluate_clip(m, rep, rep, scores, k=1)
    assert good["recall@1"] == 1.0 and good["zeroshot_auroc_mean"] == 1.0
    bad = evaluate_clip(m, rep, np.roll(rep, 1, axis=0), 1 - scores, k=1)
    assert bad["recall@1"] == 0.0 and bad["zeroshot_auroc_mean"] == 0.0
    # Duplicate report texts: retrieving an identical text counts as a hit.
    m2 = m.assign(report=["same"] * n)
    assert evaluate_clip(m2, rep, np.roll(rep, 1, axis=0), scores, k=1)["recall@1"] == 1.0


def test_zero_shot_scores_shape_and_nan_rows(tmp_path):
    import numpy as np

    from lanic_nb.embed.clip_eval import zero_shot_scores
    from lanic_nb.manifest import FINDINGS

    enc = tiny_encoder(tmp_path / "clip")
    emb = enc.encode_images(torch.stack([enc.preprocess_array(torch.rand(32, 32)) for _ in range(3)])).numpy()
    emb[1] = np.nan
    s = zero_shot_scores(enc, emb)
    assert list(s.columns) == list(FINDINGS) and s.iloc[1].isna().all()
    assert s.drop(index=1).stack().between(0, 1).all()
