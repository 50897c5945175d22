"""Concepts: the radiology vocabulary (curated list extended by noun phrases mined from the reports), the
VLM's image-concept similarities, and the mask-free MAMMI-style naming of any set of units from them."""
