"""Network-level helpers: backend switching, the MPE auxiliary loss, the λ schedule."""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .backends import check_backend_available, check_backend_name
from .backends.torch_backend import check_memory
from .neuron import MPEPSN, ParallelNeuron

__all__ = ["set_backend", "set_memory", "membrane_loss", "masked_psn_lambda"]


def set_backend(net: nn.Module, backend: str) -> List[str]:
    """Set ``backend`` on every sj_parallel neuron in ``net``.

    Works on SpikingJelly 0.0.0.0.14 and 2.0.0 (2.0 has no ``set_backend`` of its
    own). SpikingJelly's own modules are left alone.

    :param net: any ``nn.Module``
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :return: the names of the modules that were set
    :raises ValueError: unknown backend name
    :raises ImportError: ``'cupy'`` without CuPy installed, ``'triton'`` without a
        Triton that imports
    :raises RuntimeError: ``'triton'`` where torch sees no GPU (and Triton's
        interpreter is off)
    """
    check_backend_name(backend)
    check_backend_available(backend)
    names = []
    for name, m in net.named_modules():
        if isinstance(m, ParallelNeuron):
            m.backend = backend
            names.append(name)
    return names


def set_memory(net: nn.Module, memory: str) -> List[str]:
    """Set the torch backend's memory policy on every sj_parallel neuron in ``net``.

    ``"lean"`` keeps only each neuron's input for backward, ``"fast"`` also what
    makes backward cheapest (``H`` for the PSN family, a 1-byte sample mask for
    MPE-PSN), ``"auto"`` picks per layer by size (see
    :attr:`sj_parallel.ParallelNeuron.memory`). Values and gradients do not change.

    :param net: any ``nn.Module``
    :param memory: ``'lean'``, ``'fast'`` or ``'auto'``
    :return: the names of the modules that were set
    :raises ValueError: unknown policy
    """
    check_memory(memory)
    names = []
    for name, m in net.named_modules():
        if isinstance(m, ParallelNeuron):
            m.memory = memory
            names.append(name)
    return names


def membrane_loss(net: nn.Module) -> torch.Tensor:
    r"""Sum of the MPE-PSN auxiliary losses of the last forward pass (0-dim tensor).

    Each :class:`~sj_parallel.MPEPSN` keeps its membrane-estimation loss
    :math:`L_{mem} = \frac{1}{n}\sum_t \kappa_t \mathrm{mean}((\hat u_t - u_t)^2)`
    (``n`` = the number of estimate/potential pairs: ``T`` for the paper wiring,
    ``T - 1`` for the current wiring) in the state ``mem_loss`` (training mode only;
    ``functional.reset_net`` clears it). Returns 0 when ``net`` has no MPE-PSN or ran
    none in training mode. Combine as the authors do:
    ``(1 - lam) * task_loss + lam * membrane_loss(net)``.
    Under ``nn.DataParallel`` the replicas' states are discarded after the forward
    pass, so use DistributedDataParallel for MPE-PSN training.
    """
    total = None
    for m in net.modules():
        if isinstance(m, MPEPSN) and isinstance(m.mem_loss, torch.Tensor):
            total = m.mem_loss if total is None else total + m.mem_loss
    if total is None:
        p = next(net.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total


def masked_psn_lambda(epoch: int, epochs: int) -> float:
    r"""The masked-PSN paper's λ schedule: :math:`\min(8 \cdot epoch / (epochs-1), 1)`.

    A linear ramp from 0 to 1 over the first eighth of training; set it at the start
    of each epoch (``module.lambda_ = masked_psn_lambda(epoch, epochs)``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epochs == 1:
        return 1.0
    return min(8.0 * epoch / (epochs - 1), 1.0)
