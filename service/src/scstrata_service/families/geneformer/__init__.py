"""Geneformer (Hugging Face BERT, V1 and V2 series): rank-value tokens, served per layer."""
