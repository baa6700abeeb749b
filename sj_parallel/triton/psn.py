r"""Dense PSN (and masked PSN, through its masked weight) in Triton.

.. math::

    H = W X + b, \qquad S = \Theta(H)

``X``, ``S`` and the gradients are ``[T, M]`` time-major (``M`` neurons per step, any
of float32/float16/bfloat16). ``T <= 64`` is padded to ``TP`` (16, 32 or 64: ``tl.dot``
needs at least 16 rows); the launcher passes ``W`` and ``b`` zero-padded to ``[TP, TP]``
and ``[TP]`` float32, so the padded steps contribute nothing and one compiled variant
serves every ``T`` with the same ``TP``.

Every tile is ``[BLOCK_M, TP]``: ``BLOCK_M`` neurons by the (padded) steps, i.e. the
products are computed transposed,

.. math::

    H^T = X^T W^T, \qquad \mathrm{grad\_X}^T = GH^T W, \qquad
    \mathrm{grad\_W} = GH X^T,

so the neurons are the rows of each ``tl.dot``: Triton gives chained products the
same warp layout, all warps along the rows, and with the neurons there every warp owns
its own 16-neuron rows (the steps as rows would have every warp repeat the whole tile).
``X`` is loaded as it lies in memory (neurons contiguous, ``VEC`` per 16-byte access).
The products are the split ``tl.dot`` s of :mod:`.common` (tf32x3 in float32; ``X`` as
it is against ``W`` in bfloat16/float16 parts otherwise).

Forward (:func:`psn_forward_kernel`): program ``i`` owns the ``BLOCK_M`` neurons
``i BLOCK_M ..`` and computes ``H^T`` in blocks of ``RB`` steps, each the sum over
``KB``-step chunks of ``X^T`` (loops, so only one chunk of ``X`` and ``W`` is live).
It reads ``X`` once (chunks are read again from cache for every step block) and
writes ``S`` once; nothing is saved.

Backward (:func:`psn_backward_kernel`): ``G`` programs (a fixed number per device)
walk the neuron tiles ``i, i + G, ...``; per tile ``H^T`` is recomputed (``W`` is read
again from cache: holding its parts for the whole kernel would cost more registers
than re-reading them), ``GH^T = grad\_S^T \cdot \Theta'(H^T)``, ``grad\_X^T = GH^T W``
is stored, and ``grad\_W += GH X^T``, ``grad\_b += GH 1`` stay in registers. The
weight gradient is a product with only ``TP`` rows, fewer than 16 per warp when
``TP = 16``: the tile's neurons are then cut into ``GWB`` groups (one per warp) and
each group's ``[TP, TP]`` product accumulates separately (a batched ``tl.dot``), the
groups added in order at the end. Each program writes its own ``grad_W``/``grad_b``
partial; the launcher sums the ``G`` partials in a fixed order (deterministic, no
atomics). It reads ``X`` and ``grad_S`` once and writes ``grad_X`` once. Where one
kernel would need too many registers (``PART`` 1 and 2, see
:func:`sj_parallel.triton.backward_parts`) the launcher runs it twice, ``grad_X`` only,
then the weight gradients only, reading ``X`` and ``grad_S`` twice.

With the neurons as rows every warp holds the whole ``[TP, TP]`` weight operand (tf32
high/low parts in float32), which spills for float32 ``TP = 32`` and every
``TP = 64``; there the launcher sets ``ROWS`` and the kernel runs with the steps as
rows instead (``[TP, BLOCK_M]`` tiles, ``H = W X``, ``grad_X = W^T GH``,
``grad_W += GH X^T``; ``W`` and ``W^T`` spread over the warps' rows), float32 products.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import aligned_m, dot_gw, dot_gx, dot_xw, io_hint, surrogate_grad

__all__ = ["psn_forward_kernel", "psn_backward_kernel"]

_PTRS = ["x_ptr", "w_ptr", "b_ptr", "s_ptr", "gs_ptr", "gx_ptr", "gw_ptr", "gb_ptr"]


@triton.jit(
    do_not_specialize=["M", "T"],
    do_not_specialize_on_alignment=["x_ptr", "w_ptr", "b_ptr", "s_ptr"],
)
def psn_forward_kernel(
    x_ptr,  # [T, M]
    w_ptr,  # [TP, TP] float32, zero beyond T
    b_ptr,  # [TP] float32, zero beyond T
    s_ptr,  # [T, M], X's dtype
    M,
    T,
    TP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    RB: tl.constexpr,
    KB: tl.constexpr,
    VEC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    M = aligned_m(M, VEC)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    for r0 in range(0, TP, RB):  # H^T[:, r0:r0+RB]
        r = r0 + tl.arange(0, RB)
        h = tl.zeros([BLOCK_M, RB], dtype=tl.float32)
        for k0 in range(0, TP, KB):  # + X^T[:, k0:k0+KB] W^T[k0:k0+KB, r0:r0+RB]
            k = k0 + tl.arange(0, KB)
            px = io_hint(x_ptr, k[None, :].to(tl.int64) * M + cols[:, None], VEC, 0)
            x = tl.load(px, mask=cmask[:, None] & (k < T)[None, :], other=0.0)
            wt = tl.load(tl.multiple_of(w_ptr + r[None, :] * TP + k[:, None], [16, 1]))
            h = dot_xw(x, wt, h, PRECISION)
        h += tl.load(b_ptr + r)[None, :]
        s = tl.where(h >= 0.0, 1.0, 0.0).to(s_ptr.dtype.element_ty)
        ps = io_hint(s_ptr, r[None, :].to(tl.int64) * M + cols[:, None], VEC, 0)
        tl.store(ps, s, mask=cmask[:, None] & (r < T)[None, :])


@triton.jit(
    do_not_specialize=["M", "T", "n_tiles", "sg_kind"],
    do_not_specialize_on_alignment=_PTRS,
)
def psn_backward_kernel(
    x_ptr,  # [T, M]
    gs_ptr,  # [T, M] grad_S, X's dtype
    w_ptr,  # [TP, TP] float32, zero beyond T
    b_ptr,  # [TP] float32, zero beyond T
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
    GWB: tl.constexpr,
    PHASES: tl.constexpr,
    VEC: tl.constexpr,
    PRECISION: tl.constexpr,
    PART: tl.constexpr = 0,
    ROWS: tl.constexpr = False,
):
    if ROWS:  # the steps as rows (larger TP, where the neuron rows need too many)
        _backward_rows(x_ptr, gs_ptr, w_ptr, b_ptr, gx_ptr, gw_ptr, gb_ptr, M, T,
                       n_tiles, sg_kind, sg_a, sg_c, sg_d, TP, BLOCK_M, PRECISION,
                       PART)  # fmt: skip
    else:
        _backward_cols(x_ptr, gs_ptr, w_ptr, b_ptr, gx_ptr, gw_ptr, gb_ptr, M, T,
                       n_tiles, sg_kind, sg_a, sg_c, sg_d, TP, BLOCK_M, GWB, PHASES,
                       VEC, PRECISION, PART)  # fmt: skip


@triton.jit
def _backward_cols(x_ptr, gs_ptr, w_ptr, b_ptr, gx_ptr, gw_ptr, gb_ptr, M, T, n_tiles,
                   sg_kind, sg_a, sg_c, sg_d, TP: tl.constexpr,
                   BLOCK_M: tl.constexpr, GWB: tl.constexpr, PHASES: tl.constexpr,
                   VEC: tl.constexpr, PRECISION: tl.constexpr,
                   PART: tl.constexpr):  # fmt: skip
    """The backward with the neurons as rows (see the module docstring)."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    M = aligned_m(M, VEC)
    HALF: tl.constexpr = x_ptr.dtype.element_ty != tl.float32
    t = tl.arange(0, TP)
    tmask = t < T
    rows = t[None, :].to(tl.int64) * M
    if GWB > 1:
        gw = tl.zeros([GWB, TP, TP], dtype=tl.float32)
    else:
        gw = tl.zeros([TP, TP], dtype=tl.float32)
    gb = tl.zeros([TP], dtype=tl.float32)
    for tile in range(pid, n_tiles, G):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs = rows + cols[:, None]  # [BLOCK_M, TP]: X^T, grad_S^T, grad_X^T
        mask = (cols < M)[:, None] & tmask[None, :]
        # PHASES = 2: grad_X, then the weight gradients, each from X and grad_S again
        # (now in cache): fewer registers live at once than in one phase
        for phase in tl.static_range(PHASES):
            if (PART != 2 and (PHASES == 1 or phase == 0)) or (
                PART != 1 and (PHASES == 1 or phase == 1)
            ):
                x = tl.load(io_hint(x_ptr, offs, VEC, 0), mask=mask, other=0.0)
                gs = tl.load(io_hint(gs_ptr, offs, VEC, 0), mask=mask, other=0.0)
                wt = tl.load(
                    tl.multiple_of(w_ptr + t[None, :] * TP + t[:, None], [16, 1])
                )
                h = dot_xw(x, wt, tl.zeros([BLOCK_M, TP], dtype=tl.float32), PRECISION)
                h += tl.load(b_ptr + t)[None, :]
                gh = surrogate_grad(h, sg_kind, sg_a, sg_c, sg_d) * gs.to(tl.float32)
                if PART != 2 and (PHASES == 1 or phase == 0):  # grad_X^T = GH^T W
                    w = tl.load(
                        tl.multiple_of(w_ptr + t[:, None] * TP + t[None, :], [1, 16])
                    )
                    gx = dot_gw(gh, w, tl.zeros([BLOCK_M, TP], dtype=tl.float32),
                                HALF, PRECISION)  # fmt: skip
                    gx = gx.to(gx_ptr.dtype.element_ty)
                    tl.store(io_hint(gx_ptr, offs, VEC, 0), gx, mask=mask)
                if PART != 1 and (PHASES == 1 or phase == 1):  # grad_W, grad_b
                    if GWB > 1:  # a [TP, TP] product per group of BLOCK_M / GWB
                        g3 = tl.reshape(gh, [GWB, BLOCK_M // GWB, TP])
                        g3 = tl.permute(g3, [0, 2, 1])
                        x3 = tl.reshape(x, [GWB, BLOCK_M // GWB, TP])
                        gw = dot_gx(g3, x3, gw, PRECISION)
                    else:
                        gw = dot_gx(tl.trans(gh), x, gw, PRECISION)
                    gb += tl.sum(gh, axis=0)
    if PART != 1:
        if GWB > 1:
            gw2 = tl.sum(gw, axis=0)
        else:
            gw2 = gw
        tl.store(gw_ptr + pid * TP * TP + t[:, None] * TP + t[None, :], gw2)
        tl.store(gb_ptr + pid * TP + t, gb)


@triton.jit
def _backward_rows(x_ptr, gs_ptr, w_ptr, b_ptr, gx_ptr, gw_ptr, gb_ptr, M, T, n_tiles,
                   sg_kind, sg_a, sg_c, sg_d, TP: tl.constexpr,
                   BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
                   PART: tl.constexpr):  # fmt: skip
    """The backward with the steps as rows (``ROWS``): ``H = W X``, ``grad_X = W^T
    GH``, ``grad_W += GH X^T`` on ``[TP, BLOCK_M]`` tiles, ``W`` and ``W^T`` held as
    ``tl.dot`` operands spread over the warps' rows (fewer registers per thread than a
    whole ``[TP, TP]`` operand per warp when ``TP`` is large); float32 products."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    t = tl.arange(0, TP)
    tmask = t < T
    W = tl.load(w_ptr + t[:, None] * TP + t[None, :])
    Wt = tl.load(w_ptr + t[None, :] * TP + t[:, None])
    b = tl.load(b_ptr + t)
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
