r"""The ``"torch"`` backend: memory-lean custom autograd functions (CPU and GPU).

The math is :mod:`sj_parallel.reference`; these functions compute the same values but
keep less for backward than plain autograd would:

* PSN / masked PSN / sliding PSN keep only ``X`` (plus the tiny ``[T, T]`` weight and
  bias) and recompute ``H = W X + b`` in backward. SpikingJelly's PSN keeps ``X`` *and*
  ``H`` (two ``[T, M]`` tensors), plus the surrogate's own saved input.
* MPE-PSN keeps only ``X``: the Bernoulli samples come from the counter-based hash of
  :mod:`sj_parallel.reference` and are regenerated in backward, and every intermediate
  (estimate, potential, spikes) is recomputed.

Half-precision inputs are computed in float32 and converted back; autocast is
disabled inside so the dtype policy of :func:`sj_parallel.functional` holds.
All functions take flattened ``[T, M]`` inputs; validation happens in
:mod:`sj_parallel.functional`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .. import reference as ref

Surrogate = Callable[[torch.Tensor], torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _atan(a, z, g):
    # SpikingJelly: alpha / 2 / (1 + (pi / 2 * alpha * z)^2)
    return z.mul_(math.pi / 2 * a).square_().add_(1.0).reciprocal_().mul_(g).mul_(a / 2)


def _sigmoid(a, z, g):
    sg = z.mul_(a).sigmoid_()
    return (1.0 - sg).mul_(sg).mul_(g).mul_(a)


def _piecewise_quadratic(a, z, g):
    # alpha - alpha^2 |z| inside |z| <= 1 / alpha, else 0
    z = z.abs_()
    keep = z <= 1.0 / a
    return z.mul_(-(a * a)).add_(a).mul_(keep).mul_(g)


def _soft_sign(a, z, g):
    return z.abs_().add_(1.0 / a).square_().mul_(2.0 * a).reciprocal_().mul_(g)


def _erf(a, z, g):
    return z.mul_(a).square_().neg_().exp_().mul_(a / math.sqrt(math.pi)).mul_(g)


# Closed forms of SpikingJelly's surrogate derivatives (identical in 0.0.0.0.14 and
# 2.0.0); anything else goes through the object's own autograd.
_CLOSED_FORMS = {
    "ATan": _atan,
    "Sigmoid": _sigmoid,
    "PiecewiseQuadratic": _piecewise_quadratic,
    "SoftSign": _soft_sign,
    "Erf": _erf,
}


def _closed_form(surrogate_function: Surrogate):
    cls = type(surrogate_function)
    if not getattr(surrogate_function, "spiking", False):
        return None
    if (
        cls.__module__.split(".")[-1] != "surrogate"
        or cls.__name__ not in _CLOSED_FORMS
    ):
        return None  # subclasses and other surrogates may behave differently
    return _CLOSED_FORMS[cls.__name__]


def surrogate_grad(
    surrogate_function: Surrogate,
    z: torch.Tensor,
    grad_out: torch.Tensor,
    inplace: bool = False,
) -> torch.Tensor:
    """``grad_out * dS/dz`` of a SpikingJelly surrogate object.

    SpikingJelly's ATan, Sigmoid, PiecewiseQuadratic, SoftSign and Erf use their closed
    forms (``inplace=True`` lets them overwrite ``z``); any other surrogate goes
    through the object's own autograd.
    """
    fn = _closed_form(surrogate_function)
    if fn is not None:
        with torch.no_grad():
            return fn(
                float(surrogate_function.alpha), z if inplace else z.clone(), grad_out
            )
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        s = surrogate_function(z)
    (g,) = torch.autograd.grad(s, z, grad_out)
    return g


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


# ----------------------------------------------------------------------------- PSN
class PSNFunction(torch.autograd.Function):
    """``S = Θ(W X + b)`` keeping only ``X`` for backward (``H`` is recomputed)."""

    @staticmethod
    def forward(ctx, x, weight, bias, surrogate_function):
        cd = compute_dtype(x.dtype)
        with _no_autocast(x.device.type), torch.no_grad():
            h = torch.addmm(bias.to(cd), weight.to(cd), x.to(cd))
            s = surrogate_function(h).to(x.dtype)
        ctx.save_for_backward(x, weight, bias)
        ctx.surrogate_function = surrogate_function
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s):
        x, weight, bias = ctx.saved_tensors
        cd = compute_dtype(x.dtype)
        with _no_autocast(x.device.type):
            xc = x.to(cd)
            w = weight.to(cd)
            h = torch.addmm(bias.to(cd), w, xc)
            grad_h = surrogate_grad(ctx.surrogate_function, h, grad_s.to(cd), True)
            del h
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = (w.t() @ grad_h).to(x.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (grad_h @ xc.t()).to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_b = grad_h.sum(1, keepdim=True).to(bias.dtype)
        return grad_x, grad_w, grad_b, None


def psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
) -> torch.Tensor:
    """Dense PSN on ``x`` ``[T, M]`` (also serves masked PSN with its masked weight)."""
    return PSNFunction.apply(x, weight, bias, surrogate_function)


def sliding_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
) -> torch.Tensor:
    """Sliding PSN: the Toeplitz matrix is built in one vectorised gather.

    The ``[T, T]`` matrix is tiny next to ``X``; gradients reach the ``k`` weights
    through the gather.
    """
    wg = ref.sliding_weight_matrix(weight, x.shape[0])
    return PSNFunction.apply(
        x, wg, bias.reshape(1, 1).expand(x.shape[0], 1), surrogate_function
    )


# ------------------------------------------------------------------------- MPE-PSN
def _mpe_recompute(x, v_th, tau, estimate_from, stochastic, seed, t0, u_hat0, u0, cd):
    """Everything MPE-PSN computes in forward, vectorised over time, in dtype ``cd``."""
    xc = x.to(cd)
    T = x.shape[0]
    if stochastic:
        b = ref.mpe_bernoulli(xc, seed, t0)
        u_hat = (1.0 - b) * xc
        p = None
    else:
        b = None
        p = torch.sigmoid(xc)
        u_hat = (1.0 - p) * xc
    if estimate_from == "previous":
        first = xc.new_zeros(x.shape[1:]) if u_hat0 is None else u_hat0.to(cd)
        prev = torch.cat([first.unsqueeze(0), u_hat[:-1]], 0)
        h = xc + tau * prev
        coef = None
    else:
        coef = torch.ones(T, 1, dtype=cd, device=x.device)
        if t0 == 0:
            coef[0] = 0.0
        h = xc + tau * coef * u_hat
    z = h - v_th.to(cd)
    return xc, b, p, u_hat, h, z, coef


class MPEPSNFunction(torch.autograd.Function):
    """MPE-PSN keeping only ``X`` for backward; samples are regenerated from the hash.

    Outputs ``(spikes [T, M], mse [T], u_hat_last [M], u_last [M])``; ``mse`` is in
    the compute dtype (float32 for half inputs, else the input's dtype).
    """

    @staticmethod
    def forward(
        ctx,
        x,
        v_th,
        u_hat0,
        u0,
        tau,
        surrogate_function,
        estimate_from,
        stochastic,
        seed,
        t0,
        need_mse,
    ):
        cd = compute_dtype(x.dtype)
        with _no_autocast(x.device.type), torch.no_grad():
            xc, b, p, u_hat, h, z, coef = _mpe_recompute(
                x, v_th, tau, estimate_from, stochastic, seed, t0, u_hat0, u0, cd
            )
            s = surrogate_function(z)
            u = (1.0 - s) * h
            mse = x.new_zeros(x.shape[0], dtype=cd)
            if need_mse:
                if estimate_from == "previous":
                    e = u_hat - u
                else:
                    prev_u = xc.new_zeros(x.shape[1:]) if u0 is None else u0.to(cd)
                    e = (u_hat - torch.cat([prev_u.unsqueeze(0), u[:-1]], 0)) * coef
                mse = e.pow(2).mean(1)
            u_hat_last = u_hat[-1].to(x.dtype)
            u_last = u[-1].to(x.dtype)
        ctx.save_for_backward(x, v_th, u_hat0, u0)
        ctx.cfg = (tau, surrogate_function, estimate_from, stochastic, seed, t0)
        if not need_mse:
            ctx.mark_non_differentiable(mse)
        return s.to(x.dtype), mse, u_hat_last, u_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_s, g_mse, g_uhl, g_ul):
        x, v_th, u_hat0, u0 = ctx.saved_tensors
        tau, sg, estimate_from, stochastic, seed, t0 = ctx.cfg
        cd = compute_dtype(x.dtype)
        M = x[0].numel()
        with _no_autocast(x.device.type):
            with torch.no_grad():
                xc, b, p, u_hat, h, z, coef = _mpe_recompute(
                    x, v_th, tau, estimate_from, stochastic, seed, t0, u_hat0, u0, cd
                )
            g_s = torch.zeros_like(xc) if g_s is None else g_s.to(cd)
            with torch.no_grad():
                s = sg(z)
                one_minus_s = 1.0 - s
                u = one_minus_s * h
                # adjoint of u_t = (1 - o_t) h_t: from the membrane loss and u_last
                adj_u = None
                grad_uh = torch.zeros_like(xc)
                grad_u0 = None
                if g_ul is not None:
                    adj_u = torch.zeros_like(xc)
                    adj_u[-1] += g_ul.to(cd)
                if g_uhl is not None:
                    grad_uh[-1] += g_uhl.to(cd)
                if g_mse is not None:
                    adj_u = torch.zeros_like(xc) if adj_u is None else adj_u
                    if estimate_from == "previous":
                        gm_e = (g_mse.to(cd).unsqueeze(1) * (2.0 / M)) * (u_hat - u)
                        adj_u -= gm_e
                    else:
                        prev_u = xc.new_zeros(x.shape[1:]) if u0 is None else u0.to(cd)
                        targets = torch.cat([prev_u.unsqueeze(0), u[:-1]], 0)
                        gm = g_mse.to(cd).unsqueeze(1) * (2.0 / M) * coef
                        gm_e = gm * (u_hat - targets)
                        # target u_{t-1} = (1 - o_{t-1}) h_{t-1}
                        adj_u[:-1] -= gm_e[1:]
                        grad_u0 = -gm_e[0]
                    grad_uh += gm_e
                # The spike inside u is not detached: with o = Θ(h - v),
                # du/dh = (1 - o) - h σ'(h - v) and du/dv = h σ'(h - v).
                q = g_s if adj_u is None else g_s - adj_u * h
            sg_term = surrogate_grad(sg, z, q, inplace=True)
            with torch.no_grad():
                grad_h = sg_term if adj_u is None else sg_term + adj_u * one_minus_s
                grad_v = -sg_term.sum()
                if estimate_from == "previous":
                    # h_t depends on u_hat_{t-1}
                    grad_uh[:-1] += tau * grad_h[1:]
                    grad_u_hat0 = tau * grad_h[0]
                else:
                    grad_u_hat0 = None
                    grad_uh += tau * coef * grad_h
                if stochastic:
                    du_dx = 1.0 - b
                else:
                    du_dx = (1.0 - p) - p * (1.0 - p) * xc
                grad_x = grad_h + grad_uh * du_dx
        out_x = grad_x.to(x.dtype) if ctx.needs_input_grad[0] else None
        out_v = (
            grad_v.to(v_th.dtype).reshape(v_th.shape)
            if ctx.needs_input_grad[1]
            else None
        )
        out_uh0 = None
        if ctx.needs_input_grad[2] and grad_u_hat0 is not None:
            out_uh0 = grad_u_hat0.to(u_hat0.dtype)
        out_u0 = None
        if ctx.needs_input_grad[3] and grad_u0 is not None:
            out_u0 = grad_u0.to(u0.dtype)
        return out_x, out_v, out_uh0, out_u0, None, None, None, None, None, None, None


def mpe_psn(
    x: torch.Tensor,
    v_threshold: torch.Tensor,
    tau: float,
    surrogate_function: Surrogate,
    *,
    estimate_from: str,
    stochastic: bool,
    seed: Tuple[int, int],
    t0: int,
    u_hat0: Optional[torch.Tensor],
    u0: Optional[torch.Tensor],
    need_mse: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPE-PSN on ``x`` ``[T, M]``; see :func:`sj_parallel.reference.mpe_psn`."""
    return MPEPSNFunction.apply(
        x,
        v_threshold,
        u_hat0,
        u0,
        float(tau),
        surrogate_function,
        estimate_from,
        bool(stochastic),
        (int(seed[0]), int(seed[1])),
        int(t0),
        bool(need_mse),
    )
