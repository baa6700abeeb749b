"""replace_neurons, conversion to/from SpikingJelly's PSN family, zoo_neuron."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import sj_parallel as sjp
from sj_parallel import _compat

needs_sj_psn = pytest.mark.skipif(
    not _compat.SJ_HAS_PSN,
    reason=f"SpikingJelly {_compat.SJ_VERSION} has no PSN family (added in 2.0)",
)


def _lif_net():
    return torch.nn.Sequential(
        layer.Linear(6, 8),
        neuron.LIFNode(),
        torch.nn.Sequential(layer.Linear(8, 8), neuron.IFNode()),
        layer.Linear(8, 3),
        neuron.LIFNode(),
    )


def test_replace_neurons_keeps_positions_and_step_mode():
    net = _lif_net()
    functional.set_step_mode(net, "m")
    functional.reset_net(net)  # SJ 2.0 caches the resettable modules here
    out = sjp.replace_neurons(net, sjp.SlidingPSN, k=2)
    assert out is net
    assert sorted(net.sj_parallel_replaced) == ["1", "2.1", "4"]
    assert isinstance(net[1], sjp.SlidingPSN) and isinstance(net[2][1], sjp.SlidingPSN)
    assert all(net[i].step_mode == "m" for i in (1, 4))
    y = net(torch.randn(5, 2, 6))
    assert y.shape == (5, 2, 3)
    functional.reset_net(net)  # the new modules are seen: their queues are cleared
    assert net[1].queue == []


def test_replace_neurons_types_and_errors():
    net = _lif_net()
    sjp.replace_neurons(net, sjp.PSN, types=[neuron.IFNode], T=4)
    assert isinstance(net[2][1], sjp.PSN) and isinstance(net[1], neuron.LIFNode)
    with pytest.raises(ValueError, match="found no module of the types"):
        sjp.replace_neurons(torch.nn.Sequential(torch.nn.Linear(2, 2)), sjp.PSN, T=4)
    with pytest.raises(ValueError, match="found no module"):
        sjp.replace_neurons(net, sjp.PSN, types=[neuron.IFNode], T=4)  # already ours


@needs_sj_psn
def test_replace_spikingjelly_psn_family():
    net = torch.nn.Sequential(
        _compat.SJ_PSN(4), _compat.SJ_SLIDING_PSN(2, step_mode="m")
    )
    sjp.replace_neurons(net, sjp.MPEPSN, T=4)
    assert all(isinstance(m, sjp.MPEPSN) for m in net)
    assert net[0].step_mode == "m" and net[1].step_mode == "m"


@needs_sj_psn
@pytest.mark.parametrize(
    "make",
    [
        lambda: _compat.SJ_PSN(6, surrogate.Sigmoid(alpha=3.0)),
        lambda: _compat.SJ_MASKED_PSN(2, 6, lambda_init=0.3, step_mode="m"),
        lambda: _compat.SJ_SLIDING_PSN(3, exp_init=False, step_mode="m"),
    ],
)
def test_round_trip_conversion(make):
    torch.manual_seed(0)
    sj = make()
    ours = sjp.from_spikingjelly(sj)
    assert type(ours).__name__ == type(sj).__name__
    assert type(ours.surrogate_function) is type(sj.surrogate_function)
    x = torch.randn(6, 3, 4)
    assert torch.equal(ours(x), sj(x))
    back = sjp.to_spikingjelly(ours)
    assert type(back) is type(sj)
    assert torch.equal(back(x), sj(x))
    for k, v in sj.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_conversion_errors():
    if not _compat.SJ_HAS_PSN:
        with pytest.raises(RuntimeError, match="has no PSN family"):
            sjp.from_spikingjelly(torch.nn.Linear(2, 2))
        with pytest.raises(RuntimeError, match="has no PSN family"):
            sjp.to_spikingjelly(sjp.PSN(4))
        return
    with pytest.raises(TypeError, match="converts SpikingJelly's PSN"):
        sjp.from_spikingjelly(neuron.LIFNode())
    with pytest.raises(TypeError, match="no MPE-PSN"):
        sjp.to_spikingjelly(sjp.MPEPSN(4))


def test_zoo_neuron_kwargs_policy():
    make = sjp.zoo_neuron(sjp.PSN, T=4)
    with pytest.warns(
        UserWarning, match=r"ignores the LIF-only arguments \['detach_reset'"
    ):
        m = make(surrogate_function=surrogate.Sigmoid(), detach_reset=True)
    assert isinstance(m, sjp.PSN) and m.T == 4
    assert isinstance(m.surrogate_function, surrogate.Sigmoid)
    with pytest.raises(TypeError, match=r"does not take \['colour'\]"):
        make(colour="red")
    mpe = sjp.zoo_neuron(sjp.MPEPSN, T=4)(tau=0.5, v_threshold=0.7)
    assert mpe.tau == 0.5 and mpe.v_threshold.item() == pytest.approx(0.7)


def test_replace_neurons_follows_network_dtype_and_device():
    # LIF holds no tensors: the new neuron takes the parent's (here: net's) dtype
    net = torch.nn.Sequential(layer.Linear(4, 4), neuron.LIFNode(step_mode="m"))
    net.double()
    sjp.replace_neurons(net, sjp.PSN, T=4)
    assert net[1].weight.dtype == torch.float64
    assert net(torch.randn(4, 2, 4, dtype=torch.float64)).dtype == torch.float64
    nested = torch.nn.Sequential(
        torch.nn.Sequential(neuron.IFNode()), layer.Linear(3, 3)
    ).to(torch.bfloat16)
    sjp.replace_neurons(nested, sjp.SlidingPSN, k=2)
    assert nested[0][0].weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="net itself is a neuron"):
        sjp.replace_neurons(neuron.LIFNode(), sjp.PSN, T=4)
