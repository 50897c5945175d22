"""Pathology phantom, tile encoders, SAE feature-gene associations, and the Visium reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lanic_nb.embed.encoders import EncoderUnavailable
from lanic_nb.pathology import study as P
from lanic_nb.pathology.phantom import (
    GENES,
    TISSUES,
    TileConfig,
    load_tile_dataset,
    log_normalize,
    make_tile_dataset,
    save_tile_dataset,
)
from lanic_nb.pathology.visium import POSITION_COLUMNS, read_visium, spot_tiles, tiles_to_visium, write_visium


@pytest.fixture(scope="module")
def tiny():
    cfg = TileConfig(n_slides=1, grid=14, seed=3)
    return cfg, make_tile_dataset(cfg)


def test_phantom_is_seeded_and_truth_is_consistent(tiny):
    cfg, d = tiny
    again = make_tile_dataset(cfg)
    assert np.array_equal(d.tiles, again.tiles) and d.counts.equals(again.counts)
    assert d.tiles.shape == (196, 32, 32, 3) and d.tiles.dtype == np.uint8
    frac = d.truth[list(TISSUES)].to_numpy()
    np.testing.assert_allclose(frac.sum(1), 1.0, atol=1e-9)
    assert set(d.truth.dominant) >= {"tumour", "stroma"}
    # Colour model: tumour/lymphocyte-rich tiles are more purple (less red minus blue) than fat tiles.
    mean_rgb = d.tiles.reshape(len(d.tiles), -1, 3).mean(1)
    fat, nuclear = d.truth.dominant == "fat", d.truth.dominant.isin(["tumour", "lymphocytes"])
    assert mean_rgb[fat].mean() > mean_rgb[nuclear].mean() + 20
    with pytest.raises(ValueError, match="grid"):
        TileConfig(grid=0)


def test_marker_genes_follow_composition(tiny):
    _, d = tiny
    expr = log_normalize(d.counts.to_numpy())
    rho, _ = P.spearman_matrix(d.truth[list(TISSUES)].to_numpy(), expr)  # (5, n_genes)
    g = {name: i for i, name in enumerate(GENES)}
    assert rho[TISSUES.index("lymphocytes"), g["PTPRC"]] > 0.5
    assert rho[TISSUES.index("fat"), g["ADIPOQ"]] > 0.5
    assert abs(rho[TISSUES.index("fat"), g["CD3E"]]) < rho[TISSUES.index("lymphocytes"), g["CD3E"]]


def test_save_load_keeps_truth_apart(tiny, tmp_path):
    cfg, d = tiny
    save_tile_dataset(d, tmp_path, cfg)
    tiles, obs, counts = load_tile_dataset(tmp_path)
    assert np.array_equal(tiles, d.tiles) and list(counts.columns) == list(GENES)
    assert not set(TISSUES) & (set(obs.columns) | set(counts.columns))
    from lanic_nb.evaluation import load_tile_truth

    assert load_tile_truth(tmp_path).equals(d.truth)


def test_spearman_and_bh_match_scipy():
    from scipy.stats import false_discovery_control, spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 4))
    b[:, 0] = a[:, 1] + 0.3 * b[:, 0]
    rho, p = P.spearman_matrix(a, b)
    for i in range(3):
        for j in range(4):
            r, pv = spearmanr(a[:, i], b[:, j])
            assert rho[i, j] == pytest.approx(r, abs=1e-9) and p[i, j] == pytest.approx(pv, rel=1e-6)
    np.testing.assert_allclose(P.benjamini_hochberg(p.ravel()), false_discovery_control(p.ravel()), rtol=1e-9)


def test_a_gene_driven_feature_is_found(tiny):
    """End to end on tiny sizes: encoder trained here -> SAE ensemble -> features; some consistent feature
    tracks a tumour marker gene (significant after FDR), and the best tumour feature has tumour AUROC > 0.85."""
    _, d = tiny
    enc, log = P.train_tile_encoder(d.tiles, P.TileAEConfig(channels=8, d_embed=16, epochs=6), progress=False)
    assert log.mse.iloc[-1] < log.mse.iloc[0]
    x, _, _ = P.standardize(enc.embed(d.tiles, progress=False))
    ens, _ = P.train_sae(x, n_members=2, d_dict=32, steps=250, batch_size=64, l1_coeff=1e-2, progress=False)
    ps, act = P.sae_features(ens, x, sim_threshold=0.7)
    assert ps.n_patterns >= 2 and act.shape == (len(x), ps.n_patterns)
    table = P.feature_gene_table(act, pd.DataFrame(log_normalize(d.counts.to_numpy()), columns=list(GENES)))
    tumour_genes = table[table.gene.isin(["EPCAM", "KRT8", "MKI67"]) & (table.q < 0.01)]
    assert tumour_genes.rho.max() > 0.6
    noise = table[table.gene.isin(["NOISE1", "NOISE2"])]
    assert noise.rho.abs().max() < tumour_genes.rho.max() - 0.2
    au = P.morphology_aurocs(act, d.truth, TISSUES)
    assert au["tumour"].max() > 0.85


def test_vit_small_local_weights_and_offline_fast_fail(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    enc = P.load_vit_small(tmp_path / "w.safetensors", model_name="vit_tiny_patch16_224")
    tiles = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    emb = enc.embed(tiles, progress=False)
    assert emb.shape == (2, 192)
    with torch.no_grad():  # the same weights, so the same CLS embedding as the source model
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        ref = src.eval()((x - enc.mean) / enc.std)
    np.testing.assert_allclose(emb, ref.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(EncoderUnavailable, match="vit_small_patch16_224.augreg_in21k"):
        P.load_vit_small("hf-hub:timm/vit_small_patch16_224.augreg_in21k")
    with pytest.raises(EncoderUnavailable, match="not found"):
        P.load_vit_small(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(("h5", "new_positions"), [(True, True), (False, False)])
def test_visium_fixture_round_trip(tmp_path, h5, new_positions):
    rng = np.random.default_rng(0)
    n_spots, genes = 6, ["PTPRC", "EPCAM", "MT-CO1"]
    counts = rng.poisson(3, (n_spots, 3))
    barcodes = [f"AAAC{i:04d}-1" for i in range(n_spots)]
    # One extra off-tissue spot in the positions file (Space Ranger lists every spot of the slide).
    pos = pd.DataFrame({"barcode": [*barcodes, "TTTT0000-1"], "in_tissue": [1] * n_spots + [0],
                        "array_row": np.arange(7), "array_col": np.arange(7) * 2,
                        "pxl_row_in_fullres": 10 + 20 * np.arange(7), "pxl_col_in_fullres": 30 + 10 * np.arange(7)})
    image = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    sf = {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.125, "spot_diameter_fullres": 16.0}
    write_visium(tmp_path, counts, barcodes, genes, pos, image, sf, h5=h5, new_positions=new_positions)
    assert (tmp_path / "spatial" / ("tissue_positions.csv" if new_positions else "tissue_positions_list.csv")).exists()
    ad = read_visium(tmp_path)
    assert list(ad.obs_names) == barcodes and list(ad.var_names) == genes
    np.testing.assert_array_equal(np.asarray(ad.X.todense()), counts)
    np.testing.assert_array_equal(ad.obsm["spatial"], pos.iloc[:n_spots][["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    (lib,) = ad.uns["spatial"].values()
    assert lib["scalefactors"] == sf and lib["images"]["hires"].shape == (100, 120, 3)
    assert tuple(POSITION_COLUMNS)[0] == "barcode"


def test_phantom_slide_as_visium_gives_back_its_tiles(tiny, tmp_path):
    _, d = tiny
    tiles_to_visium(tmp_path, d.tiles, d.obs.row.to_numpy(), d.obs.col.to_numpy(), d.counts.to_numpy(), list(GENES),
                    hires_scale=1.0)
    ad = read_visium(tmp_path)
    np.testing.assert_array_equal(np.asarray(ad.X.todense()), d.counts.to_numpy())
    crops = spot_tiles(ad, size=32)
    assert np.abs(crops.astype(int) - d.tiles.astype(int)).mean() < 3  # same pixels back (scale 1, no resize)


@pytest.mark.notebook
def test_notebook_writes_the_feature_gene_table(small_run):
    from lanic_nb.io import read_table
    from lanic_nb.rundir import RunDir, load_metrics

    run = small_run.until("09")
    folder = RunDir(run).stage("pathology")
    fg = read_table(folder / "feature_gene.parquet")
    assert {"feature", "gene", "rho", "p", "q", "consistency"} <= set(fg.columns)
    assert set(fg.gene) == set(GENES) and fg.q.dropna().between(0, 1).all()
    assert not set(TISSUES) & set(fg.columns)  # the planted truth stays in tiles/truth.parquet
    m = load_metrics(run, "09_pathology")
    assert m["n_tiles"] == 144 and m["visium_spots"] == 144 and m["visium_tile_error"] < 3
    assert m["n_features"] >= 2 and m["n_significant_pairs"] > 0
    assert m["best_auroc_tumour"] > 0.8  # the tumour feature is found even at small sizes
    assert max(m["best_rho_MKI67"], m["best_rho_EPCAM"]) > m["best_rho_NOISE1"]
