"""The shared runtime every family runs on, one job per module (docs/architecture.md):

- ``device``: device policy (device, dtype, attention kernel, compile, token budget, placement,
  threads);
- ``attention``: the packed layout and packed attention;
- ``batching``: token-budget batching and the out-of-memory split;
- ``forward``: the one forward pass (input embedding -> blocks, early exit -> pooling);
- ``pooling``: per-cell reductions over packed tokens and the ``<cls>``-first pooler;
- ``modules``: encoder modules more than one family is built from;
- ``compile``: the torch.compile cache;
- ``fused``: a dense kernel fused beyond what torch does alone;
- ``backend``: :class:`~scstrata_service.contract.ModelBackend` for any family's modules.
"""
