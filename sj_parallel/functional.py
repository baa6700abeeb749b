r"""Functional multi-step ops: input checks, flattening and backend dispatch.

Each op takes a time-first sequence ``x_seq`` ``[T, N, *]``, flattens it to
``[T, M]``, runs the chosen backend and restores the shape. The math of every op is
in :mod:`sj_parallel.reference`.

dtype policy: ``x_seq`` must be a floating tensor. float32/float64 inputs need
parameters of the same dtype; float16/bfloat16 inputs accept float32 or same-dtype
parameters (what ``torch.autocast`` and ``.half()`` produce) and are computed with
float32 accumulation. Spikes come back in ``x_seq``'s dtype.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from . import reference as ref
from .backends import get_backend

Surrogate = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "psn_multi_step",
    "masked_psn_multi_step",
    "sliding_psn_multi_step",
    "mpe_psn_multi_step",
    "check_input",
    "check_steps",
    "check_surrogate",
]

_HALF = (torch.float16, torch.bfloat16)


def check_input(
    x: torch.Tensor,
    name: str,
    *,
    min_dim: int = 1,
    param: Optional[torch.Tensor] = None,
    what: str = "[T, N, *]",
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for input the neurons cannot take."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} expects a floating-point input (float16, bfloat16, float32 or "
            f"float64), got {x.dtype}; convert it with .float()"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} expects an input of shape {what} with at least {min_dim} dims, "
            f"got shape {tuple(x.shape)}"
        )
    if param is not None:
        pd = param.dtype
        ok = x.dtype == pd or (x.dtype in _HALF and pd in (torch.float32, x.dtype))
        if not ok:
            raise TypeError(
                f"{name}: input dtype {x.dtype} does not match the neuron's parameter "
                f"dtype {pd}; convert the module (e.g. .to({x.dtype})) or the input "
                f"(.to({pd}))"
            )
        if param.device != x.device:
            raise ValueError(
                f"{name}: input is on {x.device} but the neuron's parameters are on "
                f"{param.device}; move one of them"
            )


def check_surrogate(surrogate_function: Surrogate, name: str) -> Surrogate:
    """Return ``surrogate_function`` if it is a surrogate object (any callable that
    is not a class); raise a ``TypeError`` with the fix otherwise.

    The usual mistake is passing SpikingJelly's class, ``surrogate.ATan``, where an
    instance, ``surrogate.ATan()``, is needed.
    """
    if isinstance(surrogate_function, type):
        cls = surrogate_function
        prefix = "surrogate." if cls.__module__.split(".")[-1] == "surrogate" else ""
        raise TypeError(
            f"{name}: surrogate_function must be a surrogate instance, got the class "
            f"{cls.__name__}; pass an instance: {prefix}{cls.__name__}() (with "
            "parentheses, and its arguments if any, e.g. alpha)"
        )
    if not callable(surrogate_function):
        raise TypeError(
            f"{name}: surrogate_function must be a surrogate instance such as "
            "surrogate.ATan() (a callable that maps the membrane potential to "
            f"spikes), got {type(surrogate_function).__name__} "
            f"{surrogate_function!r}"
        )
    return surrogate_function


def check_steps(x_seq: torch.Tensor, name: str) -> None:
    """Raise a clear ``ValueError`` for an empty sequence (``T = 0``).

    An empty batch (``N = 0``) is fine: it gives an empty result.
    """
    if x_seq.shape[0] == 0:
        raise ValueError(
            f"{name} expects at least one time step, got an input of shape "
            f"{tuple(x_seq.shape)} (T=0)"
        )


def _flat(x_seq: torch.Tensor) -> torch.Tensor:
    return x_seq if x_seq.dim() == 2 else x_seq.reshape(x_seq.shape[0], -1)


def _unflat(out: torch.Tensor, x_seq: torch.Tensor) -> torch.Tensor:
    return out if x_seq.dim() == 2 else out.view(x_seq.shape)


def psn_multi_step(
    x_seq: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
    backend: str = "torch",
    memory: str = "auto",
) -> torch.Tensor:
    r"""PSN: :math:`S = \Theta(W X + b)` for ``x_seq`` ``[T, N, *]``.

    :param weight: ``[T, T]``
    :param bias: ``[T, 1]``
    :param memory: the torch backend's memory policy (``"lean"``, ``"fast"`` or
        ``"auto"``; see :mod:`sj_parallel.backends.torch_backend`)
    """
    T = weight.shape[0]
    check_input(x_seq, "PSN", min_dim=2, param=weight)
    check_surrogate(surrogate_function, "PSN")
    if x_seq.shape[0] != T:
        raise ValueError(
            f"PSN(T={T}) expects an input of shape [T={T}, N, *], got "
            f"{tuple(x_seq.shape)} (T={x_seq.shape[0]})"
        )
    be = get_backend(backend, x_seq)
    out = be.psn(_flat(x_seq), weight, bias, surrogate_function, memory=memory)
    return _unflat(out, x_seq)


def masked_psn_multi_step(
    x_seq: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lambda_: torch.Tensor | float,
    mask0: torch.Tensor,
    surrogate_function: Surrogate,
    backend: str = "torch",
    memory: str = "auto",
    mask1: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Masked PSN: :math:`S = \Theta((W \odot M(\lambda)) X + b)`; ``mask1`` is the
    all-ones ``J`` (made on the fly when not given)."""
    T = weight.shape[0]
    check_input(x_seq, "MaskedPSN", min_dim=2, param=weight)
    check_surrogate(surrogate_function, "MaskedPSN")
    if x_seq.shape[0] != T:
        raise ValueError(
            f"MaskedPSN(T={T}) expects an input of shape [T={T}, N, *], got "
            f"{tuple(x_seq.shape)} (T={x_seq.shape[0]})"
        )
    be = get_backend(backend, x_seq)
    w = ref.masked_weight(weight, lambda_, mask0, mask1)
    out = be.psn(_flat(x_seq), w, bias, surrogate_function, memory=memory)
    return out.view(x_seq.shape)


