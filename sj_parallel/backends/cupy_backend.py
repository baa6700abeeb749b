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

import numpy as np
import torch
from torch import Tensor

from . import _cuda as C
from ._fused import Impls, Limits, as_contiguous, build

if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
    raise ImportError("backend 'cupy' needs torch >= 2.4 (torch.library.custom_op)")


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


# ----------------------------------------------------------------------------- PSN
def _psn_forward(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    s = torch.empty_like(x)
    flags = C.psn_flags(sg_kind, C.psn_vector_ok(M, x, s))
    k, grid, block, smem = _prepare("psn", "sjp_psn_forward", x, M, T, flags)
    args = (x, _f32(weight), _f32(bias), s, np.int64(M))
    C.launch(k, grid, block, args, x.device, smem)
    return s


def _psn_backward(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    gx = torch.empty_like(x)
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


# --------------------------------------------------------------------- sliding PSN
def _sliding_psn_forward(x, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    k = weight.shape[0]
    s = torch.empty_like(x)
    kern, grid, block, smem = _prepare(
        "sliding", "sjp_sliding_forward", x, M, k, C.sg_flags(sg_kind)
    )
    args = (x, _f32(weight), _f32(bias).reshape(1), s, np.int64(M), np.int32(T))
    C.launch(kern, grid, block, args, x.device, smem)
    return s


def _sliding_psn_backward(x, grad_s, weight, bias, sg_kind, sg_a, sg_c, sg_d):
    T, M = x.shape
    k = weight.shape[0]
    gx = torch.empty_like(x)
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


# ------------------------------------------------------------------------- MPE-PSN
def _mpe_psn_forward(x, v_threshold, u_hat0, u0, tau, current_wiring, stochastic,
                     seed_lo, seed_hi, t0, need_mse, sample_rows, sg_kind, sg_a,
                     sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    s = torch.empty_like(x)
    uhl = torch.empty(M, dtype=x.dtype, device=x.device)
    ul = torch.empty(M, dtype=x.dtype, device=x.device)
    mse = torch.empty(T, dtype=torch.float32, device=x.device)
    # the draws for the backward, bit t % 32 of word t // 32 ([0, M]: none kept)
    samples = x.new_empty(sample_rows, M, dtype=torch.int32)
    flags = C.mpe_flags(
        current_wiring, stochastic, need_mse, sg_kind, keep=sample_rows > 0
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
        samples if sample_rows else None,
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


def _mpe_psn_backward(x, samples, v_threshold, u_hat0, u0, grad_s, grad_mse, grad_uhl,
                      grad_ul, tau, current_wiring, stochastic, seed_lo, seed_hi,
                      t0, sg_kind, sg_a, sg_c, sg_d):  # fmt: skip
    T, M = x.shape
    gx = torch.empty_like(x)
    guh0 = torch.empty(M, dtype=torch.float32, device=x.device)
    gu0 = torch.empty(M, dtype=torch.float32, device=x.device)

    """The gradients from ``x``, the forward's ``samples`` (stochastic; they replace
    the hash, so the seeds are not read) and the incoming gradients."""
    if stochastic and samples.shape[0] * 32 < T:
        raise RuntimeError(
            "MPEPSN with backend 'cupy': the backward of a sampled estimate needs the "
            "samples its forward keeps when a graph is built (an input or the "
            "threshold requiring grad, grad mode on); this forward kept none. Run "
            "the forward with grad enabled on inputs that require grad, or use "
            "backend='torch'"
        )
    opt = as_contiguous
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


_OPS = build(
    "cupy",
    Impls(
        _psn_forward,
        _psn_backward,
        _sliding_psn_forward,
        _sliding_psn_backward,
        _mpe_psn_forward,
        _mpe_psn_backward,
    ),
    make_op=lambda name: torch.library.custom_op(name, mutates_args=()),
    op_prefix="sj_parallel::",
    register_fakes=True,
    check=_check,
    limits=Limits(C.PSN_MAX_T, C.SLIDING_MAX_K, C.MPE_MAX_T_MSE),
    module=__name__,
    keeps_samples=True,
)
psn_forward, psn_backward = _OPS.psn_forward, _OPS.psn_backward
sliding_psn_forward = _OPS.sliding_psn_forward
sliding_psn_backward = _OPS.sliding_psn_backward
mpe_psn_forward, mpe_psn_backward = _OPS.mpe_psn_forward, _OPS.mpe_psn_backward
psn, sliding_psn, mpe_psn = _OPS.psn, _OPS.sliding_psn, _OPS.mpe_psn
