"""Bad input gets a clear error that says what was expected."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional

import sj_parallel as sjp
import sj_parallel.backends as backends


@pytest.mark.parametrize(
    "make",
    [
        lambda: sjp.PSN(4),
        lambda: sjp.MaskedPSN(2, 4, step_mode="m"),
    ],
)
def test_wrong_T(make):
    with pytest.raises(ValueError, match=r"T=4.*got .*T=5"):
        make()(torch.randn(5, 3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: sjp.PSN(4),
        lambda: sjp.SlidingPSN(2, step_mode="m"),
        lambda: sjp.MPEPSN(4, step_mode="m"),
    ],
)
def test_too_few_dims_and_integer_input(make):
    m = make()
    with pytest.raises(ValueError, match=r"\[T, N, \*\].*at least 2 dims"):
        m(torch.randn(4))
    with pytest.raises(TypeError, match="floating-point input"):
        m(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([[1.0, 2.0]])


def test_dtype_mismatch():
    with pytest.raises(TypeError, match=r"torch.float64 does not match.*torch.float32"):
        sjp.PSN(4)(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="does not match"):
        sjp.SlidingPSN(2, step_mode="m").double()(torch.randn(4, 3))
    with pytest.raises(TypeError, match="does not match"):
        sjp.MPEPSN(4, step_mode="s")(torch.randn(3, dtype=torch.float64))


@pytest.mark.parametrize("k,T", [(0, 4), (5, 4), (-1, 4)])
def test_masked_k_range(k, T):
    with pytest.raises(ValueError, match="k"):
        sjp.MaskedPSN(k, T)


def test_int_arguments():
    with pytest.raises(TypeError, match="T must be an int"):
        sjp.PSN(4.0)
    with pytest.raises(ValueError, match="T must be >= 1"):
        sjp.PSN(0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        sjp.SlidingPSN(0)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_lambda_range(lam):
    with pytest.raises(ValueError, match=r"lambda_ must be in \[0, 1\]"):
        sjp.MaskedPSN(2, 4, lambda_init=lam)
    m = sjp.MaskedPSN(2, 4)
    with pytest.raises(ValueError, match=r"lambda_ must be in \[0, 1\]"):
        m.lambda_ = lam


def test_unknown_backend():
    with pytest.raises(
        ValueError, match=r"unknown backend 'tpu'.*'torch', 'cupy', 'triton'"
    ):
        sjp.PSN(4, backend="tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        sjp.set_backend(torch.nn.Sequential(sjp.PSN(4)), "jax")


def test_cupy_backend_needs_cupy(monkeypatch):
    monkeypatch.setattr(backends, "cupy_available", lambda: False)
    with pytest.raises(ImportError, match="pip install cupy-cuda12x"):
        sjp.PSN(4, backend="cupy")
    with pytest.raises(ImportError, match="CuPy"):
        sjp.set_backend(torch.nn.Sequential(sjp.PSN(4)), "cupy")


def test_cupy_backend_needs_cuda_tensors(cupy_sees_a_gpu):
    """With a GPU (faked at CuPy's device query, tests/conftest.py) backend 'cupy'
    is accepted, and a CPU input is refused at forward time."""
    for m in [
        sjp.PSN(4, backend="cupy"),
        sjp.MaskedPSN(2, 4, step_mode="m", backend="cupy"),
        sjp.SlidingPSN(2, step_mode="m", backend="cupy"),
        sjp.MPEPSN(4, step_mode="m", backend="cupy"),
    ]:
        with pytest.raises(
            ValueError, match=r"backend 'cupy' needs CUDA tensors.*cpu.*'torch'"
        ):
            m(torch.randn(4, 3))


def test_masked_single_step_rules():
    m = sjp.MaskedPSN(2, 3, lambda_init=0.5, step_mode="s")
    with pytest.raises(ValueError, match="lambda_ >= 1"):
        m(torch.randn(4))
    m.lambda_ = 1.0
    for _ in range(3):
        m(torch.randn(4))
    with pytest.raises(OverflowError, match=r"T=3.*reset_net"):
        m(torch.randn(4))
    functional.reset_net(m)
    m(torch.randn(4))


def test_psn_single_step_raises():
    m = sjp.PSN(4, step_mode="s")
    with pytest.raises(ValueError, match="only supports multi-step mode"):
        m(torch.randn(3))


def test_mpe_errors():
    with pytest.raises(ValueError, match="estimate_from must be one of"):
        sjp.MPEPSN(4, estimate_from="next")
    with pytest.raises(ValueError, match="tau must be a finite, non-negative"):
        sjp.MPEPSN(4, tau=float("inf"))
    m = sjp.MPEPSN(4, step_mode="m")
    with pytest.raises(ValueError, match=r"MPEPSN\(T=4\) got 6 time steps in training"):
        m(torch.randn(6, 3))
    m.eval()
    assert m(torch.randn(6, 3)).shape == (6, 3)  # any length in eval


def test_device_mismatch_message():
    m = sjp.PSN(2)
    x = torch.randn(2, 3, device="meta")
    with pytest.raises(
        ValueError, match="input is on meta but the neuron's parameters"
    ):
        m(x)


def test_lambda_schedule():
    assert sjp.masked_psn_lambda(0, 64) == 0.0
    assert sjp.masked_psn_lambda(4, 65) == 0.5
    assert sjp.masked_psn_lambda(8, 65) == 1.0
    assert sjp.masked_psn_lambda(63, 64) == 1.0
    assert sjp.masked_psn_lambda(0, 1) == 1.0
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        sjp.masked_psn_lambda(0, 0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sjp.masked_psn_lambda(-1, 10)


def test_cupy_surrogate_and_dtype_errors_without_gpu():
    from spikingjelly.activation_based import surrogate

    from sj_parallel.backends import _cuda as C

    with pytest.raises(ValueError, match=r"supports the SpikingJelly surrogates.*ATan"):
        C.surrogate_params(surrogate.QPseudoSpike())
    with pytest.raises(ValueError, match="spiking=True"):
        C.surrogate_params(surrogate.ATan(spiking=False))
    assert C.surrogate_params(surrogate.ATan(alpha=3.0)) == (0, 3.0, 0.0, 0.0)
    kind, w, c, slope = C.surrogate_params(surrogate.PiecewiseLeakyReLU(w=2.0, c=0.1))
    assert (kind, w, c) == (5, 2.0, 0.1)
    assert slope in (0.5, 0.25)  # 1/w on SpikingJelly 0.0.0.0.14, 1/(2w) on 2.0
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        C.compile_options(torch.float64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sjp.SlidingPSN(2, step_mode="s"),
        lambda: sjp.MaskedPSN(2, 4, lambda_init=1.0, step_mode="s"),
        lambda: sjp.MPEPSN(4, step_mode="s"),
    ],
)
def test_single_step_input_checks(make):
    m = make()
    with pytest.raises(ValueError, match=r"\[N, \*\] with at least 1 dims.*\(\)"):
        m(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point input.*torch.int32"):
        m(torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"torch.float64 does not match.*float32"):
        m(torch.randn(3, dtype=torch.float64))
    assert m(torch.randn(3)).shape == (3,)


def test_masked_multi_step_too_few_dims():
    with pytest.raises(ValueError, match=r"MaskedPSN expects .*\[T, N, \*\]"):
        sjp.MaskedPSN(2, 4, step_mode="m")(torch.randn(4))


def test_mpe_single_step_training_past_T():
    m = sjp.MPEPSN(3, step_mode="s")
    for _ in range(3):
        m(torch.randn(2))
    with pytest.raises(ValueError, match=r"MPEPSN\(T=3\) got 4 time steps.*reset_net"):
        m(torch.randn(2))
    functional.reset_net(m)
    m(torch.randn(2))  # a new sequence is fine


def test_non_numeric_arguments_are_named():
    with pytest.raises(TypeError, match="tau must be a real number"):
        sjp.MPEPSN(4, tau="fast")
    with pytest.raises(TypeError, match=r"lambda_ must be a real number in \[0, 1\]"):
        sjp.MaskedPSN(2, 4, lambda_init="half")
    with pytest.raises(TypeError, match="k must be an int"):
        sjp.MaskedPSN(2.0, 4)
    with pytest.raises(ValueError, match="step_mode"):
        sjp.SlidingPSN(2, step_mode="x")


def test_nan_policy_all_neurons_and_modes():
    """NaN potentials compare false with >= 0: the spike is 0, never NaN."""
    nan_x = torch.randn(4, 3)
    nan_x[1, 2] = float("nan")
    for m in [
        sjp.SlidingPSN(2, step_mode="s"),
        sjp.MaskedPSN(2, 4, lambda_init=1.0, step_mode="s"),
        sjp.MPEPSN(4, step_mode="s"),
        sjp.MPEPSN(4, step_mode="m"),
        sjp.MPEPSN(4, estimate_from="current", step_mode="m"),
    ]:
        for train in (True, False):
            functional.reset_net(m)
            m.train(train)
            s = m(nan_x) if m.step_mode == "m" else torch.stack([m(v) for v in nan_x])
            assert not torch.isnan(s).any()
            assert set(s.unique().tolist()) <= {0.0, 1.0}
            assert s[1, 2] == 0.0


def test_mpe_empty_sequence():
    for train in (True, False):
        m = sjp.MPEPSN(4, step_mode="m").train(train)
        with pytest.raises(ValueError, match="at least one time step"):
            m(torch.randn(0, 3))
