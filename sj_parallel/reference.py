r"""The math of every neuron in sj_parallel, written once in plain torch.

This module is the single source of truth: the torch backend's memory-lean autograd
functions and the CUDA kernels are both tested against these functions (in float64),
and the modules use them directly for single-step mode. Everything here is
differentiable with ordinary autograd and works for any floating dtype and device.

Shapes are time-first and flattened: ``x`` is ``[T, M]`` (``M`` = all non-time dims).

PSN family (Fang et al., NeurIPS 2023)
--------------------------------------
.. math::

    H = W X + b, \qquad S = \Theta(H), \qquad \Theta(h) = [h \ge 0]

* PSN: ``W`` is a learnable ``[T, T]`` matrix, ``b`` a ``[T, 1]`` column.
* Masked PSN: ``W \odot M(\lambda)`` with
  :math:`M(\lambda) = \lambda M_k + (1 - \lambda) J`, :math:`M_k[i][j] = [j \le i \le
  j + k - 1]`, ``J`` all ones.
* Sliding PSN: ``k`` shared weights, :math:`H[t] = \sum_{i=0}^{k-1} w_i X[t-k+1+i] + b`
  (zero history before ``t = 0``), i.e. the banded Toeplitz matrix
  :math:`W_g[i][j] = w[k-1-(i-j)]` for :math:`0 \le i-j \le k-1`.

MPE-PSN (Chen et al., ICASSP 2025, arXiv 2409.04978)
----------------------------------------------------
With input current :math:`I_t`, decay multiplier :math:`\tau` and threshold
:math:`V_{th}`:

.. math::

    p_t = \sigma(I_t), \quad b_t \sim \mathrm{Bernoulli}(p_t), \quad
    \hat u_t = (1 - b_t) I_t \quad (\text{or } (1 - p_t) I_t \text{ when deterministic})

* ``estimate_from="previous"`` (paper, Fig. 2): :math:`h_t = \tau \hat u_{t-1} + I_t`,
  :math:`\hat u_{-1}` = the carried state (0 after a reset).
* ``estimate_from="current"`` (the authors' DVS-Gesture code): :math:`h_0 = I_0`,
  :math:`h_t = I_t + \tau \hat u_t` for :math:`t \ge 1`.

:math:`o_t = \Theta(h_t - V_{th})`. The real post-reset potential of the LIF neuron
that MPE-PSN approximates is :math:`u_t = (1 - o_t) h_t`. The per-step estimation
error (``mse``, used by the auxiliary loss) compares each estimate with the potential
it stands in for: :math:`\mathrm{mean}_m(\hat u_t - u_t)^2` for the paper wiring and
:math:`\mathrm{mean}_m(\hat u_t - u_{t-1})^2` (``t >= 1``; 0 at the very first step)
for the current wiring. As in the authors' code, the spike :math:`o_t` inside
:math:`u_t` is *not* detached: the loss's gradient reaches :math:`I` and
:math:`V_{th}` through the surrogate, :math:`\partial u_t / \partial h_t = (1 - o_t)
- h_t \sigma'(h_t - V_{th})` and :math:`\partial u_t / \partial V_{th} = h_t
\sigma'(h_t - V_{th})`.

Counter-based Bernoulli samples
-------------------------------
The Bernoulli draws come from a stateless hash of ``(seed, global index)`` so that
the torch path, the CUDA kernels, single-step and multi-step modes all draw the
very same samples, and backward can regenerate them instead of storing a mask.
``index = (t0 + t) * M + m``; with the ``lowbias32`` mixer

.. code-block:: text

    mix32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
    key = mix32(seed_lo ^ mix32(seed_hi + hi32(index)))  # one per sequence
    r = mix32(lo32(index) ^ key)
    u = (r >> 8) * 2**-24            # uniform in [0, 1)
    b = u < sigmoid(I)

all arithmetic modulo 2**32. The key folds the 64-bit seed (and the index's high
word, 0 below 2**32 elements) into one word, so each sample costs one ``mix32``.
``sj_parallel/cuda/common.cuh`` implements the same.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "heaviside",
    "psn_h",
    "psn",
    "band_mask",
    "masked_weight",
    "masked_psn",
    "sliding_weight_matrix",
    "sliding_psn",
    "sliding_psn_step",
    "mix32",
    "mix32_int",
    "hash_key",
    "hash_uniform",
    "mpe_bernoulli",
    "mpe_bernoulli_mask",
    "mpe_estimate",
    "mpe_psn",
    "MPE_WIRINGS",
]

MPE_WIRINGS = ("previous", "current")
_MASK32 = 0xFFFFFFFF


def heaviside(h: torch.Tensor) -> torch.Tensor:
    r""":math:`\Theta(h) = [h \ge 0]` in ``h``'s dtype (SpikingJelly's convention).

    NaN compares false, so a NaN potential gives no spike (0).
    """
    return (h >= 0).to(h.dtype)


# ----------------------------------------------------------------------------- PSN
def psn_h(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``H = W X + b``; ``x`` ``[T, M]``, ``weight`` ``[T, T]``, ``bias`` ``[T, 1]``."""
    return torch.addmm(bias, weight, x)


def psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """PSN spikes ``S = surrogate(W X + b)`` (``Θ`` forward, surrogate backward)."""
    return surrogate_function(psn_h(x, weight, bias))


def band_mask(
    T: int, k: int, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """``M_k[i][j] = 1`` if ``j <= i <= j + k - 1`` else 0 (a band of width k)."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    d = i - j
    return ((d >= 0) & (d <= k - 1)).to(dtype)


def masked_weight(
    weight: torch.Tensor,
    lambda_: torch.Tensor | float,
    mask0: torch.Tensor,
    mask1: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r""":math:`W \odot (\lambda M_k + (1 - \lambda) J)`; ``W ⊙ M_k`` at λ >= 1."""
    # One lerp, no branch on λ: lerp(J, M_k, λ) is exactly M_k at λ = 1 and J at
    # λ = 0, and a data-dependent branch would break torch.compile graphs.
    if mask1 is None:
        mask1 = torch.ones_like(mask0)
    return weight * torch.lerp(mask1, mask0, lambda_)


def masked_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lambda_: torch.Tensor | float,
    mask0: torch.Tensor,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Masked PSN spikes for ``x`` ``[T, M]``."""
    return psn(x, masked_weight(weight, lambda_, mask0), bias, surrogate_function)


def sliding_weight_matrix(weight: torch.Tensor, T: int) -> torch.Tensor:
    """The banded lower-triangular Toeplitz ``[T, T]`` matrix of sliding weights.

    ``Wg[i][j] = weight[k-1-(i-j)]`` for ``0 <= i-j <= k-1``, else 0. Built with one
    gather (no Python loop over ``T``); differentiable with respect to ``weight``.
    """
    k = weight.shape[0]
    i = torch.arange(T, device=weight.device).unsqueeze(1)
    j = torch.arange(T, device=weight.device).unsqueeze(0)
    d = i - j
    valid = (d >= 0) & (d <= k - 1)
    idx = (k - 1 - d).clamp(0, k - 1)
    return torch.where(valid, weight[idx], weight.new_zeros(()))


def sliding_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Sliding PSN spikes for ``x`` ``[T, M]`` of any length ``T``; ``bias`` 0-dim."""
    T = x.shape[0]
    h = torch.addmm(bias.reshape(1, 1), sliding_weight_matrix(weight, T), x)
    return surrogate_function(h)


def sliding_psn_step(
    history: Tuple[torch.Tensor, ...],
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One sliding-PSN step from the last ``<= k`` inputs (oldest first)."""
    k = weight.shape[0]
    n = len(history)
    h = bias
    for i, xi in enumerate(history):
        h = h + weight[k - n + i] * xi
    return surrogate_function(h)


# ------------------------------------------------------------------------- MPE-PSN
def _i32(v: int) -> int:
    """A uint32 constant as the int32 with the same bits."""
    v &= _MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


_MIX_STEPS = ((16, 0xFFFF, 0x7FEB352D), (15, 0x1FFFF, 0x846CA68B), (16, 0xFFFF, None))


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` in place on int32 ``x`` (``tmp``: scratch of the same shape).

    int32 multiplication wraps modulo 2**32, which is uint32 multiplication on the
    same bits; right shifts are made logical by masking the sign extension.
    """
    for shift, mask, mult in _MIX_STEPS:
        torch.bitwise_right_shift(x, shift, out=tmp).bitwise_and_(mask)
        x.bitwise_xor_(tmp)
        if mult is not None:
            x.mul_(_i32(mult))
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The ``lowbias32`` mixer on int32 tensors (bit patterns of uint32 values)."""
    return _mix32_(x.clone(), torch.empty_like(x))


def mix32_int(v: int) -> int:
    """``lowbias32`` on a Python int (uint32 arithmetic)."""
    v &= _MASK32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & _MASK32
    v ^= v >> 15
    v = (v * 0x846CA68B) & _MASK32
    v ^= v >> 16
    return v


def hash_key(seed: Tuple[int, int], hi: int = 0) -> int:
    """The per-sequence key ``mix32(seed_lo ^ mix32(seed_hi + hi))`` (uint32)."""
    return mix32_int((seed[0] & _MASK32) ^ mix32_int(seed[1] + hi))


_cached_hash_key = functools.lru_cache(maxsize=256)(hash_key)


def _hash24_(seed: Tuple[int, int], lo: torch.Tensor, hi) -> torch.Tensor:
    """The top 24 bits of the counter hash, as int32; ``lo`` is consumed (in place).

    ``hi`` is the high index word: a Python int (the same for every element) or an
    int32 tensor.
    """
    tmp = torch.empty_like(lo)
    if isinstance(hi, torch.Tensor):  # past 2**32 elements: a key per element
        key = _mix32_(hi.add(_i32(seed[1])), tmp)
        key.bitwise_xor_(_i32(seed[0]))
        lo.bitwise_xor_(_mix32_(key, tmp))
    else:
        lo.bitwise_xor_(_i32(hash_key(seed, hi)))
    _mix32_(lo, tmp)
    return lo.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF)


def hash_uniform(
    seed: Tuple[int, int], index: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) numbers from ``(seed, index)``, ``index`` an int64 tensor."""
    lo = (index & _MASK32).to(torch.int32)
    hi = (index >> 32).to(torch.int32)
    return _hash24_(seed, lo, hi).to(dtype) * (1.0 / 16777216.0)


_NP_K1, _NP_K2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def _use_numpy(device) -> bool:
    """CPU tensors outside torch.compile tracing (which cannot trace uint32 numpy)
    and outside ``torch.func`` transforms (whose tensors have no numpy view)."""
    if (device.type if isinstance(device, torch.device) else str(device)) != "cpu":
        return False
    return not _is_compiling() and not _functorch_active()


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def _np_hash24_rows(key: int, t0: int, steps: int, M: int, c0: int, c1: int):
    """The CPU path of :func:`_hash24_rows` for indices below 2**32 (hi word 0), in
    numpy uint32 arithmetic: the same bits with a fraction of torch's per-op cost.
    Returns a ``[steps, c1 - c0]`` uint32 numpy array."""
    if c0 == 0 and c1 == M:
        lo = np.arange(t0 * M, (t0 + steps) * M, dtype=np.uint32).reshape(steps, M)
    else:
        rows = np.arange(t0, t0 + steps, dtype=np.uint32) * np.uint32(M)
        lo = rows[:, None] + np.arange(c0, c1, dtype=np.uint32)[None, :]
    lo ^= np.uint32(key)
    tmp = np.empty_like(lo)
    for shift, mult in ((16, _NP_K1), (15, _NP_K2), (16, None)):
        np.right_shift(lo, shift, out=tmp)
        lo ^= tmp
        if mult is not None:
            lo *= mult
    lo >>= 8
    return lo


def _hash24_rows(
    seed: Tuple[int, int], t0: int, steps: int, M: int, c0: int, c1: int, device
) -> torch.Tensor:
    """``[steps, c1 - c0]`` hash bits (int32) of the global indices
    ``(t0 + t) * M + m``, ``c0 <= m < c1``."""
    width = c1 - c0
    stop = (t0 + steps) * M
    if _use_numpy(device) and stop <= 2**32:
        lo = _np_hash24_rows(_cached_hash_key(seed, 0), t0, steps, M, c0, c1)
        return torch.from_numpy(lo.view(np.int32))
    if stop <= 2**31:  # every index fits in 31 bits: int32, hi word 0
        if width == M:  # whole rows: one int32 range
            lo = torch.arange(t0 * M, stop, device=device, dtype=torch.int32)
            return _hash24_(seed, lo, 0).view(steps, width)
        rows = torch.arange(t0, t0 + steps, device=device, dtype=torch.int32) * M
        cols = torch.arange(c0, c1, device=device, dtype=torch.int32)
        lo = rows.unsqueeze(1) + cols
        return _hash24_(seed, lo, 0)
    rows = torch.arange(t0, t0 + steps, device=device, dtype=torch.int64) * M
    index = rows.unsqueeze(1) + torch.arange(c0, c1, device=device, dtype=torch.int64)
    lo = (index & _MASK32).to(torch.int32)
    hi = (index >> 32).to(torch.int32)
    return _hash24_(seed, lo, hi)


def mpe_bernoulli(
    x: torch.Tensor,
    seed: Tuple[int, int],
    t0: int = 0,
    *,
    M: Optional[int] = None,
    c0: int = 0,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Bernoulli(sigmoid(x)) samples, 0/1 in ``dtype`` (default ``x``'s dtype), from
    the counter hash.

    ``x`` is ``[T, W]`` (or ``[W]`` for one step): columns ``c0 .. c0 + W - 1`` of a
    layer of ``M`` neurons (default ``M = W``, ``c0 = 0``). Sample ``(t, m)`` uses the
    global index ``(t0 + t) * M + m`` and is ``u < sigmoid(x)`` with
    ``u = (r >> 8) 2^-24``, computed as the exact equivalent
    ``(r >> 8) < sigmoid(x) 2^24`` in float32.
    """
    width = x.shape[-1]
    if M is None:
        M = width
    steps = x.shape[0] if x.dim() == 2 else 1
    dtype = x.dtype if dtype is None else dtype
    xf = x if x.dtype == torch.float32 and not x.requires_grad else x.detach().float()
    if (t0 + steps) * M <= 2**32 and _use_numpy(x.device):
        # numpy end to end (the same values at a fraction of torch's per-op cost);
        # p comes from torch.sigmoid so that every path rounds it the same way
        r = _np_hash24_rows(_cached_hash_key(seed, 0), t0, steps, M, c0, c0 + width)
        p = torch.sigmoid(xf).numpy().reshape(r.shape)
        p *= np.float32(16777216.0)
        b = np.less(r.astype(np.float32), p, out=p).reshape(tuple(x.shape))
        b = torch.from_numpy(b)
    else:
        r24 = _hash24_rows(seed, t0, steps, M, c0, c0 + width, x.device)
        p = torch.sigmoid(xf).mul_(16777216.0)
        b = torch.lt(r24.view(x.shape).to(torch.float32), p, out=p)
    return b if dtype == torch.float32 else b.to(dtype)


def mpe_bernoulli_mask(
    x: torch.Tensor,
    seed: Tuple[int, int],
    t0: int = 0,
    *,
    M: Optional[int] = None,
    c0: int = 0,
) -> torch.Tensor:
    """The samples of :func:`mpe_bernoulli` as a bool tensor."""
    return mpe_bernoulli(x, seed, t0, M=M, c0=c0, dtype=torch.float32) != 0


def mpe_estimate(
    x: torch.Tensor,
    stochastic: bool,
    seed: Optional[Tuple[int, int]] = None,
    t0: int = 0,
) -> torch.Tensor:
    r"""The post-reset potential estimate :math:`\hat u`.

    Stochastic: :math:`(1 - b) x` with :math:`b \sim \mathrm{Bernoulli}(\sigma(x))`
    (gradient :math:`1 - b`); deterministic: the expectation :math:`(1 - \sigma(x))x`.
    """
    if stochastic:
        if seed is None:
            raise ValueError("a stochastic MPE estimate needs a seed")
        return (1.0 - mpe_bernoulli(x, seed, t0)) * x
    return (1.0 - torch.sigmoid(x)) * x


def _mean_sq(e: torch.Tensor) -> torch.Tensor:
    """``mean(e^2)``, 0 for an empty layer (no estimation error to average)."""
    return (e**2).mean() if e.numel() else e.new_zeros(())


def mpe_psn(
    x: torch.Tensor,
    v_threshold: torch.Tensor | float,
    tau: float,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
    *,
    estimate_from: str = "previous",
    stochastic: bool = True,
    seed: Tuple[int, int] = (0, 0),
    t0: int = 0,
    u_hat0: Optional[torch.Tensor] = None,
    u0: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPE-PSN over ``x`` ``[T, M]`` starting at global step ``t0``.

    ``u_hat0`` is the previous step's estimate (paper wiring's carried state) and
    ``u0`` the previous step's real post-reset potential (current wiring's loss
    target); both default to 0, the state after ``reset_net``.

    Returns ``(spikes [T, M], mse [T], u_hat_last [M], u_last [M])``.
    """
    if estimate_from not in MPE_WIRINGS:
        raise ValueError(f"estimate_from must be one of {MPE_WIRINGS}")
    T = x.shape[0]
    zero = x.new_zeros(x.shape[1:])
    u_hat_prev = zero if u_hat0 is None else u_hat0
    u_prev = zero if u0 is None else u0
    u_hat = mpe_estimate(x, stochastic, seed, t0)
    spikes, mses = [], []
    for t in range(T):
        if estimate_from == "previous":
            h = x[t] + tau * u_hat_prev
            est, target_fn = u_hat[t], None
        else:
            h = x[t] if t0 + t == 0 else x[t] + tau * u_hat[t]
            est, target_fn = u_hat[t], u_prev
        o = surrogate_function(h - v_threshold)
        u = (1.0 - o) * h  # the spike is not detached (the authors' loss)
        if estimate_from == "previous":
            mses.append(_mean_sq(est - u))
        elif t0 + t == 0:
            mses.append(x.new_zeros(()))
        else:
            mses.append(_mean_sq(est - target_fn))
        spikes.append(o)
        u_hat_prev = u_hat[t]
        u_prev = u
    return torch.stack(spikes), torch.stack(mses), u_hat_prev, u_prev


def check_tau(tau: float) -> float:
    """Validate MPE-PSN's decay multiplier (a finite float >= 0)."""
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise TypeError(
            f"tau must be a real number, got {type(tau).__name__} {tau!r}"
        ) from None
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(
            f"tau must be a finite, non-negative decay multiplier (default 0.25), "
            f"got {tau}"
        )
    return tau
