"""The cupy backend's Python layer (custom ops, argument lists, autograd) end to end,
with its kernel launches routed to the CPU emulation harness (``pytest -k emulat``).

Only the CuPy calls themselves are replaced: ``_cuda.get_kernel`` returns the
emulated kernel of the same source and options, and ``_cuda.launch`` runs it on the
CPU. Everything else -- argument order against the kernel signatures, dtype
conversions, output shapes, the torch.library autograd formulas -- is the code that
runs on a GPU, compared here with the torch backend.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import surrogate

import sj_parallel.backends.cupy_backend as cb
from sj_parallel.backends import _cuda as C
from sj_parallel.backends import torch_backend as tb

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is missing")

from emulation import harness as H  # noqa: E402


@pytest.fixture
def emulated(monkeypatch):
    def get_kernel(name, kernel, dtype, const=None, flags=()):
        lib = H.load(name, dtype, const, flags)

        def run(grid, block, args, smem):
            conv = []
            for a in args:
                if isinstance(a, np.integer):
                    a = int(a)
                elif isinstance(a, np.floating):
                    a = float(a)
                conv.append(a)
            lib.launch(kernel, grid[0], block[0], *conv, smem=smem)

        return run

    def launch(kernel, grid, block, args, device, smem=0):
        kernel((grid,), (block,), list(args), smem)

    # small grids, so the grid-stride loops run several tiles per block
    monkeypatch.setattr(C, "get_kernel", get_kernel)
    monkeypatch.setattr(C, "launch", launch)
    monkeypatch.setattr(
        C, "device_grid", lambda k, tiles, block, smem, dev: min(tiles, 3)
    )
    monkeypatch.setattr(cb, "_check", lambda x, name: x.contiguous())


def _grads(fn, x, params, g_out):
    x = x.clone().requires_grad_(True)
    ps = [p.clone().requires_grad_(True) for p in params]
    outs = fn(x, *ps)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, g_out) if g is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return [o.detach() for o in outs], [x.grad] + [p.grad for p in ps]


def _compare(a, b, tol, what):
    for u, v in zip(a, b):
        if u is None and v is None:
            continue
        assert not torch.isnan(u.double()).any(), what
        scale = v.double().abs().max().item() + 1e-3
        err = (u.double() - v.double()).abs().max().item()
        assert err <= tol * scale, f"{what}: error {err} (scale {scale})"


TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,T,k", [("psn", 6, 0), ("psn", 40, 0), ("sliding", 6, 3),
                                      ("sliding", 21, 20)])  # fmt: skip
def test_emulated_ops_psn_family(emulated, dtype, kind, T, k):
    torch.manual_seed(1)
    M = 70
    sg = surrogate.ATan()
    if kind == "psn":
        params = [torch.randn(T, T) / T**0.5, torch.randn(T, 1) * 0.3]
        ours, theirs = cb.psn, tb.psn
    else:
        params = [torch.randn(k) / k**0.5, torch.tensor(-0.2)]
        ours, theirs = cb.sliding_psn, tb.sliding_psn
    x = torch.randn(T, M).to(dtype)
    g = torch.randn(T, M).to(dtype)
    (so,), go = _grads(lambda x, *p: ours(x, *p, sg), x, params, [g])
    (st,), gt = _grads(lambda x, *p: theirs(x, *p, sg), x, params, [g])
    assert so.dtype == dtype and so.shape == (T, M)
    assert (so != st).float().mean() < 0.01  # ties at threshold only
    _compare(go, gt, TOL[dtype] * 10, f"{kind} {dtype} grads")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("state", [False, True])
def test_emulated_ops_mpe(emulated, dtype, wiring, state):
    torch.manual_seed(2)
    T, M = 5, 90
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    x = (torch.randn(T, M) * 1.5).to(dtype)
    v = torch.tensor(0.8)
    extra = (
        [torch.randn(M).to(dtype) * 0.5, torch.randn(M).to(dtype) * 0.5]
        if state
        else []
    )
    kw = dict(estimate_from=wiring, stochastic=True, seed=(7, 8), t0=3 if state else 0)
    kw["need_mse"] = True

    def call(be):
        def fn(x, v, *st):
            uh0, u0 = (st[0], st[1]) if st else (None, None)
            return be.mpe_psn(x, v, 0.25, sg, u_hat0=uh0, u0=u0, **kw)

        return fn

    g = [torch.randn(T, M).to(dtype), torch.randn(T)]
    g += [torch.randn(M).to(dtype), torch.randn(M).to(dtype)] if state else [None, None]
    outs_o, grads_o = _grads(call(cb), x, [v] + extra, g)
    outs_t, grads_t = _grads(call(tb), x, [v] + extra, g)
    assert outs_o[0].dtype == dtype and outs_o[1].dtype == torch.float32
    assert (outs_o[0] != outs_t[0]).float().mean() < 0.01
    _compare(outs_o[1:], outs_t[1:], TOL[dtype] * 10, f"mpe {wiring} outputs")
    _compare(grads_o, grads_t, TOL[dtype] * 10, f"mpe {wiring} grads")
