"""Backend 'cupy' on a real GPU (skipped without one): against the float64 reference
and the torch path, written so that no run can flake (spikes compared only away from
threshold ties, MPE-PSN draws compared on their own with an explicit bound), bitwise
determinism, CUDA-graph capture, torch.compile.

Run on a lent GPU with ``pytest -m gpu``; results go under benchmarks/results/.
"""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
from sj_parallel import reference as ref
from sj_parallel.backends import cupy_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and cupy_available()),
        reason="needs a CUDA GPU and CuPy",
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _pair(make, dtype):
    torch.manual_seed(0)
    a = make().cuda()
    b = make().cuda()
    b.load_state_dict(a.state_dict())
    functional.set_step_mode(a, "m")
    functional.set_step_mode(b, "m")
    sjp.set_backend(b, "cupy")
    return a, b


def _run(m, x, g):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(7)
    s = m(x)
    loss = (s.float() * g).sum() + sjp.membrane_loss(m)
    loss.backward()
    grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    functional.reset_net(m)
    return s.detach().float(), x.grad.float(), grads


MAKERS = {
    "psn": lambda: sjp.PSN(16),
    "masked": lambda: sjp.MaskedPSN(4, 16, lambda_init=0.3),
    "sliding": lambda: sjp.SlidingPSN(5, exp_init=False),
    "mpe-previous": lambda: sjp.MPEPSN(16),
    "mpe-current": lambda: sjp.MPEPSN(16, estimate_from="current"),
}


def _h64(m, x: torch.Tensor) -> torch.Tensor:
    """The float64 potential H of a PSN-family module ``m`` on ``x`` ([T, N, *])."""
    T = x.shape[0]
    x64 = x.double().reshape(T, -1)
    if isinstance(m, sjp.MaskedPSN):
        W = ref.masked_weight(m.weight, m.lambda_, m.mask0, m.mask1)
        b = m.bias
    elif isinstance(m, sjp.SlidingPSN):
        W, b = ref.sliding_weight_matrix(m.weight, T), m.bias.reshape(1, 1)
    else:
        W, b = m.weight, m.bias
    return (W.double() @ x64 + b.double()).reshape(x.shape)


# float32 math in the kernels; the inputs are rounded to dtype before both runs
H_TIES = 1e-5


