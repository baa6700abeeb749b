r"""The ``"torch"`` backend: custom autograd functions with a memory policy (CPU, GPU).

The math is :mod:`sj_parallel.reference`; these functions compute the same values with
fewer passes over memory than plain autograd and keep, per ``memory`` policy:

==========  ===============================  ==================================
policy      PSN / masked PSN / sliding PSN   MPE-PSN
==========  ===============================  ==================================
``"lean"``  ``X``                            ``X``
``"fast"``  ``X`` and ``H = W X + b``        ``X`` and a 1-byte Bernoulli mask
``"auto"``  ``"fast"`` below                 ``"fast"``
            :data:`AUTO_FAST_MAX_NEURONS`
            neurons per step, else lean
==========  ===============================  ==================================

(plus the tiny ``[T, T]`` weight, bias, threshold and ``[M]`` states). ``"lean"``
recomputes ``H`` (PSN family: one more GEMM) or regenerates the Bernoulli samples
from the counter hash (MPE-PSN) in backward; ``"fast"`` keeps what makes backward
cheapest. For comparison, SpikingJelly's PSN keeps ``X`` and ``H`` (plus the
surrogate's own saved input) and the MPE-PSN authors' autograd code about eight
``[T, M]`` tensors. The policies give bitwise-identical values and gradients.

Half-precision inputs are computed in float32 and converted back; autocast is
disabled inside so the dtype policy of :mod:`sj_parallel.functional` holds.
All functions take flattened ``[T, M]`` inputs; validation happens in
:mod:`sj_parallel.functional`.

Second derivatives: a backward that runs with ``create_graph=True`` (a gradient
penalty, ``torch.autograd.grad(..., create_graph=True)``) recomputes the forward
with the plain-autograd math of :mod:`sj_parallel.reference` and differentiates it
with ``create_graph=True``, so its result is differentiable and every second-order
gradient equals the reference's. Under ``torch.func`` transforms the functions run
the reference math directly (what those transforms support is then what the
SpikingJelly surrogate supports). First-order backward passes keep the analytic,
memory-lean path.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Tuple

import torch

from .. import reference as ref

Surrogate = Callable[[torch.Tensor], torch.Tensor]

#: The memory policies of the torch backend.
MEMORY_POLICIES = ("lean", "fast", "auto")
#: ``"auto"`` keeps ``H`` (PSN family) for layers with fewer neurons per time step
#: (``M``, i.e. batch x features) than this, where the extra ``[T, M]`` tensor is
#: small and the per-call cost of recomputing it dominates; larger layers are lean.
AUTO_FAST_MAX_NEURONS = 1 << 16


def check_memory(memory: str) -> str:
    """Validate a memory policy name; raises ``ValueError`` naming the valid ones."""
    if memory not in MEMORY_POLICIES:
        raise ValueError(
            f"unknown memory policy {memory!r}: expected one of {MEMORY_POLICIES}"
        )
    return memory


def resolve_memory(memory: str, neurons: int, kind: str = "psn") -> str:
    """``"lean"`` or ``"fast"`` for a layer of ``neurons`` per step (``kind``: "psn"
    for the PSN family, "mpe" for MPE-PSN, whose mask is always worth keeping)."""
    if memory != "auto":
        return memory
    if kind == "mpe" or neurons < AUTO_FAST_MAX_NEURONS:
        return "fast"
    return "lean"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _NoAutocast:
    """Disable autocast for ``device_type`` only if it is on (it costs a little)."""

    __slots__ = ("ctx",)

    def __init__(self, device_type: str):
        try:
            on = torch.is_autocast_enabled(device_type)
        except TypeError:  # pragma: no cover - torch < 2.4
            on = torch.is_autocast_enabled()
        self.ctx = None
        if on:
            self.ctx = torch.autocast(device_type=device_type, enabled=False)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# ----------------------------------------------------------------- surrogates
# Closed forms of SpikingJelly's surrogate derivatives dS/dz (identical in
# 0.0.0.0.14 and 2.0.0), computed in place on ``z``; the caller multiplies by the
# upstream gradient last, so every code path rounds the same way.
def _atan(a, z):
    # alpha / 2 / (1 + (pi / 2 * alpha * z)^2)
    return z.mul_(math.pi / 2 * a).square_().add_(1.0).reciprocal_().mul_(a / 2)


def _sigmoid(a, z):
    sg = z.mul_(a).sigmoid_()
    return sg.sub_(sg.square()).mul_(a)  # a * sg * (1 - sg)


def _piecewise_quadratic(a, z):
    # alpha - alpha^2 |z| inside |z| <= 1 / alpha, else 0 (= max(0, alpha - alpha^2|z|))
    return z.abs_().mul_(-(a * a)).add_(a).clamp_min_(0.0)


def _soft_sign(a, z):
    return z.abs_().add_(1.0 / a).square_().mul_(2.0 * a).reciprocal_()


def _erf(a, z):
    return z.mul_(a).square_().neg_().exp_().mul_(a / math.sqrt(math.pi))


_CLOSED_FORMS = {
    "ATan": _atan,
    "Sigmoid": _sigmoid,
    "PiecewiseQuadratic": _piecewise_quadratic,
    "SoftSign": _soft_sign,
    "Erf": _erf,
}


_CLOSED_FORM_CACHE: dict = {}


def _closed_form(surrogate_function: Surrogate):
    """The closed-form derivative of one of SpikingJelly's spiking surrogates (exact
    classes only: subclasses and other callables may behave differently), else None.
    """
    key = (type(surrogate_function), getattr(surrogate_function, "spiking", False))
    fn = _CLOSED_FORM_CACHE.get(key, False)
    if fn is False:
        cls, spiking = key
        fn = None
        if spiking and cls.__module__.split(".")[-1] == "surrogate":
            fn = _CLOSED_FORMS.get(cls.__name__)
        _CLOSED_FORM_CACHE[key] = fn
    return fn


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
        if torch.is_grad_enabled():
            with torch.no_grad():
                return surrogate_grad(surrogate_function, z, grad_out, inplace)
        z = z if inplace else z.clone()
        return fn(float(surrogate_function.alpha), z).mul_(grad_out)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        s = surrogate_function(z)
    (g,) = torch.autograd.grad(s, z, grad_out)
    return g


def spike(surrogate_function: Surrogate, h: torch.Tensor) -> torch.Tensor:
    """The surrogate's forward value: ``Θ(h)`` (``h >= 0``) for SpikingJelly's
    spiking surrogates, computed directly; other callables are called."""
    if _closed_form(surrogate_function) is not None:
        return (h >= 0).to(h.dtype)
    return surrogate_function(h)


# ------------------------------------------------------- second derivatives
def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``...)."""
    return ref._functorch_active()


