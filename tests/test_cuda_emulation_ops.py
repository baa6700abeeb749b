"""The cupy backend end to end on a fake GPU (``pytest -k emulat``): the real launcher
(``_cuda.get_kernel``, ``Kernel.grid``, ``launch``) and op code (custom ops, argument
lists, autograd) with real ``cupy.RawModule`` / ``cupy.RawKernel`` objects; only what
needs a device is replaced, spec'd against the installed CuPy and torch
(``tests/emulation/fake_gpu.py``), and the kernel launches run in the CPU emulation.
Results are compared with the torch backend; launches per pass, the ops around them,
the stream, the device and the reduction counters are checked.
"""

from __future__ import annotations

import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import surrogate

import sj_parallel.backends.cupy_backend as cb
from sj_parallel import reference as ref
from sj_parallel.backends import _cuda as C
from sj_parallel.backends import torch_backend as tb

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is missing"),
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("cupy") is None,
        reason="CuPy is not installed",
    ),
]

from emulation import fake_gpu  # noqa: E402


@pytest.fixture
def gpu(monkeypatch):
    return fake_gpu.install(monkeypatch)


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


def _psn_family(kind, T, k, dtype, M=70, seed=1):
    torch.manual_seed(seed)
    if kind == "psn":
        params = [torch.randn(T, T) / T**0.5, torch.randn(T, 1) * 0.3]
        ours, theirs = cb.psn, tb.psn
    else:
        params = [torch.randn(k) / k**0.5, torch.tensor(-0.2)]
        ours, theirs = cb.sliding_psn, tb.sliding_psn
    x = torch.randn(T, M).to(dtype)
    g = torch.randn(T, M).to(dtype)
    return ours, theirs, x, params, g


def test_launcher_runs_on_the_installed_cupy(gpu):
    """Fails on the launcher before issue 16 (``RawKernel.ptr`` and
    ``cupy.cuda.runtime.getLastError`` do not exist in CuPy): a PSN forward and
    backward through real CuPy objects, every device call inside
    ``cupy.cuda.Device`` of the tensors' device, on torch's current stream."""
    ours, _, x, params, g = _psn_family("psn", 6, 0, torch.float32)
    (s,), grads = _grads(lambda x, *p: ours(x, *p, surrogate.ATan()), x, params, [g])
    assert s.shape == x.shape and all(t is not None for t in grads)
    assert gpu.kernels() == ["sjp_psn_forward", "sjp_psn_backward"]
    assert {launch.stream for launch in gpu.launches} == {fake_gpu.STREAM_BASE}
    assert gpu.stack == []  # every Device context was left


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,T,k", [("psn", 6, 0), ("psn", 40, 0), ("sliding", 6, 3),
                                      ("sliding", 21, 20)])  # fmt: skip
def test_emulated_ops_psn_family(gpu, dtype, kind, T, k):
    ours, theirs, x, params, g = _psn_family(kind, T, k, dtype)
    sg = surrogate.ATan()
    (so,), go = _grads(lambda x, *p: ours(x, *p, sg), x, params, [g])
    (st,), gt = _grads(lambda x, *p: theirs(x, *p, sg), x, params, [g])
    assert so.dtype == dtype and so.shape == (T, 70)
    assert (so != st).float().mean() < 0.01  # ties at threshold only
    _compare(go, gt, TOL[dtype] * 10, f"{kind} {dtype} grads")
    assert len(gpu.launches) == 2  # forward, backward (sums over blocks inside)


def test_emulated_psn_opts_in_to_large_shared_memory(gpu):
    """PSN backward at T = 32 (float32) needs more than 48 KB of dynamic shared
    memory: the kernel is opted in once, inside its device."""
    T = 32
    _, smem = C.launch_config("psn", "sjp_psn_backward", T)[::2]
    assert smem > 48 * 1024
    sg = surrogate.ATan()
    for _ in range(2):
        _, _, x, params, g = _psn_family("psn", T, 0, torch.float32, M=40)
        (so,), go = _grads(lambda x, *p: cb.psn(x, *p, sg), x, params, [g])
        (st,), gt = _grads(lambda x, *p: tb.psn(x, *p, sg), x, params, [g])
        _compare(go, gt, 1e-4, "psn T=32 grads")
    (k,) = [k for key, k in C._KERNELS.items() if key[1] == "sjp_psn_backward"]
    assert k.opted_smem == smem
    assert [launch.smem for launch in gpu.launches][1::2] == [smem, smem]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("state", [False, True])
