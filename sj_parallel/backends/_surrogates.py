"""SpikingJelly surrogate objects as parameters of the fused kernels (cupy, triton).

The kernels hold each surrogate's derivative as device code (``sj_parallel/cuda/
common.cuh``, ``sj_parallel/triton/common.py``) selected by a kind number; this module
reads the kind and its parameters from the object.
"""

from __future__ import annotations

from typing import Tuple

import torch

#: Surrogate kinds of the fused kernels (the same numbers in CUDA and Triton).
SG_KINDS = {
    "ATan": 0,
    "Sigmoid": 1,
    "PiecewiseQuadratic": 2,
    "SoftSign": 3,
    "Erf": 4,
    "PiecewiseLeakyReLU": 5,
}


def surrogate_params(
    surrogate_function, backend: str = "cupy"
) -> Tuple[int, float, float, float]:
    """``(kind, a, c, d)`` of a SpikingJelly surrogate object for the kernels.

    :param surrogate_function: one of SpikingJelly's surrogates named in
        :data:`SG_KINDS`, with ``spiking=True``
    :param backend: the backend named in the error message
    :raises ValueError: any other surrogate (the message names the supported ones)
    """
    name = type(surrogate_function).__name__
    if name not in SG_KINDS or not getattr(surrogate_function, "spiking", True):
        raise ValueError(
            f"backend {backend!r} supports the SpikingJelly surrogates "
            f"{tuple(SG_KINDS)} (spiking=True); got {surrogate_function!r}. Use "
            "backend='torch' for other surrogate functions"
        )
    kind = SG_KINDS[name]
    if name == "PiecewiseLeakyReLU":
        w, c = float(surrogate_function.w), float(surrogate_function.c)
        # SpikingJelly 0.0.0.0.14 uses slope 1/w inside |x| < w, 2.0.0 uses 1/(2w):
        # ask the installed object for its slope at 0.
        z = torch.zeros(1, requires_grad=True)
        (d,) = torch.autograd.grad(surrogate_function(z).sum(), z)
        return kind, w, c, float(d)
    return kind, float(surrogate_function.alpha), 0.0, 0.0