def _differentiable_backward(
    fn: Callable[..., object],
    inputs: Sequence[Optional[torch.Tensor]],
    need: Sequence[bool],
    grad_outputs: Sequence[Optional[torch.Tensor]],
) -> Tuple[Optional[torch.Tensor], ...]:
    """The backward of ``fn(*inputs)`` as a differentiable function of the inputs and
    of ``grad_outputs``: ``fn`` recomputes the forward with plain autograd, which is
    then differentiated with ``create_graph=True``. Used when a backward runs with
    grad mode on (``create_graph=True``)."""
    with torch.enable_grad():
        ins = [
            t.detach() if isinstance(t, torch.Tensor) and not n else t
            for t, n in zip(inputs, need)
        ]
        outs = fn(*ins)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [
            (o, g)
            for o, g in zip(outs, grad_outputs)
            if g is not None and o.requires_grad
        ]
        wrt = [t for t, n in zip(ins, need) if n]
        got = iter(())
        if pairs and wrt:
            got = iter(
                torch.autograd.grad(
                    [o for o, _ in pairs],
                    wrt,
                    [g for _, g in pairs],
                    create_graph=True,
                    allow_unused=True,
                )
            )
    return tuple(next(got) if n else None for n in need)


def _psn_autograd(x, weight, bias, surrogate_function):
    """Dense PSN in plain autograd (:func:`sj_parallel.reference.psn`) in the compute
    dtype; spikes in ``x``'s dtype."""
    cd = compute_dtype(x.dtype)
    with _NoAutocast(x.device.type):
        s = ref.psn(_as(x, cd), _as(weight, cd), _as(bias, cd), surrogate_function)
    return _as(s, x.dtype)


