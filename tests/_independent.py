"""Float64 references written independently of sj_parallel (plain loops, numpy hash).

Nothing here imports sj_parallel: the tests compare the package against these.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def atan_grad(h: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """SpikingJelly's ATan surrogate derivative: α/2 / (1 + (π/2·α·h)²)."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * h) ** 2)


def triangle_grad(h: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - |h|): SpikingJelly's PiecewiseQuadratic(alpha=1)."""
    return (1 - h.abs()).clamp(min=0)


def psn_forward_backward(x, W, b, g, sg_grad=atan_grad):
    """PSN with loops over t: returns spikes and grads (x, W, b) for upstream ``g``."""
    T = x.shape[0]
    h = torch.stack([sum(W[t, j] * x[j] for j in range(T)) + b[t, 0] for t in range(T)])
    s = (h >= 0).double()
    gh = g * sg_grad(h)
    gx = torch.stack([sum(W[t, j] * gh[t] for t in range(T)) for j in range(T)])
    gW = torch.stack(
        [torch.stack([(gh[t] * x[j]).sum() for j in range(T)]) for t in range(T)]
    )
    gb = gh.sum(1, keepdim=True)
    return s, gx, gW, gb


def sliding_forward_backward(x, w, b, g, sg_grad=atan_grad):
    """Sliding PSN with loops: H[t] = Σ_i w_i X[t-k+1+i] + b (zero history)."""
    T, k = x.shape[0], w.shape[0]
    h = []
    for t in range(T):
        acc = torch.zeros_like(x[0]) + b
        for i in range(k):
            src = t - k + 1 + i
            if src >= 0:
                acc = acc + w[i] * x[src]
        h.append(acc)
    h = torch.stack(h)
    s = (h >= 0).double()
    gh = g * sg_grad(h)
    gx = torch.zeros_like(x)
    gw = torch.zeros_like(w)
    for t in range(T):
        for i in range(k):
            src = t - k + 1 + i
            if src >= 0:
                gx[src] += w[i] * gh[t]
                gw[i] += (gh[t] * x[src]).sum()
    gb = gh.sum()
    return s, gx, gw, gb


# ------------------------------------------------------------------ counter hash
def _mix32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def hash_uniform(seed, index: np.ndarray) -> np.ndarray:
    """The documented counter hash in numpy uint32 arithmetic (wrapping is defined):
    key = mix32(seed_lo ^ mix32(seed_hi + hi)), r = mix32(lo ^ key)."""
    index = index.astype(np.uint64)
    lo = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
        key = _mix32(
            np.uint32(seed[0] & 0xFFFFFFFF)
            ^ _mix32(hi + np.uint32(seed[1] & 0xFFFFFFFF))
        )
        r = _mix32(lo ^ key)
    return (r >> np.uint32(8)).astype(np.float64) * 2.0**-24


def mpe_samples(x: torch.Tensor, seed, t0: int) -> torch.Tensor:
    """Bernoulli(sigmoid(x)) samples for ``x`` [T, M] with global index (t0+t)*M+m."""
    T, M = x.shape
    idx = (np.arange(t0, t0 + T)[:, None] * M + np.arange(M)[None, :]).astype(np.uint64)
    u = torch.from_numpy(hash_uniform(seed, idx)).float()
    p = torch.sigmoid(x.detach().float())
    return (u < p).double()


class TriangleSpike(torch.autograd.Function):
    """Θ(z) forward, max(0, 1 - |z|) backward (the MPE-PSN paper's surrogate)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * triangle_grad(z)


def mpe_forward(x, v, tau, wiring, b=None, u_hat0=None, u0=None, t0=0):
    """MPE-PSN step by step. ``b`` = Bernoulli samples, or None for the expectation.

    Returns spikes [T, M], per-step mse [T] (estimate vs the potential it stands in
    for); the spike inside u = (1 - o) h is not detached (as in the authors' code).
    """
    T, M = x.shape
    spikes, mses = [], []
    uh_prev = torch.zeros(M, dtype=x.dtype) if u_hat0 is None else u_hat0
    u_prev = torch.zeros(M, dtype=x.dtype) if u0 is None else u0
    for t in range(T):
        if b is None:
            p = 1 / (1 + torch.exp(-x[t]))
            uh = (1 - p) * x[t]
        else:
            uh = (1 - b[t]) * x[t]
        if wiring == "previous":
            h = tau * uh_prev + x[t]
        else:
            h = x[t] if t0 + t == 0 else x[t] + tau * uh
        o = TriangleSpike.apply(h - v)
        u = (1 - o) * h
        if wiring == "previous":
            mses.append(((uh - u) ** 2).mean())
        elif t0 + t == 0:
            mses.append(torch.zeros((), dtype=x.dtype))
        else:
            mses.append(((uh - u_prev) ** 2).mean())
        spikes.append(o)
        uh_prev, u_prev = uh, u
    return torch.stack(spikes), torch.stack(mses)
