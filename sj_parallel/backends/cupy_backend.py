"""The ``"cupy"`` backend: fused CUDA kernels for multi-step mode.

The kernels (``sj_parallel/cuda/*.cu``; launch layouts, what is saved and the bytes
each pass moves are documented at the top of each file) are registered as
``torch.library`` custom ops with fake implementations and autograd formulas, so
``torch.compile`` keeps them in its graphs; eager calls run the same implementation
and formulas through a ``torch.autograd.Function`` (less host time than the custom
op's Python dispatch). One kernel launch per pass; launches are on torch's current
stream with allocations through torch and no host synchronisation, so a pass can be
captured in a CUDA graph (after a first, eager call has compiled its kernels).
Functions here take flattened ``[T, M]`` CUDA tensors, like
:mod:`sj_parallel.backends.torch_backend`, and compute the same values
(:mod:`sj_parallel.reference` is the math both are tested against).

Inputs may be float32, float16 or bfloat16 (float32 math inside); parameters are used
as float32 and their gradients returned in their own dtype, which is what
``torch.autocast`` needs. Non-contiguous inputs are made contiguous.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _cuda as C
from ._autograd import forbid_double_backward

if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
    raise ImportError("backend 'cupy' needs torch >= 2.4 (torch.library.custom_op)")

Surrogate = Callable[[Tensor], Tensor]


def _check(x: Tensor, name: str) -> Tensor:
    """``x`` contiguous, or a clear error for a dtype the kernels do not support.

    That ``x`` is a CUDA tensor is checked where the backend is picked
    (:func:`sj_parallel.backends.get_backend`, which every neuron and
    :mod:`sj_parallel.functional` go through); the launcher takes the device from
    the tensors."""
    C.compile_options(x.dtype)  # clear error for unsupported dtypes
    return x.contiguous()


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (itself when it already is: no conversion call)."""
    return t if t.dtype == dtype else t.to(dtype)


def _f32(t: Tensor) -> Tensor:
    """A float32 contiguous view of a parameter (the kernels read float32)."""
    return _as(t, torch.float32).contiguous()


def _prepare(name: str, kname: str, x: Tensor, M: int, const=None, flags=(), T=0):
    """``(kernel, grid, block, dynamic smem)`` of a launch over ``M`` neuron columns
    of ``x``'s dtype, on ``x``'s device."""
    k = C.get_kernel(name, kname, x.dtype, const, flags, x.device.index)
    block, cols, smem = C.launch_config(name, kname, const, T, x.dtype)
    tiles = (M + cols - 1) // cols
    if tiles >= 2**31:  # the kernels index tiles with 32-bit ints
        raise ValueError(
            f"{kname}: M = {M} neurons per time step is too many for one launch "
            f"(at most {(2**31 - 1) * cols}); split the batch"
        )
    return k, k.grid(tiles, block, smem), block, smem


def _work(grid: int, n: int, x: Tensor) -> Tensor:
    """Scratch of a launch whose blocks reduce ``n`` sums (uninitialised: the kernel
    writes every element it reads)."""
    n_floats = C.reduce_workspace(grid, n)
    return torch.empty(n_floats, dtype=torch.float32, device=x.device)


def _eager(name: str, forward, setup, grads, backward) -> type:
    """The eager form of a custom op with its autograd formula: a
    ``torch.autograd.Function`` that calls the same implementation functions
    directly (the custom op's Python dispatch costs more host time than the rest of
    a pass). ``torch.compile`` traces the custom ops instead (:func:`_run`)."""

    def fwd(ctx, *inputs):
        out = forward(*inputs)
        setup(ctx, inputs, out)
        return out

    def bwd(ctx, *grad_outputs):
        return grads(ctx, *grad_outputs, backward=backward)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(fwd), "backward": staticmethod(bwd)})  # fmt: skip


def _run(op, eager: type, *args):
    """``op`` (a custom op) under ``torch.compile``, its eager Function otherwise:
    the same kernels and formulas either way."""
    if torch.compiler.is_compiling():
        return op(*args)
    return eager.apply(*args)


# ----------------------------------------------------------------------------- PSN
def _psn_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tensor:
    T, M = x.shape
    s = torch.empty_like(x)
    if M == 0:
        return s
    flags = C.psn_flags(sg_kind, C.psn_vector_ok(M, x, s))
    k, grid, block, smem = _prepare("psn", "sjp_psn_forward", x, M, T, flags)
    args = (x, _f32(weight), _f32(bias), s, np.int64(M))
    C.launch(k, grid, block, args, x.device, smem)
    return s


psn_forward = torch.library.custom_op("sj_parallel::psn_forward", mutates_args=())(
    _psn_forward
)


@psn_forward.register_fake
def _(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x)


