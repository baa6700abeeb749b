"""Our neurons inside SpikingJelly's model zoo, whole-network compile, save/load."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate
from spikingjelly.activation_based.model import (
    parametric_lif_net,
    sew_resnet,
    spiking_resnet,
    spiking_vgg,
)

import sj_parallel as sjp
from sj_parallel import _compat

T = 2
NEURONS = {
    "psn": sjp.zoo_neuron(sjp.PSN, T=T),
    "masked-psn": sjp.zoo_neuron(sjp.MaskedPSN, k=2, T=T, lambda_init=1.0),
    "sliding-psn": sjp.zoo_neuron(sjp.SlidingPSN, k=2),
    "mpe-psn": sjp.zoo_neuron(sjp.MPEPSN, T=T),
}
ZOO_KW = dict(surrogate_function=surrogate.ATan(), detach_reset=True)


def _check_net(net, shape):
    functional.set_step_mode(net, "m")
    for n in (2, 1):  # a second batch of another size after reset_net
        x = torch.randn(T, n, *shape)
        out = net(x)
        assert out.shape[:2] == (T, n) and torch.isfinite(out).all()
        out.float().mean().backward()
        functional.reset_net(net)
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.filterwarnings("ignore:.*ignores the LIF-only arguments")
@pytest.mark.parametrize("name", list(NEURONS))
def test_resnets(name):
    torch.manual_seed(0)
    for build in (spiking_resnet.spiking_resnet18, sew_resnet.sew_resnet18):
        kw = dict(ZOO_KW)
        if build is sew_resnet.sew_resnet18:
            kw["cnf"] = "ADD"
        net = build(num_classes=10, spiking_neuron=NEURONS[name], **kw)
        n_ours = sum(isinstance(m, sjp.ParallelNeuron) for m in net.modules())
        assert n_ours > 10
        _check_net(net, (3, 32, 32))


@pytest.mark.filterwarnings("ignore:.*ignores the LIF-only arguments")
@pytest.mark.parametrize("name", list(NEURONS))
def test_vgg_and_dvs_gesture_net(name):
    torch.manual_seed(0)
    net = spiking_vgg.spiking_vgg11(
        num_classes=10, spiking_neuron=NEURONS[name], **ZOO_KW
    )
    _check_net(net, (3, 32, 32))
    del net
    net = parametric_lif_net.DVSGestureNet(
        channels=4, spiking_neuron=NEURONS[name], **ZOO_KW
    )
    _check_net(net, (2, 128, 128))


def test_save_load_whole_model_and_deepcopy(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(2), sjp.PSN(T), sjp.MaskedPSN(2, T, lambda_init=0.5),
        sjp.SlidingPSN(2), sjp.MPEPSN(T),
    )  # fmt: skip
    functional.set_step_mode(net, "m")
    net.eval()
    x = torch.randn(T, 3, 4, 5)
    ref = net(x)
    functional.reset_net(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), ref)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    fresh = torch.nn.Sequential(
        torch.nn.Flatten(2), sjp.PSN(T), sjp.MaskedPSN(2, T), sjp.SlidingPSN(2),
        sjp.MPEPSN(T),
    )  # fmt: skip
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))
    functional.set_step_mode(fresh, "m")
    fresh.eval()
    assert torch.equal(fresh(x), ref)
    c = copy.deepcopy(net)
    assert torch.equal(c(x), ref)


def test_dataparallel_cpu_stand_in():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), sjp.SlidingPSN(2, step_mode="m"))
    dp = torch.nn.DataParallel(net)  # without GPUs it calls the module directly
    out = dp(torch.randn(3, 2, 4))
    assert out.shape == (3, 2, 4)


@pytest.mark.skipif(
    not _compat.SJ_HAS_FUNCTIONAL_API,
    reason=f"SpikingJelly {_compat.SJ_VERSION}: compile is tested with SJ 2.0",
)
@pytest.mark.filterwarnings("ignore:.*ignores the LIF-only arguments")
def test_compile_whole_sj_network():
    torch.manual_seed(0)
    net = parametric_lif_net.DVSGestureNet(
        channels=2, spiking_neuron=sjp.zoo_neuron(sjp.SlidingPSN, k=2), **ZOO_KW
    )
    functional.set_step_mode(net, "m")
    net.eval()
    x = torch.randn(T, 1, 2, 128, 128)
    ref = net(x)
    functional.reset_net(net)
    compiled = torch.compile(net, backend="aot_eager")
    torch.testing.assert_close(compiled(x), ref)
