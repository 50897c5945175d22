"""Read a 10x Genomics Visium output folder (Space Ranger ``outs/``) into AnnData, and cut spot tiles.

The layout (Space Ranger >= 1.0; ``tissue_positions.csv`` with a header since 2.0, headerless
``tissue_positions_list.csv`` before):

    outs/
      filtered_feature_bc_matrix.h5          counts, 10x HDF5 (or the folder below)
      filtered_feature_bc_matrix/            barcodes.tsv.gz, features.tsv.gz, matrix.mtx.gz
      spatial/tissue_positions.csv           barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
                                             pxl_col_in_fullres
      spatial/scalefactors_json.json         tissue_hires_scalef, tissue_lowres_scalef, spot_diameter_fullres, ...
      spatial/tissue_hires_image.png         (and/or tissue_lowres_image.png)

Counts go through scanpy's 10x readers; the spatial part is attached exactly where ``scanpy.read_visium``
puts it (``obsm["spatial"]`` full-resolution pixel (x, y); ``uns["spatial"][library_id]`` images and scale
factors), so scanpy's plotting works. ``write_visium`` writes the same layout (the tests' fixture, and the
phantom exported as a slide).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import sparse
from scipy.io import mmwrite

from lanic_nb.io import atomic_path
from lanic_nb.pathology.extras import import_extra

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
H5_NAME = "filtered_feature_bc_matrix.h5"
MTX_DIR = "filtered_feature_bc_matrix"


def _positions(spatial: Path) -> pd.DataFrame:
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    if new.exists():
        pos = pd.read_csv(new, header=0)
    elif old.exists():
        pos = pd.read_csv(old, header=None)
    else:
        raise FileNotFoundError(f"{spatial}: neither tissue_positions.csv nor tissue_positions_list.csv")
    pos.columns = list(POSITION_COLUMNS)
    return pos.set_index("barcode")


def read_visium(folder: str | Path, library_id: str | None = None, load_images: bool = True):
    """A Visium ``outs/`` folder -> AnnData (spots x genes, raw counts) with spatial coordinates and images.

    Only spots present in the count matrix are kept (the filtered matrix holds in-tissue spots).
    """
    sc = import_extra("scanpy")  # the pathology extra (scanpy brings anndata)
    folder = Path(folder)
    if (folder / H5_NAME).exists():
        adata = sc.read_10x_h5(folder / H5_NAME)
    elif (folder / MTX_DIR).is_dir():
        adata = sc.read_10x_mtx(folder / MTX_DIR, var_names="gene_symbols")
    else:
        raise FileNotFoundError(f"{folder}: no {H5_NAME} and no {MTX_DIR}/ (is this a Space Ranger outs/ folder?)")
    adata.var_names_make_unique()
    spatial = folder / "spatial"
    pos = _positions(spatial)
    missing = adata.obs_names.difference(pos.index)
    if len(missing):
        raise ValueError(f"{len(missing)} barcodes of the matrix (e.g. {missing[0]!r}) have no tissue position")
    pos = pos.loc[adata.obs_names]
    adata.obs = adata.obs.join(pos[["in_tissue", "array_row", "array_col"]])
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)  # (x, y)
    library_id = library_id or folder.resolve().name
    entry: dict = {"scalefactors": json.loads((spatial / "scalefactors_json.json").read_text()), "images": {}}
    if load_images:
        for res in ("hires", "lowres"):
            path = spatial / f"tissue_{res}_image.png"
            if path.exists():
                entry["images"][res] = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        if not entry["images"]:
            raise FileNotFoundError(f"{spatial}: no tissue_hires_image.png or tissue_lowres_image.png")
    adata.uns["spatial"] = {library_id: entry}
    return adata


def spot_tiles(adata, size: int = 32, res: str = "hires", diameter_scale: float = 1.0) -> np.ndarray:
    """(n_spots, size, size, 3) uint8 crops of the tissue image centred on each spot, one spot diameter wide."""
    (entry,) = adata.uns["spatial"].values()
    img = entry["images"][res]
    sf = entry["scalefactors"]
    scale = sf[f"tissue_{res}_scalef"]
    half = max(1, int(round(sf["spot_diameter_fullres"] * scale * diameter_scale / 2)))
    pad = np.pad(img, ((half, half), (half, half), (0, 0)), mode="edge")
    out = np.zeros((adata.n_obs, size, size, 3), np.uint8)
    for i, (x, y) in enumerate(adata.obsm["spatial"] * scale):
        cx, cy = int(round(x)) + half, int(round(y)) + half
        crop = (pad[cy - half : cy + half, cx - half : cx + half] * 255).clip(0, 255).astype(np.uint8)
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    return out


def write_visium(
    folder: str | Path, counts: np.ndarray, barcodes: list[str], genes: list[str], positions: pd.DataFrame,
    image: np.ndarray, scalefactors: dict, h5: bool = True, new_positions: bool = True,
) -> Path:
    """Write a Space Ranger-style ``outs/`` folder: counts (n_spots, n_genes) int, positions with
    POSITION_COLUMNS (one row per barcode; more rows allowed), image (H, W, 3) uint8 as the hires image
    (and a 4x smaller lowres one). ``h5`` picks the 10x HDF5 matrix (schema v3) or the mtx folder. Each file
    is written atomically (temp file, then rename)."""
    folder = Path(folder)
    spatial = folder / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    csc = sparse.csc_matrix(np.asarray(counts, np.int32).T)  # (genes, spots): 10x stores features x barcodes
    if h5:
        h5py = import_extra("h5py")
        with atomic_path(folder / H5_NAME, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
            f.attrs["library_ids"] = np.array([folder.resolve().name.encode()])
            m = f.create_group("matrix")
            m["barcodes"] = np.array([b.encode() for b in barcodes])
            m["data"], m["indices"], m["indptr"] = csc.data, csc.indices.astype(np.int64), csc.indptr.astype(np.int64)
            m["shape"] = np.array(csc.shape, np.int32)
            feat = m.create_group("features")
            feat["id"] = np.array([f"ENSG{i:011d}".encode() for i in range(len(genes))])
            feat["name"] = np.array([g.encode() for g in genes])
            feat["feature_type"] = np.array([b"Gene Expression"] * len(genes))
            feat["genome"] = np.array([b"GRCh38"] * len(genes))
            feat["_all_tag_keys"] = np.array([b"genome"])
    else:
        mtx = folder / MTX_DIR
        with atomic_path(mtx / "matrix.mtx.gz", suffix=".gz") as tmp, gzip.open(tmp, "wb") as f:
            mmwrite(f, sparse.coo_matrix(csc))
        with atomic_path(mtx / "barcodes.tsv.gz", suffix=".gz") as tmp, gzip.open(tmp, "wt") as f:
            f.write("".join(b + "\n" for b in barcodes))
        with atomic_path(mtx / "features.tsv.gz", suffix=".gz") as tmp, gzip.open(tmp, "wt") as f:
            f.write("".join(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(genes)))
    pos = positions[list(POSITION_COLUMNS)]
    name = "tissue_positions.csv" if new_positions else "tissue_positions_list.csv"
    with atomic_path(spatial / name, suffix=".csv") as tmp:
        pos.to_csv(tmp, index=False, header=new_positions)
    with atomic_path(spatial / "scalefactors_json.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(scalefactors))
    lo = Image.fromarray(image).resize((max(1, image.shape[1] // 4), max(1, image.shape[0] // 4)))
    for res, img in (("hires", Image.fromarray(image)), ("lowres", lo)):
        with atomic_path(spatial / f"tissue_{res}_image.png", suffix=".png") as tmp:
            img.save(tmp, format="PNG")
    return folder


def tiles_to_visium(
    folder: str | Path, tiles: np.ndarray, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, genes: list[str],
    hires_scale: float = 0.5,
) -> Path:
    """Lay tiles of one slide out as a Visium section (spot = tile centre) and write it with ``write_visium``.

    The full-resolution image is the tile mosaic; the hires image is it scaled by ``hires_scale``.
    """
    s = tiles.shape[1]
    n_r, n_c = int(rows.max()) + 1, int(cols.max()) + 1
    mosaic = np.zeros((n_r * s, n_c * s, 3), np.uint8)
    for t, r, c in zip(tiles, rows, cols, strict=True):
        mosaic[r * s : (r + 1) * s, c * s : (c + 1) * s] = t
    hires = np.asarray(Image.fromarray(mosaic).resize((int(n_c * s * hires_scale), int(n_r * s * hires_scale))))
    barcodes = [f"{chr(65 + r % 26)}{r:03d}{c:03d}-1" for r, c in zip(rows, cols, strict=True)]
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": rows, "array_col": cols,
                        "pxl_row_in_fullres": rows * s + s // 2, "pxl_col_in_fullres": cols * s + s // 2})
    sf = {"tissue_hires_scalef": hires_scale, "tissue_lowres_scalef": hires_scale / 4,
          "spot_diameter_fullres": float(s), "fiducial_diameter_fullres": float(s) * 1.6}
    return write_visium(folder, counts, barcodes, genes, pos, hires, sf)
