"""UMAP maps (notebook 05): patterns by decoder direction and images by embedding, as PNG figures (``views``) and
self-contained HTML pages with hover (``pages``); ``stage.run_maps`` makes both maps of a run."""
