r"""Sliding PSN in Triton: ``k`` shared weights over a window of past steps.

.. math::

    H[t] = \sum_{i=0}^{k-1} w_i X[t-k+1+i] + b
         = \sum_{d=0}^{k-1} v_d X[t-d] + b, \quad v_d = w_{k-1-d},
    \qquad S = \Theta(H)

(zero history before ``t = 0``), for any sequence length ``T`` and ``k <= 32``. ``X``,
``S`` and the gradients are ``[T, M]`` time-major, ``w`` ``[k]`` and ``b`` ``[1]``
float32.

A direct window, as the CUDA kernels compute it: each thread owns ``E`` neighbouring
neurons (``BLOCK_M = E * 32 * num_warps`` per program) and walks time, keeping the last
``KP`` inputs of its neurons in registers (``KP``, the ring length, is ``k`` rounded up
to a power of two >= 2; taps ``d >= k`` have ``v_d = 0``). Time runs in blocks of
``KP`` steps unrolled at compile time, so step ``t0 + j`` of a block finds ``X[t - d]``
in ring slot ``(j - d) mod KP``: no register moves, ``KP`` multiply-adds per step and
element, one load and one store.

Forward (:func:`sliding_forward_kernel`): program ``i`` owns ``BLOCK_M`` neurons and
walks time forward; ``X`` is read once and ``S`` written once.

Backward (:func:`sliding_backward_kernel`): ``G`` programs (a fixed number per device)
walk the neuron tiles ``i, i + G, ...``, each tile's time backward, with two rings:
the inputs ``X[t], .., X[t - KP + 1]`` (refilled with ``X[t - KP]`` after each step)
and the gradients ``GH[t], .., GH[t + KP - 1]`` of the potentials:

.. math::

    H[t] = \sum_d v_d X[t-d] + b, \quad GH[t] = \mathrm{grad\_S}[t] \, \Theta'(H[t]),
    \quad \mathrm{grad\_X}[t] = \sum_d v_d\, GH[t+d], \\
    \mathrm{grad\_w}_{k-1-d} \mathrel{+}= GH[t] X[t-d], \quad
    \mathrm{grad\_b} \mathrel{+}= GH[t]

(``GH = 0`` past the last step: the padded steps of the first, partial block load a
zero ``grad_S``). The ``KP`` tap sums and the bias sum stay in registers; at the end
each program adds its neurons' sums (a fixed-order tree) into its own row of partials
and the launcher sums the rows in a fixed order (deterministic, no atomics). ``X`` and
``grad_S`` are read once (plus the ``KP - 1`` steps before each tile's last block) and
``grad_X`` written once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import aligned_m, io_hint, surrogate_grad

__all__ = ["sliding_forward_kernel", "sliding_backward_kernel"]


@triton.jit
def _taps(w_ptr, K, KP: tl.constexpr):
    """``(v_0, .., v_{KP-1})``: ``v_d = w[K - 1 - d]`` for ``d < K``, else 0."""
    v = ()
    for d in tl.static_range(KP):
        v = v + (tl.load(w_ptr + (K - 1 - d), mask=d < K, other=0.0),)
    return v


@triton.jit
def _put(ring, i: tl.constexpr, value):
    """The tuple ``ring`` with slot ``i`` replaced by ``value``."""
    return ring[:i] + (value,) + ring[i + 1 :]


@triton.jit(
    do_not_specialize=["M", "T", "K"],
    do_not_specialize_on_alignment=["x_ptr", "w_ptr", "b_ptr", "s_ptr"],
)
def sliding_forward_kernel(
    x_ptr,  # [T, M]
    w_ptr,  # [K] float32
    b_ptr,  # [1] float32
    s_ptr,  # [T, M], X's dtype
    M,
    T,
    K,
    KP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    VEC: tl.constexpr,
):
    pid = tl.program_id(0)
    M = aligned_m(M, VEC)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    v = _taps(w_ptr, K, KP)
    bias = tl.load(b_ptr)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    ring = (zero,) * KP
    xrow = x_ptr  # row t0 + j
    srow = s_ptr
    for t0 in range(0, T, KP):
        for j in tl.static_range(KP):
            live = cmask & (t0 + j < T)
            x = tl.load(io_hint(xrow, cols, VEC, -1), mask=live, other=0.0)
            x = x.to(tl.float32)
            ring = _put(ring, j, x)
            h = bias + v[0] * x
            for d in tl.static_range(1, KP):
                h += v[d] * ring[(j - d) % KP]
            s = tl.where(h >= 0.0, 1.0, 0.0).to(s_ptr.dtype.element_ty)
            tl.store(io_hint(srow, cols, VEC, -1), s, mask=live)
            xrow += M
            srow += M


@triton.jit(
    do_not_specialize=["M", "T", "K", "n_tiles", "sg_kind"],
    do_not_specialize_on_alignment=["x_ptr", "gs_ptr", "w_ptr", "b_ptr", "gx_ptr",
                                    "part_ptr"],
)  # fmt: skip
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
    KP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    VEC: tl.constexpr,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    M = aligned_m(M, VEC)
    v = _taps(w_ptr, K, KP)
    bias = tl.load(b_ptr)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = (zero,) * KP  # sum over time of GH[t] X[t - d], per neuron
    accb = zero
    n_blocks = tl.cdiv(T, KP)
    t_last = (n_blocks - 1) * KP  # first step of the last block
    M64 = M.to(tl.int64)
    for tile in range(pid, n_tiles, G):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        cmask = cols < M
        # the ring of inputs: slot s holds X[t0 + s] (s <= j) or X[t0 - KP + s]
        xr = (zero,) * KP
        px = x_ptr + t_last * M64  # row t0
        for s in tl.static_range(KP):
            live = cmask & (t_last + s < T)
            xs = tl.load(io_hint(px + s * M64, cols, VEC, -1), mask=live, other=0.0)
            xr = _put(xr, s, xs.to(tl.float32))
        gr = (zero,) * KP  # slot s: GH[t0 + s] (s >= j) or GH[t0 + KP + s]
        pg = gs_ptr + t_last * M64
        po = gx_ptr + t_last * M64
        pp = px - KP * M64  # row t0 - KP
        for i in range(0, n_blocks):
            t0 = t_last - i * KP
            for j in tl.static_range(KP - 1, -1, -1):  # step t = t0 + j, descending
                live = cmask & (t0 + j < T)
                gs = tl.load(io_hint(pg + j * M64, cols, VEC, -1), mask=live, other=0.0)
                h = bias + v[0] * xr[j]
                for d in tl.static_range(1, KP):
                    h += v[d] * xr[(j - d) % KP]
                gh = surrogate_grad(h, sg_kind, sg_a, sg_c, sg_d) * gs.to(tl.float32)
                gr = _put(gr, j, gh)
                gx = v[0] * gh
                for d in tl.static_range(1, KP):
                    gx += v[d] * gr[(j + d) % KP]
                tl.store(io_hint(po + j * M64, cols, VEC, -1),
                         gx.to(gx_ptr.dtype.element_ty), mask=live)  # fmt: skip
                for d in tl.static_range(KP):
                    acc = _put(acc, d, acc[d] + gh * xr[(j - d) % KP])
                accb += gh
                # X[t0 - KP + j] replaces X[t0 + j] (no longer needed)
                early = cmask & (t0 - KP + j >= 0)
                xe = tl.load(
                    io_hint(pp + j * M64, cols, VEC, -1), mask=early, other=0.0
                )
                xr = _put(xr, j, xe.to(tl.float32))
            pg -= KP * M64
            po -= KP * M64
            pp -= KP * M64
    base = part_ptr + pid * (K + 1)
    for d in tl.static_range(KP):
        tl.store(base + (K - 1 - d), tl.sum(acc[d], axis=0), mask=d < K)
    tl.store(base + K, tl.sum(accb, axis=0))
