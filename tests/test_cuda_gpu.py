"""Backend 'cupy' against backend 'torch' on a real GPU (skipped without one).

Run on a lent GPU with ``pytest -m gpu``; results go under benchmarks/results/.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
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


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_matches_torch(name, dtype):
    a, b = _pair(MAKERS[name], dtype)
    x = (torch.randn(16, 8, 1000, device="cuda") * 1.5).to(dtype)
    g = torch.randn(16, 8, 1000, device="cuda")
    sa, gxa, gpa = _run(a, x, g)
    sb, gxb, gpb = _run(b, x, g)
    # spikes may differ only where the potential is within rounding of threshold
    assert (sa != sb).float().mean() < 1e-3
    scale = gxa.abs().max() + 1e-3
    assert ((gxa - gxb).abs().max() / scale) < TOL[dtype] * 10
    for p, q in zip(gpa, gpb):
        assert ((p - q).abs().max() / (p.abs().max() + 1e-3)) < TOL[dtype] * 10


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
    assert torch.equal(a(x), b(x))


def test_cupy_mpe_reproducible_and_equal_to_torch_samples():
    a, b = _pair(lambda: sjp.MPEPSN(8), torch.float32)
    x = torch.randn(8, 4096, device="cuda")
    torch.manual_seed(1)
    sa = a(x)
    torch.manual_seed(1)
    sb = b(x)
    functional.reset_net(b)
    torch.manual_seed(1)
    assert torch.equal(sb, b(x))
    assert (sa != sb).float().mean() < 1e-4  # same counter hash in both backends


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
