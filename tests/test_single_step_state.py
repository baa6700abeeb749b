"""Single-step states in SpikingJelly's layout (issue 19 item 1) and the error for a
state that belongs to another batch (issue 18 item 8).

SpikingJelly keeps each queued input of ``SlidingPSN`` / ``MaskedPSN`` as
``x.flatten()`` (``functional.sliding_psn_step`` / ``masked_psn_step`` in 2.0), and a
membrane-like state (a LIF's ``v``) in the input's shape ``[N, *]``. The queue is a
public memory, so states must move both ways between our modules, SpikingJelly's
modules and SpikingJelly's step functions.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

import sj_parallel as sjp
from sj_parallel import _compat

needs_sj_psn = pytest.mark.skipif(
    not _compat.SJ_HAS_PSN,
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no PSN family (added in 2.0)",
)
needs_sj_steps = pytest.mark.skipif(
    not hasattr(functional, "sliding_psn_step"),
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no functional.*_psn_step",
)


def _sg():
    return surrogate.Sigmoid(alpha=4.0)


def _memory_names(m):
    return [name for name, _ in m.named_memories()]


# ------------------------------------------------------------------ the layout
@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("which", ["sliding", "masked"])
def test_queue_holds_flattened_inputs_oldest_first(which, shape):
    """On every SpikingJelly version (0.0.0.0.14 has no PSN of its own)."""
    torch.manual_seed(0)
    if which == "sliding":
        m = sjp.SlidingPSN(3, surrogate_function=_sg())
    else:
        m = sjp.MaskedPSN(3, 5, lambda_init=1.0, surrogate_function=_sg())
    xs = torch.randn(5, *shape)
    for t in range(5):
        s = m(xs[t])
        assert s.shape == xs[t].shape
        assert isinstance(m.queue, list) and len(m.queue) == min(t + 1, 3)
        for q, x in zip(m.queue, xs[max(0, t - 2) : t + 1]):
            assert q.dim() == 1 and torch.equal(q, x.flatten())
    names = dict(m.named_memories())
    assert names["queue"] is m.queue
    if which == "masked":
        assert _memory_names(m) == ["time_step", "queue"] and m.time_step == 5
    else:
        assert _memory_names(m) == ["queue"]


@pytest.mark.parametrize("T,k", [(5, 2), (6, 6)])
@pytest.mark.parametrize("which", ["sliding", "masked"])
def test_single_step_equals_multi_step_on_4d_input(which, T, k):
    """Flattening the queue changes nothing: single-step equals multi-step bitwise."""
    torch.manual_seed(T + k)
    if which == "sliding":
        m = sjp.SlidingPSN(k, exp_init=False, step_mode="m")
    else:
        m = sjp.MaskedPSN(k, T, lambda_init=1.0, step_mode="m")
    m.double()
    x = torch.randn(T, 2, 3, 2, 2, dtype=torch.float64)
    multi = m(x)
    functional.set_step_mode(m, "s")
    single = torch.stack([m(x[t]) for t in range(T)])
    assert torch.equal(single, multi)


def test_mpe_states_have_the_input_shape_like_a_lif_v():
    """MPE-PSN's states are membrane-like; SpikingJelly keeps a LIF's ``v`` in the
    input's shape, and so do we (not flattened)."""
    x = torch.randn(2, 3, 4)
    lif = neuron.LIFNode()
    lif(x)
    m = sjp.MPEPSN(4)
    m(x)
    assert lif.v.shape == x.shape
    assert m.u_hat.shape == x.shape and m.u.shape == x.shape


# ------------------------------------------------- moving states both ways (SJ 2.0)
def _sliding_pair(k=3):
    sj = _compat.SJ_SLIDING_PSN(k, exp_init=False, surrogate_function=_sg())
    ours = sjp.SlidingPSN(k, surrogate_function=_sg())
    ours.load_state_dict(sj.state_dict())
    return sj, ours


