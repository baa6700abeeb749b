"""backend='triton' through the neurons: against backend='torch', single-step vs
multi-step, torch.compile(fullgraph=True), autocast, the torch.library ops' own checks,
the triton_op route, double backward, and the errors users get when Triton cannot run.

Without a GPU the kernels run on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional, layer, surrogate

import sj_parallel as sjp
import sj_parallel.backends as backends

ROOT = Path(__file__).resolve().parents[1]
_HAVE_TRITON = importlib.util.find_spec("triton") is not None
RUNS = _HAVE_TRITON and (torch.cuda.is_available() or backends.triton_interpreting())
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not RUNS, reason="needs Triton and a GPU or Triton's interpreter"
)
if RUNS:
    from sj_parallel.backends import triton_backend as tb


def _net(backend: str, T: int = 4, lam: float = 0.5):
    return torch.nn.Sequential(
        layer.Linear(6, 8),
        sjp.PSN(T, backend=backend),
        layer.Linear(8, 8),
        sjp.MaskedPSN(2, T, lambda_init=lam, backend=backend),
        layer.Linear(8, 8),
        sjp.SlidingPSN(3, backend=backend),
        layer.Linear(8, 5),
        sjp.MPEPSN(T, backend=backend),
    )


def _pair(T: int = 4, lam: float = 0.5):
    torch.manual_seed(0)
    a, b = _net("triton", T, lam), _net("torch", T, lam)
    b.load_state_dict(a.state_dict())
    for n in (a, b):
        functional.set_step_mode(n, "m")
        n.to(DEVICE)
    return a, b


def _train_step(net, x, seed=3):
    """Spikes, the input gradient and every parameter gradient of one step with the
    membrane loss (MPE-PSN samples from the same torch seed)."""
    functional.reset_net(net)
    net.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = net(x)
    (out.float().sum() + sjp.membrane_loss(net)).backward()
    grads = [p.grad.detach().clone() for p in net.parameters() if p.grad is not None]
    return out.detach(), x.grad.detach(), grads


# ------------------------------------------------------------- against 'torch'
@needs_triton
@pytest.mark.sj_independent
def test_net_matches_torch_backend_train_and_eval():
    a, b = _pair()
    x = torch.randn(4, 3, 6, device=DEVICE)
    for mode in ("train", "eval"):
        getattr(a, mode)()
        getattr(b, mode)()
        oa, gxa, gpa = _train_step(a, x)
        ob, gxb, gpb = _train_step(b, x)
        assert torch.equal(oa, ob), mode
        torch.testing.assert_close(gxa, gxb, rtol=1e-4, atol=1e-5)
        assert len(gpa) == len(gpb)
        for u, v in zip(gpa, gpb):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.sj_independent
def test_sample_in_eval_draws_like_torch_backend():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 9, device=DEVICE)
    outs = []
    for backend in ("triton", "torch"):
        torch.manual_seed(1)
        m = sjp.MPEPSN(6, step_mode="m", backend=backend, sample_in_eval=True)
        m.to(DEVICE).eval()
        torch.manual_seed(2)
        outs.append((m(x), m.u_hat, m.u))
    for u, v in zip(*outs):
        assert torch.equal(u, v)


# --------------------------------------------------- single step vs multi step
@needs_triton
@pytest.mark.sj_independent
@pytest.mark.parametrize("which", ["masked", "sliding", "mpe_previous", "mpe_current"])
def test_single_step_equals_multi_step(which):
    T = 6
    torch.manual_seed(4)
    if which == "masked":
        m = sjp.MaskedPSN(3, T, lambda_init=1.0, step_mode="m", backend="triton")
    elif which == "sliding":
        m = sjp.SlidingPSN(4, exp_init=False, step_mode="m", backend="triton")
    else:
        m = sjp.MPEPSN(T, estimate_from=which[4:], step_mode="m", backend="triton")
    m.to(DEVICE)
    x = torch.randn(T, 2, 5, device=DEVICE)
    torch.manual_seed(5)
    multi = m(x)
    states = {k: v for k, v in m._memories.items() if k in ("u_hat", "u", "mem_loss")}
    functional.reset_net(m)
    m.step_mode = "s"
    torch.manual_seed(5)
    single = torch.stack([m(x[t]) for t in range(T)])
    assert torch.equal(single, multi)
    for k, v in states.items():  # MPE-PSN's carried estimate and potential, the loss
        torch.testing.assert_close(m._memories[k], v, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ torch.compile
@needs_triton
@pytest.mark.sj_independent
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_compile_fullgraph_all_four_neurons(compiler, mode):
    """The ops stay in the graph, with the values and gradients of eager mode.
    Without a GPU this traces the custom_op route, whose fake implementations give
    the shapes, and runs the kernels in Triton's interpreter.

    fullgraph=True holds for all four neurons in eval mode, and in training mode for
    the PSN family; a training MPE-PSN draws its sequence's seed outside the graph
    (one deliberate graph break, so that compiled and eager runs draw the same
    samples), so the training net is compiled without fullgraph and must still
    equal eager bitwise. (With inductor the net has no Linear layers: inductor would
    compile them with another float32 summation order, and with a handful of neurons
    one Bernoulli draw flipped by an ulp of the input moves the membrane loss by
    percents.)"""
    a, _ = _pair()
    T = 4
    x = torch.randn(T, 3, 6, device=DEVICE)
    if compiler == "inductor":
        torch.manual_seed(0)
        a = torch.nn.Sequential(
            sjp.PSN(T, backend="triton"),
            sjp.MaskedPSN(2, T, lambda_init=0.5, backend="triton"),
            sjp.SlidingPSN(3, backend="triton"),
            sjp.MPEPSN(T, backend="triton"),
        )
        functional.set_step_mode(a, "m")
        a.to(DEVICE)
        x = x * 3
    getattr(a, mode)()
    expect = _train_step(a, x)
    torch._dynamo.reset()
    compiled = torch.compile(a, fullgraph=mode == "eval", backend=compiler)
    got = _train_step(compiled, x)
    assert torch.equal(got[0], expect[0])
    assert len(got[2]) == len(expect[2]) > 0
    for u, v in zip([got[1]] + got[2], [expect[1]] + expect[2]):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)
    if mode == "train":  # the PSN family alone: one graph, fullgraph=True
        psn_family = torch.nn.Sequential(
            *[m for m in a if not isinstance(m, sjp.MPEPSN)]
        )
        expect = _train_step(psn_family, x)
        torch._dynamo.reset()
        compiled = torch.compile(psn_family, fullgraph=True, backend=compiler)
        got = _train_step(compiled, x)
        assert torch.equal(got[0], expect[0])
        for u, v in zip([got[1]] + got[2], [expect[1]] + expect[2]):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)


@needs_triton
@pytest.mark.sj_independent
def test_opcheck_every_op():
    """torch.library's own checks of each op: schema, fake implementation (shapes and
    dtypes), autograd registration, no aliasing."""
    torch.manual_seed(0)
    d = DEVICE
    T, M = 5, 9
    x, g = torch.randn(T, M, device=d), torch.randn(T, M, device=d)
    W, b = torch.randn(T, T, device=d) / 2, torch.randn(T, 1, device=d)
    w, bs = torch.randn(3, device=d), torch.tensor(0.1, device=d)
    v = torch.tensor(0.8, device=d)
    st = torch.randn(M, device=d)
    sg = (0, 2.0, 0.0, 0.0)
    cases = [
        (tb.psn_forward, (x.requires_grad_(), W, b) + sg),
        (tb.psn_backward, (x.detach(), g, W, b) + sg),
        (tb.sliding_psn_forward, (x, w, bs) + sg),
        (tb.sliding_psn_backward, (x.detach(), g, w, bs) + sg),
        (tb.mpe_psn_forward,
         (x, v, st, st, 0.25, False, True, 5, 6, 2, True, True, 2, 1.0, 0.0, 0.0)),
        (tb.mpe_psn_backward,
         (x.detach(), torch.empty(0, x.shape[1], dtype=torch.int32, device=d), v, st,
          st, g, torch.randn(T, device=d), st, st, 0.25, True,
          True, 5, 6, 2, 2, 1.0, 0.0, 0.0)),
    ]  # fmt: skip
    for op, args in cases:
        torch.library.opcheck(op, args)


# ---------------------------------------------------------------------- autocast
@needs_triton
@pytest.mark.sj_independent
def test_autocast_half_inputs_float32_parameters():
    """Under autocast the neurons get half-precision input from the layers before them
    and keep float32 parameters; the ops take that mix as it is (float32 math) and
    return the parameters' gradients in float32, as the torch backend does."""
    dev = DEVICE
    half = torch.bfloat16 if dev == "cpu" else torch.float16
    a, b = _pair()
    x = torch.randn(4, 3, 6, device=dev)
    res = []
    for net in (a, b):
        functional.reset_net(net)
        net.zero_grad()
        torch.manual_seed(3)
        with torch.autocast(dev, dtype=half):
            out = net(x)
            loss = out.float().sum() + sjp.membrane_loss(net)
        loss.backward()
        assert out.dtype == half
        res.append((out, [p.grad for p in net.parameters()]))
    assert all(p.dtype == torch.float32 for p in res[0][1] if p is not None)
    torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=0)
    for u, v in zip(res[0][1], res[1][1]):
        if u is not None or v is not None:
            torch.testing.assert_close(u, v, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------- the triton_op route
@needs_triton
@pytest.mark.sj_independent
def test_triton_op_route_runs_eagerly():
    """The GPU route (torch.library.triton_op + wrap_triton), forced with
    SJP_TRITON_OP=1, run eagerly by the interpreter in a fresh process: the same values
    and gradients as the custom_op route."""
    script = (
        "import torch, sj_parallel as sjp\n"
        "from sj_parallel.backends import triton_backend as tb\n"
        "from spikingjelly.activation_based import functional, layer\n"
        "assert tb.USE_TRITON_OP\n"
        "def net(backend):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(layer.Linear(6, 8),"
        " sjp.PSN(4, backend=backend),"
        " sjp.MaskedPSN(2, 4, lambda_init=0.5, backend=backend),"
        " sjp.SlidingPSN(3, backend=backend), sjp.MPEPSN(4, backend=backend))\n"
        "a, b = net('triton'), net('torch')\n"
        "x = torch.randn(4, 3, 6)\n"
        "res = []\n"
        "for n in (a, b):\n"
        "    functional.set_step_mode(n, 'm')\n"
        "    xx = x.clone().requires_grad_(True)\n"
        "    torch.manual_seed(1)\n"
        "    out = n(xx)\n"
        "    (out.sum() + sjp.membrane_loss(n)).backward()\n"
        "    res.append((out, xx.grad))\n"
        "assert torch.equal(res[0][0], res[1][0])\n"
        "torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-4, atol=1e-5)\n"
        "print('triton_op route OK')\n"
    )
    env = dict(os.environ, SJP_TRITON_OP="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton_op route OK" in proc.stdout


# --------------------------------------------------------------- double backward
@needs_triton
@pytest.mark.sj_independent
@pytest.mark.parametrize("make", ["PSN", "MaskedPSN", "SlidingPSN", "MPEPSN"])
def test_double_backward_raises_a_clear_error(make):
    cls = getattr(sjp, make)
    args = {"PSN": (4,), "MaskedPSN": (2, 4), "SlidingPSN": (2,), "MPEPSN": (4,)}[make]
    m = cls(*args, step_mode="m", backend="triton").to(DEVICE)
    x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    name = "PSN/MaskedPSN" if make in ("PSN", "MaskedPSN") else make
    with pytest.raises(
        RuntimeError,
        match=f"{name} with backend 'triton' has no "
        "second derivatives.*backend='torch'.*sj_parallel.reference",
    ):
        torch.autograd.grad(m(x).sum(), x, create_graph=True)  # fmt: skip
    functional.reset_net(m)
    (g,) = torch.autograd.grad(m(x).sum(), x)  # first order is fine
    assert g.shape == x.shape


# ------------------------------------------------------- names and conversions
@needs_triton
def test_set_backend_supported_backends_and_conversions():
    net = _net("torch")
    functional.set_step_mode(net, "m")
    assert "triton" in net[1].supported_backends and "triton" in sjp.BACKENDS
    assert sjp.set_backend(net, "triton") == ["1", "3", "5", "7"]
    assert all(m.backend == "triton" and "backend=triton" in repr(m)
               for m in net if isinstance(m, sjp.ParallelNeuron))  # fmt: skip
    net.to(DEVICE)
    net(torch.randn(4, 2, 6, device=DEVICE)).sum().backward()
    sjp.set_backend(net, "torch")
    # replace SpikingJelly's neurons, and the model zoo's factory
    from spikingjelly.activation_based import neuron

    lif = torch.nn.Sequential(layer.Linear(4, 4), neuron.LIFNode(step_mode="m"))
    sjp.replace_neurons(lif, sjp.PSN, T=3, backend="triton")
    assert isinstance(lif[1], sjp.PSN) and lif[1].backend == "triton"
    lif.to(DEVICE)
    assert lif(torch.randn(3, 2, 4, device=DEVICE)).shape == (3, 2, 4)
    make = sjp.zoo_neuron(sjp.SlidingPSN, k=2, backend="triton")
    assert make(surrogate_function=surrogate.ATan()).backend == "triton"


# --------------------------------------------------------------------- errors
@needs_triton
def test_input_errors_name_the_backend_and_the_fix():
    sg = surrogate.ATan()
    x64 = torch.randn(4, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="backend 'triton' supports float32, float16"):
        tb.psn(x64, torch.randn(4, 4, dtype=torch.float64), torch.zeros(4, 1), sg)
    x = torch.randn(65, 3, device=DEVICE)
    with pytest.raises(ValueError, match="T <= 64, got T=65; use backend='torch'"):
        tb.psn(x, torch.randn(65, 65, device=DEVICE), torch.zeros(65, 1), sg)
    with pytest.raises(ValueError, match="k <= 32, got k=33; use backend='torch'"):
        tb.sliding_psn(x, torch.randn(33, device=DEVICE), torch.tensor(0.0), sg)
    with pytest.raises(ValueError, match="backend 'triton' supports the SpikingJelly"):
        tb.psn(x[:4], torch.randn(4, 4, device=DEVICE), torch.zeros(4, 1),
               surrogate.QPseudoSpike())  # fmt: skip
    with pytest.raises(ValueError, match=r"time step -1 out of range"):
        tb._t0_words(-1)


@pytest.mark.skipif(not _HAVE_TRITON, reason="needs Triton")
def test_cpu_tensor_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU "exists"
    m = sjp.PSN(4, step_mode="m", backend="triton")
    with pytest.raises(ValueError, match="backend 'triton' needs CUDA .*on cpu"):
        m(torch.randn(4, 2))


def test_no_gpu_and_no_interpreter_is_refused(monkeypatch):
    """Assigning 'triton' where it cannot run fails at once, with the reason and the
    fix; the torch backend is unaffected."""
    if not _HAVE_TRITON:
        pytest.skip("needs Triton")
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for attempt in (
        lambda: sjp.PSN(4, backend="triton"),
        lambda: setattr(sjp.SlidingPSN(2), "backend", "triton"),
        lambda: sjp.set_backend(torch.nn.Sequential(sjp.MPEPSN(4)), "triton"),
    ):
        with pytest.raises(RuntimeError, match="backend 'triton' cannot run here") as e:
            attempt()
        msg = str(e.value)
        assert "Fix:" in msg and "backend='torch'" in msg and "doctor" in msg
    backends.check_backend_available("torch")


@pytest.mark.parametrize(
    "err,reason",
    [
        (ModuleNotFoundError("No module named 'triton'", name="triton"),
         "Triton is not installed"),
        (ImportError("libcuda.so.1: cannot open shared object file"),
         "Triton is installed but failed to import: ImportError: libcuda.so.1"),
    ],
)  # fmt: skip
def test_triton_that_does_not_import_is_explained(monkeypatch, err, reason):
    monkeypatch.setattr(backends, "triton_import_error", lambda: err)
    with pytest.raises(ImportError, match="backend 'triton' cannot be used") as info:
        sjp.PSN(4, backend="triton")
    assert reason in str(info.value) and "Fix:" in str(info.value)
    assert info.value.__cause__ is err


def test_cpu_only_torch_build_is_named(monkeypatch):
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    reason, fix, cause = backends.triton_gpu_problem()
    assert "CPU-only build" in reason and cause is None and "backend='torch'" in fix
    err = ModuleNotFoundError("No module named 'triton'", name="triton")
    reason, fix = backends.explain_triton_error(err)
    assert "CPU-only build" in reason and "pytorch.org" in fix


def test_registry_has_one_entry_per_backend():
    """One table drives get_backend and the availability checks: every name has its
    module (with the same three ops), check and install hint."""
    import inspect

    assert set(backends.REGISTRY) == set(sjp.BACKENDS) == {"torch", "cupy", "triton"}
    torch_ops = importlib.import_module(backends.REGISTRY["torch"].module)
    for name, spec in backends.REGISTRY.items():
        assert spec.name == name and spec.install_hint()
        if name == "torch" or (name == "triton" and RUNS):
            mod = backends.get_backend(name)
            for op in ("psn", "sliding_psn", "mpe_psn"):
                a = inspect.signature(getattr(mod, op)).parameters.values()
                b = inspect.signature(getattr(torch_ops, op)).parameters.values()
                assert [(p.name, p.kind, p.default) for p in a] == [
                    (p.name, p.kind, p.default) for p in b
                ], (name, op)


# ------------------------------------------------------------------- benchmark
@needs_triton
def test_benchmark_includes_triton_on_a_gpu(monkeypatch):
    """``bench.py --device cuda`` measures backend 'triton' beside 'cupy' and 'torch'
    where it runs (the cases are only built here: nothing touches a GPU)."""
    spec = importlib.util.spec_from_file_location(
        "bench_cases", ROOT / "benchmarks" / "bench.py"
    )
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec.loader.exec_module(bench)
    names = ["psn", "masked-psn", "sliding-psn", "mpe-psn"]
    out = bench.cases(4, torch.device("cuda"), names, ["auto"])
    for n in names:
        m = out[f"{n}/ours-triton"]()
        assert m.backend == "triton" and m.memory == "lean"
    assert "psn/ours-triton" not in bench.cases(4, torch.device("cpu"), names, ["auto"])
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bench._runs("triton")
    assert "psn/ours-triton" not in bench.cases(
        4, torch.device("cuda"), names, ["auto"]
    )


# ----------------------------------------------------------- memory for backward
@needs_triton
@pytest.mark.sj_independent
@pytest.mark.parametrize("make", ["PSN", "MaskedPSN", "SlidingPSN", "MPEPSN"])
def test_keeps_only_what_the_lean_policy_keeps(make):
    """Backward keeps X (and the tiny parameters and [M] states), as the torch
    backend's lean policy and the cupy backend do: no [T, M] float buffer besides X."""
    T, N, C = 8, 16, 32
    args = {"PSN": (T,), "MaskedPSN": (2, T), "SlidingPSN": (3,), "MPEPSN": (T,)}[make]
    saved = {}
    for backend, memory in (("triton", "lean"), ("torch", "lean")):
        m = getattr(sjp, make)(*args, step_mode="m", backend=backend, memory=memory)
        m.to(DEVICE).train()
        x = torch.randn(T, N, C, device=DEVICE, requires_grad=True)
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x)
        big = [s for s in sizes if s >= x.numel() * x.element_size()]
        saved[backend] = (sum(sizes), big)
    assert saved["triton"][1] == [T * N * C * 4]  # X, once
    assert saved["triton"][0] <= saved["torch"][0]


@pytest.mark.skipif(not _HAVE_TRITON, reason="needs Triton")
def test_every_launch_is_a_listed_variant():
    """What the launcher can build for any ``T``/``k``, dtype, part and ``VEC`` (1, or
    the one :func:`vec_width` gives for that size) is among
    :func:`sj_parallel.triton.kernel_variants`, which the static checks compile: no
    variant reaches a GPU unchecked."""
    from sj_parallel import triton as K

    listed = {(v.family, v.backward, v.dtype, v.constexprs, v.num_warps)
              for v in K.kernel_variants()}  # fmt: skip

    def check(family, backward, dtype, const=0, current=False, part=0):
        vw = K.vec_width(family, backward, dtype, const)
        for vec in {1, vw}:
            ce, opts = K.launch_params(family, backward, const, current, "tf32x3",
                                       part, dtype, vec)  # fmt: skip
            key = (family, backward, dtype, tuple(ce.items()), opts["num_warps"])
            assert key in listed, key

    for dtype in K.DTYPES:
        for T in range(1, K.PSN_MAX_T + 1):
            check("psn", False, dtype, T)
            for part in K.backward_parts("psn", T, dtype):
                check("psn", True, dtype, T, part=part)
        for k in range(1, K.SLIDING_MAX_K + 1):
            check("sliding", False, dtype, k)
            check("sliding", True, dtype, k)
        for current in (False, True):
            check("mpe", False, dtype, current=current)
            check("mpe", True, dtype, current=current)
    # the steps-as-rows backward has no vector IO; the neuron-row one does
    assert K.vec_width("psn", True, torch.float32, 64) == 1
    assert K.vec_width("psn", True, torch.float32, 16) == 4
