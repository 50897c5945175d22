"""The pathology study (notebook 09): an H&E-like tile phantom paired with gene expression (``phantom``), tile
encoders and sparse-autoencoder features tied to genes and tissue types (``study``), a 10x Visium reader and
writer (``visium``), and the stage that runs them all (``stage.run_pathology``). Needs the ``pathology`` extra
(scanpy, anndata, h5py, timm; see ``extras``), which nothing else in lanic_nb imports."""
