r"""User-facing neurons: drop-in SpikingJelly ``MemoryModule`` subclasses.

* :class:`PSN`, :class:`MaskedPSN`, :class:`SlidingPSN` — Fang et al., "Parallel
  Spiking Neurons with High Efficiency and Ability to Learn Long-term Dependencies",
  NeurIPS 2023. State-dict keys equal SpikingJelly's own PSN classes.
* :class:`MPEPSN` — Chen et al., "Time-independent Spiking Neuron via Membrane
  Potential Estimation for Efficient Spiking Neural Networks", ICASSP 2025
  (arXiv 2409.04978).

All neurons take time-first input ``[T, N, *]`` in multi-step mode (``'m'``) and
``[N, *]`` in single-step mode (``'s'``), work with ``functional.reset_net``,
``functional.set_step_mode`` and ``functional.detach_net`` on SpikingJelly 0.0.0.0.14
and 2.0.0, and implement SpikingJelly 2.0's explicit-state API
(``single_step_functional_forward`` / ``multi_step_functional_forward``).
The math of each neuron lives in :mod:`sj_parallel.reference`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from . import functional as F
from . import reference as ref
from ._compat import MemoryModule, default_surrogate, mpe_default_surrogate
from .backends import BACKENDS, check_backend_name, get_backend
from .backends.torch_backend import check_memory, compute_dtype

__all__ = ["ParallelNeuron", "PSN", "MaskedPSN", "SlidingPSN", "MPEPSN"]

#: The choices of ``MPEPSN(mem_loss_weights=...)``.
MEM_LOSS_WEIGHTS = ("linear", "softmax")

States = Tuple[object, ...]
Outputs = Tuple[torch.Tensor, ...]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _batch_mismatch(
    name: str, state: str, held: Tuple[int, ...], shape: Tuple[int, ...]
) -> ValueError:
    """The error for a state built for another batch (or input) size.

    ``held`` is the per-step shape the state stands for (a 1-tuple of the element
    count when only that is known), ``shape`` the new input's per-step shape.
    """
    held, shape = tuple(held), tuple(shape)
    if len(held) == len(shape) >= 1 and held[1:] == shape[1:]:
        what = f"a batch of {held[0]} (inputs of shape {held})"
        now = f"shape {shape} per step (a batch of {shape[0]})"
    else:
        what = f"inputs of {math.prod(held)} values per step"
        now = f"shape {shape} per step ({math.prod(shape)} values)"
    return ValueError(
        f"{name}: its state {state!r} holds {what} from the previous call, but the "
        f"new input has {now}. A state belongs to one batch: "
        "functional.reset_net(net) is missing before this batch (call it after "
        "every batch, also before a smaller last batch)"
    )


def _push(queue, x: torch.Tensor, k: int, name: str) -> list:
    """Append one step's input to a single-step queue in SpikingJelly's layout.

    Each entry is the step's input flattened, ``x.flatten()`` (as in SpikingJelly's
    ``functional.sliding_psn_step`` / ``masked_psn_step``), oldest first; the last
    ``k`` are kept. Returns a new list: the old one may be shared by DataParallel
    replicas and is never changed.
    """
    per_sample = math.prod(x.shape[1:])
    for q in queue:
        if not isinstance(q, torch.Tensor):
            raise TypeError(
                f"{name}: its state 'queue' must hold tensors (the flattened inputs "
                f"of the previous steps), got {type(q).__name__}"
            )
        if q.numel() != x.numel():
            if per_sample and q.numel() % per_sample == 0:
                held = (q.numel() // per_sample, *x.shape[1:])
            else:
                held = (q.numel(),)
            raise _batch_mismatch(name, "queue", held, x.shape)
    queue = [q if q.dim() == 1 else q.reshape(-1) for q in queue]
    return [*queue, x.flatten()][-k:]


class ParallelNeuron(MemoryModule):
    """Shared plumbing of the sj_parallel neurons (backend, step mode, state I/O).

    Subclasses implement ``single_step_functional_forward`` and
    ``multi_step_functional_forward``; ``single_step_forward`` and
    ``multi_step_forward`` call them on the registered memories and write the new
    states back, identically on SpikingJelly 0.0.0.0.14 and 2.0.0.

    ``__temporal_split__ = False``: SpikingJelly's memory optimiser must never cut
    these neurons' input into chunks along time (see :mod:`sj_parallel._memopt`).
    """

    #: Never split in time by a memory optimiser (PSN and MaskedPSN need all ``T``
    #: steps at once, SlidingPSN's window and MPE-PSN's sampling and auxiliary loss
    #: span chunk borders).
    __temporal_split__ = False

    def __init__(
        self, step_mode: str = "s", backend: str = "torch", memory: str = "auto"
    ):
        super().__init__()
        self._backend = "torch"
        self.step_mode = step_mode
        self.backend = backend
        self.memory = memory

    # -- backend -------------------------------------------------------------------
    @property
    def supported_backends(self) -> Tuple[str, ...]:
        """``('torch', 'cupy', 'triton')``: 'cupy' and 'triton' run fused GPU kernels
        in multi-step mode (see the backends page of the docs)."""
        return BACKENDS

    @property
    def backend(self) -> str:
        """The backend used in multi-step mode ('torch', 'cupy' or 'triton')."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_backend_name(value)
        get_backend(value)  # checks that it can run here, and loads it
        self._backend = value

    def supported_step_mode(self) -> Tuple[str, ...]:
        return ("s", "m")

    # -- memory policy ---------------------------------------------------------------
    @property
    def memory(self) -> str:
        """What the torch backend keeps for backward in multi-step mode.

        ``"lean"``: only the input ``X`` (``H`` is recomputed, MPE-PSN's samples are
        regenerated); ``"fast"``: also ``H`` (PSN family) or a 1-byte sample mask
        (MPE-PSN), so backward does less work; ``"auto"`` (default): ``"fast"`` for
        layers with fewer than 65,536 neurons per time step and for MPE-PSN,
        ``"lean"`` otherwise. Values and gradients are identical under every
        policy. The cupy and triton backends always recompute (they move the fewest
        bytes).
        """
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_memory(value)

    # -- state plumbing --------------------------------------------------------------
    def _states(self) -> States:
        return tuple(self._memories.values())

    def _store(self, states: States) -> None:
        for name, value in zip(list(self._memories.keys()), states):
            self._memories[name] = value

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, states = self.single_step_functional_forward((x,), self._states())
        self._store(states)
        return outputs[0]

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        outputs, states = self.multi_step_functional_forward((x_seq,), self._states())
        self._store(states)
        return outputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self.single_step_forward(x)
        if self.step_mode == "m":
            return self.multi_step_forward(x)
        raise ValueError(f"step_mode must be 's' or 'm', got {self.step_mode!r}")

    def detach(self) -> None:
        """Detach every tensor state, including those inside list states (queues).

        States are rebound, never changed in place (DataParallel replicas share them).
        """
        for name, value in list(self._memories.items()):
            if isinstance(value, torch.Tensor):
                self._memories[name] = value.detach()
            elif isinstance(value, (list, tuple)):
                self._memories[name] = type(value)(
                    v.detach() if isinstance(v, torch.Tensor) else v for v in value
                )

    def _apply(self, fn, *args, **kwargs):
        # SpikingJelly's _apply moves tensor states but not tensors inside lists.
        for name, value in list(self._memories.items()):
            if isinstance(value, list):
                self._memories[name] = [
                    fn(v) if isinstance(v, torch.Tensor) else v for v in value
                ]
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"step_mode={self.step_mode}, backend={self.backend}, memory={self.memory}"
        )


