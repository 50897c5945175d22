"""The real-data path end to end, offline: a dataset on disk (generic folder + CSV, some images corrupt)
goes through notebook 00 (reader) and notebook 01 (a *loaded* open_clip model from a local folder, the
same code path as hf-hub:BiomedCLIP), with no phantom truth and no training of a CLIP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from lanic_nb.data.readers import build_manifest
from lanic_nb.embed.store import EmbeddingStore
from lanic_nb.io import read_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.run_notebooks import NOTEBOOK_DIR
from lanic_nb.rundir import RunDir


def _folder_dataset(root, n=24):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "imgs" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(path)
        effusion = "1" if i % 3 == 0 else "0"
        report = "Small right pleural effusion." if effusion == "1" else "No pleural effusion."
        rows.append(f"imgs/{i:03d}.png,P{i // 2},PA,{effusion},{report}")
    (root / "imgs" / "000.png").write_bytes(b"not a png")  # one corrupt image: recorded, never a crash
    (root / "labels.csv").write_text("path,patient_id,view,Pleural Effusion,report\n" + "\n".join(rows) + "\n")


def test_build_manifest_installs_a_real_manifest(tmp_path):
    _folder_dataset(tmp_path / "ds")
    m = build_manifest(tmp_path / "run", "folder", tmp_path / "ds")
    back = read_table(RunDir(tmp_path / "run").manifest)
    pd.testing.assert_frame_equal(back, m)
    meta = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    assert meta["dataset"] == "folder" and meta["n_images"] == 24
    assert meta["label_positive_rate"]["Pleural Effusion"] == (m["Pleural Effusion"] == 1).mean()
    assert not (tmp_path / "run" / "data" / "ground_truth.parquet").exists()


def test_folder_dataset_through_notebooks_00_and_01_with_a_loaded_model(tmp_path):
    import papermill as pm

    from lanic_nb.embed.encoders import PHANTOM_ENCODER_DIR

    clip_dir = PHANTOM_ENCODER_DIR  # an open_clip folder, as a user's own would be: loaded, not retrained
    _folder_dataset(tmp_path / "ds")
    run = tmp_path / "real_run"
    params = tmp_path / "real.yaml"  # a real run's params file, as mimic_biomedclip.yaml is (no `extends`)
    params.write_text(f"all:\n  device: cpu\n00_data:\n  dataset: folder\n  data_root: {tmp_path / 'ds'}\n"
                      f"01_embed:\n  model: local-dir:{clip_dir}\n  num_workers: 0\n")
    common = {"run_dir": str(run), "params": str(params)}
    pm.execute_notebook(
        str(NOTEBOOK_DIR / "00_data.ipynb"), str(tmp_path / "00.ipynb"), cwd=str(NOTEBOOK_DIR),
        parameters=common, progress_bar=False,
    )
    pm.execute_notebook(  # a notebook's own settings override the file's
        str(NOTEBOOK_DIR / "01_embed.ipynb"), str(tmp_path / "01.ipynb"), cwd=str(NOTEBOOK_DIR),
        parameters={**common, "settings": {"batch_size": 8}}, progress_bar=False,
    )
    metrics = json.loads((run / "metrics" / "00_data.json").read_text())
    assert metrics["n_images"] == 24 and set(metrics["label_positive_rate"]) == set(FINDINGS)
    store = EmbeddingStore.open(RunDir(run).embed)
    manifest = read_table(RunDir(run).manifest)
    corrupt = manifest.index[manifest["image_id"] == "imgs/000.png"][0]
    assert not store.ok[corrupt] and np.isnan(store.image[corrupt]).all()
    assert store.ok.sum() == 23 and np.isfinite(store.image[store.ok]).all()
    np.testing.assert_allclose(np.linalg.norm(store.image[store.ok], axis=1), 1.0, atol=1e-4)
    emb = json.loads((run / "metrics" / "01_embed.json").read_text())
    assert "clip_train_seconds" not in emb  # loaded, not trained
