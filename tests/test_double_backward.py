"""Second derivatives (issue 18, item 1): gradient penalties, gradgradcheck and
``torch.func`` transforms.

The torch backend gives the same second-order gradients as
:mod:`sj_parallel.reference` (plain autograd through the SpikingJelly surrogate) for
every neuron, in single- and multi-step mode, under every memory policy. The fused
backends cannot differentiate their backward: they raise a clear error as soon as a
graph that needs it is built (``create_graph=True`` with an input that requires grad).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

import sj_parallel as sjp
from sj_parallel import _compat
from sj_parallel import reference as ref
from sj_parallel.backends import torch_backend as tb
from sj_parallel.backends._autograd import forbid_double_backward

D = torch.float64
SJ2 = _compat.SJ_HAS_FUNCTIONAL_API  # SpikingJelly 2.x: functorch-ready surrogates


def _set(m: torch.nn.Module, **params) -> torch.nn.Module:
    with torch.no_grad():
        for name, value in params.items():
            getattr(m, name).copy_(value)
    return m


# ------------------------------------------------------- the issue's example
def test_gradient_penalty_issue_example():
    """The issue's code: no error, and before the fix ``psn.weight.grad`` was None
    and ``lin.weight.grad`` differed from sj_parallel.reference."""
    torch.manual_seed(0)
    sg = surrogate.Sigmoid()
    lin = torch.nn.Linear(5, 5).double()
    psn = sjp.PSN(4, surrogate_function=sg).double()
    x = torch.randn(4, 3, 5, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(psn(lin(x)).sum(), x, create_graph=True)
    (g**2).sum().backward()
    assert psn.weight.grad is not None and psn.bias.grad is not None

    lin2 = torch.nn.Linear(5, 5).double()
    lin2.load_state_dict(lin.state_dict())
    w = psn.weight.detach().clone().requires_grad_(True)
    b = psn.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out = ref.psn(lin2(x2).reshape(4, -1), w, b, sg)
    (g2,) = torch.autograd.grad(out.sum(), x2, create_graph=True)
    (g2**2).sum().backward()
    torch.testing.assert_close(g, g2)
    torch.testing.assert_close(lin.weight.grad, lin2.weight.grad)
    torch.testing.assert_close(lin.bias.grad, lin2.bias.grad)
    torch.testing.assert_close(psn.weight.grad, w.grad)
    torch.testing.assert_close(psn.bias.grad, b.grad)
    torch.testing.assert_close(x.grad, x2.grad)


# ------------------------------------------------ every neuron, both step modes
T, N, F = 5, 3, 4
SURROGATES = {
    "ATan": surrogate.ATan(),
    "Sigmoid": surrogate.Sigmoid(),
    "PiecewiseQuadratic": surrogate.PiecewiseQuadratic(alpha=1.0),
}


def _neuron(kind: str, sg, memory: str) -> torch.nn.Module:
    torch.manual_seed(1)
    if kind == "psn":
        m = sjp.PSN(T, surrogate_function=sg, memory=memory)
    elif kind in ("masked", "masked-causal"):
        lam = 1.0 if kind == "masked-causal" else 0.4
        m = sjp.MaskedPSN(2, T, lambda_init=lam, surrogate_function=sg, memory=memory)
    elif kind == "sliding":
        m = sjp.SlidingPSN(3, surrogate_function=sg, memory=memory, exp_init=False)
    else:
        wiring = kind.split("-")[1]
        m = sjp.MPEPSN(T, surrogate_function=sg, memory=memory, estimate_from=wiring)
        n = T if wiring == "previous" else T - 1
        _set(m, coef=torch.randn(n).abs() + 0.1, v_threshold=torch.tensor(0.4))
    functional.set_step_mode(m, "m")
    return m.double()


def _reference(kind: str, m: torch.nn.Module, x: torch.Tensor, sg) -> tuple:
    """The neuron's output (and MPE-PSN's membrane loss) by sj_parallel.reference,
    with the module's parameters; ``x`` is ``[T, N, F]``."""
    flat = x.reshape(T, -1)
    if kind == "psn":
        return ref.psn(flat, m.weight, m.bias, sg), 0.0
    if kind.startswith("masked"):
        return ref.masked_psn(flat, m.weight, m.bias, m.lambda_, m.mask0, sg), 0.0
    if kind == "sliding":
        return ref.sliding_psn(flat, m.weight, m.bias, sg), 0.0
    wiring = kind.split("-")[1]
    stochastic = m.training
    s, mse, _, _ = ref.mpe_psn(
        flat, m.v_threshold, m.tau, sg, estimate_from=wiring, stochastic=stochastic,
        seed=m.seed if stochastic else (0, 0),
    )  # fmt: skip
    if not m.training:
        return s, 0.0
    pairs = mse if wiring == "previous" else mse[1:]
    return s, torch.dot(m.coef, pairs) / m.coef.shape[0]