# ----------------------------------------------------------------------------- PSN
class PSN(ParallelNeuron):
    r"""Parallel Spiking Neuron (PSN), multi-step only.

    .. math::

        H = W X + b, \qquad S = \Theta(H), \qquad
        W \in \mathbb{R}^{T \times T},\; b \in \mathbb{R}^{T \times 1}

    ``weight`` is initialised with ``kaiming_uniform_(a=sqrt(5))`` and ``bias`` with
    -1 (``bias`` = -threshold), as SpikingJelly's ``neuron.PSN``; state-dict keys
    ``weight``, ``bias`` are the same, so checkpoints move both ways.

    :param T: number of time steps (the input's first dim must equal it)
    :type T: int
    :param surrogate_function: SpikingJelly surrogate for the step's gradient
    :type surrogate_function: Callable
    :param step_mode: must be ``'m'`` when called ('s' is accepted only so that
        ``functional.set_step_mode`` works; calling in 's' raises)
    :type step_mode: str
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :type backend: str
    :param memory: the torch backend's memory policy, ``'lean'``, ``'fast'`` or
        ``'auto'`` (see :attr:`ParallelNeuron.memory`)
    :type memory: str

    Example::

        >>> import torch, sj_parallel as sjp
        >>> psn = sjp.PSN(T=4)
        >>> psn(torch.randn(4, 2, 8)).shape
        torch.Size([4, 2, 8])
    """

    def __init__(
        self,
        T: int,
        surrogate_function: Optional[Callable] = None,
        step_mode: str = "m",
        backend: str = "torch",
        memory: str = "auto",
    ):
        super().__init__(step_mode, backend, memory)
        self.T = _check_int("T", T)
        self.surrogate_function = (
            default_surrogate()
            if surrogate_function is None
            else F.check_surrogate(surrogate_function, "PSN")
        )
        self.weight = nn.Parameter(torch.zeros(T, T))
        self.bias = nn.Parameter(torch.full((T, 1), -1.0))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def single_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        raise ValueError(
            "PSN only supports multi-step mode: its [T, T] weight couples all T "
            "steps. Call functional.set_step_mode(net, 'm') and feed [T, N, *] "
            "sequences (SlidingPSN, MaskedPSN with lambda_ >= 1 and MPEPSN have "
            "single-step modes)"
        )

    def multi_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        spikes = F.psn_multi_step(
            inputs[0],
            self.weight,
            self.bias,
            self.surrogate_function,
            self.backend,
            self.memory,
        )
        return (spikes,), states

    def extra_repr(self) -> str:
        return f"T={self.T}, " + super().extra_repr()