def _masked_pair(k=3, T=6):
    sj = _compat.SJ_MASKED_PSN(k, T, lambda_init=1.0, surrogate_function=_sg())
    ours = sjp.MaskedPSN(k, T, lambda_init=1.0, surrogate_function=_sg())
    ours.load_state_dict(sj.state_dict())
    return sj, ours


def _assert_queues_equal(a, b):
    assert len(a) == len(b)
    for qa, qb in zip(a, b):
        assert qa.shape == qb.shape and torch.equal(qa, qb)


@needs_sj_psn
@needs_sj_steps
def test_sliding_states_move_between_ours_sj_module_and_sj_function():
    torch.manual_seed(1)
    sj, ours = _sliding_pair()
    xs = torch.randn(8, 2, 3)
    # three steps in our module, then SpikingJelly's step function carries on from
    # our queue, and the two agree step by step
    for t in range(3):
        ours(xs[t])
    queue = tuple(ours.queue)
    for t in range(3, 6):
        spike, queue = functional.sliding_psn_step(
            xs[t], queue, sj.weight, sj.bias, sj.surrogate_function
        )
        torch.testing.assert_close(ours(xs[t]), spike, rtol=0, atol=0)
        _assert_queues_equal(ours.queue, queue)
    # SpikingJelly's function's queue into our module, and our module's into
    # SpikingJelly's module
    ours.queue = list(queue)
    sj.queue = list(queue)
    for t in range(6, 8):
        torch.testing.assert_close(ours(xs[t]), sj(xs[t]))
        _assert_queues_equal(ours.queue, sj.queue)
    # SpikingJelly's module's state into our functional forward, and ours into its
    functional.reset_net(sj)
    for t in range(2):
        sj(xs[t])
    states = tuple(v for _, v in sj.named_memories())
    (s_ours,), (q_ours,) = ours.single_step_functional_forward((xs[2],), states)
    (s_sj,), (q_sj,) = sj.single_step_functional_forward((xs[2],), states)
    torch.testing.assert_close(s_ours, s_sj)
    _assert_queues_equal(q_ours, q_sj)
    (s_sj2,), _ = sj.single_step_functional_forward((xs[3],), (q_ours,))
    (s_ours2,), _ = ours.single_step_functional_forward((xs[3],), (q_sj,))
    torch.testing.assert_close(s_ours2, s_sj2)


@needs_sj_psn
@needs_sj_steps
def test_masked_states_move_between_ours_sj_module_and_sj_function():
    torch.manual_seed(2)
    sj, ours = _masked_pair()
    xs = torch.randn(6, 2, 3)
    for t in range(2):
        ours(xs[t])
    time_step, queue = ours.time_step, tuple(ours.queue)
    for t in range(2, 4):
        spike, time_step, queue = functional.masked_psn_step(
            xs[t],
            time_step,
            queue,
            sj.masked_weight(),
            sj.bias,
            sj.k,
            sj.surrogate_function,
        )
        torch.testing.assert_close(ours(xs[t]), spike)
        assert ours.time_step == time_step
        _assert_queues_equal(ours.queue, queue)
    assert _memory_names(sj) == _memory_names(ours)
    # SpikingJelly's module continues from our states, and ours from its
    for name, value in ours.named_memories():
        setattr(sj, name, value if not isinstance(value, list) else list(value))
    for t in range(4, 6):
        torch.testing.assert_close(ours(xs[t]), sj(xs[t]))
        assert ours.time_step == sj.time_step
        _assert_queues_equal(ours.queue, sj.queue)
    functional.reset_net(ours)
    functional.reset_net(sj)
    for t in range(3):
        sj(xs[t])
    states = tuple(v for _, v in sj.named_memories())
    (s_ours,), st_ours = ours.single_step_functional_forward((xs[3],), states)
    (s_sj,), st_sj = sj.single_step_functional_forward((xs[3],), states)
    torch.testing.assert_close(s_ours, s_sj)
    assert st_ours[0] == st_sj[0] == 4
    _assert_queues_equal(st_ours[1], st_sj[1])


