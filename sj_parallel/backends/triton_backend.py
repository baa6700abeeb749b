r"""The ``"triton"`` backend: the fused Triton kernels of :mod:`sj_parallel.triton`.

Functions here take flattened ``[T, M]`` inputs, like
:mod:`sj_parallel.backends.torch_backend` and :mod:`~sj_parallel.backends.cupy_backend`,
and compute the same values (:mod:`sj_parallel.reference` is the math all three are
tested against). Inputs may be float32, float16 or bfloat16 (float32 math inside);
parameters are used as float32 and their gradients returned in their own dtype, which
is what ``torch.autocast`` needs (the ops have no autocast rule of their own: they take
the dtype they are given). Non-contiguous inputs are made contiguous. What backward
keeps is what the lean memory policy keeps: ``X`` and the parameters (and MPE-PSN's
``[M]`` states); ``H`` is recomputed and the Bernoulli samples regenerated.

Each kernel pair is a ``torch.library`` op with an autograd formula, so
``torch.compile(fullgraph=True)`` keeps it in its graph:

* on a GPU, :func:`torch.library.triton_op` with the kernels launched through
  :func:`torch.library.wrap_triton`: inductor sees (and schedules) the kernels
  themselves;
* under Triton's interpreter (``TRITON_INTERPRET=1``, the kernels run on CPU tensors),
  :func:`torch.library.custom_op` with a registered fake implementation around the
  very same launch code: torch.compile cannot trace ``wrap_triton`` on the
  interpreter (it fails on the interpreter's CPU storages).

The route is chosen when this module is imported (``SJP_TRITON_OP=1``/``0`` forces
one). Grids depend only on the sizes and the device (its SM count), so the per-program
partial sums, and the results, are bitwise reproducible on one device and software
stack; nothing synchronises with the host, so the ops can be captured in CUDA graphs.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import triton as K
from ..triton import common as _common
from ._surrogates import surrogate_params

Surrogate = Callable[[Tensor], Tensor]

#: Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1`` at import).
INTERPRETED = _common.INTERPRETED
_ROUTE = os.environ.get("SJP_TRITON_OP", "")
#: Whether the ops are :func:`torch.library.triton_op` (the GPU route) rather than
#: :func:`torch.library.custom_op` (the interpreter route).
USE_TRITON_OP = (not INTERPRETED) if _ROUTE not in ("0", "1") else _ROUTE == "1"
#: ``tl.dot``'s input precision for float32 operands (see :func:`K.dot_precision`).
PRECISION = K.dot_precision()
#: Programs per SM of the kernels that reduce over neurons (a fixed number per
#: device, so the partial sums are added in the same order on every run).
PROGRAMS_PER_SM = 4
#: Programs of those kernels where there is no GPU (the interpreter).
CPU_PROGRAMS = 3

_MAX_M = 2**31 - 1


def _op(name: str):
    if USE_TRITON_OP:
        return torch.library.triton_op(name, mutates_args=())
    return torch.library.custom_op(name, mutates_args=())


def _fake(op):
    """Register a fake implementation (the custom_op route; a triton_op is traced)."""

    def register(fn):
        if not USE_TRITON_OP:
            op.register_fake(fn)
        return fn

    return register


def _launch(kernel, grid, *args, options: Dict[str, int], **constexprs) -> None:
    """Launch ``kernel`` on ``grid`` with its constants and launch options (see
    :attr:`sj_parallel.triton.Variant.options`)."""
    if USE_TRITON_OP:
        kernel = torch.library.wrap_triton(kernel)
    kernel[grid](*args, **constexprs, **options)


def _vec(vw: int, M: int, *tensors: Optional[Tensor]) -> int:
    """``vw`` (vector IO) when ``M`` is a multiple of it and every tensor is aligned to
    ``vw`` of its elements, else 1."""
    if vw > 1 and M % vw == 0:
        if all(t is None or t.data_ptr() % (vw * t.element_size()) == 0
               for t in tensors):  # fmt: skip
            return vw
    return 1


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def programs(device: torch.device, tiles: int) -> int:
    """The number of programs of a kernel that reduces over ``tiles`` column tiles:
    ``PROGRAMS_PER_SM`` per SM of ``device`` (``CPU_PROGRAMS`` without a GPU), never
    more than there are tiles."""
    if device.type == "cuda":
        index = device.index
        if index is None:
            index = torch.cuda.current_device()
        n = PROGRAMS_PER_SM * _sm_count(index)
    else:
        n = CPU_PROGRAMS
    return max(1, min(tiles, n))


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


def _padded(weight: Tensor, bias: Tensor, T: int) -> Tuple[Tensor, Tensor]:
    """PSN's ``W`` and ``b`` as float32, zero-padded to ``[TP, TP]`` and ``[TP]`` (the
    kernels read them without masks, 16 bytes at a time)."""
    pad = K.padded_t(T) - T
    w = torch.nn.functional.pad(weight.detach().to(torch.float32), (0, pad, 0, pad))
    b = torch.nn.functional.pad(bias.detach().to(torch.float32).reshape(T), (0, pad))
    return w.contiguous(), b.contiguous()


def _i32(v: int) -> int:
    """A uint32 value as the int32 with the same bits (so Triton types it int32)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _check(x: Tensor, name: str) -> Tensor:
    if x.dtype not in K.DTYPES:
        raise TypeError(
            f"{name}: backend 'triton' supports float32, float16 and bfloat16 inputs, "
            f"got {x.dtype}; use backend='torch' for float64"
        )
    if not (x.is_cuda or (INTERPRETED and x.device.type == "cpu")):
        raise ValueError(
            f"{name}: backend 'triton' needs CUDA (or ROCm) tensors, got a tensor on "
            f"{x.device}; move the model and data to a GPU (`.cuda()`) or use "
            "backend='torch' (Triton's interpreter, TRITON_INTERPRET=1 set before "
            "sj_parallel is imported, runs the kernels on CPU tensors, slowly)"
        )
    if x.dim() == 2 and x.shape[1] > _MAX_M:
        raise ValueError(
            f"{name}: backend 'triton' takes at most {_MAX_M} neurons per time step "
            f"(batch x features), got {x.shape[1]}; split the batch"
        )
    return x.contiguous()