# ---------------------------------------------------------------------- Masked PSN
class MaskedPSN(ParallelNeuron):
    r"""Masked PSN: a PSN whose weight is progressively masked to a causal band.

    .. math::

        H = (W \odot M(\lambda)) X + b, \qquad S = \Theta(H), \qquad
        M(\lambda) = \lambda M_k + (1 - \lambda) J

    with :math:`M_k[i][j] = 1` if :math:`j \le i \le j + k - 1` else 0 and ``J`` all
    ones. While :math:`\lambda < 1` the neuron sees future inputs (not causal); the
    paper ramps :math:`\lambda` to 1 over the first eighth of training
    (:func:`sj_parallel.masked_psn_lambda`). Single-step mode needs
    :math:`\lambda \ge 1` and runs at most ``T`` steps (states ``time_step`` and
    ``queue``, the last ``k`` inputs oldest first, each flattened, as SpikingJelly's
    ``MaskedPSN`` and ``functional.masked_psn_step`` keep them); it equals multi-step
    output.

    State-dict keys: ``weight``, ``bias``, ``_lambda_``, ``mask0`` (:math:`M_k`),
    ``mask1`` (``J``), as SpikingJelly's ``MaskedPSN``.

    :param k: band width (order), ``1 <= k <= T``
    :type k: int
    :param T: number of time steps
    :type T: int
    :param lambda_init: initial :math:`\lambda` in [0, 1]
    :type lambda_init: float
    :param surrogate_function: SpikingJelly surrogate for the step's gradient
    :param step_mode: ``'s'`` or ``'m'``
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :param memory: ``'lean'``, ``'fast'`` or ``'auto'`` (see
        :attr:`ParallelNeuron.memory`)

    Example::

        >>> net = sjp.MaskedPSN(k=2, T=4, step_mode="m")
        >>> net.lambda_ = sjp.masked_psn_lambda(epoch, epochs)
    """

    def __init__(
        self,
        k: int,
        T: int,
        lambda_init: float = 0.0,
        surrogate_function: Optional[Callable] = None,
        step_mode: str = "s",
        backend: str = "torch",
        memory: str = "auto",
    ):
        super().__init__(step_mode, backend, memory)
        self.T = _check_int("T", T)
        self.k = _check_int("k", k)
        if k > T:
            raise ValueError(f"MaskedPSN needs 1 <= k <= T, got k={k} > T={T}")
        self.register_memory("time_step", 0)
        self.register_memory("queue", [])
        self.surrogate_function = (
            default_surrogate()
            if surrogate_function is None
            else F.check_surrogate(surrogate_function, "MaskedPSN")
        )
        self.register_buffer("_lambda_", torch.as_tensor(_check_lambda(lambda_init)))
        self.weight = nn.Parameter(torch.zeros(T, T))
        self.bias = nn.Parameter(torch.full((T, 1), -1.0))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("mask0", ref.band_mask(T, k))
        self.register_buffer("mask1", torch.ones(T, T))

    @property
    def lambda_(self) -> torch.Tensor:
        r"""The masking progress :math:`\lambda \in [0, 1]` (in the state dict)."""
        return self._lambda_

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        with torch.no_grad():
            self._lambda_.fill_(_check_lambda(value))

    def masked_weight(self) -> torch.Tensor:
        r""":math:`W \odot M(\lambda)` (differentiable with respect to ``weight``)."""
        return ref.masked_weight(self.weight, self.lambda_, self.mask0, self.mask1)

    def single_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        x = inputs[0]
        time_step, queue = states
        if float(self.lambda_) < 1.0:
            raise ValueError(
                f"MaskedPSN single-step mode needs lambda_ >= 1 (while lambda_ < 1 the "
                f"neuron sees future inputs), got lambda_={float(self.lambda_)}; use "
                "multi-step mode or set lambda_ = 1"
            )
        if time_step >= self.T:
            raise OverflowError(
                f"MaskedPSN(T={self.T}) has already run {time_step} single steps; call "
                "functional.reset_net(net) before the next sequence"
            )
        F.check_input(x, "MaskedPSN", param=self.weight, what="[N, *]")
        queue = _push(queue, x, self.k, "MaskedPSN")
        n = len(queue)
        # half inputs are computed in float32, as in multi-step mode
        cd = compute_dtype(x.dtype)
        w = self.masked_weight()[time_step, time_step + 1 - n : time_step + 1]
        h = self.bias[time_step].to(cd)
        for i, xi in enumerate(queue):
            h = h + w[i].to(cd) * xi.to(cd)
        spike = self.surrogate_function(h).to(x.dtype).view(x.shape)
        return (spike,), (time_step + 1, queue)

    def multi_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        spikes = F.masked_psn_multi_step(
            inputs[0],
            self.weight,
            self.bias,
            self.lambda_,
            self.mask0,
            self.surrogate_function,
            self.backend,
            self.memory,
            self.mask1,
        )
        return (spikes,), states

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, T={self.T}, lambda_={float(self.lambda_)}, "
            + super().extra_repr()
        )


