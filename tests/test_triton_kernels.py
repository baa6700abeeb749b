"""The triton backend's kernels against the float64 math of sj_parallel.reference.

Without a GPU, Triton's interpreter runs the real kernels through the real launch path
on CPU tensors (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before anything
imports ``sj_parallel.triton``); on a GPU they run on it. The ops are called as the
neurons call them (``sj_parallel.backends.triton_backend``: the ``torch.library`` ops
with their autograd formulas), forward and every gradient, with the tolerances the cupy
backend's kernels meet (``tests/test_cuda_emulation.py``).

The parameters are combined by an all-pairs design (``tests/_pairwise.py``) rather
than their full product: T in {1, 4, 5, 16, 17, 33, 64}, M = 1, odd M and M spanning
several programs, k in {1, 2, 5, 16} plus the edges of the time tiles, every dtype,
every surrogate, both MPE-PSN wirings, sampled and expected estimates, with and without
the membrane loss, incoming state and a later first step.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _pairwise import case_id, pairwise
from spikingjelly.activation_based import surrogate

from sj_parallel import reference as ref
from sj_parallel.backends import torch_backend as tob
from sj_parallel.backends import triton_interpreting

_HAVE_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.sj_independent,
    pytest.mark.skipif(
        not _HAVE_TRITON or not (torch.cuda.is_available() or triton_interpreting()),
        reason="needs Triton and a GPU or Triton's interpreter (TRITON_INTERPRET=1)",
    ),
]

if _HAVE_TRITON and (torch.cuda.is_available() or triton_interpreting()):
    from sj_parallel.backends import triton_backend as tb

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the cupy backend's tolerances (tests/test_cuda_emulation.py): relative to the scale
# of the reference, of the storage dtype
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SURROGATES = {
    "ATan": lambda: surrogate.ATan(alpha=2.0),
    "Sigmoid": lambda: surrogate.Sigmoid(alpha=4.0),
    "PiecewiseQuadratic": lambda: surrogate.PiecewiseQuadratic(alpha=1.0),
    "SoftSign": lambda: surrogate.SoftSign(alpha=2.0),
    "Erf": lambda: surrogate.Erf(alpha=2.0),
    "PiecewiseLeakyReLU": lambda: surrogate.PiecewiseLeakyReLU(w=1.0, c=0.01),
}


def _close(got, expect, dtype, what, scale=None):
    got, expect = got.detach().double().cpu(), expect.detach().double().cpu()
    assert got.shape == expect.shape, f"{what}: shape {got.shape} != {expect.shape}"
    assert not torch.isnan(got).any(), f"{what}: NaN elements"
    scale = expect.abs().max().item() + 1e-3 if scale is None else scale
    err = (got - expect).abs().max().item() if got.numel() else 0.0
    assert err <= TOL[dtype] * scale * 4 + 1e-6, f"{what}: max error {err} ({scale})"


def _spikes_match(got, h_ref, what, margin=1e-3):
    """Spikes equal Θ(h) wherever h is not within rounding distance of 0."""
    got, h_ref = got.detach().double().cpu(), h_ref.detach().double().cpu()
    expect = (h_ref >= 0).double()
    clear = h_ref.abs() > margin * (h_ref.abs().max() + 1)
    assert not torch.isnan(got).any(), f"{what}: NaN spikes"
    bad = (got != expect) & clear
    assert not bad.any(), f"{what}: {int(bad.sum())} spikes differ"


def _run(fn, inputs, grads):
    """Outputs and the gradients of every input that requires grad (None where an
    output gets no gradient)."""
    ins = [
        None if t is None else t.detach().clone().requires_grad_(True) for t in inputs
    ]
    outs = fn(*ins)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    req = [t for t in ins if t is not None]
    gs = torch.autograd.grad(
        [o for o, _ in pairs], req, [g for _, g in pairs], allow_unused=True
    )
    return [o.detach() for o in outs], list(gs)


def _dev(*ts):
    return [None if t is None else t.to(DEVICE) for t in ts]


# ----------------------------------------------------------------------------- PSN
PSN_CASES = pairwise(
    T=[1, 4, 5, 16, 17, 33, 64],
    M=[1, 7, 136],  # 136: vector IO (a multiple of 8) and several programs
    dtype=DTYPES,
    sg=list(SURROGATES),
    masked=[False, True],
)


@pytest.mark.parametrize("case", PSN_CASES, ids=case_id)
def test_psn(case):
    T, M, dtype = case["T"], case["M"], case["dtype"]
    sg = SURROGATES[case["sg"]]()
    torch.manual_seed(T * 1000 + M)
    x = torch.randn(T, M).to(dtype)
    W = torch.randn(T, T) / T**0.5
    b = torch.randn(T, 1) * 0.5
    g = torch.randn(T, M).to(dtype)
    what = f"psn {case_id(case)}"
    if case["masked"]:
        lam, mask0 = torch.tensor(0.3), ref.band_mask(T, 2)

        def fn(x, W, b):
            return tb.psn(x, ref.masked_weight(W, lam.to(x.device), mask0.to(x.device)),
                          b, sg)  # fmt: skip

        def rfn(x, W, b):
            return ref.masked_psn(x, W, b, lam.double(), mask0.double(), sg)
    else:

        def fn(x, W, b):
            return tb.psn(x, W, b, sg)

        def rfn(x, W, b):
            return ref.psn(x, W, b, sg)

    (s,), (gx, gW, gb) = _run(fn, _dev(x, W, b), _dev(g))
    x64, W64, b64 = x.double(), W.double(), b.double()
    (rs,), (rgx, rgW, rgb) = _run(rfn, [x64, W64, b64], [g.double()])
    assert s.dtype == dtype and gx.dtype == dtype and gW.dtype == torch.float32
    w_eff = W64 if not case["masked"] else ref.masked_weight(W64, 0.3, mask0.double())
    _spikes_match(s, ref.psn_h(x64, w_eff, b64), what + " spikes")
    _close(gx, rgx, dtype, what + " grad_x")
    _close(gW, rgW, dtype, what + " grad_W")
    _close(gb, rgb, dtype, what + " grad_b")


# --------------------------------------------------------------------- sliding PSN
# k covers every window ring (2, 4, 8, 16; 32 below) and ring edges; T runs past
# several ring blocks and ends inside one
SLIDING_CASES = pairwise(
    T=[1, 5, 16, 17, 33, 70],
    k=[1, 2, 3, 5, 8, 9, 16, 17],
    M=[1, 7, 136],  # 136: vector IO (a multiple of 4) and several programs
    dtype=DTYPES,
    sg=list(SURROGATES),
)
# the longest rings (slow in the interpreter: a few cases)
SLIDING_CASES += [
    dict(T=70, k=32, M=7, dtype=torch.float32, sg="ATan"),
    dict(T=40, k=20, M=3, dtype=torch.bfloat16, sg="Sigmoid"),
    dict(T=66, k=25, M=2, dtype=torch.float16, sg="PiecewiseQuadratic"),
]


@pytest.mark.parametrize("case", SLIDING_CASES, ids=case_id)
def test_sliding_psn(case):
    T, k, M, dtype = case["T"], case["k"], case["M"], case["dtype"]
    sg = SURROGATES[case["sg"]]()
    torch.manual_seed(T * 100 + k)
    x = torch.randn(T, M).to(dtype)
    w = torch.randn(k) / k**0.5
    b = torch.tensor(-0.2)
    g = torch.randn(T, M).to(dtype)
    what = f"sliding {case_id(case)}"

    def fn(x, w, b):
        return tb.sliding_psn(x, w, b, sg)

    (s,), (gx, gw, gb) = _run(fn, _dev(x, w, b), _dev(g))
    x64, w64, b64 = x.double(), w.double(), b.double()
    (rs,), (rgx, rgw, rgb) = _run(
        lambda x, w, b: ref.sliding_psn(x, w, b, sg), [x64, w64, b64], [g.double()]
    )
    h = torch.addmm(b64.reshape(1, 1), ref.sliding_weight_matrix(w64, T), x64)
    _spikes_match(s, h, what + " spikes")
    _close(gx, rgx, dtype, what + " grad_x")
    _close(gw, rgw, dtype, what + " grad_w")
    _close(gb, rgb, dtype, what + " grad_b")


# ------------------------------------------------------------------------- MPE-PSN
MPE_CASES = pairwise(
    wiring=["previous", "current"],
    stochastic=[True, False],
    need_mse=[True, False],
    state=[False, True],
    t0=[0, 3],
    T=[1, 5, 16, 33],
    M=[1, 7, 600],
    dtype=DTYPES,
    sg=list(SURROGATES),
)
SEED = (123456789, 3987654321)


def _mpe_check(case, t0=None, seed=SEED):
    wiring, T, M, dtype = case["wiring"], case["T"], case["M"], case["dtype"]
    stochastic, need_mse, state = case["stochastic"], case["need_mse"], case["state"]
    t0 = case["t0"] if t0 is None else t0
    sg = SURROGATES[case["sg"]]()
    torch.manual_seed(T * 7 + M + t0)
    x = (torch.randn(T, M) * 1.5).to(dtype)
    v = torch.tensor(0.8)
    tau = 0.25
    uh0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    u0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    g_s = torch.randn(T, M).to(dtype)
    g_mse = torch.randn(T) if need_mse else None
    g_uhl = torch.randn(M).to(dtype)
    g_ul = torch.randn(M).to(dtype)
    kw = dict(estimate_from=wiring, stochastic=stochastic, seed=seed, t0=t0)
    what = f"mpe {case_id(case)} t0={t0}"

    def fn(x, v, uh0, u0):
        return tb.mpe_psn(x, v, tau, sg, u_hat0=uh0, u0=u0, need_mse=need_mse, **kw)

    def rfn(x, v, uh0, u0):
        return ref.mpe_psn(x, v, tau, sg, u_hat0=uh0, u0=u0, **kw)

    grads = [g_s, g_mse, g_uhl, g_ul]
    (s, mse, uhl, ul), gt = _run(fn, _dev(x, v, uh0, u0), _dev(*grads))
    d = [None if t is None else t.double() for t in (x, v, uh0, u0)]
    (rs, rmse, ruhl, rul), gr = _run(rfn, d, [None if t is None else t.double()
                                               for t in grads])  # fmt: skip
    # threshold ties from float32 vs float64 rounding are ignored
    _, _, _, _, _, z, _ = tob._mpe_recompute(
        d[0], d[1], tau, wiring, stochastic, seed, t0, d[2], None, torch.float64
    )
    _spikes_match(s, z, what + " spikes")
    _close(uhl, ruhl, dtype, what + " u_hat_last")
    keep = s[-1].double().cpu() == rs[-1]  # u_last = (1 - o) h where spikes agree
    _close(ul.cpu()[keep], rul[keep], dtype, what + " u_last")
    if need_mse:
        _close(mse, rmse, dtype, what + " mse", scale=rmse.abs().max().item() + 1)
    else:
        assert torch.equal(mse.cpu(), torch.zeros(T))
    names = ["grad_x", "grad_v", "grad_u_hat0", "grad_u0"]
    for name, a, r in zip(names, gt, gr):
        if r is None:  # no path: the op gives no gradient or zeros
            assert a is None or not a.any(), what + " " + name
            continue
        scale = None if name != "grad_v" else r.abs().max().item() + 1
        _close(a, r, dtype, f"{what} {name}", scale=scale)


@pytest.mark.parametrize("case", MPE_CASES, ids=case_id)
def test_mpe_psn(case):
    _mpe_check(case)


@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_mpe_psn_counter_crosses_high_word(wiring):
    """Forward and backward where the hash counter (t0 + t) M + m crosses 2^32 inside
    the sequence, inside a program's block of columns (M = 600 > BLOCK_M)."""
    M, T = 600, 6
    t0 = 2**32 // M - 3
    case = dict(wiring=wiring, stochastic=True, need_mse=True, state=True, t0=t0,
                T=T, M=M, dtype=torch.float32, sg="ATan")  # fmt: skip
    _mpe_check(case)