def _sliding_autograd(x, weight, bias, surrogate_function):
    """Sliding PSN in plain autograd (:func:`sj_parallel.reference.sliding_psn`)."""
    cd = compute_dtype(x.dtype)
    with _NoAutocast(x.device.type):
        s = ref.sliding_psn(
            _as(x, cd), _as(weight, cd), _as(bias, cd), surrogate_function
        )
    return _as(s, x.dtype)


def _mpe_autograd(x, v_th, u_hat0, u0, cfg):
    """MPE-PSN in plain autograd (:func:`sj_parallel.reference.mpe_psn`): the same
    outputs, dtypes and samples as :class:`MPEPSNFunction`."""
    tau, sg, estimate_from, stochastic, seed, t0 = cfg
    cd = compute_dtype(x.dtype)
    with _NoAutocast(x.device.type):
        s, mse, uhl, ul = ref.mpe_psn(
            _as(x, cd), _as(v_th, cd), tau, sg, estimate_from=estimate_from,
            stochastic=stochastic, seed=seed, t0=t0,
            u_hat0=None if u_hat0 is None else _as(u_hat0, cd),
            u0=None if u0 is None else _as(u0, cd),
        )  # fmt: skip
    return _as(s, x.dtype), mse, _as(uhl, x.dtype), _as(ul, x.dtype)


# ------------------------------------------------------------------- chunking
#: On the CPU every op streams over ``[T, CHUNK]`` column blocks of about this many
#: elements, so the chain of ops on a block stays in cache: neurons (columns) are
#: independent, and one pass over ``[T, M]`` per op would be bound by DRAM.
CHUNK_ELEMENTS = 1 << 18


