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

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is missing")

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
PSN_CASES = [
    (1, 3, False),
    (5, 130, False),
    (16, 65, False),
    (64, 70, False),
    (5, 130, True),
    (64, 70, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,M,fixed", PSN_CASES)
def test_emulated_psn_forward_backward(dtype, T, M, fixed):
    if fixed and dtype != torch.float32:
        pytest.skip("the compile-time-T variant is checked in float32")
    lib = H.load("psn", dtype, fixed_t=T if fixed else None)
    torch.manual_seed(T * 1000 + M)
    x = torch.randn(T, M).to(dtype)
    W = torch.randn(T, T) / T**0.5
    b = torch.randn(T) * 0.5
    x64, W64, b64 = x.double(), W.double(), b.double().unsqueeze(1)
    h = ref.psn_h(x64, W64, b64)
    s = H.poisoned((T, M), dtype)
    lib.launch("sjp_psn_forward", 2, 64, x, W, b, s, M, T)
    _spikes_match(s, h, f"psn forward {dtype} T={T}")
    g = torch.randn(T, M).to(dtype)
    for sg in surrogates():
        params = C.surrogate_params(sg)
        gx = H.poisoned((T, M), dtype)
        gW = torch.zeros(T, T)
        gb = torch.zeros(T)
        lib.launch("sjp_psn_backward", 2, 64, x, g, W, b, gx, gW, gb, M, T, *params)
        xr = x64.clone().requires_grad_(True)
        Wr = W64.clone().requires_grad_(True)
        br = b64.clone().requires_grad_(True)
        out = ref.psn(xr, Wr, br, sg)
        out.backward(g.double())
        name = f"psn {type(sg).__name__} {dtype} T={T}"
        _close(gx, xr.grad, dtype, name + " grad_x")
        _close(gW, Wr.grad, dtype, name + " grad_W")
        _close(gb, br.grad.squeeze(1), dtype, name + " grad_b")


# --------------------------------------------------------------------- sliding
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,k,M", [(1, 1, 5), (5, 1, 130), (5, 3, 130), (3, 5, 40),
                                   (16, 16, 129), (70, 64, 33)])  # fmt: skip
def test_emulated_sliding_forward_backward(dtype, T, k, M):
    lib = H.load("sliding", dtype)
    torch.manual_seed(T * 100 + k)
    x = torch.randn(T, M).to(dtype)
    w = torch.randn(k) / k**0.5
    b = torch.tensor([-0.2])
    x64, w64 = x.double(), w.double()
    h = torch.addmm(b.double().reshape(1, 1), ref.sliding_weight_matrix(w64, T), x64)
    s = H.poisoned((T, M), dtype)
    lib.launch("sjp_sliding_forward", 2, 128, x, w, b, s, M, T, k)
    _spikes_match(s, h, f"sliding forward {dtype} T={T} k={k}")
    g = torch.randn(T, M).to(dtype)
    for sg in surrogates():
        params = C.surrogate_params(sg)
        gx = H.poisoned((T, M), dtype)
        gw = torch.zeros(k)
        gb = torch.zeros(1)
        lib.launch(
            "sjp_sliding_backward", 2, 128, x, g, w, b, gx, gw, gb, M, T, k, *params
        )
        xr = x64.clone().requires_grad_(True)
        wr = w64.clone().requires_grad_(True)
        br = b.double().reshape(()).clone().requires_grad_(True)
        ref.sliding_psn(xr, wr, br, sg).backward(g.double())
        name = f"sliding {type(sg).__name__} {dtype} T={T} k={k}"
        _close(gx, xr.grad, dtype, name + " grad_x")
        _close(gw, wr.grad, dtype, name + " grad_w")
        _close(gb, br.grad.reshape(1), dtype, name + " grad_b")


