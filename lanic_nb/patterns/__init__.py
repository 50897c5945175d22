"""Patterns: the ensemble's latents merged into the directions many members learned, their activations,
statistics and effects on the findings, the pattern stage (``run_patterns``), and its evaluation against the
phantom's planted truth (``evaluate``, the only module here that reads it)."""
