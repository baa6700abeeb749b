r"""Triton helpers shared by every kernel family: surrogate gradients, the counter
hash, the Bernoulli probability, vector-IO hints and the split ``tl.dot`` s.

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

On a GPU the reciprocals are ``rcp.approx`` (relative error below 2^-22, no IEEE
division sequence with its range checks) and the exponentials ``ex2.approx``: a few
instructions per element and few registers, within the float32 tolerances the tests
state.

The counter hash is the one specified in :mod:`sj_parallel.reference` (``lowbias32``
in uint32 arithmetic): ``key = mix32(seed_lo ^ mix32(seed_hi + hi32(i)))``,
``r = mix32(lo32(i) ^ key)``, sample ``(r >> 8) < p 2^24`` with ``p = sigmoid(x)``.

**Vector IO.** The kernels take a ``VEC`` constant: 1, or the neighbouring elements
one thread moves at once (up to 16 bytes: 4 float32, 8 float16/bfloat16), used when
the launcher has checked that ``M`` is a multiple of ``VEC`` and every ``[T, M]`` (and
``[M]``) tensor is aligned to ``VEC`` elements; then :func:`aligned_m` and
:func:`io_hint` tell the compiler so and loads and stores move ``VEC`` elements per
instruction. Pointers are never specialised by Triton itself
(``do_not_specialize_on_alignment``), so each ``VEC`` is exactly one compiled kernel.

**Split products** (:func:`dot_xw`, :func:`dot_gw`, :func:`dot_gx`). ``tl.dot`` with
float32 accumulation, precise to about float32 although the tensor cores round their
inputs:

* float32 data: ``input_precision="tf32x3"`` (three tf32 products of the high and low
  parts of both operands);
* float16/bfloat16 data ``X`` is exact in its own dtype, so a product with float32
  weights ``W`` runs on ``X`` as it is against ``W`` split into parts of that dtype
  (bfloat16: three parts, 24 bits; float16: two, 22 bits), one 16-bit product per
  part;
* products of two float32 operands in the 16-bit kernels (``GH`` with ``W``, ``GH``
  with ``X`` in float16) use ``input_precision="bf16x3"`` (both operands split in
  two bfloat16 parts, three products: about 2^-16 relative per product, finer than the
  16-bit gradients that are stored); in bfloat16 ``GH X^T`` runs on ``GH`` split in two
  bfloat16 parts against ``X`` as it is.

Triton's interpreter (3.8) multiplies bfloat16 tiles as their raw 16-bit integers, so
under it the 16-bit products run on the float32 values of the same parts (exact, the
same sums).
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
    "rcp",
    "mix32",
    "hash_key",
    "hash_bits",
    "sigmoid_rn",
    "aligned_m",
    "io_hint",
    "dot_xw",
    "dot_gw",
    "dot_gx",
]

#: Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1`` when this
#: module was imported: Triton reads it when ``@triton.jit`` decorates).
_knobs = getattr(triton, "knobs", None)
if _knobs is not None:
    INTERPRETED = bool(_knobs.runtime.interpret)
else:  # pragma: no cover - Triton < 3.4
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "").lower() in TRUTHY


#: ``input_precision`` of the products of two float32 operands in 16-bit kernels; the
#: interpreter only knows "tf32", "tf32x3" and "ieee" (it multiplies exactly anyway).
BF16X3 = tl.constexpr("ieee" if INTERPRETED else "bf16x3")

if INTERPRETED:

    @triton.jit
    def rcp(x):
        """``1 / x`` (numpy's division in the interpreter)."""
        return 1.0 / x

    @triton.jit
    def _mma16(a, b, acc):
        # the interpreter multiplies bfloat16 tiles as raw integers: use the (exact)
        # float32 values of the parts instead
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)

else:

    @triton.jit
    def rcp(x):
        """``1 / x`` by ``rcp.approx.ftz.f32`` (relative error below 2^-22)."""
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
            is_pure=True, pack=1,
        )  # fmt: skip

    @triton.jit
    def _mma16(a, b, acc):
        return tl.dot(a, b, acc)