def _check_lambda(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"lambda_ must be a real number in [0, 1], got {type(value).__name__} "
            f"{value!r}"
        ) from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"lambda_ must be in [0, 1], got {v}")
    return v


# --------------------------------------------------------------------- Sliding PSN
class SlidingPSN(ParallelNeuron):
    r"""Sliding PSN: ``k`` shared weights over a sliding window, any sequence length.

    .. math::

        H[t] = \sum_{i=0}^{k-1} w_i X[t-k+1+i] + b, \qquad S[t] = \Theta(H[t])

    with zero history before ``t = 0``. ``exp_init=True`` initialises
    :math:`w = (2^{-(k-1)}, \dots, 1/4, 1/2, 1)` (1 on the current step); otherwise
    kaiming-uniform on a ``[1, k]`` tensor. ``bias`` is a scalar initialised to -1.
    Single-step mode keeps the last ``k`` inputs and equals multi-step output; its
    state ``queue`` holds them oldest first, each flattened (``x.flatten()``), exactly
    as SpikingJelly's ``SlidingPSN`` and ``functional.sliding_psn_step`` keep it, so
    the state moves both ways between them.
    State-dict keys ``weight`` (``[k]``) and ``bias`` (0-dim) as SpikingJelly.

    :param k: window length (order)
    :type k: int
    :param exp_init: exponential (True) or kaiming-uniform (False) initial weights
    :type exp_init: bool
    :param surrogate_function: SpikingJelly surrogate for the step's gradient
    :param step_mode: ``'s'`` or ``'m'``
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :param memory: ``'lean'``, ``'fast'`` or ``'auto'`` (see
        :attr:`ParallelNeuron.memory`)
    """

    def __init__(
        self,
        k: int,
        exp_init: bool = True,
        surrogate_function: Optional[Callable] = None,
        step_mode: str = "s",
        backend: str = "torch",
        memory: str = "auto",
    ):
        super().__init__(step_mode, backend, memory)
        self.k = _check_int("k", k)
        self.register_memory("queue", [])
        self.surrogate_function = (
            default_surrogate()
            if surrogate_function is None
            else F.check_surrogate(surrogate_function, "SlidingPSN")
        )
        if exp_init:
            weight = torch.pow(2.0, -torch.arange(k - 1, -1, -1, dtype=torch.float32))
        else:
            weight = torch.ones(1, k)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight = weight[0]
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.as_tensor(-1.0))

    def gen_gemm_weight(self, T: int) -> torch.Tensor:
        """The equivalent banded ``[T, T]`` Toeplitz matrix (SpikingJelly's name)."""
        return ref.sliding_weight_matrix(self.weight, T)

    def single_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        x = inputs[0]
        F.check_input(x, "SlidingPSN", param=self.weight, what="[N, *]")
        queue = _push(states[0], x, self.k, "SlidingPSN")
        # half inputs are computed in float32, as in multi-step mode
        cd = compute_dtype(x.dtype)
        spike = ref.sliding_psn_step(
            tuple(q.to(cd) for q in queue),
            self.weight.to(cd),
            self.bias.to(cd),
            self.surrogate_function,
        ).to(x.dtype)
        return (spike.view(x.shape),), (queue,)

    def multi_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        spikes = F.sliding_psn_multi_step(
            inputs[0],
            self.weight,
            self.bias,
            self.surrogate_function,
            self.backend,
            self.memory,
        )
        return (spikes,), states

    def extra_repr(self) -> str:
        return f"order={self.k}, " + super().extra_repr()


