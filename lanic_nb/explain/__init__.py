"""Explain radiographs with a trained run: template text, the per-image pipeline, pages, the command line.

``text`` holds the template explanations and the ``Annotator`` seam, ``annotator`` a working annotator (and
pattern namer) on a local Hugging Face image-text-to-text model, ``config`` the one configuration, ``model``
the run loaded once (its own encoder, checked by fingerprint), ``pipeline`` the per-image work, ``output`` and
``page`` the JSON, parquet and HTML files, ``stage`` the API (``open_explainer``, ``explain_paths``,
``run_explain`` for notebook 10), ``widgets`` the JupyterLab upload view, and ``__main__`` the command line
``python -m lanic_nb.explain --run RUN_DIR IMAGE_OR_FOLDER... --out DIR``.
"""
