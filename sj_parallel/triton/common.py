r"""Triton helpers shared by every kernel family: surrogate gradients, the counter
hash, the Bernoulli probability.

Everything is computed in float32; kernels load ``[T, M]`` data with ``.to(tl.float32)``
and store with ``.to(ptr.dtype.element_ty)``.

Surrogate kinds (a run-time argument: one uniform branch per tile, so a kernel variant
serves every surrogate and the variant count stays small) and their parameters ``a``,
``c``, ``d`` (read from SpikingJelly's surrogate
object by :func:`sj_parallel.backends._surrogates.surrogate_params`):

=====  ======================  =================================================
kind   SpikingJelly class      :math:`\partial\Theta/\partial x`
=====  ======================  =================================================
0      ``ATan``                :math:`\frac{a}{2} / (1 + (\frac{\pi}{2} a x)^2)`
1      ``Sigmoid``             :math:`a\,\sigma(a x)(1 - \sigma(a x))`
2      ``PiecewiseQuadratic``  :math:`\max(0, a - a^2 |x|)`
3      ``SoftSign``            :math:`a / (2 (1 + a |x|)^2)`
4      ``Erf``                 :math:`\frac{a}{\sqrt{\pi}} e^{-(a x)^2}`
5      ``PiecewiseLeakyReLU``  :math:`d` if :math:`|x| < a` (``a = w``) else ``c``
=====  ======================  =================================================

The counter hash is the one specified in :mod:`sj_parallel.reference` (``lowbias32``
in uint32 arithmetic): ``key = mix32(seed_lo ^ mix32(seed_hi + hi32(i)))``,
``r = mix32(lo32(i) ^ key)``, sample ``(r >> 8) < p 2^24`` with ``p = sigmoid(x)``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

#: The values of TRITON_INTERPRET that Triton reads as on.
TRUTHY = ("1", "true", "on", "yes")

__all__ = [
    "INTERPRETED",
    "surrogate_grad",
    "mix32",
    "hash_key",
    "hash_bits",
    "sigmoid_rn",
]

#: Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1`` when this
#: module was imported: Triton reads it when ``@triton.jit`` decorates).
_knobs = getattr(triton, "knobs", None)
if _knobs is not None:
    INTERPRETED = bool(_knobs.runtime.interpret)
else:  # pragma: no cover - Triton < 3.4
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "").lower() in TRUTHY


@triton.jit
def surrogate_grad(x, kind, a, c, d):
    """The surrogate's derivative at ``x`` (float32); ``kind`` selects it."""
    if kind == 0:  # ATan
        ax = 1.5707963267948966 * a * x
        g = 0.5 * a / (1.0 + ax * ax)
    elif kind == 1:  # Sigmoid
        s = 1.0 / (1.0 + tl.exp(-a * x))
        g = a * s * (1.0 - s)
    elif kind == 2:  # PiecewiseQuadratic
        ax = tl.abs(x)
        g = tl.where(a * ax > 1.0, 0.0, a - a * a * ax)
    elif kind == 3:  # SoftSign
        u = 1.0 + a * tl.abs(x)
        g = a / (2.0 * u * u)
    elif kind == 4:  # Erf
        g = a * 0.5641895835477563 * tl.exp(-(a * x) * (a * x))
    else:  # PiecewiseLeakyReLU
        g = tl.where(tl.abs(x) < a, d, c)
    return g


# ----------------------------------------------------------------- counter hash
@triton.jit
def mix32(x):
    """The ``lowbias32`` mixer on uint32 values (multiplications wrap mod 2^32)."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def hash_key(seed_lo, seed_hi, hi):
    """The key of the index's high word: ``mix32(seed_lo ^ mix32(seed_hi + hi))``."""
    return mix32(seed_lo ^ mix32(seed_hi + hi))


@triton.jit
def hash_bits(idx, key_lo, key_hi, hi_lo):
    """The top 24 bits of ``mix32(lo32(idx) ^ key)`` (uint32) for int64 indices
    ``idx``; ``key_lo``/``key_hi`` are the keys of the high words ``hi_lo`` and
    ``hi_lo + 1`` (a block of fewer than 2^32 consecutive indices spans at most two)."""
    lo = idx.to(tl.uint32)
    hi = (idx >> 32).to(tl.uint32)
    key = tl.where(hi == hi_lo, key_lo, key_hi)
    return mix32(lo ^ key) >> 8


if INTERPRETED:

    @triton.jit
    def sigmoid_rn(x):
        """``1 / (1 + e^-x)`` in float32 (numpy's exp in the interpreter)."""
        return 1.0 / (1.0 + tl.exp(-x))

else:
    from triton.language.extra import libdevice

    @triton.jit
    def sigmoid_rn(x):
        """``1 / (1 + e^-x)`` with the accurate ``expf`` and an IEEE division: the
        float32 value torch's CUDA ``sigmoid`` computes, so the Bernoulli draws
        ``(r >> 8) < p 2^24`` equal the torch backend's bit for bit."""
        return tl.math.div_rn(1.0, 1.0 + libdevice.exp(-x))