def _forbid_double_backward(name: str, *tensors: Optional[Tensor]) -> None:
    """The fused kernels have no second derivatives: refuse to build a graph that
    would need them (``create_graph=True`` with a gradient that requires grad)."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    ):
        raise RuntimeError(
            f"{name} with backend 'triton' has no second derivatives (double "
            "backward, e.g. torch.autograd.grad(..., create_graph=True) through it); "
            "use backend='torch' or the functions of sj_parallel.reference for "
            "higher-order gradients"
        )


# ----------------------------------------------------------------------------- PSN
@_op("sj_parallel::triton_psn_forward")
def psn_forward(
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
    w, b = _padded(weight, bias, T)
    vec = _vec(K.vec_width("psn", False, x.dtype, T), M, x, s)
    ce, opts = K.launch_params("psn", False, T, precision=PRECISION, dtype=x.dtype,
                               vec=vec)  # fmt: skip
    grid = (_cdiv(M, ce["BLOCK_M"]),)
    _launch(K.psn.psn_forward_kernel, grid, x, w, b, s, M, T, options=opts, **ce)
    return s


@_fake(psn_forward)
def _(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x)


@_op("sj_parallel::triton_psn_backward")
def psn_backward(
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
    grad_s = grad_s.to(x.dtype).contiguous()
    w32, b32 = _padded(weight, bias, T)
    vec = _vec(K.vec_width("psn", True, x.dtype, T), M, x, grad_s, gx)
    for part in K.backward_parts("psn", T, x.dtype):  # one kernel, or grad_X, grad_W
        ce, opts = K.launch_params("psn", True, T, precision=PRECISION, part=part,
                                   dtype=x.dtype, vec=vec)  # fmt: skip
        tp, tiles = ce["TP"], _cdiv(M, ce["BLOCK_M"])
        G = programs(x.device, tiles)
        if part != 1:
            gw_part = torch.empty(G, tp, tp, dtype=torch.float32, device=x.device)
            gb_part = torch.empty(G, tp, dtype=torch.float32, device=x.device)
        else:  # not written
            gw_part = gb_part = torch.empty(0, dtype=torch.float32, device=x.device)
        _launch(
            K.psn.psn_backward_kernel, (G,), x, grad_s, w32, b32, gx, gw_part,
            gb_part, M, T, tiles, sg_kind, sg_a, sg_c, sg_d, options=opts, **ce,
        )  # fmt: skip
    # the second, ordered pass over the per-program partials (deterministic)
    gw = gw_part.sum(0)[:T, :T].to(weight.dtype, copy=True)
    gb = gb_part.sum(0)[:T].reshape(bias.shape).to(bias.dtype, copy=True)
    return gx, gw, gb


@_fake(psn_backward)
def _(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _psn_setup(ctx, inputs, output):
    x, weight, bias, *sg = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.sg = sg


def _psn_bwd(ctx, grad_s):
    x, weight, bias = ctx.saved_tensors
    _forbid_double_backward("PSN/MaskedPSN", grad_s, x, weight, bias)
    gx, gw, gb = psn_backward(x, grad_s, weight, bias, *ctx.sg)
    return gx, gw, gb, None, None, None, None


psn_forward.register_autograd(_psn_bwd, setup_context=_psn_setup)


def psn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> Tensor:
    """Dense PSN (and masked PSN with its masked weight) on ``x`` ``[T, M]``.

    ``memory`` is accepted for the torch backend's signature: the kernels always
    keep only ``X`` and recompute ``H`` in backward."""
    x = _check(x, "PSN")
    T = x.shape[0]
    if T > K.PSN_MAX_T:
        raise ValueError(
            f"backend 'triton' supports PSN/MaskedPSN with T <= {K.PSN_MAX_T}, got "
            f"T={T}; use backend='torch'"
        )
    sg = surrogate_params(surrogate_function, "triton")
    return psn_forward(x, weight, bias.reshape(T, 1), *sg)


# --------------------------------------------------------------------- sliding PSN
@_op("sj_parallel::triton_sliding_psn_forward")
def sliding_psn_forward(
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
    vec = _vec(K.vec_width("sliding", False, x.dtype, k), M, x, s)
    ce, opts = K.launch_params("sliding", False, k, dtype=x.dtype, vec=vec)
    grid = (_cdiv(M, ce["BLOCK_M"]),)
    _launch(
        K.sliding_psn.sliding_forward_kernel, grid, x, _f32(weight),
        _f32(bias).reshape(1), s, M, T, k, options=opts, **ce,
    )  # fmt: skip
    return s


@_fake(sliding_psn_forward)
def _(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x)


@_op("sj_parallel::triton_sliding_psn_backward")
def sliding_psn_backward(
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
    gs = grad_s.to(x.dtype).contiguous()
    w32, b32 = _f32(weight), _f32(bias).reshape(1)
    vec = _vec(K.vec_width("sliding", True, x.dtype, k), M, x, gs, gx)
    ce, opts = K.launch_params("sliding", True, k, dtype=x.dtype, vec=vec)
    tiles = _cdiv(M, ce["BLOCK_M"])
    G = programs(x.device, tiles)
    part = torch.empty(G, k + 1, dtype=torch.float32, device=x.device)
    _launch(
        K.sliding_psn.sliding_backward_kernel, (G,), x, gs, w32, b32, gx, part, M, T,
        k, tiles, sg_kind, sg_a, sg_c, sg_d, options=opts, **ce,
    )  # fmt: skip
    total = part.sum(0)  # the second, ordered pass (deterministic)
    gw = total[:k].to(weight.dtype, copy=True)  # outputs may not alias each other
    gb = total[k].reshape(bias.shape).to(bias.dtype, copy=True)
    return gx, gw, gb


@_fake(sliding_psn_backward)
def _(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _sliding_bwd(ctx, grad_s):
    x, weight, bias = ctx.saved_tensors
    _forbid_double_backward("SlidingPSN", grad_s, x, weight, bias)
    gx, gw, gb = sliding_psn_backward(x, grad_s, weight, bias, *ctx.sg)
    return gx, gw, gb, None, None, None, None


sliding_psn_forward.register_autograd(_sliding_bwd, setup_context=_psn_setup)


def sliding_psn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> Tensor:
    """Banded sliding PSN on ``x`` ``[T, M]``, any ``T``, ``k <= 32`` (``memory`` is
    ignored: the kernels keep only ``X``)."""
    x = _check(x, "SlidingPSN")
    k = weight.shape[0]
    if k > K.SLIDING_MAX_K:
        raise ValueError(
            f"backend 'triton' supports SlidingPSN with k <= {K.SLIDING_MAX_K}, got "
            f"k={k}; use backend='cupy' (k <= 64) or backend='torch'"
        )
    sg = surrogate_params(surrogate_function, "triton")
    return sliding_psn_forward(x, weight, bias, *sg)


# ------------------------------------------------------------------------- MPE-PSN
def _t0_words(t0: int) -> Tuple[int, int]:
    """The first step as two int32 words, ``t0 = hi 2^31 + lo``."""
    if not 0 <= t0 < 2**62:
        raise ValueError(f"MPEPSN: time step {t0} out of range [0, 2^62)")
    return t0 >> 31, t0 & 0x7FFFFFFF


@_op("sj_parallel::triton_mpe_psn_forward")
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
    sg_kind: int,
    sg_a: float,
    sg_c: float,
    sg_d: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    T, M = x.shape
    s = torch.empty_like(x)
    uhl = torch.empty(M, dtype=x.dtype, device=x.device)
    ul = torch.empty(M, dtype=x.dtype, device=x.device)
    if T == 0 or M == 0:  # nothing to run (an empty layer has no estimation error)
        uhl.copy_(u_hat0 if u_hat0 is not None and T == 0 else torch.zeros_like(uhl))
        ul.copy_(u0 if u0 is not None and T == 0 else torch.zeros_like(ul))
        return s, torch.zeros(T, dtype=torch.float32, device=x.device), uhl, ul
    uh0 = None if u_hat0 is None else u_hat0.to(x.dtype).contiguous()
    u0c = None if u0 is None else u0.to(x.dtype).contiguous()
    vec = _vec(K.vec_width("mpe", False, x.dtype), M, x, s, uhl, ul, uh0, u0c)
    ce, opts = K.launch_params("mpe", False, current=current_wiring, dtype=x.dtype,
                               vec=vec)  # fmt: skip
    G = _cdiv(M, ce["BLOCK_M"])
    err = torch.empty(G if need_mse else 1, T, dtype=torch.float32, device=x.device)
    t0_hi, t0_lo = _t0_words(t0)
    _launch(
        K.mpe_psn.mpe_forward_kernel, (G,), x, x if uh0 is None else uh0,
        x if u0c is None else u0c, s, uhl, ul, err, _f32(v_threshold).reshape(1), M,
        T, tau, _i32(seed_lo), _i32(seed_hi), t0_hi, t0_lo, int(stochastic),
        int(need_mse), int(uh0 is not None), int(u0c is not None), options=opts,
        **ce,
    )  # fmt: skip
    if need_mse:  # the second, ordered pass over the per-program sums (deterministic)
        mse = err.sum(0) / M
    else:
        mse = torch.zeros(T, dtype=torch.float32, device=x.device)
    return s, mse, uhl, ul


@_fake(mpe_psn_forward)
def _(x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic, seed_lo, seed_hi,
      t0, need_mse, sg_kind, sg_a, sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    return (
        torch.empty_like(x),
        x.new_empty(T, dtype=torch.float32),
        x.new_empty(M),
        x.new_empty(M),
    )


@_op("sj_parallel::triton_mpe_psn_backward")
def mpe_psn_backward(
    x: Tensor,
    v_threshold: Tensor,
    u_hat0: Optional[Tensor],
    u0: Optional[Tensor],
    grad_s: Tensor,
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
    T, M = x.shape
    gx = torch.empty_like(x)
    guh0 = torch.empty(M, dtype=torch.float32, device=x.device)
    gu0 = torch.empty(M, dtype=torch.float32, device=x.device)
    if T == 0 or M == 0:
        return gx, torch.zeros_like(v_threshold), guh0.zero_(), gu0.zero_()

    def opt(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        return None if t is None else t.to(dtype).contiguous()

    uh0, u0c = opt(u_hat0, x.dtype), opt(u0, x.dtype)
    guhl, gul = opt(grad_uhl, x.dtype), opt(grad_ul, x.dtype)
    # d mse_t / d e = 2 e / M, folded into the incoming gradient
    gm = None if grad_mse is None else grad_mse.to(torch.float32) * (2.0 / M)
    gs = grad_s.to(x.dtype).contiguous()
    vec = _vec(K.vec_width("mpe", True, x.dtype), M, x, gs, gx, guh0, gu0, uh0, u0c,
               guhl, gul)  # fmt: skip
    ce, opts = K.launch_params("mpe", True, current=current_wiring, dtype=x.dtype,
                               vec=vec)  # fmt: skip
    G = _cdiv(M, ce["BLOCK_M"])
    gv_part = torch.empty(G, dtype=torch.float32, device=x.device)
    t0_hi, t0_lo = _t0_words(t0)
    # the kernel writes the gradient of the state its wiring reads; the other is 0
    (gu0 if not current_wiring else guh0).zero_()
    _launch(
        K.mpe_psn.mpe_backward_kernel, (G,), x, x if uh0 is None else uh0,
        x if u0c is None else u0c, gs, gv_part if gm is None else gm,
        x if guhl is None else guhl, x if gul is None else gul, gx, guh0, gu0,
        gv_part, _f32(v_threshold).reshape(1), M, T, tau, _i32(seed_lo),
        _i32(seed_hi), t0_hi, t0_lo, sg_kind, sg_a, sg_c, sg_d, int(stochastic),
        int(gm is not None), int(uh0 is not None), int(u0c is not None),
        int(guhl is not None), int(gul is not None), options=opts, **ce,
    )  # fmt: skip
    gv = gv_part.sum()  # the second, ordered pass (deterministic)
    return gx, gv.reshape(v_threshold.shape).to(v_threshold.dtype), guh0, gu0


@_fake(mpe_psn_backward)
def _(x, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl, grad_ul, tau,
      current_wiring, stochastic, seed_lo, seed_hi, t0, sg_kind, sg_a, sg_c,
      sg_d):  # fmt: skip
    M = x.shape[1]
    return (
        torch.empty_like(x),
        torch.empty_like(v_threshold),
        x.new_empty(M, dtype=torch.float32),
        x.new_empty(M, dtype=torch.float32),
    )


def _mpe_setup(ctx, inputs, output):
    x, v, u_hat0, u0, *cfg = inputs
    ctx.save_for_backward(x, v, u_hat0, u0)
    ctx.cfg = cfg  # tau, current, stochastic, seed_lo, seed_hi, t0, need_mse, sg...


def _mpe_bwd(ctx, g_s, g_mse, g_uhl, g_ul):
    x, v, u_hat0, u0 = ctx.saved_tensors
    _forbid_double_backward("MPEPSN", g_s, g_mse, g_uhl, g_ul, x, v, u_hat0, u0)
    tau, current, stochastic, seed_lo, seed_hi, t0, need_mse, *sg = ctx.cfg
    if g_s is None:
        g_s = torch.zeros_like(x)
    gx, gv, guh0, gu0 = mpe_psn_backward(
        x, v, u_hat0, u0, g_s, g_mse if need_mse else None, g_uhl, g_ul,
        tau, current, stochastic, seed_lo, seed_hi, t0, *sg,
    )  # fmt: skip
    out: List[Optional[Tensor]] = [gx, gv, None, None]
    if u_hat0 is not None and not current:
        out[2] = guh0.to(u_hat0.dtype)
    if u0 is not None and current and need_mse:
        out[3] = gu0.to(u0.dtype)
    return tuple(out) + (None,) * 11


mpe_psn_forward.register_autograd(_mpe_bwd, setup_context=_mpe_setup)


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
    """MPE-PSN on ``x`` ``[T, M]``; see :func:`sj_parallel.reference.mpe_psn`
    (``memory`` is ignored: the kernels keep only ``X`` and regenerate the samples).

    Returns ``(spikes, mse [T] float32, u_hat_last [M], u_last [M])``.
    """
    x = _check(x, "MPEPSN")
    return mpe_psn_forward(
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
        *surrogate_params(surrogate_function, "triton"),
    )