def _psn_backward(
    x: Tensor,
    grad_s: Tensor,
    weight: Tensor,
    bias: Tensor,
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    T, M = x.shape
    gx = torch.empty_like(x)
    if M == 0:
        return gx, torch.zeros_like(weight), torch.zeros_like(bias)
    grad_s = _as(grad_s, x.dtype).contiguous()
    flags = C.psn_flags(sg_kind, C.psn_vector_ok(M, x, grad_s, gx))
    k, grid, block, smem = _prepare("psn", "sjp_psn_backward", x, M, T, flags)
    gw = torch.empty(T, T, dtype=torch.float32, device=x.device)
    gb = torch.empty(T, 1, dtype=torch.float32, device=x.device)
    args = (
        x,
        grad_s,
        _f32(weight),
        _f32(bias),
        gx,
        gw,
        gb,
        _work(grid, T * T + T, x),
        C.COUNTERS,
        np.int64(M),
        np.float32(sg_a),
        np.float32(sg_c),
        np.float32(sg_d),
    )
    C.launch(k, grid, block, args, x.device, smem)  # sums over blocks included
    return gx, _as(gw, weight.dtype), _as(gb.view(bias.shape), bias.dtype)


psn_backward = torch.library.custom_op("sj_parallel::psn_backward", mutates_args=())(
    _psn_backward
)


@psn_backward.register_fake
def _(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _psn_setup(ctx, inputs, output):
    x, weight, bias, *sg = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.sg = sg


def _psn_bwd(ctx, grad_s, backward=psn_backward):
    x, weight, bias = ctx.saved_tensors
    forbid_double_backward("PSN", "cupy", grad_s, x, weight, bias)
    gx, gW, gb = backward(x, grad_s, weight, bias, *ctx.sg)
    return gx, gW, gb, None, None, None, None


psn_forward.register_autograd(_psn_bwd, setup_context=_psn_setup)
_PSN = _eager("PSN", _psn_forward, _psn_setup, _psn_bwd, _psn_backward)


def psn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> Tensor:
    """Dense PSN (and masked PSN with its masked weight) on CUDA ``x`` ``[T, M]``.

    ``memory`` is accepted for the torch backend's signature: the kernels always
    keep only ``X`` and recompute ``H`` in backward."""
    x = _check(x, "PSN")
    T = x.shape[0]
    if T > C.PSN_MAX_T:
        raise ValueError(
            f"backend 'cupy' supports PSN/MaskedPSN with T <= {C.PSN_MAX_T}, got "
            f"T={T}; use backend='torch'"
        )
    sg = C.surrogate_params(surrogate_function)
    return _run(psn_forward, _PSN, x, weight, bias.reshape(T, 1), *sg)


# --------------------------------------------------------------------- sliding PSN
def _sliding_psn_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tensor:
    T, M = x.shape
    k = weight.shape[0]
    s = torch.empty_like(x)
    if M == 0 or T == 0:
        return s
    kern, grid, block, smem = _prepare(
        "sliding", "sjp_sliding_forward", x, M, k, C.sg_flags(sg_kind)
    )
    args = (x, _f32(weight), _f32(bias).reshape(1), s, np.int64(M), np.int32(T))
    C.launch(kern, grid, block, args, x.device, smem)
    return s


sliding_psn_forward = torch.library.custom_op(
    "sj_parallel::sliding_psn_forward", mutates_args=()
)(_sliding_psn_forward)


@sliding_psn_forward.register_fake
def _(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x)


def _sliding_psn_backward(
    x: Tensor,
    grad_s: Tensor,
    weight: Tensor,
    bias: Tensor,
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    T, M = x.shape
    k = weight.shape[0]
    gx = torch.empty_like(x)
    if M == 0 or T == 0:
        return gx, torch.zeros_like(weight), torch.zeros_like(bias)
    kern, grid, block, smem = _prepare(
        "sliding", "sjp_sliding_backward", x, M, k, C.sg_flags(sg_kind)
    )
    gw = torch.empty(k, dtype=torch.float32, device=x.device)
    gb = torch.empty((), dtype=torch.float32, device=x.device)
    args = (
        x,
        _as(grad_s, x.dtype).contiguous(),
        _f32(weight),
        _f32(bias).reshape(1),
        gx,
        gw,
        gb,
        _work(grid, k + 1, x),
        C.COUNTERS,
        np.int64(M),
        np.int32(T),
        np.float32(sg_a),
        np.float32(sg_c),
        np.float32(sg_d),
    )
    C.launch(kern, grid, block, args, x.device, smem)  # sums over blocks included
    return gx, _as(gw, weight.dtype), _as(gb.reshape(bias.shape), bias.dtype)


sliding_psn_backward = torch.library.custom_op(
    "sj_parallel::sliding_psn_backward", mutates_args=()
)(_sliding_psn_backward)


@sliding_psn_backward.register_fake
def _(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _sliding_bwd(ctx, grad_s, backward=sliding_psn_backward):
    x, weight, bias = ctx.saved_tensors
    forbid_double_backward("SlidingPSN", "cupy", grad_s, x, weight, bias)
    gx, gw, gb = backward(x, grad_s, weight, bias, *ctx.sg)
    return gx, gw, gb, None, None, None, None


sliding_psn_forward.register_autograd(_sliding_bwd, setup_context=_psn_setup)
_SLIDING = _eager(
    "SlidingPSN", _sliding_psn_forward, _psn_setup, _sliding_bwd, _sliding_psn_backward
)


def sliding_psn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> Tensor:
    """Banded sliding PSN on CUDA ``x`` ``[T, M]``, any ``T``, ``k <= 64``
    (``memory`` is ignored: the kernels keep only ``X``)."""
    x = _check(x, "SlidingPSN")
    k = weight.shape[0]
    if k > C.SLIDING_MAX_K:
        raise ValueError(
            f"backend 'cupy' supports SlidingPSN with k <= {C.SLIDING_MAX_K}, got "
            f"k={k}; use backend='torch'"
        )
    sg = C.surrogate_params(surrogate_function)
    return _run(sliding_psn_forward, _SLIDING, x, weight, bias, *sg)


# ------------------------------------------------------------------------- MPE-PSN
def _mpe_psn_forward(
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
    s = torch.empty_like(x)
    uhl = torch.empty(M, dtype=x.dtype, device=x.device)
    ul = torch.empty(M, dtype=x.dtype, device=x.device)
    mse = torch.empty(T, dtype=torch.float32, device=x.device)
    # the draws for the backward, bit t % 32 of word t // 32 ([0, M]: none kept)
    samples = x.new_empty(_sample_words(T, keep_samples and stochastic), M,
                          dtype=torch.int32)  # fmt: skip
    if T == 0 or M == 0:  # nothing to run (an empty layer has no estimation error)
        uhl.copy_(u_hat0 if u_hat0 is not None and T == 0 else torch.zeros_like(uhl))
        ul.copy_(u0 if u0 is not None and T == 0 else torch.zeros_like(ul))
        return s, mse.zero_(), uhl, ul, samples
    flags = C.mpe_flags(
        current_wiring, stochastic, need_mse, sg_kind, keep=samples.numel() > 0
    )
    kern, grid, block, smem = _prepare("mpe", "sjp_mpe_forward", x, M, None, flags, T)
    if not need_mse:
        smem = 0
    args = (
        x,
        None if u_hat0 is None else _as(u_hat0, x.dtype).contiguous(),
        None if u0 is None else _as(u0, x.dtype).contiguous(),
        s,
        uhl,
        ul,
        samples if samples.numel() else None,
        mse,
        _work(grid, T, x) if need_mse else None,
        C.COUNTERS if need_mse else None,
        _f32(v_threshold).reshape(1),
        np.int64(M),
        np.int32(T),
        np.float32(tau),
        np.uint32(seed_lo),
        np.uint32(seed_hi),
        np.int64(t0),
    )
    # mse = the per-step sums over the neurons / M (0 without need_mse), in a fixed
    # order inside the launch
    C.launch(kern, grid, block, args, x.device, smem)
    return s, mse, uhl, ul, samples


def _sample_words(T: int, keep: bool) -> int:
    """Rows of the forward's sample words: ``ceil(T / 32)``, 0 when none are kept."""
    return (T + 31) // 32 if keep else 0


mpe_psn_forward = torch.library.custom_op(
    "sj_parallel::mpe_psn_forward", mutates_args=()
)(_mpe_psn_forward)


@mpe_psn_forward.register_fake
def _(x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic, seed_lo, seed_hi,
      t0, need_mse, keep_samples, sg_kind, sg_a, sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    return (
        torch.empty_like(x),
        x.new_empty(T, dtype=torch.float32),
        x.new_empty(M),
        x.new_empty(M),
        x.new_empty(
            _sample_words(T, keep_samples and stochastic), M, dtype=torch.int32
        ),
    )


def _mpe_psn_backward(
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
    t0: int,
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients from ``x``, the forward's ``samples`` (stochastic; they replace
    the hash) and the incoming state."""
    T, M = x.shape
    gx = torch.empty_like(x)
    guh0 = torch.empty(M, dtype=torch.float32, device=x.device)
    gu0 = torch.empty(M, dtype=torch.float32, device=x.device)
    if T == 0 or M == 0:
        return gx, torch.zeros_like(v_threshold), guh0.zero_(), gu0.zero_()

    def opt(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        return None if t is None else _as(t, dtype).contiguous()

    flags = C.mpe_flags(
        current_wiring,
        stochastic,
        grad_mse is not None,
        sg_kind,
        wide=C.mpe_backward_wide(T, M),
    )
    kern, grid, block, smem = _prepare(
        "mpe", "sjp_mpe_backward", x, M, None, flags, T if grad_mse is not None else 0
    )
    gv = torch.empty(1, dtype=torch.float32, device=x.device)
    args = (
        x,
        samples if stochastic else None,
        opt(u_hat0, x.dtype),
        opt(u0, x.dtype),
        opt(grad_s, x.dtype),  # None: the spikes' gradient is zero
        opt(grad_mse, torch.float32),
        opt(grad_uhl, x.dtype),
        opt(grad_ul, x.dtype),
        gx,
        guh0,  # written for every column (0 where the wiring has no such gradient)
        gu0,
        gv,
        _work(grid, 1, x),
        C.COUNTERS,
        _f32(v_threshold).reshape(1),
        np.int64(M),
        np.int32(T),
        np.float32(tau),
        np.int64(t0),
        np.float32(sg_a),
        np.float32(sg_c),
        np.float32(sg_d),
    )
    C.launch(kern, grid, block, args, x.device, smem)  # grad_v summed over blocks
    return gx, _as(gv.reshape(v_threshold.shape), v_threshold.dtype), guh0, gu0


mpe_psn_backward = torch.library.custom_op(
    "sj_parallel::mpe_psn_backward", mutates_args=()
)(_mpe_psn_backward)


@mpe_psn_backward.register_fake
def _(x, samples, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl, grad_ul, tau,
      current_wiring, stochastic, t0, sg_kind, sg_a, sg_c, sg_d):  # fmt: skip
    M = x.shape[1]
    return (
        torch.empty_like(x),
        torch.empty_like(v_threshold),
        x.new_empty(M, dtype=torch.float32),
        x.new_empty(M, dtype=torch.float32),
    )


def _mpe_setup(ctx, inputs, output):
    x, v, u_hat0, u0, *cfg = inputs
    # outputs nobody differentiates get None, not zero-filled tensors: the kernel
    # reads a null gradient as zero
    ctx.set_materialize_grads(False)
    # the samples (1 bit per element) spare the backward the hash and the sigmoid
    ctx.save_for_backward(x, v, u_hat0, u0, output[4])
    ctx.cfg = cfg  # tau, current, stochastic, seed_lo, seed_hi, t0, need_mse, keep, sg


def _mpe_bwd(ctx, g_s, g_mse, g_uhl, g_ul, g_samples, backward=mpe_psn_backward):
    x, v, u_hat0, u0, samples = ctx.saved_tensors
    forbid_double_backward("MPEPSN", "cupy", g_s, g_mse, g_uhl, g_ul, x, v, u_hat0, u0)
    tau, current, stochastic, _, _, t0, need_mse, _, *sg = ctx.cfg
    gx, gv, guh0, gu0 = backward(
        x, samples, v, u_hat0, u0, g_s, g_mse if need_mse else None, g_uhl, g_ul,
        tau, current, stochastic, t0, *sg,
    )  # fmt: skip
    out: List[Optional[Tensor]] = [gx, gv, None, None]
    if u_hat0 is not None and not current:
        out[2] = guh0.to(u_hat0.dtype)
    if u0 is not None and current and need_mse:
        out[3] = gu0.to(u0.dtype)
    return tuple(out) + (None,) * 12


mpe_psn_forward.register_autograd(_mpe_bwd, setup_context=_mpe_setup)
_MPE = _eager("MPEPSN", _mpe_psn_forward, _mpe_setup, _mpe_bwd, _mpe_psn_backward)


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
    """MPE-PSN on CUDA ``x`` ``[T, M]``; see :func:`sj_parallel.reference.mpe_psn`
    (``memory`` is ignored: the kernels keep ``X`` and, when a backward will run and
    the estimate is sampled, the samples as 1 bit per element).

    Returns ``(spikes, mse [T] float32, u_hat_last [M], u_last [M])``.
    """
    x = _check(x, "MPEPSN")
    T = x.shape[0]
    if need_mse and T > C.MPE_MAX_T_MSE:
        raise ValueError(
            f"backend 'cupy' computes the MPE-PSN membrane loss for T <= "
            f"{C.MPE_MAX_T_MSE}, got T={T}; use backend='torch'"
        )
    # the backward reads the forward's samples: kept when a graph is being built
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, v_threshold, u_hat0, u0)
    )
    return _run(
        mpe_psn_forward,
        _MPE,
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
        *C.surrogate_params(surrogate_function),
    )[:4]