# ------------------------------------------------------------------------- MPE-PSN
def _compile_disable(fn):
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return fn if disable is None else disable(fn)


@_compile_disable
def _draw_seed() -> Tuple[int, int]:
    """A sequence's hash seed, two draws from torch's default generator. Never
    compiled: inductor would replace ``torch.randint`` with its own RNG, and compiled
    and eager runs must draw the same samples."""
    return tuple(torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist())


class MPEPSN(ParallelNeuron):
    r"""MPE-PSN: a hard-reset LIF neuron made parallel by estimating its potential.

    The LIF it approximates is :math:`h_t = \tau u_{t-1} + I_t`,
    :math:`o_t = \Theta(h_t - V_{th})`, :math:`u_t = (1 - o_t) h_t` (``tau`` is a
    decay *multiplier*, not SpikingJelly's time constant). The unknown
    :math:`u_{t-1}` is replaced by an estimate so every step runs at once:

    .. math::

        p_t = \sigma(I_t), \quad b_t \sim \mathrm{Bernoulli}(p_t), \quad
        \hat u_t = (1 - b_t) I_t

    * ``estimate_from="previous"`` (paper, Fig. 2): :math:`h_t = \tau \hat u_{t-1}
      + I_t` with :math:`\hat u_{-1} = 0`.
    * ``estimate_from="current"`` (the authors' DVS-Gesture code):
      :math:`h_0 = I_0`, :math:`h_t = I_t + \tau \hat u_t` for :math:`t \ge 1`.

    :math:`o_t = \Theta(h_t - V_{th})` with a learnable scalar ``v_threshold``.

    Sampling: in training mode :math:`b_t` is sampled from a counter-based hash seeded
    from torch's default generator at the start of each sequence (reproducible under
    ``torch.manual_seed``; identical in single- and multi-step mode and in both
    backends). In eval mode the estimate is deterministic, the expectation
    :math:`\hat u_t = (1 - p_t) I_t`, unless ``sample_in_eval=True`` (the official
    code's behaviour).

    Auxiliary membrane-estimation loss (training mode only), exactly as the authors'
    code computes it: per step the mean squared error between each estimate and the
    real post-reset potential :math:`u_t = (1 - o_t) h_t` it stands in for, with the
    spike :math:`o_t` *not* detached (the loss's gradient reaches the input and
    ``v_threshold`` through the surrogate), weighted by learnable per-step weights
    :math:`\kappa`:

    * ``estimate_from="previous"``: :math:`L_{mem} = \frac{1}{T} \sum_{t=0}^{T-1}
      \kappa_t \, \mathrm{mean}((\hat u_t - u_t)^2)`, ``T`` weights (init
      :math:`1/T`);
    * ``estimate_from="current"``: the ``T - 1`` pairs :math:`(\hat u_t, u_{t-1})`,
      :math:`L_{mem} = \frac{1}{T-1} \sum_{t=1}^{T-1} \kappa_{t-1} \,
      \mathrm{mean}((\hat u_t - u_{t-1})^2)`, ``T - 1`` weights (init
      :math:`1/(T-1)`).

    ``mem_loss_weights`` chooses :math:`\kappa`:

    * ``"linear"`` (default, the authors' ``coef``): :math:`\kappa` is the plain
      parameter ``coef``. Its gradient is the (positive) mse, so gradient descent and
      weight decay shrink it, and it can go negative, which then rewards mismatch.
    * ``"softmax"`` (our option): :math:`\kappa = \mathrm{softmax}(\text{kappa\_logit})`
      (init :math:`1/n` each), always non-negative and summing to 1.

    The loss of the last forward pass is kept in the state ``mem_loss`` (cleared by
    ``functional.reset_net``); add ``sjp.membrane_loss(net)`` to the task loss, e.g.
    ``loss = (1 - 1e-3) * task + 1e-3 * sjp.membrane_loss(net)``.

    Works for any sequence length and in single-step mode (state: the step counter,
    the sequence's seed, the previous estimate and potential); the auxiliary loss
    needs at most ``T`` steps per sequence.

    :param T: number of time steps per sequence (the loss has ``T`` weights for the
        previous wiring, ``T - 1`` for the current wiring)
    :type T: int
    :param tau: decay multiplier :math:`\tau` (default 0.25)
    :type tau: float
    :param v_threshold: initial threshold :math:`V_{th}` (learnable)
    :type v_threshold: float
    :param surrogate_function: surrogate of the step; default the paper's triangle
        ``surrogate.PiecewiseQuadratic(alpha=1.0)``
    :param estimate_from: ``'previous'`` (paper) or ``'current'`` (authors' code)
    :type estimate_from: str
    :param step_mode: ``'s'`` or ``'m'``
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :param memory: ``'lean'``, ``'fast'`` or ``'auto'`` (see
        :attr:`ParallelNeuron.memory`)
    :param sample_in_eval: keep Bernoulli sampling in eval mode
    :type sample_in_eval: bool
    :param mem_loss_weights: ``"linear"`` (the authors' ``coef``) or ``"softmax"``
        (non-negative weights that sum to 1)
    :type mem_loss_weights: str
    """

    def __init__(
        self,
        T: int,
        tau: float = 0.25,
        v_threshold: float = 1.0,
        surrogate_function: Optional[Callable] = None,
        estimate_from: str = "previous",
        step_mode: str = "s",
        backend: str = "torch",
        sample_in_eval: bool = False,
        mem_loss_weights: str = "linear",
        memory: str = "auto",
    ):
        super().__init__(step_mode, backend, memory)
        self.T = _check_int("T", T)
        self.tau = ref.check_tau(tau)
        if mem_loss_weights not in MEM_LOSS_WEIGHTS:
            raise ValueError(
                f"mem_loss_weights must be one of {MEM_LOSS_WEIGHTS}, got "
                f"{mem_loss_weights!r}"
            )
        self.mem_loss_weights = mem_loss_weights
        if estimate_from not in ref.MPE_WIRINGS:
            raise ValueError(
                f"estimate_from must be one of {ref.MPE_WIRINGS}, got {estimate_from!r}"
            )
        self.estimate_from = estimate_from
        self.sample_in_eval = bool(sample_in_eval)
        self.surrogate_function = (
            mpe_default_surrogate()
            if surrogate_function is None
            else F.check_surrogate(surrogate_function, "MPEPSN")
        )
        self.v_threshold = nn.Parameter(torch.as_tensor(float(v_threshold)))
        # one weight per (estimate, potential) pair of the loss
        n = T if estimate_from == "previous" else T - 1
        if mem_loss_weights == "linear":
            self.coef = nn.Parameter(torch.full((n,), 1.0 / max(n, 1)))
        else:
            self.kappa_logit = nn.Parameter(torch.zeros(n))
        self.register_memory("time_step", 0)
        self.register_memory("seed", None)
        self.register_memory("u_hat", 0.0)
        self.register_memory("u", 0.0)
        self.register_memory("mem_loss", 0.0)

    @property
    def kappa(self) -> torch.Tensor:
        r"""The loss weights :math:`\kappa`: ``coef`` (linear) or
        :math:`\mathrm{softmax}(\text{kappa\_logit})`; ``T`` of them for the
        previous wiring, ``T - 1`` for the current wiring."""
        if self.mem_loss_weights == "linear":
            return self.coef
        return torch.softmax(self.kappa_logit, 0)

    def _weighted_loss(self, start: int, mse: torch.Tensor) -> torch.Tensor:
        """``(1/n) sum kappa_i mse_t`` over the pairs of global steps ``start ..``
        (the current wiring's pair at step ``t >= 1`` uses weight ``t - 1``)."""
        kappa = self.kappa
        n = kappa.shape[0]
        steps = mse.shape[0]
        if self.estimate_from == "current":
            first = max(start, 1)  # no pair at the very first step
            if first - 1 > 0 or start + steps - 1 < n:
                kappa = kappa[first - 1 : start + steps - 1]
            mse = mse[first - start :]
        elif start > 0 or steps < n:
            kappa = kappa[start : start + steps]
        if mse.dtype != kappa.dtype:
            mse = mse.to(kappa.dtype)
        return torch.dot(kappa, mse) / max(n, 1)

    @property
    def stochastic(self) -> bool:
        """Whether the estimate samples (training mode, or ``sample_in_eval``)."""
        return self.training or self.sample_in_eval

    def _run(
        self, x_seq: torch.Tensor, states: States, backend: str
    ) -> Tuple[torch.Tensor, States]:
        F.check_input(x_seq, "MPEPSN", min_dim=2, param=self.v_threshold)
        time_step, seed, u_hat, u, mem_loss = states
        for state, value in (("u_hat", u_hat), ("u", u)):
            if isinstance(value, torch.Tensor) and value.shape != x_seq.shape[1:]:
                raise _batch_mismatch("MPEPSN", state, value.shape, x_seq.shape[1:])
        stochastic = self.stochastic
        if stochastic and (seed is None or time_step == 0):
            seed = _draw_seed()
        need_mse = self.training
        steps = x_seq.shape[0]
        if need_mse and time_step + steps > self.T:
            raise ValueError(
                f"MPEPSN(T={self.T}) got {time_step + steps} time steps in training "
                f"mode, but its auxiliary loss has T={self.T} weights; build it with "
                "the sequence length as T or call functional.reset_net(net) between "
                "sequences"
            )
        spikes, mse, u_hat_last, u_last = F.mpe_psn_multi_step(
            x_seq,
            self.v_threshold,
            self.tau,
            self.surrogate_function,
            estimate_from=self.estimate_from,
            stochastic=stochastic,
            seed=seed if seed is not None else (0, 0),
            t0=time_step,
            u_hat0=u_hat if isinstance(u_hat, torch.Tensor) else None,
            u0=u if isinstance(u, torch.Tensor) else None,
            need_mse=need_mse,
            backend=backend,
            memory=self.memory,
        )
        if need_mse:
            mem_loss = mem_loss + self._weighted_loss(time_step, mse)
        return spikes, (time_step + steps, seed, u_hat_last, u_last, mem_loss)

    def single_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        x = inputs[0]
        F.check_input(x, "MPEPSN", param=self.v_threshold, what="[N, *]")
        spikes, states = self._run(x.unsqueeze(0), states, "torch")
        return (spikes[0],), states

    def multi_step_functional_forward(
        self, inputs: Outputs, states: States, **kwargs
    ) -> Tuple[Outputs, States]:
        spikes, states = self._run(inputs[0], states, self.backend)
        return (spikes,), states

    def extra_repr(self) -> str:
        return (
            f"T={self.T}, tau={self.tau}, estimate_from={self.estimate_from!r}, "
            f"sample_in_eval={self.sample_in_eval}, "
            f"mem_loss_weights={self.mem_loss_weights!r}, " + super().extra_repr()
        )
