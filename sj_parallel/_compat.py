"""SpikingJelly version bridging.

sj_parallel supports SpikingJelly 0.0.0.0.14 (no PSN family, has a ``backend``
concept) and 2.0.0 (PSN family in plain torch, explicit-state functional API, no
``backend``). Everything that differs between the two is looked up here.
"""

from __future__ import annotations

import torch.nn as nn
from spikingjelly.activation_based import base, functional, surrogate

try:  # pragma: no cover - depends on the installed version
    from importlib.metadata import version as _dist_version

    SJ_VERSION = _dist_version("spikingjelly")
except Exception:  # pragma: no cover
    SJ_VERSION = "unknown"

#: True on SpikingJelly 2.x, which has the explicit-state functional API.
SJ_HAS_FUNCTIONAL_API = hasattr(base, "to_functional_forward")

try:
    from spikingjelly.activation_based.neuron import psn as _sj_psn

    SJ_PSN = _sj_psn.PSN
    SJ_MASKED_PSN = _sj_psn.MaskedPSN
    SJ_SLIDING_PSN = _sj_psn.SlidingPSN
    SJ_HAS_PSN = True
except Exception:  # SpikingJelly 0.0.0.0.14 has no PSN family
    from spikingjelly.activation_based import neuron as _sj_neuron

    SJ_PSN = getattr(_sj_neuron, "PSN", None)
    SJ_MASKED_PSN = getattr(_sj_neuron, "MaskedPSN", None)
    SJ_SLIDING_PSN = getattr(_sj_neuron, "SlidingPSN", None)
    SJ_HAS_PSN = SJ_PSN is not None

MemoryModule = base.MemoryModule


def default_surrogate() -> nn.Module:
    """SpikingJelly's default surrogate for the PSN family: ``surrogate.ATan()``."""
    return surrogate.ATan()


def mpe_default_surrogate() -> nn.Module:
    """The MPE-PSN paper's triangle surrogate ``max(0, 1 - |x|)``."""
    return surrogate.PiecewiseQuadratic(alpha=1.0)


def invalidate_reset_cache(net: nn.Module) -> None:
    """Drop SpikingJelly 2.0's cached list of resettable modules, if it has one."""
    fn = getattr(functional, "invalidate_reset_cache", None)
    if fn is not None:
        fn(net)
