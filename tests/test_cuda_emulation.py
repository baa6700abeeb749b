"""The CUDA kernels, run on the CPU by the emulation harness, against the float64
reference math (``pytest -k emulat``).

Every kernel file, dtype (half types emulated) and supported surrogate is run, with
column counts that are not multiples of the block size, several T and k, both MPE-PSN
wirings, sampled and expected estimates, with and without the membrane loss and
incoming state. Outputs start as NaN so an element the kernel never writes fails.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_parallel import reference as ref
from sj_parallel.backends import _cuda as C
from sj_parallel.backends import torch_backend as tb

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is missing"),
    pytest.mark.sj_independent,
]

from emulation import harness as H  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# forward-math tolerance of the kernel's storage dtype (grads are stored in it)
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def surrogates():
    return [
        surrogate.ATan(alpha=2.0),
        surrogate.Sigmoid(alpha=4.0),
        surrogate.PiecewiseQuadratic(alpha=1.0),
        surrogate.SoftSign(alpha=2.0),
        surrogate.Erf(alpha=2.0),
        surrogate.PiecewiseLeakyReLU(w=1.0, c=0.01),
    ]


def _close(got: torch.Tensor, expect: torch.Tensor, dtype, what: str, scale=None):
    got = got.double()
    expect = expect.double()
    assert not torch.isnan(got).any(), f"{what}: unwritten (NaN) elements"
    scale = expect.abs().max().item() + 1e-3 if scale is None else scale
    err = (got - expect).abs().max().item()
    assert err <= TOL[dtype] * scale * 4 + 1e-6, (
        f"{what}: max error {err} (scale {scale})"
    )


def _spikes_match(got, h_ref, what, margin=1e-3):
    """Spikes equal Θ(h) wherever h is not within rounding distance of 0."""
    expect = (h_ref >= 0).double()
    clear = h_ref.abs() > margin * (h_ref.abs().max() + 1)
    assert not torch.isnan(got.double()).any(), f"{what}: unwritten elements"
    bad = (got.double() != expect) & clear
    assert not bad.any(), f"{what}: {int(bad.sum())} spikes differ"


# ------------------------------------------------------------------------- PSN
def sg_args(sg):
    """(compile-time flags, runtime a, c, d) of a surrogate for the kernels."""
    kind, a, c, d = C.surrogate_params(sg)
    return C.sg_flags(kind), (a, c, d)


def reduce_args(grid, n, grad_outs):
    """The outputs of a kernel's sums over blocks (poisoned), its scratch and its
    ticket counters (zero), as the launcher passes them."""
    work = H.poisoned((C.reduce_workspace(grid, n),), torch.float32)
    counters = torch.zeros(C.reduce_counters(grid), dtype=torch.int32)
    return [H.poisoned(shape, torch.float32) for shape in grad_outs], work, counters


def run_psn(T, x, W, b, g, sg, grid=2, order="forward", **load_kw):
    """Forward and backward of the PSN kernels as the launcher runs them (the
    launch configuration of _cuda.launch_config; the sums over blocks in the
    kernel), blocks run in ``order``."""
    M = x.shape[1]
    dtype = x.dtype
    kind, *sgp = C.surrogate_params(sg)
    flags = C.psn_flags(kind, C.psn_vector_ok(M, x, g))
    lib = H.load("psn", dtype, T, flags, **load_kw)
    block, _, smem = C.launch_config("psn", "sjp_psn_forward", T, dtype=dtype)
    s = H.poisoned((T, M), dtype)
    lib.launch("sjp_psn_forward", grid, block, x, W, b, s, M, smem=smem)
    block, _, smem = C.launch_config("psn", "sjp_psn_backward", T, dtype=dtype)
    gx = H.poisoned((T, M), dtype)
    (gw, gb), work, counters = reduce_args(grid, T * T + T, [(T, T), (T,)])
    lib.launch(
        "sjp_psn_backward", grid, block, x, g, W, b, gx, gw, gb, work, counters, M,
        *sgp, smem=smem, order=order,
    )  # fmt: skip
    assert not counters.any(), "the kernel must leave its counters at zero"
    return s, gx, gw, gb


# T: the FP32-FMA kernels (forward T <= 8 with 8 or 4 columns per thread, backward
# T <= 4) and the tensor-core ones (forward T > 8 with one or two m-tiles per warp;
# backward T > 4 with W pre-split or not, one or four warps per column slice),
# padded and unpadded mma tiles; M: one column, partial tiles, several tiles per
# block (grid-stride); M a multiple of 8 takes the 16-byte vector path
PSN_CASES = [
    (1, 1),
    (3, 70),
    (4, 64),
    (5, 130),
    (8, 48),
    (16, 65),
    (24, 40),
    (32, 97),
    (33, 40),
    (40, 72),
    (56, 30),
    (64, 70),
    (64, 64),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,M", PSN_CASES)
def test_emulated_psn_forward_backward(dtype, T, M):
    torch.manual_seed(T * 1000 + M)
    x = torch.randn(T, M).to(dtype)
    W = torch.randn(T, T) / T**0.5
    b = torch.randn(T) * 0.5
    g = torch.randn(T, M).to(dtype)
    x64, W64, b64 = x.double(), W.double(), b.double().unsqueeze(1)
    sgs = surrogates() if T in (5, 33) else [surrogate.ATan(alpha=2.0)]
    for sg in sgs:
        s, gx, gW, gb = run_psn(T, x, W, b, g, sg)
        h = ref.psn_h(x64, W64, b64)
        _spikes_match(s, h, f"psn forward {dtype} T={T}")
        xr = x64.clone().requires_grad_(True)
        Wr = W64.clone().requires_grad_(True)
        br = b64.clone().requires_grad_(True)
        ref.psn(xr, Wr, br, sg).backward(g.double())
        name = f"psn {type(sg).__name__} {dtype} T={T}"
        _close(gx, xr.grad, dtype, name + " grad_x")
        _close(gW, Wr.grad, dtype, name + " grad_W")
        _close(gb, br.grad.squeeze(1), dtype, name + " grad_b")


# --------------------------------------------------------------------- sliding
def run_sliding(k, x, w, b, g, sg, grid=2, order="forward", **load_kw):
    T, M = x.shape
    flags, sgp = sg_args(sg)
    lib = H.load("sliding", x.dtype, k, flags, **load_kw)
    block, _, smem = C.launch_config("sliding", "sjp_sliding_forward", k)
    s = H.poisoned((T, M), x.dtype)
    lib.launch("sjp_sliding_forward", grid, block, x, w, b, s, M, T, smem=smem)
    block, _, smem = C.launch_config("sliding", "sjp_sliding_backward", k)
    gx = H.poisoned((T, M), x.dtype)
    (gw, gb), work, counters = reduce_args(grid, k + 1, [(k,), (1,)])
    lib.launch(
        "sjp_sliding_backward", grid, block, x, g, w, b, gx, gw, gb, work, counters,
        M, T, *sgp, smem=smem, order=order,
    )  # fmt: skip
    assert not counters.any(), "the kernel must leave its counters at zero"
    return s, gx, gw, gb


# k: one lane per column (k <= 8 backward, <= 16 forward), 2/4/8 lanes; T shorter
# than k, than one unrolled block of steps, and several blocks with a partial last
SLIDING_CASES = [(1, 1, 5), (5, 1, 130), (5, 3, 130), (3, 5, 40), (19, 12, 70),
                 (16, 16, 129), (40, 20, 33), (9, 33, 17), (70, 64, 33)]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,k,M", SLIDING_CASES)
def test_emulated_sliding_forward_backward(dtype, T, k, M):
    torch.manual_seed(T * 100 + k)
    x = torch.randn(T, M).to(dtype)
    w = torch.randn(k) / k**0.5
    b = torch.tensor([-0.2])
    g = torch.randn(T, M).to(dtype)
    x64, w64 = x.double(), w.double()
    h = torch.addmm(b.double().reshape(1, 1), ref.sliding_weight_matrix(w64, T), x64)
    sgs = surrogates() if (T, k) in ((5, 3), (40, 20)) else [surrogate.ATan(alpha=2.0)]
    for sg in sgs:
        s, gx, gw, gb = run_sliding(k, x, w, b, g, sg)
        _spikes_match(s, h, f"sliding forward {dtype} T={T} k={k}")
        xr = x64.clone().requires_grad_(True)
        wr = w64.clone().requires_grad_(True)
        br = b.double().reshape(()).clone().requires_grad_(True)
        ref.sliding_psn(xr, wr, br, sg).backward(g.double())
        name = f"sliding {type(sg).__name__} {dtype} T={T} k={k}"
        _close(gx, xr.grad, dtype, name + " grad_x")
        _close(gw, wr.grad, dtype, name + " grad_w")
        _close(gb, br.grad.reshape(1), dtype, name + " grad_b")


# ------------------------------------------------------------------------- MPE
def _poisoned_samples(T: int, M: int) -> torch.Tensor:
    """The forward's sample words ``[ceil(T / 32), M]``, filled with a pattern the
    kernel must overwrite."""
    return torch.full(((T + 31) // 32, M), 0x5A5A5A5A, dtype=torch.int32)


def _samples_match(samples: torch.Tensor, b: torch.Tensor, what) -> None:
    """The kernel's words are the draws ``b`` ``[T, M]``: bit t % 32 of word t // 32,
    the last word's bits past step T - 1 zero."""
    T, M = b.shape
    w = torch.zeros((T + 31) // 32, M, dtype=torch.int64)
    for t in range(T):
        w[t // 32] |= b[t].to(torch.int64) << (t % 32)
    expect = torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)
    assert torch.equal(samples, expect), f"{what}: samples"


def _mpe_case(dtype, T, M, wiring, stochastic, need_mse, state, t0, sg, wide=False,
              inference=False):  # fmt: skip
    """Forward (the training build, which keeps the samples when stochastic) and
    backward against the float64 reference; ``inference``: also the forward's build
    without the samples, which must give the same bits."""
    kind, *sgp = C.surrogate_params(sg)
    flags = C.mpe_flags(
        wiring == "current", stochastic, need_mse, kind, wide=wide, keep=stochastic
    )
    lib = H.load("mpe", dtype, None, flags)
    torch.manual_seed(T * 7 + M + t0)
    x = (torch.randn(T, M) * 1.5).to(dtype)
    v = torch.tensor([0.8])
    tau = 0.25
    seed = (123456789, 987654321)
    uh0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    u0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    # forward
    grid = 3
    s = H.poisoned((T, M), dtype)
    uhl = H.poisoned((M,), dtype)
    ul = H.poisoned((M,), dtype)
    (mse,), work, counters = reduce_args(grid, T, [(T,)])
    samples = _poisoned_samples(T, M) if stochastic else None
    block, _, smem = C.launch_config("mpe", "sjp_mpe_forward", None, T)
    lib.launch(
        "sjp_mpe_forward", grid, block, x, uh0, u0, s, uhl, ul, samples, mse,
        work if need_mse else None, counters if need_mse else None, v, M, T, tau,
        seed[0], seed[1], t0, smem=smem,
    )  # fmt: skip
    assert not counters.any()
    if inference:  # the build without the samples: the same outputs, bitwise
        flags = C.mpe_flags(wiring == "current", stochastic, need_mse, kind, wide=wide)
        outs = [H.poisoned(t.shape, t.dtype) for t in (s, uhl, ul)]
        (mse2,), work, counters = reduce_args(grid, T, [(T,)])
        H.load("mpe", dtype, None, flags).launch(
            "sjp_mpe_forward", grid, block, x, uh0, u0, *outs, None, mse2,
            work if need_mse else None, counters if need_mse else None, v, M, T, tau,
            seed[0], seed[1], t0, smem=smem,
        )  # fmt: skip
        for a, b in zip([s, uhl, ul, mse], outs + [mse2]):
            assert torch.equal(a, b), "the inference forward differs"
    x64 = x.double().requires_grad_(True)
    v64 = v.double().reshape(()).requires_grad_(True)
    uh064 = None if uh0 is None else uh0.double().requires_grad_(True)
    u064 = None if u0 is None else u0.double().requires_grad_(True)
    kw = dict(estimate_from=wiring, stochastic=stochastic, seed=seed, t0=t0)
    kw.update(u_hat0=uh064, u0=u064)
    rs, rmse, ruhl, rul = ref.mpe_psn(x64, v64, tau, sg, **kw)
    # potential h - v, to ignore threshold ties from float32 vs float64 rounding
    _, _, _, _, h, z, _ = tb._mpe_recompute(
        x64, v64.detach(), tau, wiring, stochastic, seed, t0,
        None if uh064 is None else uh064.detach(), None, torch.float64,
    )  # fmt: skip
    what = f"mpe {wiring} stochastic={stochastic} {dtype} T={T} t0={t0}"
    if stochastic:  # the forward keeps its draws, bit t % 32 of word t // 32
        b = ref.mpe_bernoulli_mask(x.float(), seed, t0)
        _samples_match(samples, b, what)
    _spikes_match(s, z.detach(), what + " spikes")
    _close(uhl, ruhl.detach(), dtype, what + " u_hat_last")
    if wiring == "previous" or T > 1:
        # u_last holds (1 - o) h: compare where the spike agrees
        keep = s[-1].double() == rs[-1].detach()
        _close(ul[keep], rul.detach()[keep], dtype, what + " u_last")
    if need_mse:
        _close(mse, rmse.detach(), dtype, what + " mse", scale=rmse.abs().max() + 1)
    else:
        assert torch.equal(mse, torch.zeros(T))  # the kernel writes mse = 0
    # backward
    g_s = torch.randn(T, M).to(dtype)
    g_mse = torch.randn(T) if need_mse else None
    g_uhl = torch.randn(M).to(dtype) if state else None
    g_ul = torch.randn(M).to(dtype) if state else None
    gx = H.poisoned((T, M), dtype)
    guh0 = H.poisoned((M,), torch.float32)  # written for every column
    gu0 = H.poisoned((M,), torch.float32)
    (gv,), work, counters = reduce_args(grid, 1, [(1,)])
    block, _, smem = C.launch_config(
        "mpe", "sjp_mpe_backward", None, T if need_mse else 0
    )
    lib.launch(
        "sjp_mpe_backward", grid, block, x, samples, uh0, u0, g_s, g_mse, g_uhl, g_ul,
        gx, guh0, gu0, gv, work, counters, v, M, T, tau, t0, *sgp, smem=smem,
    )  # fmt: skip
    assert not counters.any()
    outs = [rs, ruhl, rul]
    grads = [g_s.double(), None if g_uhl is None else g_uhl.double()]
    grads.append(None if g_ul is None else g_ul.double())
    if need_mse:
        outs.append(rmse)
        grads.append(g_mse.double())
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    ins = [x64, v64] + [t for t in (uh064, u064) if t is not None]
    rg = torch.autograd.grad(
        [o for o, _ in pairs], ins, [g for _, g in pairs], allow_unused=True
    )
    _close(gx, rg[0], dtype, what + " grad_x")
    _close(gv, rg[1].reshape(1), dtype, what + " grad_v", scale=rg[1].abs().item() + 1)
    if state:
        exp_uh0 = rg[2] if rg[2] is not None else torch.zeros(M, dtype=torch.float64)
        exp_u0 = rg[3] if rg[3] is not None else torch.zeros(M, dtype=torch.float64)
        # both are written for every column, 0 where the wiring has no such gradient
        if wiring == "previous":
            _close(guh0, exp_uh0, dtype, what + " grad_u_hat0")
            assert torch.equal(gu0, torch.zeros(M)), what
        else:
            _close(gu0, exp_u0, dtype, what + " grad_u0")
            assert torch.equal(guh0, torch.zeros(M)), what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("T,M", [(1, 7), (5, 130), (64, 33)])
def test_emulated_mpe(dtype, wiring, stochastic, T, M):
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    _mpe_case(dtype, T, M, wiring, stochastic, True, False, 0, sg, inference=True)
    _mpe_case(dtype, T, M, wiring, stochastic, True, True, 3, sg)
    _mpe_case(dtype, T, M, wiring, stochastic, False, True, 0, sg)


@pytest.mark.parametrize("sg", surrogates(), ids=lambda s: type(s).__name__)
def test_emulated_mpe_surrogates(sg):
    for wiring in ("previous", "current"):
        _mpe_case(torch.float32, 6, 70, wiring, True, True, True, 2, sg)


@pytest.mark.parametrize("wide", [False, True], ids=["two-keys", "wide"])
@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_emulated_mpe_counter_crosses_high_word(wide, wiring):
    """Forward and backward where the hash counter (t0 + t) M + m crosses 2^32 inside
    the sequence (the forward's two-key path: the wrap of the low word selects the
    next high word's key), with the backward's 32-bit offsets inside a column and its
    64-bit ones (SJP_MPE_WIDE), against the reference."""
    M, T = 130, 20
    t0 = 2**32 // M - 9  # steps 9 and 10 cross, inside a forward chunk
    sg = surrogate.ATan(alpha=2.0)
    _mpe_case(torch.float32, T, M, wiring, True, True, True, t0, sg, wide=wide)


def test_mpe_backward_wide_threshold():
    assert not C.mpe_backward_wide(5, 2**30 - 1)  # 4 M < 2^32
    assert C.mpe_backward_wide(5, 2**30)
    assert C.mpe_backward_wide(2, 2**32)
    assert not C.mpe_backward_wide(1, 2**40)  # one step: no span


def test_emulated_hash_equals_reference():
    """The kernel's Bernoulli draws equal the torch path's (no sample flips), in the
    forward's step-by-step tail and in its chunks of 8 steps, also where the hash
    counter (t0 + t) M + m crosses into its next high word inside a step or a chunk."""
    lib = H.load("mpe", torch.float32, None, C.mpe_flags(need_mse=False, keep=True))
    M = 5000
    tc = 2**32 // M  # step tc: columns m >= 2^32 - tc M are past the high word
    torch.manual_seed(0)
    x = torch.randn(24, M) * 3
    v = torch.tensor([1e9])  # never spike: u = h, so û and u reveal the samples
    tau = 0.25
    cases = [(0, 4), (7, 4), (tc, 4), (tc - 7, 8), (tc - 6, 8), (tc - 12, 16),
             (tc - 3, 16), (tc - 20, 21), (2 * tc - 3, 8)]  # fmt: skip
    for t0, T in cases:
        s = H.poisoned((T, M), torch.float32)
        uhl = H.poisoned((M,), torch.float32)
        ul = H.poisoned((M,), torch.float32)
        mse = H.poisoned((T,), torch.float32)
        block, _, smem = C.launch_config("mpe", "sjp_mpe_forward", None, T)
        xt = x[:T].contiguous()
        samples = _poisoned_samples(T, M)
        lib.launch(
            "sjp_mpe_forward", 2, block, xt, None, None, s, uhl, ul, samples, mse, None,
            None, v, M, T, tau, 42, 43, t0, smem=smem,
        )  # fmt: skip
        _samples_match(samples, ref.mpe_bernoulli_mask(xt, (42, 43), t0), (t0, T))
        b = ref.mpe_bernoulli(xt[-1:], (42, 43), t0 + T - 1)[0]
        assert torch.equal(uhl, (1 - b) * xt[-1]), (t0, T)
        if T > 1:  # u_{T-1} = I_{T-1} + tau û_{T-2}
            b2 = ref.mpe_bernoulli(xt[-2:-1], (42, 43), t0 + T - 2)[0]
            assert torch.equal(ul, xt[-1] + tau * ((1 - b2) * xt[-2])), (t0, T)


@pytest.mark.parametrize("T,M", [(5, 40), (33, 20)])
def test_emulated_psn_backward_without_tensor_cores(T, M):
    """Before sm_80 the mma is computed with shuffles and FMAs (SJP_MMA_FALLBACK
    selects that path here): the same results."""
    torch.manual_seed(T)
    x, g = torch.randn(T, M), torch.randn(T, M)
    W, b = torch.randn(T, T) / T**0.5, torch.randn(T) * 0.5
    sg = surrogate.ATan(alpha=2.0)
    _, gx, gW, gb = run_psn(T, x, W, b, g, sg, defines=("-DSJP_MMA_FALLBACK",))
    xr = x.double().requires_grad_(True)
    Wr = W.double().requires_grad_(True)
    br = b.double().unsqueeze(1).requires_grad_(True)
    ref.psn(xr, Wr, br, sg).backward(g.double())
    _close(gx, xr.grad, torch.float32, "fallback grad_x")
    _close(gW, Wr.grad, torch.float32, "fallback grad_W")
    _close(gb, br.grad.squeeze(1), torch.float32, "fallback grad_b")


@pytest.mark.parametrize("name,const", [("psn", 7), ("psn", 40), ("sliding", 5),
                                        ("sliding", 40), ("mpe", None)])  # fmt: skip
def test_emulated_kernels_are_deterministic_and_use_no_float_atomics(name, const):
    """Every kernel, instrumented: no float atomics; two runs give the same bits."""
    M = 77  # not a multiple of 8: the PSN kernels' scalar path (as run_psn picks)
    flags = {"mpe": C.mpe_flags(keep=True), "sliding": C.sg_flags(0)}.get(
        name, C.psn_flags(0, vec=False)
    )
    lib = H.load(name, torch.float32, const, flags, instrument=True)
    torch.manual_seed(0)
    T = const if name == "psn" else 9
    x, g = torch.randn(T, M), torch.randn(T, M)
    sg = surrogate.ATan(alpha=2.0)
    results = []
    for _ in range(2):
        lib.reset_stats()
        if name == "psn":
            W, b = torch.randn(T, T) / T**0.5, torch.randn(T)
            torch.manual_seed(1)
            out = run_psn(T, x, W, b, g, sg, instrument=True)
        elif name == "sliding":
            w, b = torch.randn(const), torch.tensor([0.1])
            out = run_sliding(const, x, w, b, g, sg, instrument=True)
        else:
            out = _run_mpe_pair(lib, x, g)
        assert lib.stats()["float_atomics"] == 0
        results.append(out)
        torch.manual_seed(0)
        x, g = torch.randn(T, M), torch.randn(T, M)
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


def _run_mpe_pair(lib, x, g, grid=3):
    T, M = x.shape
    v = torch.tensor([0.7])
    s = H.poisoned((T, M), x.dtype)
    uhl, ul = H.poisoned((M,), x.dtype), H.poisoned((M,), x.dtype)
    (mse,), work, counters = reduce_args(grid, T, [(T,)])
    block, _, smem = C.launch_config("mpe", "sjp_mpe_forward", None, T)
    samples = _poisoned_samples(T, M)
    lib.launch("sjp_mpe_forward", grid, block, x, None, None, s, uhl, ul, samples,
               mse, work, counters, v, M, T, 0.25, 5, 6, 0, smem=smem)  # fmt: skip
    gx = H.poisoned((T, M), x.dtype)
    (gv,), work, counters = reduce_args(grid, 1, [(1,)])
    gm = torch.ones(T)
    block, _, smem = C.launch_config("mpe", "sjp_mpe_backward", None, T)
    lib.launch("sjp_mpe_backward", grid, block, x, samples, None, None, g, gm, None,
               None, gx, None, None, gv, work, counters, v, M, T, 0.25, 0,
               *C.surrogate_params(surrogate.PiecewiseQuadratic(alpha=1.0))[1:],
               smem=smem)  # fmt: skip
    return s, mse, samples, gx, gv
