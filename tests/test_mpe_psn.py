"""MPE-PSN against an independent float64 loop, the numpy hash, and its own states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _independent import hash_uniform, mpe_forward, mpe_samples
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
from sj_parallel import reference as ref
from sj_parallel.backends import torch_backend as tb

WIRINGS = ["previous", "current"]


def test_hash_matches_numpy_uint32():
    idx = np.array([0, 1, 2, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 12345], np.uint64)
    # indices past 2**31 (tensors over 2G elements) take the int64 path
    x = torch.randn(2, 3)
    big_t0 = 2**31 // 3 + 5
    assert torch.equal(
        ref.mpe_bernoulli(x, (5, 6), big_t0).double(), mpe_samples(x, (5, 6), big_t0)
    )
    assert torch.equal(
        ref.mpe_bernoulli(x, (5, 6), 7).double(), mpe_samples(x, (5, 6), 7)
    )
    for seed in [(0, 0), (1, 2), (0xFFFFFFFF, 0xDEADBEEF)]:
        got = ref.hash_uniform(
            seed, torch.from_numpy(idx.astype(np.int64)), torch.float64
        )
        np.testing.assert_array_equal(got.numpy(), hash_uniform(seed, idx))
    u = ref.hash_uniform((7, 9), torch.arange(200_000), torch.float64)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005  # uniform enough for Bernoulli draws


def _weights_param(m):
    return m.coef if m.mem_loss_weights == "linear" else m.kappa_logit


def _run_module(m, x, g):
    x = x.clone().requires_grad_(True)
    s = m(x)
    loss = (s * g).sum() + sjp.membrane_loss(m) * 3.0
    loss.backward()
    return s.detach(), x.grad, m.v_threshold.grad, _weights_param(m).grad


@pytest.mark.parametrize("weights", ["linear", "softmax"])
@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("T", [1, 2, 5, 16, 64])
def test_mpe_matches_independent_loop(weights, wiring, train, T):
    torch.manual_seed(T)
    M = 12
    m = sjp.MPEPSN(
        T,
        tau=0.3,
        v_threshold=0.6,
        estimate_from=wiring,
        step_mode="m",
        mem_loss_weights=weights,
    )
    m.double().train(train)
    n = T if wiring == "previous" else T - 1
    with torch.no_grad():
        _weights_param(m).copy_(torch.randn(n))
    x = torch.randn(T, 3, 4, dtype=torch.float64) * 1.5
    g = torch.randn_like(x)
    torch.manual_seed(123)
    s, gx, gv, gk = _run_module(m, x, g)
    # the module drew its seed from torch's generator at time_step 0
    torch.manual_seed(123)
    seed = tuple(torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist())
    assert m.seed == (seed if train else None)
    xe = x.reshape(T, M).clone().requires_grad_(True)
    ve = m.v_threshold.detach().clone().requires_grad_(True)  # float32-rounded 0.6
    ke = _weights_param(m).detach().clone().requires_grad_(True)
    b = mpe_samples(xe, seed, 0) if train else None
    es, emse = mpe_forward(xe, ve, 0.3, wiring, b=b)
    loss = (es * g.reshape(T, M)).sum()
    if train:
        # previous: (1/T) sum_t k_t mse_t; current: (1/(T-1)) sum_{t>=1} k_{t-1} mse_t
        kappa = ke if weights == "linear" else torch.softmax(ke, 0)
        pairs = emse if wiring == "previous" else emse[1:]
        expect_loss = (kappa * pairs).sum() / max(n, 1)
        loss = loss + 3.0 * expect_loss
    loss.backward()
    assert torch.equal(s.reshape(T, M), es.detach())
    if train:
        torch.testing.assert_close(sjp.membrane_loss(m).detach(), expect_loss.detach())
    torch.testing.assert_close(gx.reshape(T, M), xe.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gv, ve.grad, rtol=1e-9, atol=1e-12)
    if train and n > 0:
        torch.testing.assert_close(gk, ke.grad, rtol=1e-9, atol=1e-12)
        # softmax of one logit is constant
        assert (weights == "softmax" and n == 1) or gk.abs().sum() > 0
    else:  # eval mode, or no pairs at all (current wiring, T = 1)
        assert gk is None or gk.numel() == 0
        assert float(sjp.membrane_loss(m).detach()) == 0.0


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("t0,state", [(0, False), (3, True)])
def test_torch_backend_equals_reference(wiring, stochastic, t0, state):
    torch.manual_seed(5)
    T, M = 6, 9
    sg = surrogate.Sigmoid(alpha=3.0)
    x = torch.randn(T, M, dtype=torch.float64, requires_grad=True)
    v = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    uh0 = torch.randn(M, dtype=torch.float64, requires_grad=True) if state else None
    u0 = torch.randn(M, dtype=torch.float64, requires_grad=True) if state else None
    kw = dict(
        estimate_from=wiring,
        stochastic=stochastic,
        seed=(11, 22),
        t0=t0,
        u_hat0=uh0,
        u0=u0,
    )
    out_ref = ref.mpe_psn(x, v, 0.25, sg, **kw)
    out_tb = tb.mpe_psn(x, v, 0.25, sg, need_mse=True, **kw)
    grads_out = [torch.randn_like(o) for o in out_ref]
    ins = [x, v] + ([uh0, u0] if state else [])
    g_ref = torch.autograd.grad(out_ref, ins, grads_out, allow_unused=True)
    g_tb = torch.autograd.grad(out_tb, ins, grads_out, allow_unused=True)
    for a, b in zip(out_ref, out_tb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_ref, g_tb):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("t0", [0, 2])
def test_gradcheck_mpe_function_smooth(wiring, stochastic, t0):
    """Finite differences through every output, the membrane loss included.

    With a smooth stand-in for Θ (a non-spiking sigmoid) every output is a
    differentiable function, also through the spike inside ``u = (1 - o) h``, which
    the loss does not detach.
    """
    torch.manual_seed(0)
    sg = surrogate.Sigmoid(alpha=2.0, spiking=False)
    T, M = 4, 5
    x = torch.randn(T, M, dtype=torch.float64, requires_grad=True)
    v = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    uh0 = torch.randn(M, dtype=torch.float64, requires_grad=True)
    u0 = torch.randn(M, dtype=torch.float64, requires_grad=True)

    def f(x, v, uh0, u0):
        return tb.MPEPSNFunction.apply(
            x, v, uh0, u0, 0.25, sg, wiring, stochastic, (3, 4), t0, True
        )

    assert torch.autograd.gradcheck(f, (x, v, uh0, u0))


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("train", [True, False])
def test_single_step_equals_multi_step(wiring, train):
    T = 7
    m = sjp.MPEPSN(T, estimate_from=wiring, step_mode="m").train(train)
    x = torch.randn(T, 2, 5)
    torch.manual_seed(42)
    multi = m(x)
    loss_multi = sjp.membrane_loss(m)
    functional.reset_net(m)
    functional.set_step_mode(m, "s")
    torch.manual_seed(42)
    single = torch.stack([m(x[t]) for t in range(T)])
    assert torch.equal(single, multi)
    torch.testing.assert_close(sjp.membrane_loss(m), loss_multi)
    # a continued multi-step call equals one long call (state is carried)
    functional.reset_net(m)
    functional.set_step_mode(m, "m")
    torch.manual_seed(42)
    chunks = torch.cat([m(x[:3]), m(x[3:])])
    assert torch.equal(chunks, multi)


def test_seed_reproducible_and_eval_deterministic():
    m = sjp.MPEPSN(8, step_mode="m")
    x = torch.randn(8, 64)
    torch.manual_seed(0)
    a = m(x)
    functional.reset_net(m)
    torch.manual_seed(0)
    b = m(x)
    functional.reset_net(m)
    c = m(x)  # another seed
    assert torch.equal(a, b) and not torch.equal(a, c)
    m.eval()
    functional.reset_net(m)
    d = m(x)
    functional.reset_net(m)
    assert torch.equal(d, m(x))
    m.sample_in_eval = True
    functional.reset_net(m)
    torch.manual_seed(0)
    assert torch.equal(m(x), a)


def test_softmax_kappa_nonnegative_and_loss_cleared_by_reset():
    m = sjp.MPEPSN(4, step_mode="m", mem_loss_weights="softmax")
    assert "coef" not in dict(m.named_parameters())
    assert torch.allclose(m.kappa, torch.full((4,), 0.25))
    with torch.no_grad():
        m.kappa_logit.copy_(torch.tensor([-50.0, 3.0, 0.0, 9.0]))
    assert (m.kappa >= 0).all() and abs(m.kappa.sum().item() - 1) < 1e-6
    m(torch.randn(4, 10))
    assert sjp.membrane_loss(m).item() > 0
    functional.reset_net(m)
    assert sjp.membrane_loss(m).item() == 0.0


def test_membrane_loss_sums_modules():
    net = torch.nn.Sequential(
        sjp.MPEPSN(4, step_mode="m"), torch.nn.Identity(), sjp.MPEPSN(4, step_mode="m")
    )
    net(torch.randn(4, 3) * 2)
    total = net[0].mem_loss + net[2].mem_loss
    torch.testing.assert_close(sjp.membrane_loss(net), total)
    assert sjp.membrane_loss(torch.nn.Linear(2, 2)).shape == ()


def test_spike_agreement_with_exact_lif():
    """SPEC: on N(0,1) input, T=16, tau=0.25, spikes agree with the LIF on ~98%."""
    torch.manual_seed(0)
    x = torch.randn(16, 20000)
    m = sjp.MPEPSN(16, step_mode="m").eval()
    s = m(x)
    u = torch.zeros(20000)
    lif = []
    for t in range(16):
        h = 0.25 * u + x[t]
        o = (h >= 1.0).float()
        u = (1 - o) * h
        lif.append(o)
    agree = (s == torch.stack(lif)).float().mean().item()
    assert agree > 0.95, agree


# t0 = 0 and 5: indices fit in 31 bits; the others cross 2**31 and 2**32 (hi word)
@pytest.mark.parametrize("t0", [0, 5, 2**31 // 7 - 1, 2**32 // 7 - 1, 2**40])
def test_module_samples_equal_numpy_hash(t0):
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 2
    seed = (0x12345678, 0x9ABCDEF0)
    assert torch.equal(ref.mpe_bernoulli(x, seed, t0), mpe_samples(x, seed, t0))
    # one step [M] uses the same global index (t0 * M + m)
    one = ref.mpe_bernoulli(x[2], seed, t0 + 2)
    assert torch.equal(one, mpe_samples(x[2:3], seed, t0 + 2)[0])
    # and the stochastic estimate the module uses is (1 - b) * x with those samples
    est = ref.mpe_estimate(x, True, seed, t0)
    assert torch.equal(est, (1 - mpe_samples(x, seed, t0)) * x)


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("T,t0", [(1, 0), (2, 0), (5, 3), (16, 0), (64, 0)])
def test_reference_matches_independent_loop(wiring, stochastic, T, t0):
    """sj_parallel.reference.mpe_psn against the loop: spikes, mse, all grads."""
    torch.manual_seed(T + t0)
    M = 6
    tri = surrogate.PiecewiseQuadratic(alpha=1.0)
    x = (torch.randn(T, M, dtype=torch.float64) * 1.5).requires_grad_(True)
    v = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    uh0 = torch.randn(M, dtype=torch.float64, requires_grad=True) if t0 else None
    u0 = torch.randn(M, dtype=torch.float64, requires_grad=True) if t0 else None
    seed = (17, 4242)
    s, mse, _, _ = ref.mpe_psn(
        x,
        v,
        0.3,
        tri,
        estimate_from=wiring,
        stochastic=stochastic,
        seed=seed,
        t0=t0,
        u_hat0=uh0,
        u0=u0,
    )
    b = mpe_samples(x, seed, t0) if stochastic else None
    es, emse = mpe_forward(x, v, 0.3, wiring, b=b, u_hat0=uh0, u0=u0, t0=t0)
    assert torch.equal(s, es)
    torch.testing.assert_close(mse, emse, rtol=1e-12, atol=1e-14)
    gs, gm = torch.randn_like(s), torch.randn_like(mse)
    ins = [x, v] + ([uh0, u0] if t0 else [])
    got = torch.autograd.grad((s * gs).sum() + (mse * gm).sum(), ins, allow_unused=True)
    exp = torch.autograd.grad(
        (es * gs).sum() + (emse * gm).sum(), ins, allow_unused=True
    )
    for a, e in zip(got, exp):
        if a is None or e is None:
            assert (a is None or not a.any()) and (e is None or not e.any())
        else:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_computes_in_float32(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5).to(dtype)
    m32 = sjp.MPEPSN(6, step_mode="m")
    m16 = sjp.MPEPSN(6, step_mode="m")
    torch.manual_seed(3)
    s32 = m32(x.float())
    torch.manual_seed(3)
    s16 = m16(x)
    assert s16.dtype == dtype and torch.equal(s16.float(), s32)
    assert m16.mem_loss.dtype == torch.float32
    torch.testing.assert_close(m16.mem_loss, m32.mem_loss)
