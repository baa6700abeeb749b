"""torch.compile (issue 18, item 3): MPE-PSN draws the same Bernoulli samples compiled
and eager, and no neuron makes Dynamo warn about a cached function.

The samples come from our counter hash, seeded from torch's default generator at the
start of each sequence. Under inductor, ``torch.randint`` is replaced by inductor's own
RNG, so the seed was drawn differently; the seed is now drawn outside the compiled
graph, and the samples are computed by an opaque custom op
(``sj_parallel::mpe_bernoulli``) that runs the same code as eager mode.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from spikingjelly.activation_based import functional

import sj_parallel as sjp
from sj_parallel import _compat

needs_compile = pytest.mark.skipif(
    not hasattr(torch, "compile"), reason="needs torch.compile"
)


def _run(m, x, seed: int, steps: bool):
    """Spikes, the last step's estimate (set by that step's draws), the seed, the
    membrane loss and the input gradient of one sequence."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    if steps:
        s = torch.stack([m(x[t]) for t in range(x.shape[0])])
    else:
        s = m(x)
    inner = next(mm for mm in m.modules() if isinstance(mm, sjp.MPEPSN))
    loss = (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum()
    loss = loss + sjp.membrane_loss(m)
    loss.backward()
    out = (s.detach(), inner.u_hat.detach(), inner.seed)
    out += (sjp.membrane_loss(m).detach(), x.grad)
    functional.reset_net(m)
    return out


def _check(expect, got):
    """Seeds, spikes and estimates bitwise; the membrane loss and the gradient, which
    compiled code sums in another order, to float32 rounding."""
    assert expect[2] == got[2]  # the same seed
    assert torch.equal(expect[0], got[0])
    assert torch.equal(expect[1], got[1])
    for a, b in zip(expect[3:], got[3:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_compile
def test_mpe_compiled_draws_equal_eager():
    """Under inductor, the default backend (which replaces torch's RNG ops with its
    own): the same seed, samples and spikes as eager mode, sequence after sequence;
    the lean backward regenerates the samples inside the compiled backward."""
    torch.manual_seed(0)
    m = sjp.MPEPSN(6, step_mode="m", memory="lean").train()
    x = torch.randn(6, 3, 5)
    eager = [_run(m, x, seed, False) for seed in (1, 2, 3)]
    torch._dynamo.reset()
    compiled = torch.compile(m)
    for seed, expect in zip((1, 2, 3), eager):
        _check(expect, _run(compiled, x, seed, False))
    assert not torch.equal(eager[0][1], eager[1][1])  # the seeds do matter


@needs_compile
def test_compiled_samples_equal_eager_bitwise():
    """The samples themselves, [T, M] with an offset start step and column block:
    the compiled graph calls the same code through the sj_parallel::mpe_bernoulli
    custom op."""
    from sj_parallel.backends import torch_backend as tb

    x = torch.randn(7, 300) * 3

    def draws(x, seed_lo, seed_hi):
        return tb.mpe_samples(x, (seed_lo, seed_hi), 5, 1000, 40) * x

    torch._dynamo.reset()
    compiled = torch.compile(draws, fullgraph=True)
    for seed in [(1, 2), (0xFFFFFFFF, 7), (123456789, 987654321)]:
        assert torch.equal(compiled(x, *seed), draws(x, *seed))


@needs_compile
def test_mpe_single_step_compiled_draws_equal_eager():
    torch.manual_seed(0)
    m = sjp.MPEPSN(4, step_mode="s", estimate_from="current", memory="fast").train()
    x = torch.randn(4, 2, 3)
    expect = _run(m, x, 5, True)
    torch._dynamo.reset()
    _check(expect, _run(torch.compile(m), x, 5, True))


@needs_compile
@pytest.mark.skipif(not _compat.SJ_HAS_FUNCTIONAL_API, reason="needs SJ 2.x")
def test_no_dynamo_cache_warning():
    """No neuron calls an lru_cache-wrapped function inside a compiled graph (Dynamo
    warns of possible silent incorrectness)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        sjp.PSN(4),
        sjp.MaskedPSN(2, 4),
        sjp.SlidingPSN(3),
        sjp.MPEPSN(4),
    )
    functional.set_step_mode(net, "m")
    x = torch.randn(4, 2, 6)
    for train in (True, False):
        net.train(train)
        torch.manual_seed(1)
        expect = net(x)
        functional.reset_net(net)
        torch._dynamo.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(1)
            got = torch.compile(net, backend="eager")(x)
        functional.reset_net(net)
        msgs = [str(w.message) for w in caught]
        assert not [m for m in msgs if "lru_cache" in m or "cache" in m.lower()], msgs
        assert torch.equal(got, expect)