def test_emulated_ops_mpe(gpu, dtype, wiring, state):
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
    assert gpu.kernels() == ["sjp_mpe_forward", "sjp_mpe_backward"]


def test_emulated_mpe_without_loss_and_spike_grads(gpu):
    """need_mse=False (the kernel writes mse = 0) and a backward through the membrane
    loss only (no gradient reaches the spikes: grad_S is passed as null)."""
    torch.manual_seed(3)
    T, M = 4, 50
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    x = torch.randn(T, M) * 1.5
    v = torch.tensor(0.9)
    kw = dict(estimate_from="previous", stochastic=False, seed=(1, 2), t0=0)
    s, mse, _, _ = cb.mpe_psn(x, v, 0.25, sg, u_hat0=None, u0=None, need_mse=False,
                              **kw)  # fmt: skip
    assert torch.equal(mse, torch.zeros(T))
    s_t = tb.mpe_psn(x, v, 0.25, sg, u_hat0=None, u0=None, need_mse=False, **kw)[0]
    assert (s != s_t).float().mean() < 0.01
    for be in (cb, tb):
        xr, vr = x.clone().requires_grad_(True), v.clone().requires_grad_(True)
        _, mse, _, _ = be.mpe_psn(xr, vr, 0.25, sg, u_hat0=None, u0=None,
                                  need_mse=True, **kw)  # fmt: skip
        mse.sum().backward()
        if be is cb:
            got = (xr.grad, vr.grad)
        else:
            _compare(got, (xr.grad, vr.grad), 1e-4, "mpe loss-only grads")


