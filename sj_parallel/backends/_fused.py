r"""What the fused-kernel backends (``"cupy"``, ``"triton"``) share.

A fused backend supplies six implementation functions, the forward and backward
kernels' host code of each neuron family (:class:`Impls`), and gets from
:func:`build` everything around them, written once:

* the ``torch.library`` ops (schemas from the implementations' signatures) with their
  fake implementations, so ``torch.compile`` propagates shapes through them;
* their autograd formulas: what forward saves (``X``, the parameters, MPE-PSN's
  ``[M]`` initial states: the lean memory policy), the backward call, the refusal of
  second derivatives (:func:`~sj_parallel.backends._autograd.forbid_double_backward`)
  and which gradients exist for which MPE-PSN wiring;
* an eager ``torch.autograd.Function`` per neuron family that runs the same
  implementations and formulas without the custom op's Python dispatch (less host
  time per call); ``torch.compile`` traces the ops instead;
* the user-facing functions ``psn``, ``sliding_psn`` and ``mpe_psn`` (the signatures
  of :mod:`sj_parallel.backends.torch_backend`): input checks, the size limits of the
  backend's kernels, the surrogate's kernel parameters.

The op schemas (every fused backend's ops take the same arguments):

* ``psn_forward(x [T, M], weight [T, T], bias [T, 1], sg_kind, sg_a, sg_c, sg_d)
  -> spikes`` and ``psn_backward(x, grad_s, weight, bias, sg...) -> (grad_x,
  grad_weight, grad_bias)``; the sliding PSN's take ``weight [k]``, ``bias []``;
* ``mpe_psn_forward(x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic,
  seed_lo, seed_hi, t0, need_mse, keep_samples, sg...) -> (spikes, mse [T] float32,
  u_hat_last [M], u_last [M], samples [R, M] int32)`` and ``mpe_psn_backward(x,
  samples, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl, grad_ul, tau,
  current_wiring, stochastic, seed_lo, seed_hi, t0, sg...) -> (grad_x,
  grad_v_threshold, grad_u_hat0 [M] float32, grad_u0 [M] float32)``; ``samples`` are
  the forward's Bernoulli draws for the backward, bit ``t % 32`` of word ``t // 32``
  of a column (:func:`sample_rows` rows: none unless the backend keeps them, the
  draws are stochastic and ``keep_samples``, i.e. a backward will run); a backend
  that keeps none regenerates them from the counter hash. Gradients of outputs
  nobody differentiates arrive as ``None`` (the kernels read a null gradient as
  zero).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._autograd import forbid_double_backward
from ._surrogates import surrogate_params

Surrogate = Callable[[Tensor], Tensor]

#: The neurons as the errors name them, per op family.
NAMES = {"psn": "PSN/MaskedPSN", "sliding": "SlidingPSN", "mpe": "MPEPSN"}


class Impls(NamedTuple):
    """A fused backend's host code of its kernels (see the module docstring for the
    schemas): each launches the kernels and returns fresh tensors."""

    psn_forward: Callable
    psn_backward: Callable
    sliding_psn_forward: Callable
    sliding_psn_backward: Callable
    mpe_psn_forward: Callable
    mpe_psn_backward: Callable


class Limits(NamedTuple):
    """The largest sizes a backend's kernels take (``None``: no limit)."""

    psn_t: int
    sliding_k: int
    mpe_t_mse: Optional[int] = None


