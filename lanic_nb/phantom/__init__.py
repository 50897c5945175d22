"""The embedded default dataset: procedurally drawn chest X-ray phantoms with planted findings, devices and
a shortcut, templated radiology reports, and the ground truth (read only by the evaluation)."""