# ----------------------------------------------------- Bernoulli draws, bit for bit
if _HAVE_TRITON and (torch.cuda.is_available() or triton_interpreting()):
    import triton
    import triton.language as tl

    from sj_parallel.triton import common as tc

    @triton.jit
    def _hash_kernel(
        out_ptr, seed_lo, seed_hi, t0_hi, t0_lo, M, T, BLOCK: tl.constexpr
    ):
        # the MPE-PSN kernels' hash path: keys of the block's two high words
        pid = tl.program_id(0)
        c0 = pid * BLOCK
        cols = c0 + tl.arange(0, BLOCK)
        slo = seed_lo.to(tl.uint32, bitcast=True)
        shi = seed_hi.to(tl.uint32, bitcast=True)
        t0 = (t0_hi.to(tl.int64) << 31) + t0_lo
        for t in range(0, T):
            first = (t0 + t) * M + c0
            hi = (first >> 32).to(tl.uint32)
            r = tc.hash_bits(
                (t0 + t) * M + cols,
                tc.hash_key(slo, shi, hi),
                tc.hash_key(slo, shi, hi + 1),
                hi,
            )
            tl.store(out_ptr + t * M + cols, r.to(tl.int32), mask=cols < M)


@pytest.mark.parametrize(
    "t0,M",
    [(0, 1000), (2**32 // 1000 - 1, 1000), (2**33 // 77 - 2, 77), (2**40 + 5, 3)],
)
def test_hash_bits_equal_reference(t0, M):
    """The counter hash in uint32 arithmetic equals the reference bit for bit, also
    where the index crosses a high word inside a block and far past 2^32."""
    T = 3
    out = torch.empty(T, M, dtype=torch.int32, device=DEVICE)
    seed = (0xDEADBEEF, 0x9E3779B9)
    _hash_kernel[(triton.cdiv(M, 128),)](
        out, tb._i32(seed[0]), tb._i32(seed[1]), *tb._t0_words(t0), M, T, BLOCK=128
    )
    expect = ref._hash24_rows(seed, t0, T, M, 0, M, torch.device("cpu"))
    assert torch.equal(out.cpu(), expect.view(T, M))


@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_mpe_draws_equal_torch_backend(wiring):
    """The Bernoulli draws equal the torch backend's, bit for bit: û = (1 - b) x of
    each step (never spiking: v huge), one step at a time at many first steps, and the
    last steps of whole sequences, including steps whose counters cross 2^32."""
    M = 5000
    tc_ = 2**32 // M
    torch.manual_seed(0)
    x = torch.randn(24, M) * 3
    v = torch.tensor(1e9)
    sg = surrogate.ATan()
    seed = (42, 43)
    for t0, T in [(0, 1), (7, 1), (tc_, 1), (tc_ - 1, 1), (0, 4), (tc_ - 6, 8)]:
        xt = x[:T].contiguous()
        _, _, uhl, ul = tb.mpe_psn(
            xt.to(DEVICE), v.to(DEVICE), 0.25, sg, estimate_from=wiring,
            stochastic=True, seed=seed, t0=t0, u_hat0=None, u0=None, need_mse=False,
        )  # fmt: skip
        _, _, ruhl, rul = tob.mpe_psn(
            xt, v, 0.25, sg, estimate_from=wiring, stochastic=True, seed=seed, t0=t0,
            u_hat0=None, u0=None, need_mse=False,
        )  # fmt: skip
        assert torch.equal(uhl.cpu(), ruhl), (t0, T)
        b = ref.mpe_bernoulli(xt[-1:], seed, t0 + T - 1)[0]
        assert torch.equal(uhl.cpu(), (1 - b) * xt[-1]), (t0, T)


# ------------------------------------------------------------------ determinism
def test_kernels_are_deterministic():
    """Two runs of every op give the same bits (per-program partials summed in a fixed
    order; several programs and several tiles per program here)."""
    torch.manual_seed(0)
    sg = surrogate.ATan()
    T, M = 9, 700
    x, g = torch.randn(T, M, device=DEVICE), torch.randn(T, M, device=DEVICE)
    W, b = torch.randn(T, T, device=DEVICE) / 3, torch.randn(T, 1, device=DEVICE)
    w, bs = torch.randn(5, device=DEVICE), torch.tensor(0.1, device=DEVICE)
    v = torch.tensor(0.7, device=DEVICE)

    def runs():
        out = []
        out += _run(lambda x, W, b: tb.psn(x, W, b, sg), [x, W, b], [g])[1]
        out += _run(lambda x, w, b: tb.sliding_psn(x, w, b, sg), [x, w, bs], [g])[1]
        out += _run(
            lambda x, v: tb.mpe_psn(x, v, 0.25, sg, estimate_from="previous",
                                    stochastic=True, seed=(5, 6), t0=0, u_hat0=None,
                                    u0=None, need_mse=True),
            [x, v], [g, torch.ones(T, device=DEVICE)],
        )[1]  # fmt: skip
        return out

    for a, b_ in zip(runs(), runs()):
        assert torch.equal(a, b_)