def _penalty_grads(kind, m, sg, x, c, use_reference: bool):
    """Gradient penalty through a linear layer and the neuron: the first loss is a
    readout of the spikes (plus MPE-PSN's membrane loss), the second the squared norm
    of its input gradient. Returns every parameter's and the input's gradient."""
    torch.manual_seed(7)  # MPE-PSN's seed draw
    lin = torch.nn.Linear(F, F).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(F) + 0.3 * torch.randn(F, F))
        lin.bias.copy_(0.5 * torch.randn(F))
    x = x.clone().requires_grad_(True)
    torch.manual_seed(11)
    h = lin(x)
    if use_reference:
        out, extra = m(h), sjp.membrane_loss(m)  # draws the seed, fills m.seed
        out, extra = _reference(kind, m, h, sg)
        out = out.reshape(x.shape)
    else:
        out, extra = m(h), sjp.membrane_loss(m)
    first = (out * c).sum() + 2.0 * extra
    (g,) = torch.autograd.grad(first, x, create_graph=True)
    ((g**2).sum() + (g * c).sum()).backward()
    functional.reset_net(m)
    grads = {"x": x.grad, "g": g.detach()}
    named = [(f"lin.{k}", p) for k, p in lin.named_parameters()]
    named += [(k.replace("inner.", ""), p) for k, p in m.named_parameters()]
    for name, p in named:
        grads[name] = p.grad
        p.grad = None
    return grads


NEURONS = ["psn", "masked", "masked-causal", "sliding", "mpe-previous", "mpe-current"]


# train/eval only matters for MPE-PSN (sampling and the membrane loss)
MODES = [(k, True) for k in NEURONS] + [(k, False) for k in NEURONS if "mpe" in k]


@pytest.mark.parametrize("kind,train", MODES)
@pytest.mark.parametrize("sg_name", list(SURROGATES))
@pytest.mark.parametrize("memory", ["lean", "fast"])
def test_gradient_penalty_equals_reference(kind, train, sg_name, memory):
    sg = SURROGATES[sg_name]
    m = _neuron(kind, sg, memory).train(train)
    torch.manual_seed(3)
    x = torch.randn(T, N, F, dtype=D)
    c = torch.randn(T, N, F, dtype=D)
    ours = _penalty_grads(kind, m, sg, x, c, use_reference=False)
    theirs = _penalty_grads(kind, m, sg, x, c, use_reference=True)
    assert set(ours) == set(theirs)
    for name in ours:
        if name == "coef" and not train:  # the membrane loss is not used in eval
            assert ours[name] is None and theirs[name] is None
            continue
        assert ours[name] is not None, f"{name}: no second-order gradient"
        torch.testing.assert_close(ours[name], theirs[name], msg=name)


@pytest.mark.parametrize("kind", ["masked-causal", "sliding", "mpe-previous",
                                  "mpe-current"])  # fmt: skip