@triton.jit
def surrogate_grad(x, kind, a, c, d):
    """The surrogate's derivative at ``x`` (float32); ``kind`` selects it."""
    if kind == 0:  # ATan
        ax = 1.5707963267948966 * a * x
        g = 0.5 * a * rcp(1.0 + ax * ax)
    elif kind == 1:  # Sigmoid
        s = rcp(1.0 + tl.exp2(-1.4426950408889634 * a * x))
        g = a * s * (1.0 - s)
    elif kind == 2:  # PiecewiseQuadratic
        ax = tl.abs(x)
        g = tl.where(a * ax > 1.0, 0.0, a - a * a * ax)
    elif kind == 3:  # SoftSign
        r = rcp(1.0 + a * tl.abs(x))
        g = 0.5 * a * r * r
    elif kind == 4:  # Erf
        ax = a * x
        g = a * 0.5641895835477563 * tl.exp2(-1.4426950408889634 * ax * ax)
    else:  # PiecewiseLeakyReLU
        g = tl.where(tl.abs(x) < a, d, c)
    return g


# ------------------------------------------------------------------- vector IO
@triton.jit
def aligned_m(M, VEC: tl.constexpr):
    """``M`` with its divisibility by ``VEC`` visible to the compiler (the launcher
    only picks ``VEC > 1`` when ``M % VEC == 0``)."""
    if VEC > 1:
        M = (M // VEC) * VEC
    return M


@triton.jit
def io_hint(base, offs, VEC: tl.constexpr, AXIS: tl.constexpr):
    """``base + offs``: pointers of a ``[T, M]`` tile (its columns along ``AXIS``, 0
    or 1; -1 for a row of columns) whose blocks of ``VEC`` columns start ``VEC``
    elements aligned (the launcher checked the tensor and ``M``). The hint is attached
    to the addition made here (Triton drops hints on a function's arguments)."""
    ptrs = base + offs
    if VEC > 1:
        ALIGN: tl.constexpr = VEC * (base.dtype.element_ty.primitive_bitwidth // 8)
        if AXIS < 0:
            ptrs = tl.multiple_of(ptrs, ALIGN)
        elif AXIS == 0:
            ptrs = tl.multiple_of(ptrs, [ALIGN, 1])
        else:
            ptrs = tl.multiple_of(ptrs, [1, ALIGN])
    return ptrs


# -------------------------------------------------------------- split products
@triton.jit
def dot_xw(x, w, acc, PRECISION: tl.constexpr):
    """``acc + x @ w``: ``x`` data in its own dtype (exact), ``w`` float32 weights
    (split into parts of ``x``'s dtype when that is a 16-bit type)."""
    if x.dtype == tl.float32:
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    else:
        w1 = w.to(x.dtype)
        r = w - w1.to(tl.float32)
        w2 = r.to(x.dtype)
        if x.dtype == tl.bfloat16:
            w3 = (r - w2.to(tl.float32)).to(x.dtype)
            acc = _mma16(x, w3, acc)
        acc = _mma16(x, w2, acc)
        acc = _mma16(x, w1, acc)
    return acc


@triton.jit
def dot_gw(g, w, acc, HALF: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + g @ w`` of two float32 operands (a gradient and the weights): with
    ``PRECISION`` in float32 kernels, ``"bf16x3"`` in 16-bit ones (``"ieee"`` where
    ``PRECISION`` is, on AMD GPUs)."""
    if HALF and PRECISION != "ieee":
        acc = tl.dot(g, w, acc, input_precision=BF16X3)
    else:
        acc = tl.dot(g, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def dot_gx(g, x, acc, PRECISION: tl.constexpr):
    """``acc + g @ x``: ``g`` a float32 gradient, ``x`` data in its own dtype (the
    weight gradient ``GH X^T``)."""
    if x.dtype == tl.float32:
        acc = tl.dot(g, x, acc, input_precision=PRECISION)
    elif x.dtype == tl.bfloat16:
        g1 = g.to(tl.bfloat16)
        g2 = (g - g1.to(tl.float32)).to(tl.bfloat16)
        acc = _mma16(g2, x, acc)
        acc = _mma16(g1, x, acc)
    elif PRECISION != "ieee":
        acc = tl.dot(g, x.to(tl.float32), acc, input_precision=BF16X3)
    else:
        acc = tl.dot(g, x.to(tl.float32), acc, input_precision=PRECISION)
    return acc


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