# ------------------------------------------------------------------------- MPE
def _mpe_case(dtype, T, M, wiring, stochastic, need_mse, state, t0, sg):
    lib = H.load("mpe", dtype)
    torch.manual_seed(T * 7 + M + t0)
    x = (torch.randn(T, M) * 1.5).to(dtype)
    v = torch.tensor([0.8])
    tau = 0.25
    seed = (123456789, 987654321)
    uh0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    u0 = (torch.randn(M) * 0.5).to(dtype) if state else None
    current = int(wiring == "current")
    # forward
    s = H.poisoned((T, M), dtype)
    uhl = H.poisoned((M,), dtype)
    ul = H.poisoned((M,), dtype)
    mse = torch.zeros(T)
    lib.launch(
        "sjp_mpe_forward", 3, 128, x, uh0, u0, s, uhl, ul, mse, v, M, T, tau,
        current, int(stochastic), seed[0], seed[1], t0, int(need_mse),
    )  # fmt: skip
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
    _spikes_match(s, z.detach(), what + " spikes")
    _close(uhl, ruhl.detach(), dtype, what + " u_hat_last")
    if wiring == "previous" or T > 1:
        # u_last holds (1 - o) h: compare where the spike agrees
        keep = s[-1].double() == rs[-1].detach()
        _close(ul[keep], rul.detach()[keep], dtype, what + " u_last")
    if need_mse:
        _close(mse / M, rmse.detach(), dtype, what + " mse", scale=rmse.abs().max() + 1)
    # backward
    g_s = torch.randn(T, M).to(dtype)
    g_mse = torch.randn(T) if need_mse else None
    g_uhl = torch.randn(M).to(dtype) if state else None
    g_ul = torch.randn(M).to(dtype) if state else None
    gx = H.poisoned((T, M), dtype)
    guh0 = torch.zeros(M)
    gu0 = torch.zeros(M)
    gv = torch.zeros(1)
    params = C.surrogate_params(sg)
    lib.launch(
        "sjp_mpe_backward", 3, 128, x, uh0, u0, g_s, g_mse, g_uhl, g_ul, gx, guh0,
        gu0, gv, v, M, T, tau, current, int(stochastic), seed[0], seed[1], t0, *params,
    )  # fmt: skip
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
        if wiring == "previous":
            _close(guh0, exp_uh0, dtype, what + " grad_u_hat0")
        elif need_mse:
            _close(gu0, exp_u0, dtype, what + " grad_u0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("T,M", [(1, 7), (5, 130), (64, 33)])
def test_emulated_mpe(dtype, wiring, stochastic, T, M):
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    _mpe_case(dtype, T, M, wiring, stochastic, True, False, 0, sg)
    _mpe_case(dtype, T, M, wiring, stochastic, True, True, 3, sg)
    _mpe_case(dtype, T, M, wiring, stochastic, False, True, 0, sg)


@pytest.mark.parametrize("sg", surrogates(), ids=lambda s: type(s).__name__)
def test_emulated_mpe_surrogates(sg):
    for wiring in ("previous", "current"):
        _mpe_case(torch.float32, 6, 70, wiring, True, True, True, 2, sg)


def test_emulated_hash_equals_reference():
    """The kernel's Bernoulli draws equal the torch path's (no sample flips)."""
    lib = H.load("mpe", torch.float32)
    T, M = 4, 5000
    torch.manual_seed(0)
    x = torch.randn(T, M) * 3
    v = torch.tensor([1e9])  # never spike: u = h, so û reveals the samples
    s = H.poisoned((T, M), torch.float32)
    uhl = H.poisoned((M,), torch.float32)
    ul = H.poisoned((M,), torch.float32)
    mse = torch.zeros(T)
    for t0 in (0, 7):
        lib.launch(
            "sjp_mpe_forward", 2, 128, x, None, None, s, uhl, ul, mse, v, M, T, 0.25,
            0, 1, 42, 43, t0, 0,
        )  # fmt: skip
        b = ref.mpe_bernoulli(x[-1:], (42, 43), t0 + T - 1)[0]
        assert torch.equal(uhl, (1 - b) * x[-1])
