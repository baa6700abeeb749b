"""PSN, MaskedPSN and SlidingPSN against independent float64 loops and SpikingJelly."""

from __future__ import annotations

import pytest
import torch
from _independent import psn_forward_backward, sliding_forward_backward
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
from sj_parallel import _compat
from sj_parallel import reference as ref
from sj_parallel.backends import torch_backend as tb

SHAPES = [(3,), (2, 5), (2, 3, 4)]


def _module_grads(m, x, g):
    x = x.clone().requires_grad_(True)
    s = m(x)
    (s * g).sum().backward()
    return s.detach(), x.grad, m.weight.grad, m.bias.grad


@pytest.mark.parametrize("T", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_psn_matches_loops(T, shape):
    torch.manual_seed(T)
    m = sjp.PSN(T).double()
    x = torch.randn(T, *shape, dtype=torch.float64)
    g = torch.randn_like(x)
    s, gx, gW, gb = _module_grads(m, x, g)
    es, egx, egW, egb = psn_forward_backward(
        x.reshape(T, -1), m.weight.detach(), m.bias.detach(), g.reshape(T, -1)
    )
    assert torch.equal(s.reshape(T, -1), es)
    torch.testing.assert_close(gx.reshape(T, -1), egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.weight.grad, egW, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.bias.grad, egb, rtol=1e-10, atol=1e-12)
    # the reference math gives the same under plain autograd
    xr = x.reshape(T, -1).clone().requires_grad_(True)
    w = m.weight.detach().clone().requires_grad_(True)
    sr = ref.psn(xr, w, m.bias.detach(), surrogate.ATan())
    (sr * g.reshape(T, -1)).sum().backward()
    assert torch.equal(sr.detach(), es)
    torch.testing.assert_close(xr.grad, egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.grad, egW, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,k", [(1, 1), (4, 1), (4, 2), (4, 4), (16, 5), (64, 64)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_masked_psn_matches_loops(T, k, lam):
    torch.manual_seed(k)
    m = sjp.MaskedPSN(k, T, lambda_init=lam, step_mode="m").double()
    x = torch.randn(T, 3, 2, dtype=torch.float64)
    g = torch.randn_like(x)
    s, gx, gW, gb = _module_grads(m, x, g)
    mask = torch.tensor(
        [[1.0 if j <= i <= j + k - 1 else 0.0 for j in range(T)] for i in range(T)],
        dtype=torch.float64,
    )
    lam = float(m.lambda_)  # stored as a float32 buffer, as in SpikingJelly
    blend = lam * mask + (1 - lam) * torch.ones(T, T, dtype=torch.float64)
    Weff = m.weight.detach() * blend
    es, egx, egW, egb = psn_forward_backward(
        x.reshape(T, -1), Weff, m.bias.detach(), g.reshape(T, -1)
    )
    assert torch.equal(s.reshape(T, -1), es)
    torch.testing.assert_close(gx.reshape(T, -1), egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gW, egW * blend, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, egb, rtol=1e-10, atol=1e-12)
    assert torch.equal(m.mask0, mask.float().double())


@pytest.mark.parametrize("T,k", [(1, 1), (1, 3), (5, 1), (5, 2), (16, 16), (64, 7)])
@pytest.mark.parametrize("exp_init", [True, False])
def test_sliding_psn_matches_loops(T, k, exp_init):
    torch.manual_seed(T * 100 + k)
    m = sjp.SlidingPSN(k, exp_init=exp_init, step_mode="m").double()
    with torch.no_grad():
        m.bias.fill_(-0.3)
    x = torch.randn(T, 2, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    s, gx, gw, gb = _module_grads(m, x, g)
    es, egx, egw, egb = sliding_forward_backward(
        x.reshape(T, -1), m.weight.detach(), m.bias.detach(), g.reshape(T, -1)
    )
    assert torch.equal(s.reshape(T, -1), es)
    torch.testing.assert_close(gx.reshape(T, -1), egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, egw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, egb, rtol=1e-10, atol=1e-12)


def test_sliding_exp_init_and_toeplitz():
    m = sjp.SlidingPSN(4)
    assert m.weight.tolist() == [0.125, 0.25, 0.5, 1.0]
    assert m.bias.item() == -1.0
    W = m.gen_gemm_weight(6)
    for i in range(6):
        for j in range(6):
            d = i - j
            expect = m.weight[3 - d].item() if 0 <= d <= 3 else 0.0
            assert W[i, j].item() == expect


def test_gradcheck_psn_function_smooth():
    torch.manual_seed(0)
    sg = surrogate.Sigmoid(alpha=2.0, spiking=False)  # smooth stand-in for Θ
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 5, dtype=torch.float64)
    assert not torch.equal(sg(h), (h >= 0).double()), "stand-in must be smooth"
    W = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: tb.PSNFunction.apply(*a, sg), (x, W, b))
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b0 = torch.randn((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: tb.sliding_psn(*a, sg), (x, w, b0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_math(dtype):
    torch.manual_seed(0)
    m = sjp.PSN(8)
    x = torch.randn(8, 4, 6).to(dtype)
    s = m(x)
    assert s.dtype == dtype
    expect = ref.heaviside(ref.psn_h(x.float().reshape(8, -1), m.weight, m.bias))
    assert torch.equal(s.float().reshape(8, -1), expect)
    x.requires_grad_(True)
    m(x).sum().backward()
    assert x.grad.dtype == dtype and m.weight.grad.dtype == torch.float32
    m.half() if dtype == torch.float16 else m.bfloat16()
    assert m(x.detach()).dtype == dtype  # .half()/.bfloat16() module also works


def test_nan_input_gives_nan_free_spikes():
    for m in [sjp.PSN(4), sjp.SlidingPSN(2, step_mode="m"), sjp.MaskedPSN(2, 4)]:
        functional.set_step_mode(m, "m")
        x = torch.randn(4, 3)
        x[1, 1] = float("nan")
        s = m(x)
        assert not torch.isnan(s).any()
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    m = sjp.MPEPSN(4, step_mode="m").eval()
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")
    s = m(x)
    assert not torch.isnan(s).any() and set(s.unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------- single vs multi step
@pytest.mark.parametrize("T,k", [(1, 1), (6, 1), (6, 3), (6, 6)])
def test_masked_single_step_equals_multi_step(T, k):
    torch.manual_seed(1)
    m = sjp.MaskedPSN(k, T, lambda_init=1.0, step_mode="m")
    x = torch.randn(T, 2, 3)
    multi = m(x)
    m.step_mode = "s"
    single = torch.stack([m(x[t]) for t in range(T)])
    torch.testing.assert_close(single, multi, rtol=0, atol=0)
    functional.reset_net(m)
    assert m.time_step == 0 and m.queue == []


@pytest.mark.parametrize("T,k", [(1, 1), (7, 1), (7, 3), (3, 5)])
def test_sliding_single_step_equals_multi_step(T, k):
    torch.manual_seed(2)
    m = sjp.SlidingPSN(k, exp_init=False, step_mode="m")
    x = torch.randn(T, 2, 3, dtype=torch.float64)
    m.double()
    multi = m(x)
    m.step_mode = "s"
    single = torch.stack([m(x[t]) for t in range(T)])
    assert torch.equal(single, multi)
    assert len(m.queue) == min(T, k)


# ----------------------------------------------------------- SpikingJelly's classes
needs_sj_psn = pytest.mark.skipif(
    not _compat.SJ_HAS_PSN,
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no PSN family (added in 2.0)",
)


def _pairs():
    return [
        (lambda: _compat.SJ_PSN(8), lambda: sjp.PSN(8)),
        (
            lambda: _compat.SJ_MASKED_PSN(3, 8, lambda_init=0.4, step_mode="m"),
            lambda: sjp.MaskedPSN(3, 8, step_mode="m"),
        ),
        (
            lambda: _compat.SJ_MASKED_PSN(3, 8, lambda_init=1.0, step_mode="m"),
            lambda: sjp.MaskedPSN(3, 8, step_mode="m"),
        ),
        (
            lambda: _compat.SJ_SLIDING_PSN(3, exp_init=False, step_mode="m"),
            lambda: sjp.SlidingPSN(3, step_mode="m"),
        ),
    ]


@needs_sj_psn
@pytest.mark.parametrize("idx", range(4))
@pytest.mark.parametrize("direction", ["sj_to_ours", "ours_to_sj"])
def test_matches_spikingjelly_psn_family(idx, direction):
    torch.manual_seed(idx)
    make_sj, make_ours = _pairs()[idx]
    sj, ours = make_sj(), make_ours()
    if direction == "sj_to_ours":
        ours.load_state_dict(sj.state_dict())
    else:
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(0.1 * torch.randn_like(p))
        sj.load_state_dict(ours.state_dict())
    assert set(sj.state_dict()) == set(ours.state_dict())
    x = torch.randn(8, 3, 5)
    g = torch.randn_like(x)
    outs = []
    for m in (sj, ours):
        xi = x.clone().requires_grad_(True)
        s = m(xi)
        (s * g).sum().backward()
        outs.append((s.detach(), xi.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_sj_psn
def test_matches_spikingjelly_single_step():
    torch.manual_seed(3)
    sj = _compat.SJ_SLIDING_PSN(3, exp_init=False, step_mode="s")
    ours = sjp.SlidingPSN(3, step_mode="s")
    ours.load_state_dict(sj.state_dict())
    sjm = _compat.SJ_MASKED_PSN(2, 5, lambda_init=1.0, step_mode="s")
    oursm = sjp.MaskedPSN(2, 5, step_mode="s")
    oursm.load_state_dict(sjm.state_dict())
    x = torch.randn(5, 4)
    for t in range(5):
        torch.testing.assert_close(ours(x[t]), sj(x[t]))
        torch.testing.assert_close(oursm(x[t]), sjm(x[t]))