def test_emulated_mpe_keeps_samples_only_for_training(gpu):
    """The training forward keeps its draws, 1 bit per element, bit t % 32 of word
    t // 32 ([ceil(T / 32), M] int32); inference keeps nothing (a [0, M] tensor, the
    build without SJP_MPE_KEEP) and gives the same outputs, bitwise."""
    torch.manual_seed(4)
    T, M = 37, 20  # two words, the second partial
    x, v = torch.randn(T, M) * 2, torch.tensor([0.9])
    sg = (2, 1.0, 0.0, 0.0)
    cfg = (0.25, False, True, 7, 8, 0, True)
    train = cb.mpe_psn_forward(x, v, None, None, *cfg, True, *sg)
    infer = cb.mpe_psn_forward(x, v, None, None, *cfg, False, *sg)
    assert infer[4].shape == (0, M) and train[4].shape == (2, M)
    for a, b in zip(train[:4], infer[:4]):
        assert torch.equal(a, b)
    b = ref.mpe_bernoulli_mask(x, (7, 8), 0).to(torch.int64)
    words = train[4].to(torch.int64) & 0xFFFFFFFF
    for t in range(T):
        assert torch.equal((words[t // 32] >> (t % 32)) & 1, b[t]), t
    assert not (words[1] >> (T - 32)).any()  # bits past step T - 1 are zero
    # the module-level op: the same spikes with and without a graph
    kw = dict(estimate_from="previous", stochastic=True, seed=(7, 8), t0=0)
    kw.update(u_hat0=None, u0=None, need_mse=True)
    with torch.no_grad():
        s_inf = cb.mpe_psn(x, v, 0.25, surrogate.PiecewiseQuadratic(), **kw)[0]
    s_tr = cb.mpe_psn(
        x.requires_grad_(), v, 0.25, surrogate.PiecewiseQuadratic(), **kw
    )[0]
    assert torch.equal(s_inf, s_tr.detach())


def _aten_ops_during(fn) -> set:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        fn()
    return {e.name for e in p.events() if e.name.startswith("aten::")}


# what a pass may do besides its kernel: allocate, take views, no-op conversions
NO_LAUNCH = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view",
             "aten::reshape", "aten::_reshape_alias", "aten::as_strided",
             "aten::detach", "aten::alias", "aten::to", "aten::contiguous",
             "aten::lift_fresh", "aten::new_empty", "aten::_unsafe_view",
             "aten::expand", "aten::t", "aten::transpose", "aten::squeeze",
             "aten::unsqueeze", "aten::select", "aten::slice"}  # fmt: skip


@pytest.mark.parametrize("kind", ["psn", "sliding", "mpe"])
def test_one_launch_per_pass_and_nothing_else(gpu, kind):
    """Forward + backward = 2 kernel launches and no other operation that would launch
    a kernel on a GPU (no fill, copy or sum: the sums over blocks are in the kernels,
    the reduction counters are left zero by them)."""
    torch.manual_seed(4)
    T, M = 8, 64
    x = torch.randn(T, M, requires_grad=True)
    g = torch.randn(T, M)
    sg = surrogate.ATan()
    if kind == "psn":
        W = (torch.randn(T, T) / T).requires_grad_(True)
        b = torch.zeros(T, 1, requires_grad=True)

        def run():
            torch.autograd.backward(cb.psn(x, W, b, sg), g)
    elif kind == "sliding":
        w = torch.randn(3, requires_grad=True)
        b = torch.tensor(-0.5, requires_grad=True)

        def run():
            torch.autograd.backward(cb.sliding_psn(x, w, b, sg), g)
    else:
        v = torch.tensor(1.0, requires_grad=True)
        gm = torch.randn(T)

        def run():
            s, mse, _, _ = cb.mpe_psn(
                x, v, 0.25, sg, estimate_from="previous", stochastic=True,
                seed=(3, 4), t0=0, u_hat0=None, u0=None, need_mse=True,
            )  # fmt: skip
            torch.autograd.backward([s, mse], [g, gm])

    run()  # first call: compile, counters made (zeroed once)
    gpu.launches.clear()
    for t in list(locals().values()):  # no gradient accumulation (add_) in the check
        if isinstance(t, torch.Tensor):
            t.grad = None
    extra = _aten_ops_during(run) - NO_LAUNCH
    assert len(gpu.launches) == 2, gpu.kernels()
    assert not extra, f"ops that would launch kernels on a GPU: {sorted(extra)}"
    for buf in C._COUNTER_BUFS.values():
        assert not buf.any()


@pytest.mark.parametrize("kind", ["psn3", "psn16", "sliding", "mpe"])
def test_sums_over_blocks_are_fixed_order_for_any_finishing_order(monkeypatch, kind):
    """Grids of more than one reduction group (> 16 blocks): whichever block finishes
    last (the emulation runs the blocks forward, reversed or rotated), the sums over
    the blocks are added in the same order: bitwise equal results, counters left 0."""
    gpu = fake_gpu.install(monkeypatch, sms=8)
    torch.manual_seed(5)
    sg = surrogate.ATan()
    if kind.startswith("psn"):
        T = int(kind[3:])
        cols = C.launch_config("psn", "sjp_psn_backward", T)[1]
        M = 17 * cols
        params = [torch.randn(T, T) / T, torch.randn(T, 1) * 0.1]

        def fn(x, *p):
            return cb.psn(x, *p, sg)
    elif kind == "sliding":
        T, M = 4, 17 * 128
        params = [torch.randn(3), torch.tensor(-0.3)]

        def fn(x, *p):
            return cb.sliding_psn(x, *p, sg)
    else:
        T, M = 3, 17 * 128
        params = [torch.tensor(0.9)]

        def fn(x, v):
            return cb.mpe_psn(x, v, 0.25, sg, estimate_from="previous",
                              stochastic=True, seed=(5, 6), t0=0, u_hat0=None,
                              u0=None, need_mse=True)  # fmt: skip

    x = torch.randn(T, M)
    g = [torch.randn(T, M), torch.randn(T)] if kind == "mpe" else [torch.randn(T, M)]
    results = []
    for order in ("forward", "reverse", "rotate"):
        with fake_gpu.block_order(gpu, order):
            results.append(_grads(fn, x, params, g + [None, None]))
    assert max(launch.grid for launch in gpu.launches) > C.REDUCE_GROUP
    (o0, g0) = results[0]
    for o, gr in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, o0))
        assert all(torch.equal(a, b) for a, b in zip(gr, g0))
    for buf in C._COUNTER_BUFS.values():
        assert not buf.any()
    theirs = {"sliding": tb.sliding_psn, "mpe": None}.get(kind, tb.psn)
    if theirs is not None:
        _, gt = _grads(lambda x, *p: theirs(x, *p, sg), x, params, g)
        _compare(g0, gt, 1e-4, f"{kind} grads")


