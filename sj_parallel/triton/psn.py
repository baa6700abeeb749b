r"""Dense PSN (and masked PSN, through its masked weight) in Triton.

.. math::

    H = W X + b, \qquad S = \Theta(H)

``X``, ``S`` and the gradients are ``[T, M]`` time-major (``M`` neurons per step, any
of float32/float16/bfloat16), ``W`` ``[T, T]`` and ``b`` ``[T]`` float32. ``T <= 64``
is padded to ``TP`` (16, 32 or 64: ``tl.dot`` needs at least 16 rows), the padded rows
and columns masked to zero, so one compiled variant serves every ``T`` with the same
``TP``.

Forward (:func:`psn_forward_kernel`): program ``i`` owns the ``BLOCK_M`` columns
``i BLOCK_M ..`` and computes ``H^T = X^T W^T`` as ``[BLOCK_M, 16] x [16, TP]``
``tl.dot`` s over 16-step chunks of the inner index (one chunk of ``X`` and ``W`` live
at a time), float32 accumulation. It reads ``X`` once and writes ``S`` once; nothing is
saved.

Backward (:func:`psn_backward_kernel`): ``G`` programs (a fixed number per device)
walk the column tiles ``i, i + G, ...``; per tile ``H`` is recomputed (one dot),
``GH = grad_S \cdot \Theta'(H)``, ``grad_X = W^T GH`` (one dot) is stored, and
``grad_W += GH X^T`` (one dot over the tile's columns), ``grad_b += GH 1`` stay in
registers. Each program writes its own ``grad_W``/``grad_b`` partial; the launcher sums
the ``G`` partials in a fixed order (deterministic, no atomics). It reads ``X`` and
``grad_S`` once and writes ``grad_X`` once. For ``T > 32`` one such kernel would spill
registers, so the launcher runs it twice (``PART`` 1: ``grad_X`` only, ``PART`` 2: the
weight gradients only), reading ``X`` and ``grad_S`` twice.

Float32 operands use ``input_precision=PRECISION``: ``"tf32x3"`` on NVIDIA GPUs
(three tf32 products, about float32 accuracy on the tensor cores), ``"ieee"`` elsewhere.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import surrogate_grad

__all__ = ["psn_forward_kernel", "psn_backward_kernel"]


@triton.jit(do_not_specialize=["M", "T"])
def psn_forward_kernel(
    x_ptr,  # [T, M]
    w_ptr,  # [T, T] float32
    b_ptr,  # [T] float32
    s_ptr,  # [T, M], X's dtype
    M,
    T,
    TP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # H^T = X^T W^T for the program's BLOCK_M columns, the inner index j of the
    # product in chunks of 16 (a loop, so only one chunk of X and W is live at a time)
    pid = tl.program_id(0)
    t = tl.arange(0, TP)
    k = tl.arange(0, 16)
    tmask = t < T
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    h = tl.zeros([BLOCK_M, TP], dtype=tl.float32)
    for j0 in range(0, TP, 16):
        j = j0 + k
        jmask = j < T
        x = tl.load(
            x_ptr + j[None, :].to(tl.int64) * M + cols[:, None],
            mask=cmask[:, None] & jmask[None, :],
            other=0.0,
        ).to(tl.float32)
        wt = tl.load(  # W^T[j, t] = W[t, j]
            w_ptr + t[None, :] * T + j[:, None],
            mask=jmask[:, None] & tmask[None, :],
            other=0.0,
        )
        h = tl.dot(x, wt, acc=h, input_precision=PRECISION)
    h += tl.load(b_ptr + t, mask=tmask, other=0.0)[None, :]
    offs = t[None, :].to(tl.int64) * M + cols[:, None]
    mask = cmask[:, None] & tmask[None, :]
    s = tl.where(h >= 0.0, 1.0, 0.0)
    tl.store(s_ptr + offs, s.to(s_ptr.dtype.element_ty), mask=mask)


@triton.jit(
    do_not_specialize=["M", "T", "n_tiles", "sg_kind"],
)
def psn_backward_kernel(
    x_ptr,  # [T, M]
    gs_ptr,  # [T, M] grad_S, X's dtype
    w_ptr,  # [T, T] float32
    b_ptr,  # [T] float32
    gx_ptr,  # [T, M] grad_X, X's dtype
    gw_ptr,  # [G, TP, TP] float32 partials of grad_W
    gb_ptr,  # [G, TP] float32 partials of grad_b
    M,
    T,
    n_tiles,
    sg_kind,
    sg_a,
    sg_c,
    sg_d,
    TP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
    PART: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    t = tl.arange(0, TP)
    tmask = t < T
    wmask = tmask[:, None] & tmask[None, :]
    W = tl.load(w_ptr + t[:, None] * T + t[None, :], mask=wmask, other=0.0)
    Wt = tl.load(w_ptr + t[None, :] * T + t[:, None], mask=wmask, other=0.0)
    b = tl.load(b_ptr + t, mask=tmask, other=0.0)
    gw = tl.zeros([TP, TP], dtype=tl.float32)
    gb = tl.zeros([TP], dtype=tl.float32)
    rows = t[:, None].to(tl.int64) * M
    for tile in range(pid, n_tiles, G):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs = rows + cols[None, :]
        mask = tmask[:, None] & (cols < M)[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gs = tl.load(gs_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.dot(W, x, input_precision=PRECISION) + b[:, None]
        gh = surrogate_grad(h, sg_kind, sg_a, sg_c, sg_d) * gs
        if PART != 2:
            gx = tl.dot(Wt, gh, input_precision=PRECISION)
            tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if PART != 1:
            gw = tl.dot(gh, tl.trans(x), acc=gw, input_precision=PRECISION)
            gb += tl.sum(gh, axis=1)
    if PART != 1:
        tl.store(gw_ptr + pid * TP * TP + t[:, None] * TP + t[None, :], gw)
        tl.store(gb_ptr + pid * TP + t, gb)
