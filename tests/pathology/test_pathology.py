"""Pathology phantom, tile encoders, SAE feature-gene associations, the Visium reader, the stage
(run_pathology) and its optional dependencies (the pathology extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import nbformat
import numpy as np
import pandas as pd
import pytest
import timm  # the pathology extra (make installs it: .[dev,pathology])
import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file
from scipy.stats import false_discovery_control, spearmanr

from lanic_nb.embed.encoders import EncoderUnavailable
from lanic_nb.evaluation import load_tile_truth
from lanic_nb.io import read_table
from lanic_nb.pathology import study as P
from lanic_nb.pathology.extras import PATHOLOGY_EXTRA
from lanic_nb.pathology.phantom import (
    GENES,
    TISSUES,
    TileConfig,
    load_tile_dataset,
    log_normalize,
    make_tile_dataset,
    save_tile_dataset,
)
from lanic_nb.pathology.stage import REPORTED_GENES, PathologyConfig, run_pathology
from lanic_nb.pathology.views import plot_morphology_heatmap, plot_tile_grid, plot_tile_map
from lanic_nb.pathology.visium import POSITION_COLUMNS, read_visium, spot_tiles, tiles_to_visium, write_visium
from lanic_nb.patterns.merge import MergeConfig
from lanic_nb.run_notebooks import NOTEBOOK_DIR, run_notebook
from lanic_nb.rundir import RunDir, load_metrics
from lanic_nb.settings import nest, stage_config
from lanic_nb.transcoder.config import TranscoderConfig


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
    assert load_tile_truth(tmp_path).equals(d.truth)


def test_spearman_and_bh_match_scipy():
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
    sae = TranscoderConfig(activation="relu", l1_coeff=1e-2, k=1, n_members=2, d_dict=32, steps=250, batch_size=64)
    ens, _ = P.train_sae(x, sae, progress=False)
    ps, act = P.sae_features(ens, x, MergeConfig(sim_threshold=0.7, min_consistency=0.5))
    assert ps.n_patterns >= 2 and act.shape == (len(x), ps.n_patterns)
    table = P.feature_gene_table(act, pd.DataFrame(log_normalize(d.counts.to_numpy()), columns=list(GENES)))
    tumour_genes = table[table.gene.isin(["EPCAM", "KRT8", "MKI67"]) & (table.q < 0.01)]
    assert tumour_genes.rho.max() > 0.6
    noise = table[table.gene.isin(["NOISE1", "NOISE2"])]
    assert noise.rho.abs().max() < tumour_genes.rho.max() - 0.2
    au = P.morphology_aurocs(act, d.truth, TISSUES)
    assert au["tumour"].max() > 0.85


def test_vit_small_local_weights_and_offline_fast_fail(tmp_path):

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


def test_pathology_config_fails_at_once_naming_the_bad_field():
    for path, bad in (("tiles.grid", 0), ("sae.n_members", 0), ("q_max", 0), ("merge.sim_threshold", 1.5),
                      ("sae.l1_coeff", -1), ("map_neighbors", 1)):
        with pytest.raises(ValueError, match=path.rsplit(".", 1)[-1]):
            stage_config("09_pathology", None, nest(path, bad))
    assert PathologyConfig().sae == TranscoderConfig()  # the demo's ReLU SAE is notebooks/params/demo.yaml's


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pathology_run")
    return run, run_pathology(run, stage_config("09_pathology", "small"))


def test_run_pathology_writes_its_artifacts_and_metrics(stage_run):
    run, r = stage_run
    folder = RunDir(run).stage("pathology")
    for name in ("tiles.safetensors", "obs.parquet", "counts.parquet", "config.json", "truth.parquet"):
        assert (folder / "tiles" / name).is_file(), name
    for name in ("filtered_feature_bc_matrix.h5", "spatial/tissue_positions.csv", "spatial/tissue_hires_image.png"):
        assert (folder / "visium_slide0" / name).is_file(), name
    assert not list(folder.rglob(".*.tmp*"))  # every writer renamed its temp file

    m = load_metrics(run, "09_pathology")
    assert m == pytest.approx(r.metrics, nan_ok=True) and m["encoder"] == "tile-autoencoder"
    assert set(m) == {"encoder", "n_tiles", "n_features", "mean_consistency", "mean_seed_agreement", "sae_fvu",
                      "n_significant_pairs", "n_features_with_gene", "visium_spots", "visium_tile_error",
                      *(f"best_rho_{g}" for g in REPORTED_GENES), *(f"best_auroc_{t}" for t in TISSUES)}
    assert m["n_tiles"] == m["visium_spots"] == 144 == len(r.tiles) == len(r.tile_xy)
    assert m["visium_tile_error"] < 1  # hires scale 1: the spot crops are the tiles again

    # The tables behind the metrics: recomputing a metric from the written file gives the recorded value.
    fg = read_table(folder / "feature_gene.parquet")
    pd.testing.assert_frame_equal(fg, r.feature_gene)
    assert {"feature", "gene", "rho", "p", "q", "consistency", "seed_agreement"} <= set(fg.columns)
    assert set(fg.gene) == set(GENES) and fg.feature.nunique() == m["n_features"] == r.features.n_patterns
    assert m["n_significant_pairs"] == int((fg.q <= 0.05).sum()) > 0
    assert m["best_rho_MKI67"] == pytest.approx(fg[fg.gene == "MKI67"].rho.max())
    assert max(m["best_rho_MKI67"], m["best_rho_EPCAM"]) > m["best_rho_NOISE1"] + 0.2
    assert m["n_features_with_gene"] == len(r.top_genes) == r.top_genes.feature.nunique()
    morph = read_table(folder / "feature_morphology.parquet")
    assert list(morph.columns) == [*TISSUES, "feature"] and list(morph.feature) == list(range(m["n_features"]))
    assert m["best_auroc_tumour"] == pytest.approx(morph.tumour.max()) and m["best_auroc_tumour"] > 0.85
    assert not set(TISSUES) & set(fg.columns)  # the planted truth stays in tiles/truth.parquet
    np.testing.assert_array_equal(r.dominant, load_tile_truth(folder / "tiles").dominant.to_numpy())


def test_pathology_plots_draw_what_they_are_given(stage_run):
    _, r = stage_run
    fig = plot_tile_grid(r.tiles, r.obs.slide.to_numpy(), per_slide=4)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), r.tiles[0])
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), r.tiles[36])  # spread: every 144 // 4
    heat = plot_morphology_heatmap(r.morphology)
    np.testing.assert_allclose(heat.axes[0].images[0].get_array(), r.morphology.to_numpy())
    tile_map = plot_tile_map(r.tile_xy, r.dominant)
    sizes = [len(c.get_offsets()) for c in tile_map.axes[0].collections]
    assert sizes == [int((r.dominant == t).sum()) for t in TISSUES] and sum(sizes) == 144


def test_library_imports_without_the_pathology_extra(tmp_path):
    """Every lanic_nb module imports with scanpy, anndata, h5py and timm missing; the pathology code that
    needs one fails with the command that installs it."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        BLOCKED = {set(PATHOLOGY_EXTRA)!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Block())
        import lanic_nb
        for m in pkgutil.walk_packages(lanic_nb.__path__, "lanic_nb."):
            importlib.import_module(m.name)
        assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)
        from lanic_nb.pathology.stage import PathologyConfig, run_pathology
        from lanic_nb.pathology.visium import read_visium
        for call in (lambda: read_visium({str(tmp_path)!r}),
                     lambda: run_pathology({str(tmp_path)!r}, PathologyConfig())):
            try:
                call()
            except ImportError as e:
                assert "lanic-nb[pathology]" in str(e), e
            else:
                raise AssertionError("no ImportError")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.notebook
def test_notebook_09_shows_the_stage_it_runs(stage_run, tmp_path):
    """Notebook 09 alone (it reads no earlier stage): its parameters reach run_pathology (the same metrics as
    the direct call with small.yaml's values), it shows its three figures, and it writes nothing else."""
    run = tmp_path / "run"
    executed = run_notebook(NOTEBOOK_DIR / "09_pathology.ipynb", run, "small")
    assert load_metrics(run, "09_pathology") == pytest.approx(stage_run[1].metrics, nan_ok=True)
    nb = nbformat.read(executed, as_version=4)
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # tile grid, morphology heat map, tile map
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    written = {p.relative_to(run).parts[0] for p in run.iterdir() if not p.name.startswith(".")}  # not the lock
    assert written == {"pathology", "metrics", "logs", "notebooks", "stages"}
