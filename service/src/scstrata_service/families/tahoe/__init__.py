"""Tahoe-X1 (Tahoe Therapeutics): the published Hugging Face folder layout, served per layer."""
