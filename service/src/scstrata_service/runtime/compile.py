"""The compile cache: block forwards under ``torch.compile``, made once per function."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

# What a failed torch.compile raises (Dynamo's and Inductor's errors share this base).
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` under ``torch.compile`` (dynamic token counts), made once per function.

    A block's forward is compiled once for all blocks of a model: parameters are graph
    inputs, and the token count is a symbolic size, so new batch sizes do not recompile.
    """
    return torch.compile(fn, dynamic=True)
