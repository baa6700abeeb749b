r"""Moving existing SpikingJelly code to sj_parallel neurons, and back.

* :func:`replace_neurons` swaps the spiking neurons of a built network in place.
* :func:`from_spikingjelly` / :func:`to_spikingjelly` convert SpikingJelly 2.0's
  ``PSN``, ``MaskedPSN`` and ``SlidingPSN`` to and from ours (weights, λ, settings).
* :func:`zoo_neuron` adapts a neuron class to SpikingJelly's model zoo, which calls
  ``spiking_neuron(**kwargs)`` with LIF-style keyword arguments.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Callable, Iterable, List, Optional, Tuple, Type

import torch.nn as nn
from spikingjelly.activation_based import neuron as sj_neuron

from . import _compat
from .neuron import PSN as _PSN
from .neuron import MaskedPSN, ParallelNeuron, SlidingPSN

__all__ = ["replace_neurons", "from_spikingjelly", "to_spikingjelly", "zoo_neuron"]

logger = logging.getLogger(__name__)

#: LIF-style arguments SpikingJelly's model zoo passes that the parallel neurons
#: have no use for (no membrane reset, no time constant, threshold = -bias).
LIF_ONLY_KWARGS = frozenset(
    {
        "detach_reset",
        "v_threshold",
        "v_reset",
        "tau",
        "decay_input",
        "store_v_seq",
        "init_tau",
        "cupy_fp32_inference",
    }
)


def _sj_neuron_types() -> Tuple[type, ...]:
    types: List[type] = []
    base = getattr(sj_neuron, "BaseNode", None)
    if base is not None:
        types.append(base)
    types += [
        t for t in (_compat.SJ_PSN, _compat.SJ_MASKED_PSN, _compat.SJ_SLIDING_PSN) if t
    ]
    return tuple(types)


def _step_mode_of(m: nn.Module) -> str:
    try:
        return m.step_mode
    except Exception:  # SpikingJelly 2.0's PSN is multi-step only and has none
        return "m"


def _reference_tensor(*modules: nn.Module):
    """The first floating parameter or buffer of the given modules, in order.

    SpikingJelly's LIF/IF neurons hold no tensors, so the new neuron takes the device
    and dtype of the replaced module, else of its parent, else of the network.
    """
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                return t
    return None


def replace_neurons(
    net: nn.Module,
    neuron_cls: Callable[..., nn.Module],
    *,
    types: Optional[Iterable[type]] = None,
    **neuron_kwargs,
) -> nn.Module:
    r"""Replace SpikingJelly's spiking neurons in ``net`` with ``neuron_cls(**kwargs)``.

    Every module that is an instance of ``types`` (default: SpikingJelly's
    ``neuron.BaseNode`` subclasses — LIF, IF, PLIF, ... — and SpikingJelly's own PSN
    family) is replaced in place, at the same position, by a new
    ``neuron_cls(**neuron_kwargs)`` (one instance per replaced module) moved to the
    device and floating dtype of the old module (or, when it holds no tensors, of its
    parent, else of the network), with the old module's step mode. SpikingJelly 2.0's
    cached list of resettable modules is invalidated, so ``functional.reset_net`` sees
    the new ones.

    :param net: the network (changed in place)
    :type net: torch.nn.Module
    :param neuron_cls: the new neuron class or any factory, e.g. ``sjp.PSN``
    :type neuron_cls: Callable
    :param types: module types to replace (default: all SpikingJelly spiking neurons)
    :type types: Iterable[type] or None
    :param neuron_kwargs: constructor arguments, e.g. ``T=4``
    :return: ``net``; the dotted names of the replaced modules are in
        ``net.sj_parallel_replaced`` (also logged)
    :rtype: torch.nn.Module
    :raises ValueError: nothing in ``net`` matched ``types``

    Example::

        >>> net = spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode)
        >>> sjp.replace_neurons(net, sjp.PSN, T=4)
        >>> functional.set_step_mode(net, "m")
    """
    match = tuple(types) if types is not None else _sj_neuron_types()
    if not match:
        raise ValueError("no neuron types to replace")
    replaced: List[str] = []
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, match) and not isinstance(child, ParallelNeuron):
                new = neuron_cls(**neuron_kwargs)
                ref = _reference_tensor(child, module, net)
                if ref is not None:
                    new = new.to(device=ref.device, dtype=ref.dtype)
                mode = _step_mode_of(child)
                if hasattr(new, "step_mode") and mode in ("s", "m"):
                    new.step_mode = mode
                setattr(module, child_name, new)
                replaced.append(f"{name}.{child_name}" if name else child_name)
    if not replaced:
        names = ", ".join(t.__name__ for t in match)
        hint = (
            " (net itself is a neuron: replace_neurons swaps submodules in place, "
            "so build the new neuron directly)"
            if isinstance(net, match)
            else ""
        )
        raise ValueError(
            f"replace_neurons found no module of the types ({names}) in net{hint}"
        )
    _compat.invalidate_reset_cache(net)
    net.sj_parallel_replaced = replaced
    logger.info("replaced %d neurons: %s", len(replaced), ", ".join(replaced))
    return net


def _need_sj_psn() -> None:
    if not _compat.SJ_HAS_PSN:
        raise RuntimeError(
            f"SpikingJelly {_compat.SJ_VERSION} has no PSN family (it arrived in "
            "SpikingJelly 2.0): there is nothing to convert from or to"
        )


def from_spikingjelly(module: nn.Module) -> nn.Module:
    """Convert SpikingJelly's ``PSN``/``MaskedPSN``/``SlidingPSN`` to sj_parallel's.

    Weights, bias, λ, ``k``, ``T``, the surrogate and the step mode are kept, so the
    outputs are equal. The new module is on the old one's device and dtype.

    :raises RuntimeError: SpikingJelly without the PSN family (0.0.0.0.14)
    :raises TypeError: ``module`` is not one of SpikingJelly's PSN classes
    """
    _need_sj_psn()
    sg = module.surrogate_function
    if isinstance(module, _compat.SJ_MASKED_PSN):
        new = MaskedPSN(
            module.k, module.T, float(module.lambda_), sg, _step_mode_of(module)
        )
    elif isinstance(module, _compat.SJ_SLIDING_PSN):
        new = SlidingPSN(module.k, True, sg, _step_mode_of(module))
    elif isinstance(module, _compat.SJ_PSN):
        new = _PSN(module.T, sg)
    else:
        raise TypeError(
            "from_spikingjelly converts SpikingJelly's PSN, MaskedPSN and SlidingPSN, "
            f"got {type(module).__name__}"
        )
    ref = module.weight
    new = new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(module.state_dict())
    return new


def to_spikingjelly(module: nn.Module) -> nn.Module:
    """Convert sj_parallel's ``PSN``/``MaskedPSN``/``SlidingPSN`` to SpikingJelly's.

    Weights, bias, λ, ``k``, ``T``, the surrogate and the step mode are kept. MPE-PSN
    has no SpikingJelly counterpart.

    :raises RuntimeError: SpikingJelly without the PSN family (0.0.0.0.14)
    :raises TypeError: anything else, MPE-PSN included
    """
    _need_sj_psn()
    sg = module.surrogate_function if hasattr(module, "surrogate_function") else None
    if isinstance(module, MaskedPSN):
        new = _compat.SJ_MASKED_PSN(
            module.k, module.T, float(module.lambda_), sg, step_mode=module.step_mode
        )
    elif isinstance(module, SlidingPSN):
        new = _compat.SJ_SLIDING_PSN(module.k, True, sg, step_mode=module.step_mode)
    elif isinstance(module, _PSN):
        new = _compat.SJ_PSN(module.T, sg)
    else:
        raise TypeError(
            "to_spikingjelly converts sj_parallel's PSN, MaskedPSN and SlidingPSN "
            f"(SpikingJelly has no MPE-PSN), got {type(module).__name__}"
        )
    ref = module.weight
    new = new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(module.state_dict())
    return new


def zoo_neuron(neuron_cls: Type[nn.Module], **fixed) -> Callable[..., nn.Module]:
    """A ``spiking_neuron`` factory for SpikingJelly's model zoo.

    The zoo builds every neuron as ``spiking_neuron(**kwargs)`` with the keyword
    arguments given to the model function, which are LIF-style
    (``surrogate_function``, ``detach_reset``, ``v_threshold``, ...). The factory passes
    on what ``neuron_cls`` accepts, ignores the LIF-only arguments
    (:data:`LIF_ONLY_KWARGS`) with one warning, and raises ``TypeError`` for anything
    else. ``fixed`` arguments (e.g. ``T=4``) are always passed.

    Example::

        >>> from spikingjelly.activation_based.model import spiking_resnet
        >>> net = spiking_resnet.spiking_resnet18(
        ...     spiking_neuron=sjp.zoo_neuron(sjp.PSN, T=4),
        ...     surrogate_function=surrogate.ATan(), detach_reset=True)
        >>> functional.set_step_mode(net, "m")
    """
    accepted = set(inspect.signature(neuron_cls).parameters)
    warned = []

    def factory(**kwargs) -> nn.Module:
        ignored = sorted(
            k for k in kwargs if k in LIF_ONLY_KWARGS and k not in accepted
        )
        unknown = sorted(
            k for k in kwargs if k not in accepted and k not in LIF_ONLY_KWARGS
        )
        if unknown:
            raise TypeError(
                f"{neuron_cls.__name__} does not take {unknown}; it accepts "
                f"{sorted(accepted)}"
            )
        if ignored and not warned:
            warnings.warn(
                f"{neuron_cls.__name__} ignores the LIF-only arguments {ignored} "
                "passed by the model",
                stacklevel=2,
            )
            warned.append(True)
        args = {k: v for k, v in kwargs.items() if k in accepted}
        args.update(fixed)
        return neuron_cls(**args)

    factory.__name__ = f"zoo_{neuron_cls.__name__}"
    return factory
