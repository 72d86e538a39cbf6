"""Dense kernels fused beyond what eager PyTorch (or torch.compile) does on its own.

On an H200 the profile of one scFoundation pass (bench/RESULTS.md) put 4.7% of the time in a
separate ReLU over the 4x-wide feed-forward activations. cuBLASLt can apply bias and ReLU in
the matmul's epilogue; ``torch._addmm_activation`` reaches that epilogue. It is wrapped as a
registered operator so that torch.compile keeps it as one extern call instead of splitting it
into a matmul and a separate pointwise kernel.
"""

from __future__ import annotations

import torch


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``relu(x @ weight.T + bias)`` for a 2-D ``x``, bias and ReLU applied in the matmul."""
    return _linear_relu_op(x, weight, bias)


@torch.library.custom_op("scstrata::linear_relu", mutates_args=())
def _linear_relu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch._addmm_activation(bias, x, weight.t())


@_linear_relu_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))