def test_device_comes_from_the_tensors(monkeypatch):
    """A kernel for device 1 is built, queried and launched inside
    ``cupy.cuda.Device(1)`` on device 1's current torch stream;
    ``torch.cuda.current_device()`` is never asked."""
    gpu = fake_gpu.install(monkeypatch, devices=2)
    monkeypatch.setattr(
        torch.cuda,
        "current_device",
        mock.create_autospec(
            fake_gpu._REAL["current_device"], side_effect=AssertionError
        ),
    )
    T, M = 4, 64
    k = C.get_kernel("psn", "sjp_psn_forward", torch.float32, T, C.psn_flags(0), 1)
    assert k.device == 1 and k is C.get_kernel(
        "psn", "sjp_psn_forward", torch.float32, T, C.psn_flags(0), 1
    )  # cached per (file, kernel, dtype, constant, flags, device)
    block, cols, smem = C.launch_config("psn", "sjp_psn_forward", T)
    x, W, b = torch.randn(T, M), torch.randn(T, T), torch.randn(T)
    s = torch.full((T, M), float("nan"))
    C.launch(k, k.grid(1, block, smem), block, (x, W, b, s, np.int64(M)),
             torch.device("cuda", 1), smem)  # fmt: skip
    assert gpu.launches[-1].device == 1
    assert gpu.launches[-1].stream == fake_gpu.STREAM_BASE + 1
    assert torch.equal(s, (W @ x + b[:, None] >= 0).float())
    # the same variant on device 0 is another build, inside Device(0)
    k0 = C.get_kernel("psn", "sjp_psn_forward", torch.float32, T, C.psn_flags(0), 0)
    assert k0 is not k and k0.device == 0


def test_wrong_launch_arguments_fail_like_cupy(gpu):
    """The fake checks what CuPy would pack: a Python float for a float parameter
    (CuPy passes float64), a missing argument, a launch outside the device."""
    T, M = 4, 8
    k = C.get_kernel("psn", "sjp_psn_forward", torch.float32, T, C.psn_flags(0), None)
    x, W, b, s = torch.randn(T, M), torch.randn(T, T), torch.randn(T), torch.empty(T, M)
    with pytest.raises(TypeError, match="M .*must be int64"):
        C.launch(k, 1, 128, (x, W, b, s, np.int32(M)), x.device, 0)
    with pytest.raises(TypeError, match="takes 5 arguments, got 4"):
        C.launch(k, 1, 128, (x, W, b, s), x.device, 0)
    with pytest.raises(AttributeError, match="ptr"):
        k.fn.ptr  # noqa: B018 - what the old launcher read
    with pytest.raises(AssertionError, match="outside `with"):
        k.fn.num_regs  # noqa: B018 - not inside cupy.cuda.Device