def column_chunks(T: int, M: int, device: torch.device):
    """``(c0, c1)`` column ranges covering ``[0, M)``; one range off the CPU (GPU
    kernels are launched per op, so there is nothing to gain) or when it fits."""
    if T * M <= CHUNK_ELEMENTS or device.type != "cpu":
        return ((0, M),)
    step = max(16, CHUNK_ELEMENTS // max(T, 1))
    return [(c, min(c + step, M)) for c in range(0, M, step)]


# ---------------------------------------------------------------- PSN family
def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _dense_forward(x, w, b, sg, keep_h):
    """``S = Θ(W X + b)`` block by block; returns ``(S, H or None)``."""
    T, M = x.shape
    cd = compute_dtype(x.dtype)
    wc, bc = _as(w, cd), _as(b, cd)
    heaviside = _closed_form(sg) is not None
    chunks = column_chunks(T, M, x.device)
    with _NoAutocast(x.device.type):
        if len(chunks) == 1:
            h = torch.addmm(bc, wc, _as(x, cd))
            if heaviside:  # Θ written straight into the output dtype
                s = torch.ge(h, 0, out=torch.empty_like(x))
            else:
                s = _as(sg(h), x.dtype)
            return s, (h if keep_h else None)
        s = torch.empty_like(x)
        h_keep = torch.empty(T, M, dtype=cd, device=x.device) if keep_h else None
        for c0, c1 in chunks:
            h = torch.addmm(bc, wc, _as(x[:, c0:c1], cd))
            if keep_h:
                h_keep[:, c0:c1] = h
            if heaviside:
                torch.ge(h, 0, out=s[:, c0:c1])
            else:
                s[:, c0:c1] = sg(h)
    return s, h_keep


def _dense_backward(ctx, grad_s, x, w, b, h_keep, need):
    """``(grad_X, grad_W, grad_b)`` (each only if ``need[i]``) of ``S = Θ(W X + b)``,
    block by block; ``h_keep`` is the forward's ``H`` ("fast") or None ("lean", in
    which case ``H`` is recomputed with the forward's exact ops)."""
    T, M = x.shape
    cd = compute_dtype(x.dtype)
    wc, bc = _as(w, cd), _as(b, cd)
    sg = ctx.surrogate_function
    chunks = column_chunks(T, M, x.device)
    with _NoAutocast(x.device.type):
        if len(chunks) == 1:
            xc = _as(x, cd)
            h = torch.addmm(bc, wc, xc) if h_keep is None else h_keep
            gh = surrogate_grad(sg, h, _as(grad_s, cd), inplace=h_keep is None)
            return (
                _as(torch.mm(wc.t(), gh), x.dtype) if need[0] else None,
                torch.mm(gh, xc.t()) if need[1] else None,
                gh.sum(1) if need[2] else None,
            )
        grad_x = torch.empty_like(x) if need[0] else None
        grad_w = torch.zeros(T, T, dtype=cd, device=x.device) if need[1] else None
        grad_b = torch.zeros(T, dtype=cd, device=x.device) if need[2] else None
        for c0, c1 in chunks:
            xc = _as(x[:, c0:c1], cd)
            if h_keep is None:
                h = torch.addmm(bc, wc, xc)
            else:
                h = h_keep[:, c0:c1].clone()
            gh = surrogate_grad(sg, h, _as(grad_s[:, c0:c1], cd), inplace=True)
            if need[0]:
                grad_x[:, c0:c1] = torch.mm(wc.t(), gh)
            if need[1]:
                grad_w.addmm_(gh, xc.t())
            if need[2]:
                grad_b += gh.sum(1)
    return grad_x, grad_w, grad_b


class PSNFunction(torch.autograd.Function):
    """``S = Θ(W X + b)``; keeps ``X`` (``keep_h=False``) or ``X`` and ``H``."""

    @staticmethod
    def forward(ctx, x, weight, bias, surrogate_function, keep_h=False):
        s, h = _dense_forward(x, weight, bias, surrogate_function, keep_h)
        ctx.surrogate_function = surrogate_function
        ctx.save_for_backward(x, weight, bias, *([h] if keep_h else []))
        return s

    @staticmethod
    def backward(ctx, grad_s):
        x, weight, bias, *kept = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            sg = ctx.surrogate_function
            grads = _differentiable_backward(
                lambda x, w, b: _psn_autograd(x, w, b, sg),
                (x, weight, bias), ctx.needs_input_grad[:3], (grad_s,),
            )  # fmt: skip
            return grads + (None, None)
        gx, gw, gb = _dense_backward(
            ctx, grad_s, x, weight, bias, kept[0] if kept else None,
            ctx.needs_input_grad[:3],
        )  # fmt: skip
        return (
            gx,
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.view(bias.shape).to(bias.dtype),
            None,
            None,
        )


def psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> torch.Tensor:
    """Dense PSN on ``x`` ``[T, M]`` (also serves masked PSN with its masked weight)."""
    if functorch_active():
        return _psn_autograd(x, weight, bias, surrogate_function)
    keep_h = resolve_memory(memory, x.shape[1]) == "fast"
    return PSNFunction.apply(x, weight, bias, surrogate_function, keep_h)


def _toeplitz_index_of(T: int, k: int, device: torch.device):
    """``(idx, valid)``: ``Wg[i][j] = w[idx[i][j]]`` where ``valid`` (0 <= i-j < k)."""
    i = torch.arange(T, device=device).unsqueeze(1)
    d = i - i.t()
    valid = (d >= 0) & (d <= k - 1)
    return (k - 1 - d).clamp_(0, k - 1), valid


_toeplitz_index_cached = functools.lru_cache(maxsize=64)(_toeplitz_index_of)


def _toeplitz_index(T: int, k: int, device: torch.device):
    """:func:`_toeplitz_index_of`, cached in eager mode (it is built once per shape
    instead of per call); ``torch.compile`` traces the uncached function (Dynamo
    ignores caches and warns about them) and folds it into the graph."""
    if ref._is_compiling():
        return _toeplitz_index_of(T, k, device)
    return _toeplitz_index_cached(T, k, device)


def _band_sums(g: torch.Tensor, k: int) -> torch.Tensor:
    """``out[k-1-d] = sum_i g[i][i-d]`` for ``d < k``: the gradient of the ``k`` sliding
    weights from the gradient ``g`` of their ``[T, T]`` Toeplitz matrix.

    Deterministic: the lower triangle is laid out so that diagonal ``d`` is column
    ``k-1-d`` of a strided ``[T, k]`` view, summed over rows in a fixed order.
    """
    T = g.shape[0]
    flat = torch.cat([g.new_zeros(k), g.tril().reshape(-1)])
    # flat[1 + i (T + 1) + j] = g[i][i - (k-1-j)] (zero outside the lower triangle)
    return flat.as_strided((T, k), (T + 1, 1), 1).sum(0)


class SlidingPSNFunction(torch.autograd.Function):
    """Sliding PSN through its banded Toeplitz ``[T, T]`` matrix, built without
    autograd; the ``k`` weight gradients are the matrix gradient's diagonal sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, surrogate_function, keep_h=False):
        T, k = x.shape[0], weight.shape[0]
        cd = compute_dtype(x.dtype)
        idx, valid = _toeplitz_index(T, k, x.device)
        wg = torch.where(valid, weight.to(cd)[idx], weight.new_zeros((), dtype=cd))
        bg = bias.to(cd).reshape(1, 1)
        s, h = _dense_forward(x, wg, bg, surrogate_function, keep_h)
        ctx.surrogate_function = surrogate_function
        ctx.save_for_backward(x, wg, weight, bias, *([h] if keep_h else []))
        ctx.weight_meta = (weight.dtype, k)
        return s

    @staticmethod
    def backward(ctx, grad_s):
        x, wg, weight, bias, *kept = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            sg = ctx.surrogate_function
            grads = _differentiable_backward(
                lambda x, w, b: _sliding_autograd(x, w, b, sg),
                (x, weight, bias), ctx.needs_input_grad[:3], (grad_s,),
            )  # fmt: skip
            return grads + (None, None)
        w_dtype, k = ctx.weight_meta
        need = ctx.needs_input_grad
        gx, gwg, gb = _dense_backward(
            ctx, grad_s, x, wg, bias.reshape(1, 1), kept[0] if kept else None,
            (need[0], need[1], need[2]),
        )  # fmt: skip
        gw = None if gwg is None else _band_sums(gwg, k).to(w_dtype)
        if gb is not None:
            gb = gb.sum().reshape(bias.shape).to(bias.dtype)
        return gx, gw, gb, None, None


def sliding_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate_function: Surrogate,
    memory: str = "lean",
) -> torch.Tensor:
    """Sliding PSN on ``x`` ``[T, M]`` of any length through the ``[T, T]`` Toeplitz
    matrix (tiny next to ``X``); ``bias`` is 0-dim."""
    if functorch_active():
        return _sliding_autograd(x, weight, bias, surrogate_function)
    keep_h = resolve_memory(memory, x.shape[1]) == "fast"
    return SlidingPSNFunction.apply(x, weight, bias, surrogate_function, keep_h)


# ------------------------------------------------------------------- MPE-PSN
# Masks are float 0/1 tensors here, not bools: comparisons written straight into a
# float output and products with the mask are several times faster on the CPU than
# bool masks with masked_fill/where, and (1 - s) h is then the same expression for a
# binary spike and for a smooth stand-in for Θ.
def _bernoulli_op():
    """``sj_parallel::mpe_bernoulli``: :func:`sj_parallel.reference.mpe_bernoulli` as
    a custom op, opaque to ``torch.compile``, so compiled graphs draw the samples with
    exactly the code (and roundings) of eager mode on every device. None on torch
    without ``torch.library.custom_op``."""
    if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
        return None

    @torch.library.custom_op("sj_parallel::mpe_bernoulli", mutates_args=())
    def mpe_bernoulli(
        x: torch.Tensor, seed_lo: int, seed_hi: int, t0: int, M: int, c0: int
    ) -> torch.Tensor:
        return ref.mpe_bernoulli(x, (seed_lo, seed_hi), t0, M=M, c0=c0)

    @mpe_bernoulli.register_fake
    def _(x, seed_lo, seed_hi, t0, M, c0):
        return torch.empty_like(x)

    return mpe_bernoulli


_BERNOULLI_OP = _bernoulli_op()


def mpe_samples(
    x: torch.Tensor, seed: Tuple[int, int], t0: int, M: int, c0: int
) -> torch.Tensor:
    """The Bernoulli samples of columns ``c0 ..`` of a layer of ``M`` neurons (0/1 in
    ``x``'s dtype): :func:`sj_parallel.reference.mpe_bernoulli`, through the custom op
    while ``torch.compile`` traces (so compiled and eager draws are identical)."""
    if _BERNOULLI_OP is not None and ref._is_compiling():
        return _BERNOULLI_OP(x.detach(), int(seed[0]), int(seed[1]), t0, M, c0)
    return ref.mpe_bernoulli(x, seed, t0, M=M, c0=c0)


def _mpe_estimate(xc, stochastic, seed, t0, M, c0, kept):
    """``(û, b, p)`` of columns ``c0 ..`` in the compute dtype; ``kept`` (uint8)
    reuses the samples kept by forward (sample ``(t, m)`` has global index
    ``(t0 + t) M + c0 + m``)."""
    if stochastic:
        if kept is None:
            b = mpe_samples(xc, seed, t0, M, c0)
        else:
            b = kept.to(xc.dtype)
        return torch.addcmul(xc, xc, b, value=-1.0), b, None  # (1 - b) x
    p = torch.sigmoid(xc)
    return (1.0 - p).mul_(xc), None, p


def _mpe_potential(xc, u_hat, tau, estimate_from, t0, u_hat0):
    """``h`` of every step (a new tensor)."""
    if estimate_from == "previous":
        h = xc.clone()
        h[1:].add_(u_hat[:-1], alpha=tau)
        if u_hat0 is not None:
            h[0].add_(u_hat0.to(xc.dtype), alpha=tau)
        return h
    h = torch.add(xc, u_hat, alpha=tau)
    if t0 == 0:  # h_0 = I_0 at the very first step
        h[0] = xc[0]
    return h


def _mpe_recompute(x, v_th, tau, estimate_from, stochastic, seed, t0, u_hat0, u0, cd):
    """Everything MPE-PSN computes in forward, vectorised over time, in dtype ``cd``:
    ``(xc, b, p, u_hat, h, z, c)`` with ``c`` the current wiring's ``[T, 1]`` 0/1
    coupling (None for the previous wiring). For tests and the reference checks."""
    xc = x.to(cd)
    u_hat, b, p = _mpe_estimate(xc, stochastic, seed, t0, x.shape[1], 0, None)
    h = _mpe_potential(xc, u_hat, tau, estimate_from, t0, u_hat0)
    c = None
    if estimate_from == "current":
        c = torch.ones(x.shape[0], 1, dtype=cd, device=x.device)
        if t0 == 0:
            c[0] = 0.0
    return xc, b, p, u_hat, h, h - v_th.to(cd), c


def _mpe_error(u_hat, u, estimate_from, t0, u0):
    """``e_t``: ``û_t - u_t`` (previous) or ``c_t (û_t - u_{t-1})`` (current)."""
    if estimate_from == "previous":
        return u_hat - u
    e = u_hat.clone()
    e[1:] -= u[:-1]
    if t0 == 0:
        e[0] = 0.0  # no pair at the very first step
    elif u0 is not None:
        e[0] -= u0.to(e.dtype)
    return e


def _spike_of(sg, z):
    """The spike ``o = Θ(z)`` as 0/1 in ``z``'s dtype for SpikingJelly's spiking
    surrogates (written by a comparison into a float tensor), else ``sg(z)``."""
    if _closed_form(sg) is not None:
        return torch.ge(z, 0, out=torch.empty_like(z))
    return sg(z)


def _cols(state, c0, c1):
    """Columns ``c0:c1`` of an ``[M]`` state (None stays None)."""
    return None if state is None else state[c0:c1]


def _mpe_forward_block(x, v, u_hat0, u0, cfg, M, c0, need_mse):
    """Forward of columns ``c0 ..`` (``x``: ``[T, W]`` in the compute dtype):
    ``(spikes, b, u_hat_last, u_last, sum_m e^2 or None)``."""
    tau, sg, estimate_from, stochastic, seed, t0 = cfg
    u_hat, b, _ = _mpe_estimate(x, stochastic, seed, t0, M, c0, None)
    h = _mpe_potential(x, u_hat, tau, estimate_from, t0, u_hat0)
    if _closed_form(sg) is not None:  # Θ(h - v) = [h >= v], as 0/1 floats
        s = torch.ge(h, v, out=torch.empty_like(h))
    else:
        s = sg(h - v)
    u = h.addcmul_(h, s, value=-1.0)  # u = (1 - o) h
    err = None
    if need_mse:
        err = _mpe_error(u_hat, u, estimate_from, t0, u0).square_().sum(1)
    return s, b, u_hat[-1], u[-1], err


def _mpe_backward_block(x, v, u_hat0, u0, kept, cfg, M, c0, grads, need_x):
    """Backward of columns ``c0 ..``: ``(grad_x, grad_v, grad_u_hat0, grad_u0)``;
    ``grads = (g_s, gm, g_uhl, g_ul)`` restricted to these columns (``gm``: the
    ``[T, 1]`` gradient of the per-step mse times ``2 / M``)."""
    tau, sg, estimate_from, stochastic, seed, t0 = cfg
    g_s, gm, g_uhl, g_ul = grads
    previous = estimate_from == "previous"
    u_hat, b, p = _mpe_estimate(x, stochastic, seed, t0, M, c0, kept)
    h = _mpe_potential(x, u_hat, tau, estimate_from, t0, u_hat0)
    z = h - v
    s = _spike_of(sg, z)
    # Adjoint of u_t = (1 - o_t) h_t, from the membrane loss and u_last. The spike
    # inside u is not detached: du/dh = (1 - o) - h sg'(z) and du/dv = h sg'(z).
    gm_e = None  # dL/dû_t of the loss term (= minus the adjoint of its target u)
    grad_u0 = None
    adj_u = None
    if gm is not None:
        e = _mpe_error(u_hat, torch.addcmul(h, h, s, value=-1.0), estimate_from, t0, u0)
        gm_e = e.mul_(gm)
        if previous:
            adj_u = gm_e.neg()
        else:
            adj_u = torch.zeros_like(gm_e)
            torch.neg(gm_e[1:], out=adj_u[:-1])
            if t0 > 0:
                grad_u0 = gm_e[0].neg()
    if g_ul is not None:
        if adj_u is None:
            adj_u = torch.zeros_like(x)
        adj_u[-1].add_(g_ul)
    q = g_s.clone() if g_s is not None else torch.zeros_like(x)
    if adj_u is not None:
        q.addcmul_(adj_u, h, value=-1.0)
    grad_h = surrogate_grad(sg, z, q, inplace=True)
    grad_v = grad_h.sum().neg()
    if adj_u is not None:  # + adj (1 - o)
        grad_h.add_(adj_u.addcmul_(adj_u, s, value=-1.0))
    grad_uh = torch.zeros_like(x) if gm_e is None else gm_e
    if g_uhl is not None:
        grad_uh[-1].add_(g_uhl)
    grad_uh0 = None
    if previous:  # h_t depends on û_{t-1}
        grad_uh[:-1].add_(grad_h[1:], alpha=tau)
        grad_uh0 = grad_h[0] * tau
    elif t0 == 0:  # h_t depends on û_t for t0 + t > 0
        grad_uh[1:].add_(grad_h[1:], alpha=tau)
    else:
        grad_uh.add_(grad_h, alpha=tau)
    grad_x = None
    if need_x:
        if stochastic:  # dû/dx = 1 - b
            grad_x = grad_h.add_(grad_uh.addcmul_(grad_uh, b, value=-1.0))
        else:  # dû/dx = (1 - p) - p (1 - p) x = (1 - p)(1 - p x)
            grad_x = grad_h.addcmul_(grad_uh, (1.0 - p).mul_(1.0 - p * x))
    return grad_x, grad_v, grad_uh0, grad_u0


class MPEPSNFunction(torch.autograd.Function):
    """MPE-PSN keeping ``X`` (and, with ``keep_mask``, the Bernoulli samples as a
    1-byte mask); everything else is recomputed in backward, block by block.

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
        keep_mask=False,
    ):
        T, M = x.shape
        cd = compute_dtype(x.dtype)
        v = _as(v_th, cd)
        cfg = (tau, surrogate_function, estimate_from, stochastic, seed, t0)
        keep = keep_mask and stochastic
        chunks = column_chunks(T, M, x.device)
        if len(chunks) == 1:
            s, b, uhl, ul, err = _mpe_forward_block(
                _as(x, cd), v, u_hat0, u0, cfg, M, 0, need_mse
            )
            spikes = _as(s, x.dtype)
            mask = b.to(torch.uint8) if keep else None
            u_hat_last, u_last = uhl.to(x.dtype, copy=True), ul.to(x.dtype, copy=True)
        else:
            spikes = torch.empty_like(x)
            u_hat_last = torch.empty(M, dtype=x.dtype, device=x.device)
            u_last = torch.empty(M, dtype=x.dtype, device=x.device)
            err = torch.zeros(T, dtype=cd, device=x.device) if need_mse else None
            mask = (
                torch.empty(T, M, dtype=torch.uint8, device=x.device) if keep else None
            )
            for c0, c1 in chunks:
                s, b, uhl, ul, e = _mpe_forward_block(
                    _as(x[:, c0:c1], cd), v, _cols(u_hat0, c0, c1),
                    _cols(u0, c0, c1), cfg, M, c0, need_mse,
                )  # fmt: skip
                spikes[:, c0:c1] = s
                if keep:
                    mask[:, c0:c1] = b
                u_hat_last[c0:c1] = uhl
                u_last[c0:c1] = ul
                if need_mse:
                    err += e
        if need_mse and M > 0:
            mse = err.div_(M)
        else:  # (an empty layer has no estimation error)
            mse = torch.zeros(T, dtype=cd, device=x.device)
        ctx.save_for_backward(x, v_th, u_hat0, u0, mask)
        ctx.cfg = cfg
        ctx.need_mse = need_mse
        if not need_mse:
            ctx.mark_non_differentiable(mse)
        return spikes, mse, u_hat_last, u_last

    @staticmethod
    def backward(ctx, g_s, g_mse, g_uhl, g_ul):
        x, v_th, u_hat0, u0, mask = ctx.saved_tensors
        cfg = ctx.cfg
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            grads = _differentiable_backward(
                lambda x, v, uh0, u0: _mpe_autograd(x, v, uh0, u0, cfg),
                (x, v_th, u_hat0, u0), ctx.needs_input_grad[:4],
                (g_s, g_mse if ctx.need_mse else None, g_uhl, g_ul),
            )  # fmt: skip
            return grads + (None,) * 8
        T, M = x.shape
        cd = compute_dtype(x.dtype)
        v = _as(v_th, cd)
        need = ctx.needs_input_grad
        previous = cfg[2] == "previous"
        gm = None if g_mse is None else g_mse.view(T, 1).mul(2.0 / max(M, 1))
        g_s, g_uhl, g_ul = (
            None if g is None else _as(g, cd) for g in (g_s, g_uhl, g_ul)
        )
        chunks = column_chunks(T, M, x.device)
        if len(chunks) == 1:
            gx, gv, guh0, gu0 = _mpe_backward_block(
                _as(x, cd), v, u_hat0, u0, mask, cfg, M, 0, (g_s, gm, g_uhl, g_ul),
                need[0],
            )  # fmt: skip
            grad_x = None if gx is None else _as(gx, x.dtype)
        else:
            grad_x = torch.empty_like(x) if need[0] else None
            gv = torch.zeros((), dtype=cd, device=x.device)
            guh0 = torch.empty(M, dtype=cd, device=x.device) if previous else None
            gu0 = torch.zeros(M, dtype=cd, device=x.device)
            for c0, c1 in chunks:
                grads = (
                    None if g_s is None else g_s[:, c0:c1],
                    gm,
                    _cols(g_uhl, c0, c1),
                    _cols(g_ul, c0, c1),
                )
                kept = None if mask is None else mask[:, c0:c1]
                bx, bv, buh0, bu0 = _mpe_backward_block(
                    _as(x[:, c0:c1], cd), v, _cols(u_hat0, c0, c1),
                    _cols(u0, c0, c1), kept, cfg, M, c0, grads, need[0],
                )  # fmt: skip
                if need[0]:
                    grad_x[:, c0:c1] = bx
                gv += bv
                if guh0 is not None:
                    guh0[c0:c1] = buh0
                if bu0 is not None:
                    gu0[c0:c1] = bu0
        out_v = gv.to(v_th.dtype).reshape(v_th.shape) if need[1] else None
        out_uh0 = _as(guh0, u_hat0.dtype) if need[2] and previous else None
        out_u0 = None
        if need[3] and not previous and gm is not None and cfg[5] > 0:
            out_u0 = _as(gu0, u0.dtype)
        return (grad_x, out_v, out_uh0, out_u0) + (None,) * 8


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
    memory: str = "lean",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPE-PSN on ``x`` ``[T, M]``; see :func:`sj_parallel.reference.mpe_psn`."""
    if functorch_active():
        cfg = (float(tau), surrogate_function, estimate_from, bool(stochastic),
               (int(seed[0]), int(seed[1])), int(t0))  # fmt: skip
        s, mse, uhl, ul = _mpe_autograd(x, v_threshold, u_hat0, u0, cfg)
        return s, (mse if need_mse else torch.zeros_like(mse).detach()), uhl, ul
    keep_mask = resolve_memory(memory, x.shape[1], "mpe") == "fast"
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
        keep_mask,
    )
