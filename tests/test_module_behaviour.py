"""SpikingJelly lifecycle: reset/step mode/detach/state dicts/devices/DataParallel,
SJ 2.0's functional API and torch.compile, and the memory kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import base, functional, layer, neuron

import sj_parallel as sjp
from sj_parallel import _compat
from sj_parallel import reference as ref

needs_sj2 = pytest.mark.skipif(
    not _compat.SJ_HAS_FUNCTIONAL_API,
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no explicit-state functional API",
)
needs_sj_psn = pytest.mark.skipif(
    not _compat.SJ_HAS_PSN,
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no PSN family (added in 2.0)",
)


def _net(T=4):
    return torch.nn.Sequential(
        layer.Linear(6, 8),
        sjp.PSN(T),
        layer.Linear(8, 8),
        sjp.MaskedPSN(2, T, lambda_init=1.0),
        layer.Linear(8, 8),
        sjp.SlidingPSN(3),
        layer.Linear(8, 5),
        sjp.MPEPSN(T),
    )


def test_set_step_mode_reset_and_backend():
    net = _net()
    functional.set_step_mode(net, "m")
    assert all(m.step_mode == "m" for m in net if isinstance(m, sjp.ParallelNeuron))
    net(torch.randn(4, 2, 6)).sum().backward()
    assert sjp.membrane_loss(net).item() > 0
    functional.reset_net(net)
    assert net[3].time_step == 0 and net[3].queue == [] and net[5].queue == []
    assert net[7].time_step == 0 and net[7].mem_loss == 0.0 and net[7].seed is None
    names = sjp.set_backend(net, "torch")
    assert names == ["1", "3", "5", "7"]
    functional.set_step_mode(net, "s")
    with pytest.raises(ValueError, match="multi-step"):
        net(torch.randn(2, 6))


def test_sj_functional_set_backend_accepts_our_names(cupy_sees_a_gpu):
    if not hasattr(functional, "set_backend"):
        pytest.skip(f"SpikingJelly {_compat.SJ_VERSION} has no functional.set_backend")
    net = _net()
    functional.set_backend(net, "cupy", instance=sjp.ParallelNeuron)
    assert [m.backend for m in net if isinstance(m, sjp.ParallelNeuron)] == ["cupy"] * 4
    functional.set_backend(net, "torch")
    assert [m.backend for m in net if isinstance(m, sjp.ParallelNeuron)] == [
        "torch"
    ] * 4


def test_our_set_backend_on_any_sj_version(cupy_sees_a_gpu):
    net = _net()
    assert sjp.set_backend(net, "cupy") == ["1", "3", "5", "7"]
    assert all(
        m.backend == "cupy" and "backend=cupy" in repr(m)
        for m in net
        if isinstance(m, sjp.ParallelNeuron)
    )
    sjp.set_backend(net, "torch")
    assert net[7].backend == "torch"


def test_reset_between_sequences_gives_same_output():
    m = sjp.SlidingPSN(3, step_mode="s")
    x = torch.randn(5, 4)
    a = torch.stack([m(xt) for xt in x])
    functional.reset_net(m)
    b = torch.stack([m(xt) for xt in x])
    assert torch.equal(a, b)


def test_detach_net_detaches_list_states():
    m = sjp.SlidingPSN(3, step_mode="s")
    mm = sjp.MPEPSN(4, step_mode="s")
    mk = sjp.MaskedPSN(2, 4, lambda_init=1.0, step_mode="s")
    torch.manual_seed(0)
    # near the threshold, so the triangle surrogate's gradient is non-zero
    x = (1.0 + 0.1 * torch.randn(4, 3)).requires_grad_(True)
    for t in range(3):
        m(x[t] * 2)
        mm(x[t] * 0.5)
        mk(x[t] * 2)
    queue_before = m.queue
    uh_before = mm.u_hat
    assert all(q.requires_grad for q in m.queue + mk.queue)
    assert mm.u_hat.requires_grad and mm.mem_loss.requires_grad
    functional.detach_net(torch.nn.Sequential(m, mm, mk))
    assert not any(q.requires_grad for q in m.queue + mk.queue)
    assert not mm.u_hat.requires_grad and not mm.mem_loss.requires_grad
    assert all(q.requires_grad for q in queue_before), "rebinding, not in place"
    assert uh_before.requires_grad, "rebinding, not in place"
    # TBPTT: the next step's graph stops at the detached states
    mm(x[3]).sum().backward()
    assert torch.equal(x.grad[:3], torch.zeros(3, 3)) and x.grad[3].any()


@pytest.mark.parametrize(
    "make",
    [
        lambda: sjp.SlidingPSN(2, step_mode="s"),
        lambda: sjp.MaskedPSN(2, 5, lambda_init=1.0, step_mode="s"),
        lambda: sjp.MPEPSN(5, step_mode="s"),
    ],
)
def test_to_moves_list_states(make):
    m = make()
    m(torch.randn(3))
    m(torch.randn(3))
    m.to(torch.float64)
    tensors = [v for v in m._memories.values() if isinstance(v, torch.Tensor)]
    for v in m._memories.values():
        if isinstance(v, list):
            tensors += v
    assert tensors and all(t.dtype == torch.float64 for t in tensors)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out = m(torch.randn(3, dtype=torch.float64))
    assert out.dtype == torch.float64
    m.half()
    tensors = [v for v in m._memories.values() if isinstance(v, torch.Tensor)]
    for v in m._memories.values():
        if isinstance(v, list):
            tensors += v
    assert all(t.dtype == torch.float16 for t in tensors)
    assert m(torch.randn(3).half()).dtype == torch.float16


def test_state_dict_round_trip_and_keys():
    expected = {
        sjp.PSN: {"weight", "bias"},
        sjp.MaskedPSN: {"weight", "bias", "_lambda_", "mask0", "mask1"},
        sjp.SlidingPSN: {"weight", "bias"},
        sjp.MPEPSN: {"v_threshold", "coef"},
    }
    makers = {
        sjp.PSN: lambda: sjp.PSN(5),
        sjp.MaskedPSN: lambda: sjp.MaskedPSN(2, 5, lambda_init=0.25),
        sjp.SlidingPSN: lambda: sjp.SlidingPSN(3, exp_init=False),
        sjp.MPEPSN: lambda: sjp.MPEPSN(5, v_threshold=0.5),
    }
    for cls, keys in expected.items():
        a, b = makers[cls](), makers[cls]()
        assert set(a.state_dict()) == keys
        b.load_state_dict(a.state_dict())
        for k in keys:
            assert torch.equal(a.state_dict()[k], b.state_dict()[k])
    m = sjp.MaskedPSN(2, 5, lambda_init=0.25)
    n = sjp.MaskedPSN(2, 5)
    n.load_state_dict(m.state_dict())
    assert float(n.lambda_) == 0.25
    # a loaded network computes the same thing (eval: deterministic MPE estimate)
    torch.manual_seed(0)
    a, b = _net(5), _net(5)
    b.load_state_dict(a.state_dict())
    for net in (a, b):
        functional.set_step_mode(net, "m")
        net.eval()
    x = torch.randn(5, 2, 6)
    assert torch.equal(a(x), b(x))


def test_deepcopy_and_dataparallel_replica_keep_states_apart():
    m = sjp.SlidingPSN(2, step_mode="s")
    m(torch.randn(3))
    # DataParallel replicas get a shallow copy of the memories dict, so the list
    # object is shared: a step must rebind it, never append in place.
    shared_queue = m.queue
    m(torch.randn(3))
    assert len(shared_queue) == 1 and len(m.queue) == 2
    mm = sjp.MPEPSN(4, step_mode="s")
    mm(torch.randn(3))
    shared_loss = mm.mem_loss
    mm(torch.randn(3))
    assert mm.mem_loss is not shared_loss
    c = copy.deepcopy(m)
    c(torch.randn(3))
    assert len(m.queue) == 2 and len(c.queue) == 2 and c.queue[0] is not m.queue[0]
    dp = torch.nn.DataParallel(_net())  # no GPU: runs the module itself
    functional.set_step_mode(dp, "m")
    assert dp(torch.randn(4, 2, 6)).shape == (4, 2, 5)


@pytest.mark.parametrize("mode", ["s", "m"])
def test_dataparallel_replica_leaves_original_states_untouched(mode):
    """torch's replicate shallow-copies the memories dict: states are shared
    objects, so a replica's forward must rebind, never mutate in place."""
    T = 4
    mods = [
        sjp.SlidingPSN(2, step_mode=mode),
        sjp.MaskedPSN(2, T, lambda_init=1.0, step_mode=mode),
        sjp.MPEPSN(T, step_mode=mode),
        sjp.MPEPSN(T, estimate_from="current", step_mode=mode),
    ]
    x = torch.randn(1, 3, requires_grad=True) if mode == "m" else torch.randn(3)
    for m in mods:
        if mode == "m" and not isinstance(m, sjp.MPEPSN):
            continue  # multi-step PSN variants keep no state
        for _ in range(2):  # build non-trivial states
            m(x if mode == "m" else x.clone())
        before = dict(m._memories)
        snap = {
            k: (
                v.detach().clone()
                if isinstance(v, torch.Tensor)
                else (list(v) if isinstance(v, list) else v)
            )
            for k, v in before.items()
        }
        replica = m._replicate_for_data_parallel()
        for name, p in m._parameters.items():  # as torch.nn.parallel.replicate does
            setattr(replica, name, p.clone())
        replica(x if mode == "m" else x.clone())
        replica(x if mode == "m" else x.clone())
        for k, v in m._memories.items():
            assert v is before[k], k
            if isinstance(v, list):
                assert len(v) == len(snap[k]) and all(
                    a is b for a, b in zip(v, snap[k])
                ), k
            elif isinstance(v, torch.Tensor):
                assert torch.equal(v, snap[k]), k
            else:
                assert v == snap[k], k
        assert replica._memories is not m._memories
        changed = [k for k in m._memories if replica._memories[k] is not before[k]]
        assert changed, "the replica's forward must have updated its own states"


