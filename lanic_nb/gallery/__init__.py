"""Galleries (notebook 07): browse patterns and per-image explanations in JupyterLab, or as one HTML page.

``data`` holds what both views show and the pure pieces (rankings, PNGs, explanation text), ``widgets``
the ipywidgets views, ``html`` the self-contained static page (with its patient-data guard) and ``stage``
the notebook's one call, ``run_gallery``.
"""
