"""MAMMI: name the neurons of any torch model (a small CNN, the classifier's hidden units, the transcoder
patterns) with concepts, mask-free, beside the CLIP-Dissect and top-k mean baselines, and score every method
against the phantom's planted truth (``evaluate``, the only module here that reads it)."""
