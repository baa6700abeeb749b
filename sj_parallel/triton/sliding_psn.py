r"""Sliding PSN in Triton: ``k`` shared weights over a window of past steps.

.. math::

    H[t] = \sum_{i=0}^{k-1} w_i X[t-k+1+i] + b, \qquad S = \Theta(H)

(zero history before ``t = 0``), for any sequence length ``T``. ``X``, ``S`` and the
gradients are ``[T, M]`` time-major, ``w`` ``[k]`` and ``b`` ``[1]`` float32,
``k <= 32``.

Time is cut into tiles of ``BT`` steps (16 or 32, at least ``k - 1``), so the
window of a tile's steps reaches back at most one tile: with ``X_j`` the ``[BT,
BLOCK_M]`` tile ``j``,

.. math::

    H_j = A X_j + B X_{j-1} + b, \qquad
    A[r][c] = w_{k-1-(r-c)}, \quad B[r][c] = w_{k-1-(r+BT-c)}

(zero outside the band): two ``[BT, BT] x [BT, BLOCK_M]`` ``tl.dot`` per tile, the
banded Toeplitz matrices built once per program from ``w``.

Forward (:func:`sliding_forward_kernel`): program ``i`` owns ``BLOCK_M`` columns and
walks its tiles forward, carrying ``X_{j-1}`` in registers: ``X`` is read once and
``S`` written once.

Backward (:func:`sliding_backward_kernel`): ``G`` programs (a fixed number per device)
walk the column blocks ``i, i + G, ...``, each block's tiles backward, carrying
``X_j`` and ``GH_{j+1}``:

.. math::

    GH_j = \mathrm{grad\_S}_j \cdot \Theta'(H_j), \quad
    \mathrm{grad\_X}_j = A^T GH_j + B^T GH_{j+1}, \quad
    C_A \mathrel{+}= GH_j X_j^T, \quad C_B \mathrel{+}= GH_j X_{j-1}^T

At the end each program sums the diagonals of ``C_A``/``C_B`` into its partial of
``grad_w`` (``grad_w[k-1-d]`` collects the entries with ``r - c = d`` of ``C_A`` and
``r + BT - c = d`` of ``C_B``) and ``grad_b``; the launcher sums the partials in a
fixed order (deterministic, no atomics). ``X`` and ``grad_S`` are read once,
``grad_X`` written once. With ``BT = 32`` one such kernel would spill registers, so the
launcher runs it twice (``PART`` 1: ``grad_X``, ``PART`` 2: the weight gradients).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import surrogate_grad

__all__ = ["sliding_forward_kernel", "sliding_backward_kernel"]


@triton.jit
def _band(w_ptr, K, BT: tl.constexpr, PREV: tl.constexpr):
    """The ``[BT, BT]`` band of the tile (``PREV=False``, ``A``) or of the previous
    tile (``True``, ``B``); ``d`` is the step distance ``t - s`` of each entry."""
    r = tl.arange(0, BT)
    d = r[:, None] - r[None, :]
    if PREV:
        d += BT
    return tl.load(w_ptr + (K - 1 - d), mask=(d >= 0) & (d <= K - 1), other=0.0), d


@triton.jit(do_not_specialize=["M", "T", "K"])
def sliding_forward_kernel(
    x_ptr,  # [T, M]
    w_ptr,  # [K] float32 (K <= BT + 1; HAS_PREV: K > 1)
    b_ptr,  # [1] float32
    s_ptr,  # [T, M], X's dtype
    M,
    T,
    K,
    HAS_PREV: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    r = tl.arange(0, BT)
    A, _ = _band(w_ptr, K, BT, False)
    B, _ = _band(w_ptr, K, BT, True)
    bias = tl.load(b_ptr)
    x_prev = tl.zeros([BT, BLOCK_M], dtype=tl.float32)
    for t0 in range(0, T, BT):
        rows = t0 + r
        offs = rows[:, None].to(tl.int64) * M + cols[None, :]
        mask = (rows < T)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.dot(A, x, input_precision=PRECISION)
        if HAS_PREV:
            h = tl.dot(B, x_prev, acc=h, input_precision=PRECISION)
        h += bias
        s = tl.where(h >= 0.0, 1.0, 0.0)
        tl.store(s_ptr + offs, s.to(s_ptr.dtype.element_ty), mask=mask)
        x_prev = x


@triton.jit(do_not_specialize=["M", "T", "K", "n_tiles", "sg_kind"])
def sliding_backward_kernel(
    x_ptr,  # [T, M]
    gs_ptr,  # [T, M] grad_S, X's dtype
    w_ptr,  # [K] float32
    b_ptr,  # [1] float32
    gx_ptr,  # [T, M] grad_X, X's dtype
    part_ptr,  # [G, K + 1] float32: grad_w and grad_b partials
    M,
    T,
    K,
    n_tiles,
    sg_kind,
    sg_a,
    sg_c,
    sg_d,
    HAS_PREV: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
    PART: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    r = tl.arange(0, BT)
    A, dA = _band(w_ptr, K, BT, False)
    B, dB = _band(w_ptr, K, BT, True)
    At = tl.trans(A)
    Bt = tl.trans(B)
    bias = tl.load(b_ptr)
    CA = tl.zeros([BT, BT], dtype=tl.float32)
    CB = tl.zeros([BT, BT], dtype=tl.float32)
    gb = tl.zeros([BT], dtype=tl.float32)
    n_t = tl.cdiv(T, BT)
    for tile in range(pid, n_tiles, G):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        cmask = cols < M
        rows = (n_t - 1) * BT + r
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * M + cols[None, :],
            mask=(rows < T)[:, None] & cmask[None, :],
            other=0.0,
        ).to(tl.float32)
        gh_next = tl.zeros([BT, BLOCK_M], dtype=tl.float32)
        for i in range(0, n_t):
            t0 = (n_t - 1 - i) * BT
            rows = t0 + r
            offs = rows[:, None].to(tl.int64) * M + cols[None, :]
            mask = (rows < T)[:, None] & cmask[None, :]
            prev = rows - BT
            x_prev = tl.load(
                x_ptr + prev[:, None].to(tl.int64) * M + cols[None, :],
                mask=(prev >= 0)[:, None] & cmask[None, :],
                other=0.0,
            ).to(tl.float32)
            gs = tl.load(gs_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            h = tl.dot(A, x, input_precision=PRECISION)
            if HAS_PREV:
                h = tl.dot(B, x_prev, acc=h, input_precision=PRECISION)
            gh = surrogate_grad(h + bias, sg_kind, sg_a, sg_c, sg_d) * gs
            if PART != 2:
                gx = tl.dot(At, gh, input_precision=PRECISION)
                if HAS_PREV:
                    gx = tl.dot(Bt, gh_next, acc=gx, input_precision=PRECISION)
                tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            if PART != 1:
                CA = tl.dot(gh, tl.trans(x), acc=CA, input_precision=PRECISION)
                if HAS_PREV:
                    CB = tl.dot(gh, tl.trans(x_prev), acc=CB, input_precision=PRECISION)
                gb += tl.sum(gh, axis=1)
            gh_next = gh
            x = x_prev
    if PART != 1:
        # grad_w[K - 1 - d]: the d-th diagonals of CA and CB, in a fixed order
        base = part_ptr + pid * (K + 1)
        for d in range(0, K):
            g = tl.sum(tl.sum(tl.where(dA == d, CA, 0.0), axis=1), axis=0)
            if HAS_PREV:
                g += tl.sum(tl.sum(tl.where(dB == d, CB, 0.0), axis=1), axis=0)
            tl.store(base + (K - 1 - d), g)
        tl.store(base + K, tl.sum(gb, axis=0))