@needs_sj2
def test_to_functional_forward_single_step():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(4, 6),
        sjp.SlidingPSN(3),
        sjp.MaskedPSN(2, 5, lambda_init=1.0),
        sjp.MPEPSN(5),
    )
    net.eval()
    x = torch.randn(5, 2, 4)
    stateful = torch.stack([net(x[t]) for t in range(5)])
    functional.reset_net(net)
    fwd = base.to_functional_forward(net)
    states = tuple(base.extract_memories(net))
    outs = []
    for t in range(5):
        (y,), states = fwd((x[t],), states)
        outs.append(y)
    assert torch.equal(torch.stack(outs), stateful)


@needs_sj2
def test_to_functional_forward_matches_stateful():
    torch.manual_seed(0)
    net = _net()
    functional.set_step_mode(net, "m")
    net.eval()
    x = torch.randn(4, 3, 6)
    stateful = net(x)
    functional.reset_net(net)
    fwd = base.to_functional_forward(net)
    states = tuple(base.extract_memories(net))
    (out,), new_states = fwd((x,), states)
    assert torch.equal(out, stateful)
    assert len(new_states) == len(states)
    m = sjp.SlidingPSN(2, step_mode="s")
    fm = base.to_functional_forward(m)
    (y,), st = fm((torch.randn(3),), ([],))
    assert len(st[0]) == 1


