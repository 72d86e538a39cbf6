"""Pydantic models for what the service sends back (the HTTP edge)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SkipValidation


class ModelCard(BaseModel):
    """One entry of ``GET /models``: what a deployed model is and what it accepts.

    Fields the client relies on are required; descriptive ones have defaults so that an older
    or newer service that omits one still yields a usable card. Unknown fields are kept
    (``card.model_extra``) rather than dropped, because the service may add to the card.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    family: str
    n_layers: int = Field(ge=0, description="Transformer blocks L; layer indices run 0..L.")
    poolings: dict[str, int] = Field(description="Embedding dimension per pooling name.")
    default_pooling: str = "official"
    hidden_size: int | None = None
    gene_id_kind: str | None = None
    vocab_size: int | None = None
    checkpoint_digest: str | None = None
    demo_weights: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    def dim(self, pooling: str | None = None) -> int:
        """Embedding dimension for ``pooling`` (the card's default pooling when None)."""
        name = pooling or self.default_pooling
        try:
            return self.poolings[name]
        except KeyError:
            known = ", ".join(sorted(self.poolings))
            raise KeyError(f"model {self.name!r} has no pooling {name!r} (has: {known})") from None


class EmbedResult(BaseModel):
    """One result of ``POST /embed`` (the reply is a list of these, one per request item).

    ``layers`` is not validated by pydantic: it can hold tens of millions of floats, and
    numpy both converts and checks the shape far faster (see ``_protocol.parse_embed_reply``).
    A result asked for with ``"format": "npz"`` has no ``layers`` but ``npz``, the base64 of
    an ``.npz`` file holding them.
    """

    model_config = ConfigDict(extra="allow")

    model: str
    pooling: str
    n_cells: int = Field(ge=0)
    dim: int = Field(ge=0)
    layers: SkipValidation[dict[str, Any] | None] = None
    npz: str | None = None
    n_unmapped_genes: int = 0
    unmapped_genes: list[str] = Field(default_factory=list)
