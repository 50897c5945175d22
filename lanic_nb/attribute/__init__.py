"""Exact attribution: every logit of the classifier as a sum of pattern contributions (notebook 06).

``core`` computes the decomposition and its tables, ``faithfulness`` the deletion and insertion tests,
``shortcut`` the phantom-only check that attribution exposes the planted shortcut (evaluation), ``plots``
the stage's figures and ``stage`` the notebook's one call, ``run_attribution``.
"""