@needs_sj2
def test_torch_compile_small_net():
    torch.manual_seed(0)
    net = _net()
    functional.set_step_mode(net, "m")
    net.eval()
    x = torch.randn(4, 2, 6)
    expect = net(x)
    functional.reset_net(net)
    compiled = torch.compile(net, backend="aot_eager")
    out = compiled(x)
    assert torch.equal(out, expect)
    functional.reset_net(net)
    net.train()
    compiled(x).sum().backward()
    assert net[1].weight.grad is not None


# ----------------------------------------------------------------- memory claim
def _saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(total), out


@needs_sj_psn
def test_memory_kept_for_backward_vs_spikingjelly():
    T, N = 8, 4096
    x = torch.randn(T, N, requires_grad=True)
    x_bytes = x.numel() * 4
    sj = _compat.SJ_PSN(T)
    ours = sjp.PSN(T, memory="lean")  # "fast" keeps H too (tests/test_memory_policy)
    sj_b, _ = _saved_bytes(lambda: sj(x))
    our_b, _ = _saved_bytes(lambda: ours(x))
    assert sj_b >= 2 * x_bytes  # X and H (plus the surrogate's input)
    assert our_b <= x_bytes + 4 * (T * T + T) + 64
    assert our_b <= 0.6 * sj_b
    sjs = _compat.SJ_SLIDING_PSN(3, step_mode="m")
    s_b, _ = _saved_bytes(lambda: sjs(x))
    o_b, _ = _saved_bytes(lambda: sjp.SlidingPSN(3, step_mode="m", memory="lean")(x))
    # X plus the [T, T] Toeplitz gather (int64 indices, mask, matrix)
    assert o_b <= x_bytes + 24 * T * T + 256 and o_b <= 0.6 * s_b
    sjm = _compat.SJ_MASKED_PSN(3, T, lambda_init=0.5, step_mode="m")
    m_sj, _ = _saved_bytes(lambda: sjm(x))
    m_our, _ = _saved_bytes(
        lambda: sjp.MaskedPSN(3, T, lambda_init=0.5, step_mode="m", memory="lean")(x)
    )
    # X plus a few [T, T] matrices of the mask blend
    assert m_our <= x_bytes + 4 * 4 * T * T + 256 and m_our <= 0.6 * m_sj


def test_memory_kept_for_backward_mpe_and_lif():
    T, N = 8, 4096
    x = torch.randn(T, N, requires_grad=True)
    x_bytes = x.numel() * 4
    for wiring in ("previous", "current"):
        for train in (True, False):
            m = sjp.MPEPSN(T, estimate_from=wiring, step_mode="m", memory="lean")
            m.train(train)
            b, _ = _saved_bytes(lambda m=m: m(x))
            # only X (no sample mask, no H), plus scalars and the [T] weights
            assert x_bytes <= b <= x_bytes + 16 * T + 128
    # plain autograd through the reference keeps about four [T, N] tensors
    rb, _ = _saved_bytes(
        lambda: ref.mpe_psn(
            x, torch.tensor(1.0, requires_grad=True), 0.25, m.surrogate_function
        )
    )
    assert rb >= 3 * x_bytes and b <= 0.35 * rb
    lif = neuron.LIFNode(step_mode="m")
    lb, _ = _saved_bytes(lambda: lif(x))
    assert lb > b