@pytest.mark.parametrize("train", [True, False])
def test_gradient_penalty_single_step_equals_multi_step(kind, train):
    sg = surrogate.ATan()
    m = _neuron(kind, sg, "auto").train(train)
    torch.manual_seed(3)
    x = torch.randn(T, N, F, dtype=D)
    c = torch.randn(T, N, F, dtype=D)
    multi = _penalty_grads(kind, m, sg, x, c, use_reference=False)
    functional.set_step_mode(m, "s")

    class Steps(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.stack([self.inner(x[t]) for t in range(x.shape[0])])

    # the membrane loss is the module's state: sjp.membrane_loss(Steps) finds it
    single = _penalty_grads(kind, Steps(m), sg, x, c, use_reference=False)
    assert set(single) == set(multi)
    for name in multi:
        if name == "coef" and not train:  # the membrane loss is not used in eval
            assert single[name] is None and multi[name] is None
            continue
        torch.testing.assert_close(single[name], multi[name], msg=name)


# -------------------------------------------------------------- gradgradcheck
SMOOTH = surrogate.Sigmoid(alpha=2.0, spiking=False)  # a smooth stand-in for Θ


@pytest.mark.parametrize("memory", ["lean", "fast"])
def test_gradgradcheck_psn_family(memory):
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=D, requires_grad=True)
    W = torch.randn(4, 4, dtype=D, requires_grad=True)
    b = torch.randn(4, 1, dtype=D, requires_grad=True)
    for sg in (SMOOTH, surrogate.ATan()):
        assert torch.autograd.gradgradcheck(
            lambda *a, sg=sg: tb.psn(*a, sg, memory), (x, W, b)
        )
    w = torch.randn(3, dtype=D, requires_grad=True)
    b0 = torch.randn((), dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda *a: tb.sliding_psn(*a, SMOOTH, memory), (x, w, b0)
    )


@pytest.mark.parametrize("wiring", ["previous", "current"])
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("t0", [0, 2])
@pytest.mark.parametrize("memory", ["lean", "fast"])
def test_gradgradcheck_mpe(wiring, stochastic, t0, memory):
    torch.manual_seed(0)
    M = 4
    x = torch.randn(3, M, dtype=D, requires_grad=True)
    v = torch.tensor(0.3, dtype=D, requires_grad=True)
    uh0 = torch.randn(M, dtype=D, requires_grad=True)
    u0 = torch.randn(M, dtype=D, requires_grad=True)

    def f(x, v, uh0, u0):
        return tb.mpe_psn(
            x, v, 0.25, SMOOTH, estimate_from=wiring, stochastic=stochastic,
            seed=(3, 4), t0=t0, u_hat0=uh0, u0=u0, need_mse=True, memory=memory,
        )  # fmt: skip

    assert torch.autograd.gradgradcheck(f, (x, v, uh0, u0))


def test_first_order_backward_keeps_the_fast_path():
    """Without create_graph the analytic backward runs (no graph, no reference)."""
    x = torch.randn(4, 6, requires_grad=True)
    W = torch.randn(4, 4, requires_grad=True)
    b = torch.randn(4, 1, requires_grad=True)
    (gx,) = torch.autograd.grad(tb.psn(x, W, b, surrogate.ATan()).sum(), x)
    assert gx.grad_fn is None and not gx.requires_grad


# ---------------------------------------------------------- torch.func
func = pytest.importorskip("torch.func")


def _psn_and_params():
    torch.manual_seed(0)
    sg = surrogate.Sigmoid()
    m = sjp.PSN(4, surrogate_function=sg).double()
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(4, 3, dtype=D)
    return m, sg, params, x


def _ref_out(params, x, sg):
    return ref.psn(x, params["weight"], params["bias"], sg)


NO_FUNC = "SpikingJelly 0.0.0.0.14's surrogates are old-style autograd Functions"


@pytest.mark.skipif(not SJ2, reason=NO_FUNC)
def test_torch_func_transforms_equal_reference():
    m, sg, params, x = _psn_and_params()
    c = torch.randn(4, 3, dtype=D)

    def ours(p, x):
        return (func.functional_call(m, p, (x,)) * c).sum()

    def theirs(p, x):
        return (_ref_out(p, x, sg) * c).sum()

    for transform in (
        lambda f: func.grad(f, argnums=(0, 1)),
        lambda f: func.grad_and_value(f),
        lambda f: func.jacrev(f, argnums=1),
        lambda f: func.grad(lambda p, x: func.grad(f, argnums=1)(p, x).pow(2).sum()),
    ):
        a, b = transform(ours)(params, x), transform(theirs)(params, x)
        torch.testing.assert_close(a, b)
    out, vjp_fn = func.vjp(lambda x: func.functional_call(m, params, (x,)), x)
    out2, vjp_ref = func.vjp(lambda x: _ref_out(params, x, sg), x)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(vjp_fn(c), vjp_ref(c))
    # every neuron under torch.func.grad, MPE-PSN sampling included
    for make in (
        lambda: sjp.MaskedPSN(2, 4, lambda_init=0.5, step_mode="m"),
        lambda: sjp.SlidingPSN(2, step_mode="m"),
        lambda: sjp.MPEPSN(4, step_mode="m"),
    ):
        mod = make().double()
        ps = {k: v.detach() for k, v in mod.named_parameters()}

        def loss(p, x, mod=mod):
            torch.manual_seed(5)
            s = func.functional_call(mod, p, (x,))
            out = (s * c).sum() + sjp.membrane_loss(mod)
            functional.reset_net(mod)
            return out

        g = func.grad(loss, argnums=(0, 1))(ps, x)
        xr = x.clone().requires_grad_(True)
        for p in mod.parameters():
            p.grad = None
        loss(dict(mod.named_parameters()), xr).backward()
        torch.testing.assert_close(g[1], xr.grad)
        for k, p in mod.named_parameters():
            torch.testing.assert_close(g[0][k], p.grad, msg=k)


