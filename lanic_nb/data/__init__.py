"""Datasets (notebook 00): readers of the real releases in their own layouts (MIMIC-CXR-JPG, NIH ChestX-ray14,
CheXpert, OpenI, a folder + CSV), the rule-based report labeler, and the data stage that writes the run's
manifest (the embedded phantom or a real release)."""
