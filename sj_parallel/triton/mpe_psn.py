r"""MPE-PSN in Triton: the membrane-potential estimate, the spikes, the auxiliary
loss's per-step errors and every gradient, one pass each way.

Per step ``t`` (global step ``t0 + t``), for input current ``x = I_t``:

.. math::

    p = \sigma(x), \quad \hat u_t = (1 - b) x \;\; (b = [r < p\,2^{24}]
    \text{ from the counter hash}) \text{ or } (1 - p) x, \\
    h_t = x + \tau \hat u_{t-1} \;(\text{previous wiring}) \text{ or }
    x + c_t \tau \hat u_t \;(\text{current}, c_t = [t0 + t > 0]), \\
    o_t = \Theta(h_t - V_{th}), \quad u_t = (1 - o_t) h_t, \quad
    e_t = \hat u_t - u_t \text{ or } c_t (\hat u_t - u_{t-1})

(see :mod:`sj_parallel.reference`). Neurons are independent, so each program owns
``BLOCK_M`` columns and walks time: forward from the first step (carrying
``\hat u_{t-1}``, ``u_{t-1}``), backward from the last (carrying ``x_{t-1}``'s
estimate and potential, and ``grad_h_{t+1}`` or ``grad_e_{t+1}``). The Bernoulli draws
are regenerated in backward from the counter hash (nothing but ``X`` is saved).

Sums over neurons are per-program partials: ``sum_m e_t^2`` (``err[program, t]``) in
forward, ``grad_v`` in backward; the launcher adds them in a fixed order
(deterministic, no atomics). ``X`` is read once and ``S`` written once (forward);
``X`` and ``grad_S`` read once and ``grad_X`` written once (backward), plus the
``[M]`` states.

Run-time switches (uniform branches, no extra variants): ``stochastic`` (sampled or
expected estimate), ``need_mse`` (the loss), ``has_*`` (optional state and state
gradients; absent ones are never read), the surrogate kind. The wiring is a
``tl.constexpr``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import aligned_m, hash_bits, hash_key, io_hint, sigmoid_rn, surrogate_grad

__all__ = ["mpe_forward_kernel", "mpe_backward_kernel"]

_INTS = ["M", "T", "seed_lo", "seed_hi", "t0_hi", "t0_lo"]
_FWD_PTRS = ["x_ptr", "uh0_ptr", "u0_ptr", "s_ptr", "uhl_ptr", "ul_ptr", "err_ptr",
             "v_ptr"]  # fmt: skip
_BWD_PTRS = ["x_ptr", "uh0_ptr", "u0_ptr", "gs_ptr", "gm_ptr", "guhl_ptr", "gul_ptr",
             "gx_ptr", "guh0_ptr", "gu0_ptr", "gv_ptr", "v_ptr"]  # fmt: skip


@triton.jit
def _estimate(x, t, cols, c0, M, t0, seed_lo, seed_hi, stochastic):
    """``(û, b or p)`` of step ``t`` (global ``t0 + t``) for columns ``cols``: the
    sample ``b`` of index ``(t0 + t) M + m`` when ``stochastic``, else ``p``."""
    p = sigmoid_rn(x)
    if stochastic:
        # the block's indices span at most two high words: keys of both, once
        first = (t0 + t) * M + c0
        hi = (first >> 32).to(tl.uint32)
        key_lo = hash_key(seed_lo, seed_hi, hi)
        key_hi = hash_key(seed_lo, seed_hi, hi + 1)
        r = hash_bits((t0 + t) * M + cols, key_lo, key_hi, hi)
        q = tl.where(r.to(tl.float32) < p * 16777216.0, 1.0, 0.0)
    else:
        q = p
    return x - q * x, q


@triton.jit
def _seeds(seed_lo, seed_hi, t0_hi, t0_lo):
    """The uint32 seeds (passed as int32 bit patterns) and the int64 first step."""
    t0 = (t0_hi.to(tl.int64) << 31) + t0_lo
    return seed_lo.to(tl.uint32, bitcast=True), seed_hi.to(tl.uint32, bitcast=True), t0


@triton.jit(
    do_not_specialize=_INTS + ["stochastic", "need_mse", "has_uh0", "has_u0"],
    do_not_specialize_on_alignment=_FWD_PTRS,
)
def mpe_forward_kernel(
    x_ptr,  # [T, M]
    uh0_ptr,  # [M] û_{-1} (has_uh0), X's dtype
    u0_ptr,  # [M] u_{-1} (has_u0), X's dtype
    s_ptr,  # [T, M] spikes, X's dtype
    uhl_ptr,  # [M] û of the last step, X's dtype
    ul_ptr,  # [M] u of the last step, X's dtype
    err_ptr,  # [G, T] float32: sum_m e_t^2 of each program (need_mse)
    v_ptr,  # [1] float32 threshold
    M,
    T,
    tau,
    seed_lo,
    seed_hi,
    t0_hi,
    t0_lo,
    stochastic,
    need_mse,
    has_uh0,
    has_u0,
    CURRENT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    VEC: tl.constexpr,
):
    pid = tl.program_id(0)
    M = aligned_m(M, VEC)
    c0 = pid * BLOCK_M
    cols = c0 + tl.arange(0, BLOCK_M)
    cmask = cols < M
    slo, shi, t0 = _seeds(seed_lo, seed_hi, t0_hi, t0_lo)
    v = tl.load(v_ptr)
    uh_prev = tl.zeros([BLOCK_M], dtype=tl.float32)
    u_prev = tl.zeros([BLOCK_M], dtype=tl.float32)
    if has_uh0:
        uh_prev = tl.load(io_hint(uh0_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    if has_u0:
        u_prev = tl.load(io_hint(u0_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    for t in range(0, T):
        offs = t * M.to(tl.int64) + cols
        x = tl.load(io_hint(x_ptr, offs, VEC, -1), mask=cmask, other=0.0).to(tl.float32)
        uh, _ = _estimate(x, t, cols, c0, M, t0, slo, shi, stochastic)
        coupled = t0 + t > 0  # the current wiring's c_t
        if CURRENT:
            h = tl.where(coupled, x + tau * uh, x)
        else:
            h = x + tau * uh_prev
        o = tl.where(h - v >= 0.0, 1.0, 0.0)
        u = h - o * h
        tl.store(
            io_hint(s_ptr, offs, VEC, -1), o.to(s_ptr.dtype.element_ty), mask=cmask
        )
        if need_mse:
            if CURRENT:
                e = tl.where(coupled, uh - u_prev, 0.0)
            else:
                e = uh - u
            e = tl.where(cmask, e, 0.0)
            tl.store(err_ptr + pid * T + t, tl.sum(e * e, axis=0))
        uh_prev = uh
        u_prev = u
    tl.store(
        io_hint(uhl_ptr, cols, VEC, -1),
        uh_prev.to(uhl_ptr.dtype.element_ty),
        mask=cmask,
    )
    tl.store(
        io_hint(ul_ptr, cols, VEC, -1), u_prev.to(ul_ptr.dtype.element_ty), mask=cmask
    )


@triton.jit
def _step(
    x, t, cols, c0, M, t0, slo, shi, stochastic, tau, v, uh_prev, CURRENT: tl.constexpr
):
    """Forward quantities of step ``t`` from its input ``x`` (and, for the previous
    wiring, ``û_{t-1}``): ``(û, b or p, h, o, u)``."""
    uh, q = _estimate(x, t, cols, c0, M, t0, slo, shi, stochastic)
    if CURRENT:
        h = tl.where(t0 + t > 0, x + tau * uh, x)
    else:
        h = x + tau * uh_prev
    o = tl.where(h - v >= 0.0, 1.0, 0.0)
    return uh, q, h, o, h - o * h


@triton.jit(
    do_not_specialize=_INTS
    + ["sg_kind", "stochastic", "need_mse", "has_uh0", "has_u0", "has_guhl", "has_gul"],
    do_not_specialize_on_alignment=_BWD_PTRS,
)
def mpe_backward_kernel(
    x_ptr,  # [T, M]
    uh0_ptr,  # [M] (has_uh0), X's dtype
    u0_ptr,  # [M] (has_u0), X's dtype
    gs_ptr,  # [T, M] grad of the spikes, X's dtype
    gm_ptr,  # [T] float32: grad of mse_t times 2 / M (need_mse)
    guhl_ptr,  # [M] grad of û of the last step (has_guhl), X's dtype
    gul_ptr,  # [M] grad of u of the last step (has_gul), X's dtype
    gx_ptr,  # [T, M] grad_X, X's dtype
    guh0_ptr,  # [M] float32 grad of û_{-1}
    gu0_ptr,  # [M] float32 grad of u_{-1}
    gv_ptr,  # [G] float32 partials of grad_v
    v_ptr,  # [1] float32
    M,
    T,
    tau,
    seed_lo,
    seed_hi,
    t0_hi,
    t0_lo,
    sg_kind,
    sg_a,
    sg_c,
    sg_d,
    stochastic,
    need_mse,
    has_uh0,
    has_u0,
    has_guhl,
    has_gul,
    CURRENT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    VEC: tl.constexpr,
):
    pid = tl.program_id(0)
    M = aligned_m(M, VEC)
    c0 = pid * BLOCK_M
    cols = c0 + tl.arange(0, BLOCK_M)
    cmask = cols < M
    slo, shi, t0 = _seeds(seed_lo, seed_hi, t0_hi, t0_lo)
    v = tl.load(v_ptr)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    # the state before step 0: û_{-1}, u_{-1}
    uh_init = zero
    u_init = zero
    if has_uh0:
        uh_init = tl.load(io_hint(uh0_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    if has_u0:
        u_init = tl.load(io_hint(u0_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    # step T - 1 and the one before it
    t = T - 1
    x = tl.load(
        io_hint(x_ptr, t * M.to(tl.int64) + cols, VEC, -1), mask=cmask, other=0.0
    )
    x = x.to(tl.float32)
    x_prev = zero
    uh_prev = uh_init
    q_prev = zero
    h_prev = zero
    o_prev = zero
    u_prev = u_init
    if t > 0:
        x_prev = tl.load(
            io_hint(x_ptr, (t - 1) * M.to(tl.int64) + cols, VEC, -1),
            mask=cmask,
            other=0.0,
        )
        x_prev = x_prev.to(tl.float32)
        uh_prev, q_prev, h_prev, o_prev, u_prev = _step(
            x_prev, t - 1, cols, c0, M, t0, slo, shi, stochastic, tau, v, zero, CURRENT
        )
    uh, q, h, o, u = _step(
        x, t, cols, c0, M, t0, slo, shi, stochastic, tau, v, uh_prev, CURRENT
    )
    adj_next = zero  # the current wiring's -grad_e_{t+1} (the adjoint of u_t)
    gh_next = zero  # grad_h_{t+1} (the previous wiring's path to û_t)
    gv = zero
    if has_gul:
        adj_last = tl.load(io_hint(gul_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    else:
        adj_last = zero
    if has_guhl:
        guh_last = tl.load(io_hint(guhl_ptr, cols, VEC, -1), mask=cmask, other=0.0).to(
            tl.float32
        )
    else:
        guh_last = zero
    for i in range(0, T):
        t = T - 1 - i
        if t > 0:  # the quantities of step t - 1 (step t's were computed before)
            if i > 0:
                x_prev = tl.load(
                    io_hint(x_ptr, (t - 1) * M.to(tl.int64) + cols, VEC, -1),
                    mask=cmask, other=0.0,
                ).to(tl.float32)  # fmt: skip
                # the previous wiring's h_{t-1} needs û_{t-2}: recomputed next step
                uh_prev, q_prev, h_prev, o_prev, u_prev = _step(
                    x_prev, t - 1, cols, c0, M, t0, slo, shi, stochastic, tau, v, zero,
                    CURRENT,
                )  # fmt: skip
            uh_before = uh_prev
            u_before = u_prev
        else:
            uh_before = uh_init
            u_before = u_init
        if not CURRENT:  # h_t = x_t + tau û_{t-1}
            h = x + tau * uh_before
            o = tl.where(h - v >= 0.0, 1.0, 0.0)
            u = h - o * h
        # the loss term of step t and the adjoint of u_t
        ge = zero
        if need_mse:
            gm = tl.load(gm_ptr + t)
            if CURRENT:
                ge = tl.where(t0 + t > 0, uh - u_before, 0.0) * gm
            else:
                ge = (uh - u) * gm
        if CURRENT:
            adj = adj_next
        else:
            adj = -ge
        if i == 0:
            adj += adj_last
        gs = tl.load(
            io_hint(gs_ptr, t * M.to(tl.int64) + cols, VEC, -1), mask=cmask, other=0.0
        )
        q_h = gs.to(tl.float32) - adj * h
        gh = surrogate_grad(h - v, sg_kind, sg_a, sg_c, sg_d) * q_h
        gv -= tl.where(cmask, gh, 0.0)
        gh += adj - adj * o
        # grad of û_t: the loss, the last state, and the potentials it feeds
        guh = ge
        if i == 0:
            guh += guh_last
        if CURRENT:
            guh += tl.where(t0 + t > 0, tau * gh, 0.0)
        else:
            guh += tau * gh_next
        if stochastic:  # dû/dx = 1 - b
            gx = gh + (guh - guh * q)
        else:  # dû/dx = (1 - p) - p (1 - p) x = (1 - p)(1 - p x)
            gx = gh + guh * ((1.0 - q) * (1.0 - q * x))
        pgx = io_hint(gx_ptr, t * M.to(tl.int64) + cols, VEC, -1)
        tl.store(pgx, gx.to(gx_ptr.dtype.element_ty), mask=cmask)
        if CURRENT:
            adj_next = -ge
        gh_next = gh
        # step t - 1 becomes the current step
        x = x_prev
        uh = uh_prev
        q = q_prev
        h = h_prev
        o = o_prev
        u = u_prev
    if CURRENT:  # u_{-1} feeds e_0 (when t0 > 0)
        tl.store(io_hint(gu0_ptr, cols, VEC, -1), adj_next, mask=cmask)
    else:  # û_{-1} feeds h_0
        tl.store(io_hint(guh0_ptr, cols, VEC, -1), tau * gh_next, mask=cmask)
    tl.store(gv_ptr + pid, tl.sum(gv, axis=0))
