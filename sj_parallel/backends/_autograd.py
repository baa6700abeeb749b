"""Autograd helpers shared by the backends.

The fused backends (``"cupy"``, and any other backend whose backward is a kernel)
compute first derivatives only: their backward is not itself differentiable. A
second derivative (a gradient penalty, ``torch.autograd.grad(...,
create_graph=True)`` followed by another backward, ``torch.func.grad`` of a
gradient, ``hessian``) would silently miss the terms that flow through that
backward. :func:`forbid_double_backward` turns that into a clear error at the moment
such a graph is built: when the backward runs with grad mode on
(``create_graph=True``) and one of its inputs requires grad.

The ``"torch"`` backend supports second derivatives (its backward switches to
differentiable ops when ``create_graph=True``), as does
:mod:`sj_parallel.reference`.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["forbid_double_backward", "double_backward_message"]


def double_backward_message(name: str, backend: str) -> str:
    """The error message of :func:`forbid_double_backward`."""
    return (
        f"{name} with backend '{backend}' has no second derivatives: its backward is "
        "a fused kernel that autograd cannot differentiate, but it is running with "
        "create_graph=True on inputs that require grad (a gradient penalty, "
        "torch.autograd.grad(..., create_graph=True) followed by another backward, "
        "or a torch.func transform of a gradient). Use backend='torch' for this "
        "model (`sjp.set_backend(net, 'torch')`), which gives exact second "
        "derivatives, or the plain-autograd math of sj_parallel.reference"
    )


def forbid_double_backward(
    name: str, backend: str, *tensors: Optional[torch.Tensor]
) -> None:
    """Raise a ``RuntimeError`` if this backward is being recorded for a second
    derivative.

    Call it first thing in the backward of an autograd function whose backward is
    not differentiable. It raises when grad mode is on (autograd runs a backward
    with grad mode on exactly when ``create_graph=True``) and any of ``tensors``
    (the backward's inputs: saved tensors and incoming gradients; ``None`` entries
    are skipped) requires grad, or, when no tensors are given, whenever grad mode is
    on.

    :param name: the neuron, e.g. ``"PSN"``
    :type name: str
    :param backend: the backend, e.g. ``"cupy"``
    :type backend: str
    :raises RuntimeError: naming the neuron, the backend and the fix
        (``backend='torch'`` or :mod:`sj_parallel.reference`)
    """
    if not torch.is_grad_enabled():
        return
    if tensors and not any(
        t is not None and isinstance(t, torch.Tensor) and t.requires_grad
        for t in tensors
    ):
        return
    raise RuntimeError(double_backward_message(name, backend))
