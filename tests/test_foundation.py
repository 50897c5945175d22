"""The shared contracts: atomic I/O, the manifest, the run directory, the notebook runner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lanic_nb import io
from lanic_nb.manifest import FINDINGS, ManifestError, conform, manifest_hash, split_by_patient, validate
from lanic_nb.rundir import RunDir


def _manifest(n=12):
    return pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "image_path": [f"images/im{i}.png" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": ["train"] * n,
            **{f: np.where(np.arange(n) % 3 == 0, 1.0, np.nan) for f in FINDINGS},
        }
    )


def test_atomic_write_leaves_no_half_file(tmp_path):
    target = tmp_path / "t.json"
    io.write_json(target, {"a": 1})

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Boom
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_json_handles_numpy_and_nan(tmp_path):
    p = io.write_json(tmp_path / "m.json", {"x": np.float32(0.5), "y": float("nan"), "z": np.arange(3)})
    assert io.read_json(p) == {"x": 0.5, "y": None, "z": [0, 1, 2]}


def test_tensors_and_tables_round_trip(tmp_path):
    t = {"w": torch.randn(3, 4), "i": torch.arange(5)}
    back = io.read_tensors(io.write_tensors(tmp_path / "w.safetensors", t))
    assert all(torch.equal(t[k], back[k]) for k in t)
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    for name in ("t.parquet", "t.csv"):
        pd.testing.assert_frame_equal(io.read_table(io.write_table(tmp_path / name, df)), df)
    with pytest.raises(ValueError, match="parquet or .csv"):
        io.write_table(tmp_path / "t.xlsx", df)


def test_conform_fills_and_orders_columns():
    df = conform(_manifest())
    assert list(df.columns[:5]) == ["image_id", "image_path", "patient_id", "study_id", "view"]
    assert (df["status"] == "ok").all() and (df["report"] == "").all()
    assert df["Edema"].dtype == np.float32


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.assign(image_id="same"), "image_id must be unique"),
        (lambda d: d.assign(split="training"), "split must be one of"),
        (lambda d: d.assign(Edema=2.0), "'Edema'"),
        (lambda d: d.assign(split=["train", "test"] * 6), "more than one split"),
        (lambda d: d.drop(columns="patient_id"), "patient_id"),
    ],
)
def test_manifest_rejects_broken_contract(mutate, message):
    with pytest.raises(ManifestError, match=message):
        conform(mutate(_manifest()))


def test_split_by_patient_is_deterministic_and_disjoint():
    pids = pd.Series([f"p{i % 50}" for i in range(400)])
    a, b = split_by_patient(pids, seed=3), split_by_patient(pids, seed=3)
    assert (a == b).all()
    assert not (a == split_by_patient(pids, seed=4)).all()
    per_patient = pd.DataFrame({"p": pids, "s": a}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    counts = pd.Series(a).groupby(pids).first().value_counts()
    assert counts["train"] == 35 and counts["val"] == 5 and counts["test"] == 10
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(pids, fractions=(0.5, 0.5, 0.5))


def test_manifest_hash_tracks_rows():
    df = conform(_manifest())
    assert manifest_hash(df) == manifest_hash(df.copy())
    assert manifest_hash(df) != manifest_hash(df.iloc[::-1].reset_index(drop=True))
    validate(df)


def test_rundir_layout(tmp_path):
    rd = RunDir(tmp_path / "r")
    assert not (tmp_path / "r").exists()  # constructing creates nothing
    assert rd.manifest == tmp_path / "r" / "data" / "manifest.parquet"
    assert rd.metrics_file("00_data").parent.is_dir()
