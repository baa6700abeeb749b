"""MPE-PSN's default equals the authors' module (Chrazqee/MPE-PSN) on the same samples.

``benchmarks/mpe_baseline.AuthorsMPEPSN`` re-implements the authors' ``MPE_PSN``
(paper wiring) and ``MPE_PSN_`` (current wiring) operation for operation, batch-first
as they are, without importing sj_parallel. Given sj_parallel's Bernoulli samples it
must produce the same spikes, the same membrane loss and the same gradients for the
input, the threshold and the loss weights ``coef``, in both backends' code paths.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from spikingjelly.activation_based import functional

import sj_parallel as sjp
from sj_parallel import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from mpe_baseline import AuthorsMPEPSN  # noqa: E402


def _pair(T, wiring, seed_from):
    ours = sjp.MPEPSN(T, estimate_from=wiring, step_mode="m").double()
    theirs = AuthorsMPEPSN(T, wiring=wiring, batch_first=True).double()
    with torch.no_grad():  # move away from the init so every weight matters
        v = 0.7 + 0.1 * torch.rand(())
        ours.v_threshold.fill_(v)
        theirs.threshold.fill_(v)
        coef = torch.rand(ours.coef.shape[0], dtype=torch.float64) * 0.3 - 0.05
        ours.coef.copy_(coef)
        theirs.coef.copy_(coef.view(theirs.coef.shape))
    return ours, theirs


@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("T", [2, 4, 16])
def test_default_equals_authors_module(wiring, T):
    torch.manual_seed(T)
    N, C, Hs, Ws = 3, 2, 3, 4
    ours, theirs = _pair(T, wiring, None)
    # the authors' layout is [N, T, C, H, W]; ours is time-first
    x_bf = (torch.randn(N, T, C, Hs, Ws, dtype=torch.float64) * 1.5).requires_grad_()
    x_tf = x_bf.detach().transpose(0, 1).contiguous().requires_grad_()
    g_tf = torch.randn(T, N, C, Hs, Ws, dtype=torch.float64)

    torch.manual_seed(99)
    s_ours = ours(x_tf)
    seed = ours.seed
    M = N * C * Hs * Ws
    b = ref.mpe_bernoulli(x_tf.detach().reshape(T, M), seed, 0)
    b_bf = b.reshape(T, N, C, Hs, Ws).transpose(0, 1)
    theirs.sampler = lambda p: b_bf.to(p.dtype)
    s_theirs = theirs(x_bf)

    torch.testing.assert_close(s_ours, s_theirs.transpose(0, 1), rtol=0, atol=0)
    loss_ours = sjp.membrane_loss(ours)
    torch.testing.assert_close(loss_ours, theirs.mem_loss, rtol=1e-12, atol=1e-15)
    # the loss alone, then loss and spikes together
    for with_spikes in (False, True):
        xs = (x_tf, x_bf)
        extra_o = (s_ours * g_tf).sum() if with_spikes else 0.0
        extra_t = (s_theirs * g_tf.transpose(0, 1)).sum() if with_spikes else 0.0
        go = torch.autograd.grad(
            3.0 * loss_ours + extra_o,
            [xs[0], ours.v_threshold, ours.coef],
            retain_graph=True,
        )
        gt = torch.autograd.grad(
            3.0 * theirs.mem_loss + extra_t,
            [xs[1], theirs.threshold, theirs.coef],
            retain_graph=True,
        )
        torch.testing.assert_close(go[0], gt[0].transpose(0, 1), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(go[1], gt[1], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(go[2], gt[2].reshape(-1), rtol=1e-10, atol=1e-13)
    # the loss really reaches the threshold (the spike is not detached)
    (gv,) = torch.autograd.grad(loss_ours, ours.v_threshold, retain_graph=True)
    assert gv.abs() > 0
    functional.reset_net(ours)


@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_default_weights_are_the_authors_coef(wiring):
    T = 16
    m = sjp.MPEPSN(T, estimate_from=wiring)
    n = T if wiring == "previous" else T - 1
    assert m.mem_loss_weights == "linear"
    assert m.coef.shape == (n,)
    torch.testing.assert_close(m.coef.detach(), torch.full((n,), 1.0 / n))
    assert "kappa_logit" not in dict(m.named_parameters())
    theirs = AuthorsMPEPSN(T, wiring=wiring)
    torch.testing.assert_close(m.coef.detach(), theirs.coef.detach().reshape(-1))


@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_single_step_loss_equals_authors(wiring):
    """Single-step mode accumulates the same loss as one multi-step call."""
    T = 5
    torch.manual_seed(0)
    ours, theirs = _pair(T, wiring, None)
    x = torch.randn(T, 4, 3, dtype=torch.float64) * 1.5
    torch.manual_seed(1)
    multi = ours(x)
    loss_multi = sjp.membrane_loss(ours)
    functional.reset_net(ours)
    functional.set_step_mode(ours, "s")
    torch.manual_seed(1)
    single = torch.stack([ours(x[t]) for t in range(T)])
    assert torch.equal(single, multi)
    torch.testing.assert_close(sjp.membrane_loss(ours), loss_multi)