# ----------------------------------------------------- DataParallel, .to(), detach
@pytest.mark.parametrize("which", ["sliding", "masked"])
def test_flattened_queue_is_rebound_moved_and_detached(which):
    m = (
        sjp.SlidingPSN(2)
        if which == "sliding"
        else sjp.MaskedPSN(2, 4, lambda_init=1.0)
    )
    x = torch.randn(3, 2, 2, requires_grad=True)
    m(x[0])
    shared = m.queue  # what a DataParallel replica would share
    entry = shared[0]
    m(x[1])
    assert len(shared) == 1 and shared[0] is entry, "rebind, never mutate"
    assert all(q.requires_grad for q in m.queue)
    functional.detach_net(m)
    assert not any(q.requires_grad for q in m.queue) and entry.requires_grad
    m.to(torch.float64)
    assert all(q.dtype == torch.float64 and q.dim() == 1 for q in m.queue)
    assert m(x[2].detach().double()).dtype == torch.float64


# --------------------------------------- another batch without reset (issue 18 #8)
@pytest.mark.parametrize(
    "make",
    [
        lambda: sjp.SlidingPSN(3),
        lambda: sjp.MaskedPSN(2, 4, lambda_init=1.0),
        lambda: sjp.MPEPSN(4),
        lambda: sjp.MPEPSN(4).eval(),
    ],
    ids=["SlidingPSN", "MaskedPSN", "MPEPSN-train", "MPEPSN-eval"],
)
def test_smaller_last_batch_without_reset_names_the_fix(make):
    m = make()
    name = type(m).__name__
    m(torch.randn(6, 3))
    with pytest.raises(ValueError) as info:
        m(torch.randn(4, 3))
    msg = str(info.value)
    assert msg.startswith(f"{name}: its state ")
    assert "a batch of 6" in msg and "a batch of 4" in msg
    assert "functional.reset_net(net) is missing" in msg
    functional.reset_net(m)
    assert m(torch.randn(4, 3)).shape == (4, 3)


def test_multi_step_mpe_without_reset_names_the_fix():
    """Multi-step MPE-PSN carries its state across calls too."""
    m = sjp.MPEPSN(4, step_mode="m").eval()
    m(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match=r"a batch of 6 .*reset_net\(net\)"):
        m(torch.randn(2, 4, 3))


def test_other_input_shape_without_reset_names_the_sizes():
    m = sjp.SlidingPSN(2)
    m(torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"18 values per step.*\(4, 5\) per step"):
        m(torch.randn(4, 5))
    mm = sjp.MPEPSN(4)
    mm(torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"state 'u_hat'.*\(4, 5\) per step"):
        mm(torch.randn(4, 5))


@pytest.mark.parametrize("which", ["sliding", "masked"])
def test_unflattened_queue_entries_are_flattened(which):
    """Entries of the earlier ``[N, *]`` layout (a module pickled mid-sequence by
    an older sj_parallel) are read as their flattened values."""
    torch.manual_seed(5)
    make = (
        (lambda: sjp.SlidingPSN(3))
        if which == "sliding"
        else (lambda: sjp.MaskedPSN(3, 4, lambda_init=1.0))
    )
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    xs = torch.randn(3, 2, 3)
    a(xs[0])
    a(xs[1])
    b(xs[0])
    b(xs[1])
    b.queue = [q.view(2, 3) for q in b.queue]
    torch.testing.assert_close(b(xs[2]), a(xs[2]), rtol=0, atol=0)
    assert all(q.dim() == 1 for q in b.queue)
    _assert_queues_equal(b.queue, a.queue)


def test_queue_of_non_tensors_is_refused():
    m = sjp.SlidingPSN(2)
    with pytest.raises(TypeError, match="must hold tensors"):
        m.single_step_functional_forward((torch.randn(3),), ([1.0],))
