"""The torch backend's memory policies ("lean", "fast", "auto"): identical values and
gradients, the bytes each keeps for backward, how "auto" chooses, and the edge cases
every neuron shares (an empty sequence, an empty batch)."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
from sj_parallel.backends import torch_backend as tb

POLICIES = ["lean", "fast", "auto"]

MAKERS = {
    "psn": lambda **kw: sjp.PSN(6, **kw),
    "masked": lambda **kw: sjp.MaskedPSN(3, 6, lambda_init=0.4, step_mode="m", **kw),
    "masked-causal": lambda **kw: sjp.MaskedPSN(
        2, 6, lambda_init=1.0, step_mode="m", **kw
    ),
    "sliding": lambda **kw: sjp.SlidingPSN(3, exp_init=False, step_mode="m", **kw),
    "sliding-long-k": lambda **kw: sjp.SlidingPSN(9, step_mode="m", **kw),
    "mpe-previous": lambda **kw: sjp.MPEPSN(6, step_mode="m", **kw),
    "mpe-current": lambda **kw: sjp.MPEPSN(
        6, estimate_from="current", step_mode="m", **kw
    ),
    "mpe-softmax": lambda **kw: sjp.MPEPSN(
        6, step_mode="m", mem_loss_weights="softmax", **kw
    ),
}


def _run(m, x, g, train=True):
    torch.manual_seed(11)
    m.train(train)
    x = x.clone().requires_grad_(True)
    s = m(x)
    loss = (s * g).sum() + 2.0 * sjp.membrane_loss(m)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    functional.reset_net(m)
    return s.detach(), x.grad, grads


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_policies_give_identical_values_and_gradients(name, dtype, train):
    torch.manual_seed(0)
    ref_m = MAKERS[name](memory="lean")
    pdtype = torch.float32 if dtype == torch.bfloat16 else dtype
    ref_m.to(pdtype)
    x = (torch.randn(6, 3, 5) * 1.5).to(dtype)
    g = torch.randn(6, 3, 5).to(dtype)
    expect = _run(ref_m, x, g, train)
    for policy in ("fast", "auto"):
        m = MAKERS[name](memory=policy).to(pdtype)
        m.load_state_dict(ref_m.state_dict())
        got = _run(m, x, g, train)
        assert torch.equal(got[0], expect[0]), f"{name} {policy} spikes"
        assert torch.equal(got[1], expect[1]), f"{name} {policy} grad_x"
        assert got[2].keys() == expect[2].keys()
        for k in expect[2]:
            assert torch.equal(got[2][k], expect[2][k]), f"{name} {policy} grad {k}"


@pytest.mark.parametrize("wiring", ["previous", "current"])
def test_mpe_policies_identical_with_state_and_any_surrogate(wiring):
    """Carried state (a second chunk), the deterministic estimate and a surrogate
    without a closed form all give the same result under every policy."""
    torch.manual_seed(3)
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    results = []
    for policy in POLICIES:
        m = sjp.MPEPSN(
            8,
            estimate_from=wiring,
            step_mode="m",
            memory=policy,
            surrogate_function=surrogate.PiecewiseLeakyReLU(),
        ).double()
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(5)
        s = torch.cat([m(xr[:3]), m(xr[3:])])
        ((s * g).sum() + sjp.membrane_loss(m)).backward()
        results.append((s.detach(), xr.grad, m.v_threshold.grad, m.coef.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize(
    "name", ["psn", "masked-causal", "sliding", "mpe-previous", "mpe-current"]
)
def test_bytes_kept_per_policy(name):
    T, N = 6, 4096
    x = torch.randn(T, N, requires_grad=True)
    xb = x.numel() * 4
    small = 64 * T * T + 1024  # weights, bias, Toeplitz/mask matrices, [M] states
    lean = _saved_bytes(lambda: MAKERS[name](memory="lean")(x))
    fast = _saved_bytes(lambda: MAKERS[name](memory="fast")(x))
    auto = _saved_bytes(lambda: MAKERS[name](memory="auto")(x))
    assert xb <= lean <= xb + small
    if name.startswith("mpe"):
        # X and a 1-byte Bernoulli mask
        assert xb + x.numel() <= fast <= xb + x.numel() + small
    else:
        # X and H
        assert 2 * xb <= fast <= 2 * xb + small
    assert auto == fast  # 4096 neurons per step: auto keeps what is cheap


def test_auto_picks_by_layer_size():
    big = tb.AUTO_FAST_MAX_NEURONS
    assert tb.resolve_memory("auto", big - 1) == "fast"
    assert tb.resolve_memory("auto", big) == "lean"
    assert tb.resolve_memory("auto", 10 * big, "mpe") == "fast"
    assert tb.resolve_memory("lean", 1) == "lean"
    assert tb.resolve_memory("fast", 10 * big) == "fast"
    T = 2
    x = torch.randn(T, big, requires_grad=True)
    xb = x.numel() * 4
    assert _saved_bytes(lambda: sjp.PSN(T, memory="auto")(x)) <= xb + 1024
    assert _saved_bytes(lambda: sjp.PSN(T, memory="fast")(x)) >= 2 * xb


def test_set_memory_and_bad_policy():
    net = torch.nn.Sequential(sjp.PSN(4), torch.nn.Identity(), sjp.SlidingPSN(2))
    assert sjp.set_memory(net, "lean") == ["0", "2"]
    assert net[0].memory == "lean" and net[2].memory == "lean"
    assert "memory=lean" in repr(net[0])
    with pytest.raises(ValueError, match=r"unknown memory policy 'small'.*'lean'"):
        sjp.set_memory(net, "small")
    with pytest.raises(ValueError, match="unknown memory policy"):
        sjp.PSN(4, memory="big")
    with pytest.raises(ValueError, match="unknown memory policy"):
        net[0].memory = "huge"


ALL_NEURONS = {
    "psn": lambda: sjp.PSN(4),
    "masked": lambda: sjp.MaskedPSN(2, 4, step_mode="m"),
    "sliding": lambda: sjp.SlidingPSN(2, step_mode="m"),
    "mpe": lambda: sjp.MPEPSN(4, step_mode="m"),
}


@pytest.mark.parametrize("name", list(ALL_NEURONS))
def test_empty_sequence_is_a_clear_error_for_every_neuron(name):
    m = ALL_NEURONS[name]()
    for train in (True, False):
        m.train(train)
        with pytest.raises(ValueError, match=r"T=0|\[T=4, N, \*\]"):
            m(torch.randn(0, 3))


@pytest.mark.parametrize("name", list(ALL_NEURONS))
@pytest.mark.parametrize("policy", POLICIES)
def test_empty_batch_gives_empty_result_for_every_neuron(name, policy):
    m = ALL_NEURONS[name]()
    m.memory = policy
    x = torch.randn(4, 0, 3, requires_grad=True)
    s = m(x)
    assert s.shape == (4, 0, 3)
    loss = s.sum() + sjp.membrane_loss(m)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad.shape == x.shape
    for p in m.parameters():
        assert p.grad is None or (p.grad == 0).all()
    functional.reset_net(m)


@pytest.mark.parametrize("tau", [-0.25, float("inf"), float("-inf"), float("nan")])
def test_mpe_rejects_negative_or_non_finite_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite, non-negative"):
        sjp.MPEPSN(4, tau=tau)


@pytest.mark.parametrize("name", list(MAKERS))
def test_cache_blocks_give_the_same_result(name, monkeypatch):
    """The CPU path streams over column blocks; with tiny blocks (many of them, the
    last one partial) the result equals one block, and the policies stay
    bitwise identical."""
    torch.manual_seed(1)
    x = torch.randn(6, 7, 11, dtype=torch.float64)
    g = torch.randn_like(x)
    base = MAKERS[name](memory="lean").double()
    one = _run(base, x, g)
    monkeypatch.setattr(tb, "CHUNK_ELEMENTS", 6 * 20)  # 20 columns: 4 blocks of 77
    assert len(tb.column_chunks(6, 77, x.device)) == 4
    per_policy = []
    for policy in POLICIES:
        m = MAKERS[name](memory=policy).double()
        m.load_state_dict(base.state_dict())
        per_policy.append(_run(m, x, g))
    for got in per_policy:
        assert torch.equal(got[0], one[0])
        torch.testing.assert_close(got[1], one[1], rtol=1e-12, atol=1e-12)
        for k in one[2]:
            torch.testing.assert_close(got[2][k], one[2][k], rtol=1e-12, atol=1e-12)
    for other in per_policy[1:]:
        assert torch.equal(other[1], per_policy[0][1])
        for k in other[2]:
            assert torch.equal(other[2][k], per_policy[0][2][k])
