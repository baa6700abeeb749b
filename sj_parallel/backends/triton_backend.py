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
one). Eager calls run the same launch code and autograd formulas through a
``torch.autograd.Function`` (less host time than an op's Python dispatch); the ops,
their fakes, formulas and the user-facing functions are shared with the cupy backend
(:mod:`sj_parallel.backends._fused`).

Grids depend only on the sizes and the device (its SM count), so the per-program
partial sums, and the results, are bitwise reproducible on one device and software
stack; nothing synchronises with the host, so the ops can be captured in CUDA graphs.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import triton as K
from ..triton import common as _common
from ._fused import Impls, Limits, as_contiguous, build

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


# ----------------------------------------------------------------------------- PSN
def _psn_forward(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    s = torch.empty_like(x)
    w, b = _padded(weight, bias, T)
    vec = _vec(K.vec_width("psn", False, x.dtype, T), M, x, s)
    ce, opts = K.launch_params("psn", False, T, precision=PRECISION, dtype=x.dtype,
                               vec=vec)  # fmt: skip
    grid = (_cdiv(M, ce["BLOCK_M"]),)
    _launch(K.psn.psn_forward_kernel, grid, x, w, b, s, M, T, options=opts, **ce)
    return s


def _psn_backward(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    gx = torch.empty_like(x)
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


# --------------------------------------------------------------------- sliding PSN
def _sliding_psn_forward(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    k = weight.shape[0]
    s = torch.empty_like(x)
    vec = _vec(K.vec_width("sliding", False, x.dtype, k), M, x, s)
    ce, opts = K.launch_params("sliding", False, k, dtype=x.dtype, vec=vec)
    grid = (_cdiv(M, ce["BLOCK_M"]),)
    _launch(
        K.sliding_psn.sliding_forward_kernel, grid, x, _f32(weight),
        _f32(bias).reshape(1), s, M, T, k, options=opts, **ce,
    )  # fmt: skip
    return s


def _sliding_psn_backward(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    k = weight.shape[0]
    gx = torch.empty_like(x)
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


# ------------------------------------------------------------------------- MPE-PSN
def _t0_words(t0: int) -> Tuple[int, int]:
    """The first step as two int32 words, ``t0 = hi 2^31 + lo``."""
    if not 0 <= t0 < 2**62:
        raise ValueError(f"MPEPSN: time step {t0} out of range [0, 2^62)")
    return t0 >> 31, t0 & 0x7FFFFFFF


def _mpe_psn_forward(x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic,
                     seed_lo, seed_hi, t0, need_mse, sample_rows, sg_kind, sg_a,
                     sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    s = torch.empty_like(x)
    uhl = torch.empty(M, dtype=x.dtype, device=x.device)
    ul = torch.empty(M, dtype=x.dtype, device=x.device)
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
    # this backend keeps no samples (sample_rows is 0): the backward regenerates them
    return s, mse, uhl, ul, x.new_empty(sample_rows, M, dtype=torch.int32)


def _mpe_psn_backward(x, samples, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl,
                      grad_ul, tau, current_wiring, stochastic, seed_lo, seed_hi,
                      t0, sg_kind, sg_a, sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    gx = torch.empty_like(x)
    guh0 = torch.empty(M, dtype=torch.float32, device=x.device)
    gu0 = torch.empty(M, dtype=torch.float32, device=x.device)

    opt = as_contiguous
    uh0, u0c = opt(u_hat0, x.dtype), opt(u0, x.dtype)
    guhl, gul = opt(grad_uhl, x.dtype), opt(grad_ul, x.dtype)
    # d mse_t / d e = 2 e / M, folded into the incoming gradient
    gm = None if grad_mse is None else grad_mse.to(torch.float32) * (2.0 / M)
    gs = torch.zeros_like(x) if grad_s is None else grad_s.to(x.dtype).contiguous()
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


_OPS = build(
    "triton",
    Impls(
        _psn_forward,
        _psn_backward,
        _sliding_psn_forward,
        _sliding_psn_backward,
        _mpe_psn_forward,
        _mpe_psn_backward,
    ),
    make_op=_op,
    op_prefix="sj_parallel::triton_",
    register_fakes=not USE_TRITON_OP,  # a triton_op is traced through its kernels
    check=_check,
    limits=Limits(K.PSN_MAX_T, K.SLIDING_MAX_K),
    module=__name__,
)
psn_forward, psn_backward = _OPS.psn_forward, _OPS.psn_backward
sliding_psn_forward = _OPS.sliding_psn_forward
sliding_psn_backward = _OPS.sliding_psn_backward
mpe_psn_forward, mpe_psn_backward = _OPS.mpe_psn_forward, _OPS.mpe_psn_backward
psn, sliding_psn, mpe_psn = _OPS.psn, _OPS.sliding_psn, _OPS.mpe_psn
