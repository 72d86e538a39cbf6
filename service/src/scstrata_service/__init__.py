"""scstrata service: cell embeddings from any layer of single-cell foundation models."""

from scstrata_service.contract import ModelBackend, ModelCard, TokenizedCells
from scstrata_service.layers import resolve_layers

__all__ = ["ModelBackend", "ModelCard", "TokenizedCells", "resolve_layers"]