@pytest.mark.skipif(not SJ2, reason="needs SpikingJelly 2.x")
def test_torch_func_vmap_is_not_supported_by_spikingjelly_surrogates():
    """vmap (and vmap-based jacfwd/hessian) need a vmap rule SpikingJelly's
    surrogates do not have: torch's own error says so, for our neurons as for
    SpikingJelly's."""
    m, sg, params, x = _psn_and_params()
    xs = torch.randn(2, 4, 3, dtype=D)
    with pytest.raises(RuntimeError, match="vmap"):
        func.vmap(lambda x: func.functional_call(m, params, (x,)))(xs)
    with pytest.raises(RuntimeError, match="vmap"):
        func.vmap(lambda x: _ref_out(params, x, sg))(xs)


@pytest.mark.skipif(SJ2, reason="describes SpikingJelly 0.0.0.0.14")
def test_torch_func_needs_spikingjelly_2():
    m, sg, params, x = _psn_and_params()
    for f in (
        lambda: func.grad(lambda p: func.functional_call(m, p, (x,)).sum())(params),
        lambda: func.grad(lambda p: _ref_out(p, x, sg).sum())(params),
    ):
        with pytest.raises(RuntimeError, match="setup_context"):
            f()


# ------------------------------------------------------------- fused backends
def test_forbid_double_backward_message():
    t = torch.zeros(2, requires_grad=True)
    with torch.no_grad():  # a first-order backward runs with grad mode off
        forbid_double_backward("PSN", "cupy", t)
        forbid_double_backward("PSN", "cupy")
    with torch.enable_grad():
        forbid_double_backward("PSN", "cupy", torch.zeros(2), None)  # nothing needs it
        with pytest.raises(RuntimeError) as info:
            forbid_double_backward("PSN", "cupy", torch.zeros(2), t)
    msg = str(info.value)
    assert "PSN" in msg and "backend 'cupy'" in msg
    assert "create_graph=True" in msg
    assert "backend='torch'" in msg and "sj_parallel.reference" in msg


def _cupy_ops():
    return pytest.importorskip("sj_parallel.backends.cupy_backend")


def test_cupy_backward_forbids_second_derivatives():
    """The cupy ops' autograd formulas refuse a double backward: run through the
    real custom ops on an empty layer (no kernel is launched), so the check runs on
    the CPU exactly as it does on a GPU."""
    cb = _cupy_ops()
    sg_args = (0, 2.0, 0.0, 0.0)  # ATan
    x = torch.zeros(4, 0, requires_grad=True)
    W = torch.randn(4, 4, requires_grad=True)
    b = torch.randn(4, 1, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    b0 = torch.randn((), requires_grad=True)
    v = torch.tensor(1.0, requires_grad=True)
    cases = {
        "PSN": lambda: cb.psn_forward(x, W, b, *sg_args),
        "SlidingPSN": lambda: cb.sliding_psn_forward(x, w, b0, *sg_args),
        "MPEPSN": lambda: cb.mpe_psn_forward(
            x, v, None, None, 0.25, False, True, 1, 2, 0, True, True, *sg_args
        )[0],
    }
    for name, make in cases.items():
        s = make()
        # a plain backward works
        (g,) = torch.autograd.grad(s.sum(), W if name == "PSN" else x)
        with pytest.raises(RuntimeError, match=f"{name}.*backend 'cupy'") as info:
            torch.autograd.grad(make().sum(), x, create_graph=True)
        assert "backend='torch'" in str(info.value)
