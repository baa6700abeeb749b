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
    br = m.bias.detach().clone().requires_grad_(True)
    ref.psn(x.reshape(T, -1), m.weight.detach(), br, surrogate.ATan()).mul(
        g.reshape(T, -1)
    ).sum().backward()
    torch.testing.assert_close(br.grad, egb, rtol=1e-10, atol=1e-12)


def _ref_grads(fn, x, params, g):
    """Outputs and gradients of a sj_parallel.reference function under autograd."""
    xr = x.clone().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    s = fn(xr, *ps)
    (s * g).sum().backward()
    return s.detach(), xr.grad, [p.grad for p in ps]


@pytest.mark.parametrize(
    "T,k,shape",
    [
        (1, 1, (3,)),
        (2, 1, (2, 5)),
        (2, 2, (3, 2)),
        (5, 1, (2, 3, 4)),
        (5, 3, (3, 2)),
        (5, 5, (4,)),
        (16, 1, (3, 2)),
        (16, 8, (2, 3, 1)),
        (16, 16, (5,)),
        (64, 1, (2,)),
        (64, 32, (3, 2)),
        (64, 64, (2, 2)),
    ],
)
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_masked_psn_matches_loops(T, k, shape, lam):
    torch.manual_seed(k)
    m = sjp.MaskedPSN(k, T, lambda_init=lam, step_mode="m").double()
    x = torch.randn(T, *shape, dtype=torch.float64)
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
    # sj_parallel.reference agrees with the same loops
    rs, rgx, (rgW, rgb) = _ref_grads(
        lambda xr, w, b: ref.masked_psn(xr, w, b, m.lambda_, m.mask0, surrogate.ATan()),
        x.reshape(T, -1),
        [m.weight, m.bias],
        g.reshape(T, -1),
    )
    assert torch.equal(rs, es)
    torch.testing.assert_close(rgx, egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rgW, egW * blend, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rgb, egb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "T,k,shape",
    [
        (1, 1, (3,)),
        (1, 3, (2, 2)),
        (2, 1, (2, 3)),
        (2, 2, (4,)),
        (5, 1, (2, 3, 2)),
        (5, 2, (3,)),
        (5, 5, (2, 3)),
        (16, 16, (2, 3)),
        (16, 8, (5,)),
        (64, 1, (3, 1)),
        (64, 7, (2, 3)),
        (64, 64, (2,)),
    ],
)
@pytest.mark.parametrize("exp_init", [True, False])
def test_sliding_psn_matches_loops(T, k, shape, exp_init):
    torch.manual_seed(T * 100 + k)
    m = sjp.SlidingPSN(k, exp_init=exp_init, step_mode="m").double()
    with torch.no_grad():
        m.bias.fill_(-0.3)
    x = torch.randn(T, *shape, dtype=torch.float64)
    g = torch.randn_like(x)
    s, gx, gw, gb = _module_grads(m, x, g)
    es, egx, egw, egb = sliding_forward_backward(
        x.reshape(T, -1), m.weight.detach(), m.bias.detach(), g.reshape(T, -1)
    )
    assert torch.equal(s.reshape(T, -1), es)
    torch.testing.assert_close(gx.reshape(T, -1), egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, egw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, egb, rtol=1e-10, atol=1e-12)
    rs, rgx, (rgw, rgb) = _ref_grads(
        lambda xr, w, b: ref.sliding_psn(xr, w, b, surrogate.ATan()),
        x.reshape(T, -1),
        [m.weight, m.bias],
        g.reshape(T, -1),
    )
    assert torch.equal(rs, es)
    torch.testing.assert_close(rgx, egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rgw, egw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rgb, egb, rtol=1e-10, atol=1e-12)


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
    # the stand-in really is smooth on this SpikingJelly version: sigmoid(α h)
    torch.testing.assert_close(sg(h), torch.sigmoid(2.0 * h), rtol=1e-15, atol=0)
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


@needs_sj_psn
def test_default_init_matches_spikingjelly():
    torch.manual_seed(0)
    sj = _compat.SJ_SLIDING_PSN(5, exp_init=True)
    assert torch.equal(sjp.SlidingPSN(5).weight, sj.weight)
    assert torch.equal(sjp.SlidingPSN(5).bias, sj.bias)
    sjm = _compat.SJ_MASKED_PSN(3, 7)
    ours = sjp.MaskedPSN(3, 7)
    for key in ("mask0", "mask1", "_lambda_", "bias"):
        a, b = ours.state_dict()[key], sjm.state_dict()[key]
        assert a.dtype == b.dtype and torch.equal(a, b), key
    # same kaiming init under the same seed
    torch.manual_seed(1)
    w_sj = _compat.SJ_PSN(6).weight
    torch.manual_seed(1)
    assert torch.equal(sjp.PSN(6).weight, w_sj)


