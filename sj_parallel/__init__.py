"""sj_parallel: parallel spiking neurons for SpikingJelly.

PSN, masked PSN and sliding PSN (Fang et al., NeurIPS 2023) and MPE-PSN (Chen et al.,
ICASSP 2025, arXiv 2409.04978) as SpikingJelly ``MemoryModule`` subclasses, with a
memory-lean torch backend and fused GPU kernels (backends ``"cupy"`` and ``"triton"``).

``python -m sj_parallel doctor`` (or :func:`sj_parallel.doctor`) reports what can run
here and why not.
"""

from . import _memopt
from .backends import BACKENDS
from .convert import from_spikingjelly, replace_neurons, to_spikingjelly, zoo_neuron
from .doctor import doctor
from .neuron import MPEPSN, PSN, MaskedPSN, ParallelNeuron, SlidingPSN
from .utils import masked_psn_lambda, membrane_loss, set_backend, set_memory

# SpikingJelly master's memopt must not split our neurons in time, whichever of the
# two is imported first
_memopt.install()

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PSN",
    "MaskedPSN",
    "SlidingPSN",
    "MPEPSN",
    "ParallelNeuron",
    "set_backend",
    "set_memory",
    "membrane_loss",
    "masked_psn_lambda",
    "replace_neurons",
    "from_spikingjelly",
    "to_spikingjelly",
    "zoo_neuron",
    "doctor",
]