def as_contiguous(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype`` and contiguous (itself where it already is; ``None`` stays
    ``None``): how the kernels take their optional tensor arguments."""
    if t is None:
        return None
    return (t if t.dtype == dtype else t.to(dtype)).contiguous()


def sample_rows(T: int, keep: bool) -> int:
    """Rows of MPE-PSN's kept sample words for ``T`` steps: ``ceil(T / 32)`` (bit
    ``t % 32`` of word ``t // 32``), 0 where none are kept."""
    return (T + 31) // 32 if keep else 0


# ------------------------------------------------------------------------ schemas
def _schemas(impls: Impls, keeps: bool) -> Impls:
    """The ops' functions: the typed signatures the op schemas are read from, and
    the empty inputs that launch nothing, around the backend's implementations
    (``keeps``: whether its MPE-PSN forward keeps its samples for the backward)."""

    psn_forward, psn_backward = _psn_pair(
        impls.psn_forward, impls.psn_backward, lambda x: x.shape[1] == 0
    )
    sliding_psn_forward, sliding_psn_backward = _psn_pair(
        impls.sliding_psn_forward, impls.sliding_psn_backward, lambda x: x.numel() == 0
    )

    def mpe_psn_forward(
        x: Tensor,
        v_threshold: Tensor,
        u_hat0: Optional[Tensor],
        u0: Optional[Tensor],
        tau: float,
        current_wiring: bool,
        stochastic: bool,
        seed_lo: int,
        seed_hi: int,
        t0: int,
        need_mse: bool,
        keep_samples: bool,
        sg_kind: int,
        sg_a: float,
        sg_c: float,
        sg_d: float,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        T, M = x.shape
        rows = sample_rows(T, keeps and keep_samples and stochastic)
        if T == 0 or M == 0:  # nothing to run (an empty layer has no estimation error)
            uhl = u_hat0 if u_hat0 is not None and T == 0 else x.new_zeros(M)
            ul = u0 if u0 is not None and T == 0 else x.new_zeros(M)
            return (
                torch.empty_like(x),
                x.new_zeros(T, dtype=torch.float32),
                uhl.to(x.dtype, copy=True),
                ul.to(x.dtype, copy=True),
                x.new_zeros(rows, M, dtype=torch.int32),
            )
        return impls.mpe_psn_forward(
            x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic, seed_lo,
            seed_hi, t0, need_mse, rows, sg_kind, sg_a, sg_c, sg_d,
        )  # fmt: skip

    def mpe_psn_backward(
        x: Tensor,
        samples: Tensor,
        v_threshold: Tensor,
        u_hat0: Optional[Tensor],
        u0: Optional[Tensor],
        grad_s: Optional[Tensor],
        grad_mse: Optional[Tensor],
        grad_uhl: Optional[Tensor],
        grad_ul: Optional[Tensor],
        tau: float,
        current_wiring: bool,
        stochastic: bool,
        seed_lo: int,
        seed_hi: int,
        t0: int,
        sg_kind: int,
        sg_a: float,
        sg_c: float,
        sg_d: float,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        if x.numel() == 0:
            M = x.shape[1]
            return (
                torch.empty_like(x),
                torch.zeros_like(v_threshold),
                x.new_zeros(M, dtype=torch.float32),
                x.new_zeros(M, dtype=torch.float32),
            )
        return impls.mpe_psn_backward(
            x, samples, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl,
            grad_ul, tau, current_wiring, stochastic, seed_lo, seed_hi, t0, sg_kind,
            sg_a, sg_c, sg_d,
        )  # fmt: skip

    return Impls(psn_forward, psn_backward, sliding_psn_forward,
                 sliding_psn_backward, mpe_psn_forward, mpe_psn_backward)  # fmt: skip


def _psn_pair(forward: Callable, backward: Callable, empty: Callable) -> Tuple:
    """The forward and backward op functions of a PSN-family neuron (``weight``
    ``[T, T]`` and ``bias`` ``[T, 1]``, or ``[k]`` and ``[]``), which launch nothing
    where ``empty(x)``."""

    def fwd(
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        sg_kind: int,
        sg_a: float,
        sg_c: float,
        sg_d: float,
    ) -> Tensor:
        if empty(x):
            return torch.empty_like(x)
        return forward(x, weight, bias, sg_kind, sg_a, sg_c, sg_d)

    def bwd(
        x: Tensor,
        grad_s: Tensor,
        weight: Tensor,
        bias: Tensor,
        sg_kind: int,
        sg_a: float,
        sg_c: float,
        sg_d: float,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        if empty(x):
            return _no_grads(x, weight, bias)
        return backward(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d)

    return fwd, bwd


def _no_grads(x: Tensor, weight: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.zeros_like(weight), torch.zeros_like(bias)


# ------------------------------------------------------------ fake implementations
def _fake(op: str, keeps: bool) -> Callable:
    """The fake implementation of op ``op``: outputs of the right shapes and dtypes
    (``keeps``: as in :func:`_schemas`)."""
    if op in ("psn_forward", "sliding_psn_forward"):
        return lambda x, *args: torch.empty_like(x)
    if op in ("psn_backward", "sliding_psn_backward"):
        return lambda x, grad_s, weight, bias, *sg: _no_grads(x, weight, bias)
    if op == "mpe_psn_forward":
        return lambda x, v, uh0, u0, tau, cur, stochastic, lo, hi, t0, mse, keep, *sg: (
            torch.empty_like(x),
            x.new_empty(x.shape[0], dtype=torch.float32),
            x.new_empty(x.shape[1]),
            x.new_empty(x.shape[1]),
            x.new_empty(
                sample_rows(x.shape[0], keeps and keep and stochastic),
                x.shape[1],
                dtype=torch.int32,
            ),
        )
    return lambda x, samples, v_threshold, *args: (
        torch.empty_like(x),
        torch.empty_like(v_threshold),
        x.new_empty(x.shape[1], dtype=torch.float32),
        x.new_empty(x.shape[1], dtype=torch.float32),
    )


# ------------------------------------------------------------- autograd formulas
def _psn_setup(ctx, inputs, output):
    x, weight, bias, *sg = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.sg = sg


def _psn_grads(name: str, backend: str) -> Callable:
    """The autograd formula of a PSN-family op (``name``: the neuron the error of a
    second derivative names)."""

    def grads(ctx, grad_s, backward):
        x, weight, bias = ctx.saved_tensors
        forbid_double_backward(name, backend, grad_s, x, weight, bias)
        gx, gw, gb = backward(x, grad_s, weight, bias, *ctx.sg)
        return gx, gw, gb, None, None, None, None

    return grads


def _mpe_setup(ctx, inputs, output):
    x, v, u_hat0, u0, *cfg = inputs
    # outputs nobody differentiates get None, not zero-filled tensors: the kernels
    # read a null gradient as zero
    ctx.set_materialize_grads(False)
    # the forward's samples (1 bit per element; [0, M] where none are kept)
    ctx.save_for_backward(x, v, u_hat0, u0, output[4])
    ctx.cfg = cfg  # tau, current, stochastic, seed_lo, seed_hi, t0, need_mse, keep, sg


def _mpe_grads(backend: str) -> Callable:
    def grads(ctx, g_s, g_mse, g_uhl, g_ul, g_samples, backward):
        x, v, u_hat0, u0, samples = ctx.saved_tensors
        forbid_double_backward(
            NAMES["mpe"], backend, g_s, g_mse, g_uhl, g_ul, x, v, u_hat0, u0
        )
        tau, current, stochastic, seed_lo, seed_hi, t0, need_mse, _, *sg = ctx.cfg
        gx, gv, guh0, gu0 = backward(
            x, samples, v, u_hat0, u0, g_s, g_mse if need_mse else None, g_uhl,
            g_ul, tau, current, stochastic, seed_lo, seed_hi, t0, *sg,
        )  # fmt: skip
        out: List[Optional[Tensor]] = [gx, gv, None, None]
        if u_hat0 is not None and not current:
            out[2] = guh0.to(u_hat0.dtype)
        if u0 is not None and current and need_mse:
            out[3] = gu0.to(u0.dtype)
        return tuple(out) + (None,) * 12

    return grads


def _eager(name: str, forward, setup, grads, backward) -> type:
    """The eager form of an op with its autograd formula: a
    ``torch.autograd.Function`` that calls the same implementation functions
    directly (the op's Python dispatch costs more host time than the rest of a
    pass). ``torch.compile`` traces the ops instead (see ``run`` in :func:`build`)."""

    def fwd(ctx, *inputs):
        out = forward(*inputs)
        setup(ctx, inputs, out)
        return out

    def bwd(ctx, *grad_outputs):
        return grads(ctx, *grad_outputs, backward=backward)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(fwd), "backward": staticmethod(bwd)})  # fmt: skip


def _run(op, eager: type, *args):
    """``op`` under ``torch.compile``, its eager Function otherwise: the same
    kernels and formulas either way."""
    if torch.compiler.is_compiling():
        return op(*args)
    return eager.apply(*args)


# ------------------------------------------------------------------------ build
def build(
    backend: str,
    impls: Impls,
    *,
    make_op: Callable[[str], Callable[[Callable], object]],
    op_prefix: str,
    register_fakes: bool,
    check: Callable[[Tensor, str], Tensor],
    limits: Limits,
    module: str,
    keeps_samples: bool = False,
) -> SimpleNamespace:
    """The ops, eager Functions and user-facing functions of a fused backend.

    :param backend: its name (``"cupy"``, ``"triton"``), for the errors
    :param impls: its kernels' host code
    :param make_op: ``make_op(qualified_name)(function)`` -> a ``torch.library`` op
        (``custom_op`` or ``triton_op`` with ``mutates_args=()``)
    :param op_prefix: the ops' qualified-name prefix, e.g. ``"sj_parallel::"``
    :param register_fakes: register the fake implementations (a ``triton_op`` is
        traced through its kernels and needs none)
    :param check: ``check(x, neuron) -> x`` (contiguous), raising a clear error for
        inputs the kernels cannot take
    :param limits: the largest ``T`` / ``k`` the kernels take
    :param module: the backend's module, where the user-facing functions belong
    :param keeps_samples: its MPE-PSN forward keeps the Bernoulli samples for the
        backward (:func:`sample_rows` rows of sample words), which then reads them
        instead of regenerating them
    :returns: a namespace with the ops (``psn_forward``, ``psn_backward``, ...), the
        eager Functions (``PSN``, ``SlidingPSN``, ``MPEPSN``) and the functions
        ``psn``, ``sliding_psn``, ``mpe_psn``
    """
    ns = SimpleNamespace()
    impls = _schemas(impls, keeps_samples)
    for field in Impls._fields:
        op = make_op(op_prefix + field)(getattr(impls, field))
        if register_fakes:
            op.register_fake(_fake(field, keeps_samples))
        setattr(ns, field, op)

    psn_grads = _psn_grads(NAMES["psn"], backend)
    sliding_grads = _psn_grads(NAMES["sliding"], backend)
    mpe_grads = _mpe_grads(backend)
    for fwd, bwd, setup, grads in (
        (ns.psn_forward, ns.psn_backward, _psn_setup, psn_grads),
        (ns.sliding_psn_forward, ns.sliding_psn_backward, _psn_setup, sliding_grads),
        (ns.mpe_psn_forward, ns.mpe_psn_backward, _mpe_setup, mpe_grads),
    ):
        fwd.register_autograd(
            lambda ctx, *g, _grads=grads, _bwd=bwd: _grads(ctx, *g, backward=_bwd),
            setup_context=setup,
        )
    ns.PSN = _eager("PSN", impls.psn_forward, _psn_setup, psn_grads,
                    impls.psn_backward)  # fmt: skip
    ns.SlidingPSN = _eager("SlidingPSN", impls.sliding_psn_forward, _psn_setup,
                           sliding_grads, impls.sliding_psn_backward)  # fmt: skip
    ns.MPEPSN = _eager("MPEPSN", impls.mpe_psn_forward, _mpe_setup, mpe_grads,
                       impls.mpe_psn_backward)  # fmt: skip

    def psn_like(family: str, size: str, limit: int, op, eager: type) -> Callable:
        """The user-facing function of the PSN family ``family`` whose size
        (``T`` = the rows of ``x``, or ``k`` = the taps of ``weight``) is at most
        ``limit``."""

        def fn(
            x: Tensor,
            weight: Tensor,
            bias: Tensor,
            surrogate_function: Surrogate,
            memory: str = "lean",
        ) -> Tensor:
            x = check(x, NAMES[family])
            n = x.shape[0] if size == "T" else weight.shape[0]
            if n > limit:
                raise ValueError(
                    f"backend {backend!r} supports {NAMES[family]} with {size} <= "
                    f"{limit}, got {size}={n}; use backend='torch'"
                )
            if family == "psn":
                bias = bias.reshape(n, 1)
            sg = surrogate_params(surrogate_function, backend)
            return _run(op, eager, x, weight, bias, *sg)

        return fn

    psn = psn_like("psn", "T", limits.psn_t, ns.psn_forward, ns.PSN)
    sliding_psn = psn_like(
        "sliding", "k", limits.sliding_k, ns.sliding_psn_forward, ns.SlidingPSN
    )

    def mpe_psn(
        x: Tensor,
        v_threshold: Tensor,
        tau: float,
        surrogate_function: Surrogate,
        *,
        estimate_from: str,
        stochastic: bool,
        seed: Tuple[int, int],
        t0: int,
        u_hat0: Optional[Tensor],
        u0: Optional[Tensor],
        need_mse: bool,
        memory: str = "lean",
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        x = check(x, NAMES["mpe"])
        T = x.shape[0]
        if need_mse and limits.mpe_t_mse is not None and T > limits.mpe_t_mse:
            raise ValueError(
                f"backend {backend!r} computes the MPE-PSN membrane loss for T <= "
                f"{limits.mpe_t_mse}, got T={T}; use backend='torch'"
            )
        # the samples are kept (by a backend that keeps them) when a graph is built
        keep = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, v_threshold, u_hat0, u0)
        )
        return _run(
            ns.mpe_psn_forward,
            ns.MPEPSN,
            x,
            v_threshold,
            u_hat0,
            u0,
            float(tau),
            estimate_from == "current",
            bool(stochastic),
            int(seed[0]) & 0xFFFFFFFF,
            int(seed[1]) & 0xFFFFFFFF,
            int(t0),
            bool(need_mse),
            keep,
            *surrogate_params(surrogate_function, backend),
        )[:4]

    psn.__doc__ = f"""Dense PSN (and masked PSN with its masked weight) on ``x``
    ``[T, M]``, ``T <= {limits.psn_t}``, with backend {backend!r}.

    ``memory`` is accepted for the torch backend's signature: the kernels always keep
    only ``X`` and recompute ``H`` in backward."""
    sliding_psn.__doc__ = f"""Banded sliding PSN on ``x`` ``[T, M]``, any ``T``,
    ``k <= {limits.sliding_k}``, with backend {backend!r} (``memory`` is ignored: the
    kernels keep only ``X``)."""
    mpe_psn.__doc__ = f"""MPE-PSN on ``x`` ``[T, M]`` with backend {backend!r}; see
    :func:`sj_parallel.reference.mpe_psn` (``memory`` is ignored: backward keeps
    ``X`` and the samples as bits or regenerates them, see :func:`sample_rows`).

    Returns ``(spikes, mse [T] float32, u_hat_last [M], u_last [M])``."""
    for name, fn in (("psn", psn), ("sliding_psn", sliding_psn), ("mpe_psn", mpe_psn)):
        fn.__name__ = fn.__qualname__ = name
        fn.__module__ = module
        setattr(ns, name, fn)
    return ns