@pytest.mark.parametrize("name", ["psn", "masked", "sliding"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_matches_the_float64_reference(name, dtype):
    """Spikes equal Θ(H) of the float64 reference wherever |H| is not within float32
    rounding of 0 (elsewhere either value is right); gradients (continuous in H)
    within the storage dtype's rounding."""
    a, b = _pair(MAKERS[name], dtype)
    x = (torch.randn(16, 8, 1000, device="cuda") * 1.5).to(dtype)
    g = torch.randn(16, 8, 1000, device="cuda")
    sb, gxb, gpb = _run(b, x, g)
    h = _h64(a, x)
    clear = h.abs() > H_TIES * (h.abs().max() + 1)
    assert torch.equal(sb[clear], (h[clear] >= 0).float()), "spikes away from ties"
    a64 = copy.deepcopy(a).double()
    _, gxa, gpa = _run(a64, x.double(), g.double())
    scale = gxa.abs().max() + 1e-3
    assert ((gxa - gxb).abs().max() / scale) < TOL[dtype] * 10
    for p, q in zip(gpa, gpb):
        assert ((p - q).abs().max() / (p.abs().max() + 1e-3)) < TOL[dtype] * 10


def _away_from_threshold(x, v, tau, wiring, dtype, margin=1e-3, rounds=20):
    """``x`` in ``dtype``, nudged (by 0.01 at a time, then rounded to ``dtype``) until
    no expectation-estimate potential h of MPE-PSN is within ``margin`` of the
    threshold ``v`` (there a float32 and a float64 run may differ in the spike, and
    with it in u and the loss)."""
    x = x.to(dtype)
    for _ in range(rounds):
        x64 = x.double()
        uh = (1 - torch.sigmoid(x64)) * x64
        if wiring == "previous":
            h = x64 + tau * torch.cat([torch.zeros_like(uh[:1]), uh[:-1]])
        else:
            h = x64 + tau * torch.cat([torch.zeros_like(uh[:1]), uh[1:]])
        near = (h - v).abs() < margin
        if not near.any():
            return x
        x = torch.where(near, x.float() + 0.02, x.float()).to(dtype)
    raise AssertionError("could not keep the inputs away from the threshold")


@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cupy_mpe_matches_the_float64_reference(wiring, dtype):
    """MPE-PSN with the expectation estimate (no draws; those are checked in
    test_cupy_mpe_draws_equal_the_torch_path): spikes, loss, states and gradients
    against the float64 torch path, inputs kept away from threshold ties."""
    torch.manual_seed(0)
    T, M, tau, v = 16, 8192, 0.25, 0.9
    x = torch.randn(T, M, device="cuda") * 1.5
    x = _away_from_threshold(x, v, tau, wiring, dtype)
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    g, gm = torch.randn(T, M, device="cuda"), torch.randn(T, device="cuda")
    res = {}
    for backend, xx in (("cupy", x), ("torch", x.double())):
        xr = xx.clone().requires_grad_(True)
        vr = torch.tensor(v, device="cuda", dtype=torch.float32 if backend == "cupy"
                          else torch.float64, requires_grad=True)  # fmt: skip
        s, mse, uhl, ul = sjp.functional.mpe_psn_multi_step(
            xr, vr, tau, sg, estimate_from=wiring, stochastic=False, need_mse=True,
            backend=backend,
        )  # fmt: skip
        torch.autograd.backward([s, mse], [g.to(s.dtype), gm.to(mse.dtype)])
        outs = (s, mse, uhl, ul, xr.grad, vr.grad)
        res[backend] = [t.detach().double() for t in outs]
    (s1, mse1, uhl1, ul1, gx1, gv1), (s2, mse2, uhl2, ul2, gx2, gv2) = (
        res["cupy"], res["torch"])  # fmt: skip
    assert torch.equal(s1, s2)
    tol = TOL[dtype] * 10
    for got, exp in ((mse1, mse2), (uhl1, uhl2), (ul1, ul2), (gx1, gx2), (gv1, gv2)):
        assert (got - exp).abs().max() <= tol * (exp.abs().max() + 1e-3)


def test_cupy_mpe_draws_equal_the_torch_path():
    """The Bernoulli draws, one step per call (v = 1e9: no spikes, so the last
    estimate (1 - b) x shows the draws), against the torch path's counter hash. The
    kernel's sigmoid (ex2/rcp.approx, a few ulp from torch.sigmoid) may flip a draw
    only where the uniform is within a few ulp of p: at most 8 in 2^24 per draw, so
    the bound below (8 times the expected count, + 4) is never reached by chance, and
    every flip must be such a near-tie."""
    torch.manual_seed(1)
    T, M, seed = 16, 1 << 18, (1234, 5678)
    x = torch.randn(T, M, device="cuda") * 2
    v = torch.tensor(1e9, device="cuda")
    sg = surrogate.PiecewiseQuadratic(alpha=1.0)
    flips = 0
    for t in range(T):
        xt = x[t : t + 1]
        _, _, uhl, _ = sjp.functional.mpe_psn_multi_step(
            xt, v, 0.25, sg, estimate_from="previous", stochastic=True, seed=seed,
            t0=t, backend="cupy",
        )  # fmt: skip
        b_gpu = (uhl == 0) & (xt[0] != 0)
        b_ref = ref.mpe_bernoulli_mask(xt, seed, t)[0]
        diff = b_gpu != b_ref
        if diff.any():
            idx = torch.arange(M, device="cuda", dtype=torch.int64) + t * M
            u = ref.hash_uniform(seed, idx, torch.float64)
            p = torch.sigmoid(xt[0].double())
            assert ((u - p).abs()[diff] <= 8 * 2.0**-24).all(), "a flip not at a tie"
        flips += int(diff.sum())
    assert flips <= 8 * (T * M * 8 * 2.0**-24) + 4, flips


def test_cupy_psn_forward_backward_in_a_cuda_graph():
    """A PSN forward + backward captured in a torch.cuda.CUDAGraph (after an eager
    warm-up that compiles the kernels) and replayed on new inputs gives bitwise the
    eager results: the ops launch on the current stream, allocate through torch and
    never synchronise, and the reduction counters are left zero by the kernels."""
    torch.manual_seed(2)
    T, N = 16, 4096
    m = sjp.PSN(T, backend="cupy").cuda()
    eager = copy.deepcopy(m)
    x = torch.randn(T, N, device="cuda", requires_grad=True)
    g = torch.randn(T, N, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as torch's CUDA-graph recipe
        for _ in range(2):
            m(x).backward(g)
    torch.cuda.current_stream().wait_stream(side)
    m.zero_grad(set_to_none=True)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = m(x)
        out.backward(g)
    for _ in range(3):
        with torch.no_grad():
            x.copy_(torch.randn(T, N, device="cuda"))
            g.copy_(torch.randn(T, N, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        xe = x.detach().clone().requires_grad_(True)
        eager.zero_grad(set_to_none=True)
        se = eager(xe)
        se.backward(g)
        assert torch.equal(out, se)
        assert torch.equal(x.grad, xe.grad)
        assert torch.equal(m.weight.grad, eager.weight.grad)
        assert torch.equal(m.bias.grad, eager.bias.grad)


@pytest.mark.parametrize("name", list(MAKERS))
def test_cupy_under_autocast(name):
    a, b = _pair(MAKERS[name], torch.float32)
    x = torch.randn(16, 4, 512, device="cuda")
    lin = torch.nn.Linear(512, 512).cuda()
    outs = []
    for m in (a, b):
        with torch.autocast("cuda", dtype=torch.float16):
            torch.manual_seed(3)
            s = m(lin(x))
        assert s.dtype == torch.float16
        s.float().sum().backward()
        outs.append(s.float())
        functional.reset_net(m)
    assert (outs[0] != outs[1]).float().mean() < 1e-3


def test_cupy_sliding_long_sequence_and_noncontiguous():
    a, b = _pair(lambda: sjp.SlidingPSN(3), torch.float32)
    x = torch.randn(300, 64, 32, device="cuda").transpose(1, 2)  # non-contiguous
    h = _h64(a, x.contiguous())
    clear = h.abs() > H_TIES * (h.abs().max() + 1)
    assert torch.equal(b(x)[clear], (h[clear] >= 0).float())


def test_cupy_mpe_reproducible():
    """Same seed, same samples and spikes, bitwise (the draws against the torch path:
    test_cupy_mpe_draws_equal_the_torch_path)."""
    _, b = _pair(lambda: sjp.MPEPSN(8), torch.float32)
    x = torch.randn(8, 4096, device="cuda")
    torch.manual_seed(1)
    sb = b(x)
    functional.reset_net(b)
    torch.manual_seed(1)
    assert torch.equal(sb, b(x))


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cupy_bitwise_deterministic(name, dtype):
    """No float atomics: the same inputs give the same bits, also with
    torch.use_deterministic_algorithms(True) (which the ops do not trip)."""
    _, b = _pair(MAKERS[name], dtype)
    x = (torch.randn(16, 8, 1000, device="cuda") * 1.5).to(dtype)
    g = torch.randn(16, 8, 1000, device="cuda")
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            b.zero_grad(set_to_none=True)
            runs.append(_run(b, x, g))
    finally:
        torch.use_deterministic_algorithms(prev)
    s0, gx0, gp0 = runs[0]
    s1, gx1, gp1 = runs[1]
    assert torch.equal(s0, s1) and torch.equal(gx0, gx1)
    assert all(torch.equal(p, q) for p, q in zip(gp0, gp1))


@pytest.mark.parametrize("T", [3, 8, 24, 40, 64])
@pytest.mark.parametrize("M", [4096, 4093])  # the 16-byte vector path and the scalar
def test_cupy_psn_every_kernel_path(T, M):
    a, b = _pair(lambda: sjp.PSN(T), torch.float32)
    x = torch.randn(T, M, device="cuda") * 1.5
    g = torch.randn(T, M, device="cuda")
    sa, gxa, gpa = _run(a, x, g)
    sb, gxb, gpb = _run(b, x, g)
    assert (sa != sb).float().mean() < 1e-3
    assert (gxa - gxb).abs().max() / (gxa.abs().max() + 1e-3) < 1e-3
    for p, q in zip(gpa, gpb):
        assert (p - q).abs().max() / (p.abs().max() + 1e-3) < 1e-3


def test_cupy_compile():
    m = sjp.PSN(8, backend="cupy").cuda()
    x = torch.randn(8, 2, 64, device="cuda", requires_grad=True)
    c = torch.compile(m, fullgraph=True)
    c(x).sum().backward()
    assert x.grad is not None


def test_cupy_rejects_bad_input():
    m = sjp.PSN(8, backend="cupy").cuda()
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        m.double()(torch.randn(8, 3, device="cuda", dtype=torch.float64))
    s = sjp.SlidingPSN(2, step_mode="m", backend="cupy", surrogate_function=None).cuda()
    s.surrogate_function = surrogate.QPseudoSpike()
    with pytest.raises(ValueError, match="supports the SpikingJelly surrogates"):
        s(torch.randn(4, 3, device="cuda"))
