"""Embeddings (notebook 01): open_clip encoders (``hf-hub:`` BiomedCLIP, local folders), the small CLIP the
phantom path trains itself, and the resumable, memory-mapped embedding store of a run."""