def test_gradcheck_masked_weight_path():
    torch.manual_seed(1)
    sg = surrogate.Sigmoid(alpha=2.0, spiking=False)
    T = 5
    mask0 = ref.band_mask(T, 2, torch.float64)
    x = torch.randn(T, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(T, T, dtype=torch.float64, requires_grad=True)
    b = torch.randn(T, 1, dtype=torch.float64, requires_grad=True)
    for lam in (0.0, 0.4, 1.0):
        assert torch.autograd.gradcheck(
            lambda x, W, b, lam=lam: tb.psn(x, ref.masked_weight(W, lam, mask0), b, sg),
            (x, W, b),
        )


def test_double_backward_equals_reference():
    """The backward is differentiable: a second derivative equals plain autograd's
    (more cases in test_double_backward.py)."""
    m = sjp.PSN(4).double()
    m.surrogate_function = surrogate.Sigmoid(spiking=False)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    got = torch.autograd.grad(g.sum(), (x, m.weight))
    (g2,) = torch.autograd.grad(
        ref.psn(x, m.weight, m.bias, m.surrogate_function).sum(), x, create_graph=True
    )
    torch.testing.assert_close(got, torch.autograd.grad(g2.sum(), (x, m.weight)))


@pytest.mark.parametrize(
    "sg",
    [
        surrogate.ATan(alpha=3.0),
        surrogate.Sigmoid(alpha=4.0),
        surrogate.PiecewiseQuadratic(alpha=2.0),
        surrogate.SoftSign(alpha=2.0),
        surrogate.Erf(alpha=1.5),
        surrogate.PiecewiseLeakyReLU(w=1.0, c=0.05),
        surrogate.QPseudoSpike(),
    ],
    ids=lambda s: type(s).__name__,
)
def test_surrogate_closed_forms_equal_spikingjelly(sg):
    z = torch.linspace(-3, 3, 601, dtype=torch.float64)
    g = torch.randn_like(z)
    zr = z.clone().requires_grad_(True)
    (expect,) = torch.autograd.grad(sg(zr), zr, g)
    got = tb.surrogate_grad(sg, z, g)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
    assert torch.equal(
        z, torch.linspace(-3, 3, 601, dtype=torch.float64)
    )  # not in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["sliding", "masked"])
def test_single_step_equals_multi_step_low_precision(dtype, which):
    """Single-step mode computes half inputs in float32 too, as multi-step does."""
    torch.manual_seed(4)
    if which == "sliding":
        m = sjp.SlidingPSN(8, exp_init=False, step_mode="m")
    else:
        m = sjp.MaskedPSN(8, 16, lambda_init=1.0, step_mode="m")
    m.to(dtype)
    with torch.no_grad():
        m.bias.zero_()  # many potentials near the threshold
    x = torch.randn(16, 3000).to(dtype)
    multi = m(x)
    functional.set_step_mode(m, "s")
    single = torch.stack([m(x[t]) for t in range(16)])
    assert single.dtype == dtype
    assert torch.equal(single, multi)


@pytest.mark.parametrize(
    "make",
    [
        lambda: surrogate.ATan(),
        lambda: surrogate.ATan(alpha=3.5),
        lambda: surrogate.Sigmoid(alpha=2.5),
        lambda: surrogate.PiecewiseQuadratic(alpha=1.0),
        lambda: surrogate.PiecewiseQuadratic(alpha=2.0),
        lambda: surrogate.SoftSign(alpha=3.0),
        lambda: surrogate.Erf(alpha=1.5),
        lambda: surrogate.PiecewiseLeakyReLU(w=0.5, c=0.1),
        lambda: surrogate.Sigmoid(alpha=2.0, spiking=False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_surrogate_grad_equals_the_surrogates_own_autograd(make, dtype):
    """The backward's surrogate derivative is SpikingJelly's, whatever the path."""
    sg = make()
    torch.manual_seed(0)
    z = torch.randn(200, dtype=dtype) * 1.5
    z[:3] = torch.tensor([0.0, 0.5, -0.5], dtype=dtype)  # kinks of piecewise ones
    g = torch.randn_like(z)
    zr = z.clone().requires_grad_(True)
    (expect,) = torch.autograd.grad(sg(zr), zr, g)
    z_before = z.clone()
    got = tb.surrogate_grad(sg, z, g)
    assert torch.equal(z, z_before), "inplace=False must leave z untouched"
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, expect, rtol=tol, atol=tol)
    # and the PSN backward uses it: gradients equal plain autograd through SJ
    x = torch.randn(5, 7, dtype=dtype)
    W = torch.randn(5, 5, dtype=dtype)
    b = torch.randn(5, 1, dtype=dtype)
    gs = torch.randn(5, 7, dtype=dtype)
    ins = [t.clone().requires_grad_(True) for t in (x, W, b)]
    ins_ref = [t.clone().requires_grad_(True) for t in (x, W, b)]
    out = tb.PSNFunction.apply(*ins, sg)
    out_ref = sg(torch.addmm(ins_ref[2], ins_ref[1], ins_ref[0]))
    assert torch.equal(out, out_ref)
    got = torch.autograd.grad(out, ins, gs)
    exp = torch.autograd.grad(out_ref, ins_ref, gs)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=tol * 10, atol=tol * 10)