def sliding_psn_multi_step(
    x_seq: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
    backend: str = "torch",
    memory: str = "auto",
) -> torch.Tensor:
    r"""Sliding PSN: :math:`H[t] = \sum_{i<k} w_i X[t-k+1+i] + b`, any length ``T``."""
    check_input(x_seq, "SlidingPSN", min_dim=2, param=weight)
    check_steps(x_seq, "SlidingPSN")
    check_surrogate(surrogate_function, "SlidingPSN")
    be = get_backend(backend, x_seq)
    out = be.sliding_psn(_flat(x_seq), weight, bias, surrogate_function, memory=memory)
    return _unflat(out, x_seq)


def mpe_psn_multi_step(
    x_seq: torch.Tensor,
    v_threshold: torch.Tensor,
    tau: float,
    surrogate_function: Surrogate,
    *,
    estimate_from: str = "previous",
    stochastic: bool = True,
    seed: Tuple[int, int] = (0, 0),
    t0: int = 0,
    u_hat0: Optional[torch.Tensor] = None,
    u0: Optional[torch.Tensor] = None,
    need_mse: bool = False,
    backend: str = "torch",
    memory: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPE-PSN over ``x_seq`` ``[T, N, *]``; see :func:`sj_parallel.reference.mpe_psn`.

    Returns ``(spikes [T, N, *], mse [T], u_hat_last [N, *], u_last [N, *])``; ``mse``
    is float32 for half inputs, else in the input's dtype.
    """
    check_input(x_seq, "MPEPSN", min_dim=2, param=v_threshold)
    check_steps(x_seq, "MPEPSN")
    check_surrogate(surrogate_function, "MPEPSN")
    if estimate_from not in ref.MPE_WIRINGS:
        raise ValueError(
            f"estimate_from must be one of {ref.MPE_WIRINGS}, got {estimate_from!r}"
        )
    be = get_backend(backend, x_seq)
    x = _flat(x_seq)
    flat_state = [None if s is None else s.reshape(-1) for s in (u_hat0, u0)]
    s, mse, uhl, ul = be.mpe_psn(
        x,
        v_threshold,
        tau,
        surrogate_function,
        estimate_from=estimate_from,
        stochastic=stochastic,
        seed=seed,
        t0=t0,
        u_hat0=flat_state[0],
        u0=flat_state[1],
        need_mse=need_mse,
        memory=memory,
    )
    if x_seq.dim() == 2:
        return s, mse, uhl, ul
    rest = x_seq.shape[1:]
    return s.view(x_seq.shape), mse, uhl.view(rest), ul.view(rest)