def _op_samples():
    torch.manual_seed(6)
    T, M = 6, 40
    x, g = torch.randn(T, M), torch.randn(T, M)
    W, b = torch.randn(T, T) / T, torch.randn(T, 1) * 0.1
    w, bs = torch.randn(3), torch.tensor(-0.4)
    v, uh0, u0 = torch.tensor([0.9]), torch.randn(M), torch.randn(M)
    sg = (0, 2.0, 0.0, 0.0)
    mpe = (0.25, False, True, 5, 6, 2)
    bits = torch.randint(-(2**31), 2**31 - 1, ((T + 31) // 32, M), dtype=torch.int32)
    return {
        "psn_forward": (x, W, b, *sg),
        "psn_backward": (x, g, W, b, *sg),
        "sliding_psn_forward": (x, w, bs, *sg),
        "sliding_psn_backward": (x, g, w, bs, *sg),
        "mpe_psn_forward": (x, v, uh0, u0, *mpe, True, True, 2, 1.0, 0.0, 0.0),
        "mpe_psn_backward": (x, bits, v, uh0, u0, g, torch.randn(T), torch.randn(M),
                             None, *mpe, 2, 1.0, 0.0, 0.0),
    }  # fmt: skip


@pytest.mark.parametrize("op", list(_op_samples()))
def test_custom_ops_pass_opcheck(gpu, op):
    """torch.library.opcheck of every custom op on the fake device: schema, autograd
    registration, fake (meta) implementation, AOT dispatch (what torch.compile uses)."""
    args = _op_samples()[op]
    if op.endswith("forward"):
        args = tuple(
            a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a
            for a in args
        )
    torch.library.opcheck(getattr(cb, op), args)


def test_empty_inputs_and_half_parameters(gpu):
    """No neurons or no steps: no launch, zero gradients; float16 parameters are read
    as float32 and their gradients come back in float16."""
    sg = surrogate.ATan()
    for T, M in ((4, 0), (0, 5)):
        x = torch.randn(T, M, requires_grad=True)
        if T:
            W = torch.randn(T, T, requires_grad=True)
            b = torch.zeros(T, 1, requires_grad=True)
            cb.psn(x, W, b, sg).sum().backward()
            assert not W.grad.any() and not b.grad.any()
        w = torch.randn(2, requires_grad=True)
        bb = torch.tensor(0.0, requires_grad=True)
        cb.sliding_psn(x, w, bb, sg).sum().backward()
        assert not w.grad.any()
        v = torch.tensor(1.0, requires_grad=True)
        uh0 = torch.randn(M)
        s, mse, uhl, ul = cb.mpe_psn(
            x, v, 0.25, surrogate.PiecewiseQuadratic(alpha=1.0),
            estimate_from="previous", stochastic=True, seed=(1, 2), t0=0,
            u_hat0=uh0, u0=None, need_mse=True,
        )  # fmt: skip
        assert mse.shape == (T,) and not mse.any()
        assert torch.equal(uhl, uh0 if T == 0 else torch.zeros(M))
        (s.sum() + mse.sum()).backward()
        assert not v.grad.any()
    assert gpu.launches == []
    ours, theirs, x, params, g = _psn_family("psn", 6, 0, torch.float32)
    params = [p.half() for p in params]
    (so,), go = _grads(lambda x, *p: ours(x, *p, sg), x, params, [g])
    assert [t.dtype for t in go] == [torch.float32, torch.float16, torch.float16]
    params32 = [p.float() for p in params]
    (st,), gt = _grads(lambda x, *p: theirs(x, *p, sg), x, params32, [g])
    _compare([t.float() for t in go], gt, 2e-3, "half parameters")


def test_limits_and_double_backward_are_refused(gpu):
    sg = surrogate.ATan()
    with pytest.raises(ValueError, match="T <= 64, got T=65"):
        cb.psn(torch.randn(65, 2), torch.randn(65, 65), torch.randn(65, 1), sg)
    with pytest.raises(ValueError, match="k <= 64, got k=65"):
        cb.sliding_psn(torch.randn(3, 2), torch.randn(65), torch.tensor(0.0), sg)
    with pytest.raises(ValueError, match="T <= 1024, got T=1025"):
        cb.mpe_psn(torch.randn(1025, 1), torch.tensor(1.0), 0.25, sg,
                   estimate_from="previous", stochastic=True, seed=(0, 0), t0=0,
                   u_hat0=None, u0=None, need_mse=True)  # fmt: skip
    with pytest.raises(ValueError, match="too many for one launch.*split the batch"):
        cb._prepare("mpe", "sjp_mpe_backward", torch.empty(1, 1), 2**38)
    with pytest.raises(ValueError, match="needs its compile-time SJP_T"):
        C.variant_options("psn", torch.float32)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        cb.psn(torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2),
               torch.randn(2, 1), sg)  # fmt: skip
    x = torch.randn(4, 8, requires_grad=True)
    W = torch.randn(4, 4, requires_grad=True)
    for name, make in (
        ("PSN", lambda: cb.psn(x, W, torch.zeros(4, 1), sg)),
        ("SlidingPSN", lambda: cb.sliding_psn(x, W[0], torch.tensor(0.0), sg)),
        ("MPEPSN", lambda: cb.mpe_psn(x, W[0, 0], 0.25, sg, estimate_from="current",
                                      stochastic=False, seed=(0, 0), t0=0,
                                      u_hat0=None, u0=None, need_mse=True)[0]),
    ):  # fmt: skip
        make().sum().backward()  # first order: fine
        msg = rf"{name} with backend 'cupy' has no second derivatives.*"
        with pytest.raises(RuntimeError, match=msg + "backend='torch'.*sj_parallel"):
            torch.autograd.grad(make().sum(), x, create_graph=True)


def test_cupy_import_failure_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(ImportError, match="backend 'cupy'") as info:
        C.get_kernel("psn", "sjp_psn_forward", torch.float32, 4, C.psn_flags(0), 0)
    assert isinstance(info.value.__cause__, ImportError)


def test_cuda_headers_are_found_or_named(monkeypatch, tmp_path):
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "cuda_fp16.h").write_text("")
    (inc / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 12040\n")
    monkeypatch.setenv("CUDA_PATH", str(tmp_path))
    C.cuda_include_dirs.cache_clear()
    try:
        assert (str(inc), 12) in C.cuda_include_dirs()
        assert C.include_options(99)[0].startswith("-I")  # no match: the first
    finally:
        C.cuda_include_dirs.cache_clear()
    assert repr(C.COUNTERS) == "COUNTERS"


def test_torch_compile_traces_the_custom_ops(gpu):
    """Under torch.compile the custom ops (fake implementations, registered autograd)
    are traced, fullgraph; the compiled forward and backward launch the same kernels
    and give the eager results."""
    sg = surrogate.ATan()
    T, M = 6, 40
    torch.manual_seed(7)
    x = torch.randn(T, M)
    W, b = torch.randn(T, T) / T, torch.randn(T, 1) * 0.1
    g = torch.randn(T, M)

    def fn(x, W, b):
        return cb.psn(x, W, b, sg)

    (se,), ge = _grads(fn, x, [W, b], [g])
    gpu.launches.clear()
    (sc,), gc = _grads(torch.compile(fn, backend="aot_eager", fullgraph=True), x,
                       [W, b], [g])  # fmt: skip
    assert gpu.kernels() == ["sjp_psn_forward", "sjp_psn_backward"]
    assert torch.equal(sc, se)
    assert all(torch.equal(a, c) for a, c in zip(ge, gc))


def test_mpe_backward_without_kept_samples_says_why(gpu):
    """A sampled MPE-PSN backward whose forward kept no samples (it ran without a
    graph) is refused with the reason, not run on missing words."""
    T, M = 5, 8
    x, v = torch.randn(T, M), torch.tensor([0.9])
    none = torch.empty(0, M, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="needs the samples its forward keeps"):
        cfg = (0.25, False, True, 1, 2, 0, 2, 1.0, 0.0, 0.0)
        cb.mpe_psn_backward(
            x, none, v, None, None, torch.randn(T, M), None, None, None, *cfg
        )
