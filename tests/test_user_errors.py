"""Errors that say what to do (issue 18, items 9 and 10).

* A surrogate class instead of an instance (``surrogate.ATan``) is refused when the
  neuron is built, with the fix (``surrogate.ATan()``).
* Backend ``'cupy'`` is refused when it is assigned (constructor, ``.backend =``,
  ``sjp.set_backend``) on a machine where it cannot run: CuPy must import AND see a
  CUDA device. The device query is faked with ``unittest.mock.create_autospec`` of
  the installed CuPy's own ``cupy.cuda.runtime.getDeviceCount``.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from spikingjelly.activation_based import surrogate

import sj_parallel as sjp
import sj_parallel.backends as backends
from sj_parallel import functional as F

NEURONS = {
    "PSN": lambda **kw: sjp.PSN(4, **kw),
    "MaskedPSN": lambda **kw: sjp.MaskedPSN(2, 4, **kw),
    "SlidingPSN": lambda **kw: sjp.SlidingPSN(2, **kw),
    "MPEPSN": lambda **kw: sjp.MPEPSN(4, **kw),
}


# ------------------------------------------------------------ item 9: surrogates
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("cls", [surrogate.ATan, surrogate.PiecewiseQuadratic])
def test_surrogate_class_instead_of_instance(name, cls):
    with pytest.raises(TypeError) as info:
        NEURONS[name](surrogate_function=cls)
    msg = str(info.value)
    assert f"{name}: surrogate_function must be a surrogate instance" in msg
    assert f"the class {cls.__name__}" in msg
    assert f"surrogate.{cls.__name__}()" in msg  # the fix, with parentheses


@pytest.mark.parametrize("name", list(NEURONS))
def test_surrogate_not_callable(name):
    with pytest.raises(TypeError, match=f"{name}: surrogate_function must be"):
        NEURONS[name](surrogate_function="atan")


def test_surrogate_checked_in_the_functional_ops():
    """The functional ops check too (the modules' attribute is a child module:
    torch itself refuses a class there)."""
    x = torch.randn(4, 2)
    ops = {
        "PSN": lambda sg: F.psn_multi_step(x, torch.eye(4), torch.zeros(4, 1), sg),
        "MaskedPSN": lambda sg: F.masked_psn_multi_step(
            x, torch.eye(4), torch.zeros(4, 1), 1.0, torch.eye(4), sg
        ),
        "SlidingPSN": lambda sg: F.sliding_psn_multi_step(
            x, torch.ones(2), torch.tensor(0.0), sg
        ),
        "MPEPSN": lambda sg: F.mpe_psn_multi_step(x, torch.tensor(1.0), 0.25, sg),
    }
    for name, op in ops.items():
        with pytest.raises(TypeError, match=rf"{name}: .*surrogate.ATan\(\)"):
            op(surrogate.ATan)
        op(surrogate.ATan())
    for sg in (None, surrogate.ATan(), surrogate.Sigmoid(alpha=2.0)):
        NEURONS["PSN"](surrogate_function=sg)  # instances and the default are fine
    NEURONS["PSN"](surrogate_function=lambda h: (h >= 0).float())  # any callable


# -------------------------------------------------------- item 10: backend cupy
cupy = pytest.importorskip("cupy") if backends.cupy_available() else None
needs_cupy = pytest.mark.skipif(cupy is None, reason="CuPy is not installed")
# the installed CuPy's own functions, the specs of the fakes
REAL = {}
if cupy is not None:
    REAL = {
        "getDeviceCount": cupy.cuda.runtime.getDeviceCount,
        "driverGetVersion": cupy.cuda.runtime.driverGetVersion,
    }


@pytest.fixture
def fresh_checks():
    backends.cupy_import_error.cache_clear()
    backends.cupy_device_error.cache_clear()
    yield
    backends.cupy_import_error.cache_clear()
    backends.cupy_device_error.cache_clear()


def _fake_device_count(monkeypatch, **kw):
    """``cupy.cuda.runtime.getDeviceCount`` replaced by an autospec of itself."""
    fake = mock.create_autospec(REAL["getDeviceCount"], **kw)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", fake)
    return fake


def _cuda_error(status: int):
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    return CUDARuntimeError(status)


def _assignments():
    """Every way to assign a backend."""

    def setter():
        m = sjp.SlidingPSN(2, step_mode="m")
        m.backend = "cupy"

    return {
        "constructor": lambda: sjp.PSN(4, backend="cupy"),
        "setter": setter,
        "set_backend": lambda: sjp.set_backend(
            torch.nn.Sequential(sjp.MPEPSN(4)), "cupy"
        ),
        "check": lambda: backends.check_backend_available("cupy"),
    }


@needs_cupy
@pytest.mark.parametrize("how", list(_assignments()))
def test_cupy_without_a_gpu_is_refused_at_assignment(how, fresh_checks, monkeypatch):
    # no driver: the CUDA runtime reports cudaErrorInsufficientDriver (35)
    err = _cuda_error(35)
    fake = _fake_device_count(monkeypatch, side_effect=err)
    monkeypatch.setattr(
        cupy.cuda.runtime,
        "driverGetVersion",
        mock.create_autospec(REAL["driverGetVersion"], return_value=0),
    )
    with pytest.raises(RuntimeError) as info:
        _assignments()[how]()
    assert fake.called
    msg = str(info.value)
    assert "backend 'cupy' cannot run here: no CUDA GPU" in msg
    assert "no NVIDIA driver" in msg and "cudaErrorInsufficientDriver" in msg
    assert "backend='torch'" in msg and "sj_parallel doctor" in msg
    assert info.value.__cause__ is err
    assert not isinstance(info.value, ImportError)


@needs_cupy
def test_cupy_device_reasons(fresh_checks, monkeypatch):
    """An old driver, no visible device, and a GPU that works."""
    version = mock.create_autospec(REAL["driverGetVersion"])
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", version)
    version.return_value = 11040
    _fake_device_count(monkeypatch, side_effect=_cuda_error(35))
    with pytest.raises(RuntimeError, match=r"driver supports CUDA 11\.4") as info:
        sjp.PSN(4, backend="cupy")
    assert "older than" in str(info.value) and "nvidia-smi" in str(info.value)

    backends.cupy_device_error.cache_clear()
    _fake_device_count(monkeypatch, return_value=0)
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES") as info:
        sjp.PSN(4, backend="cupy")
    assert "no CUDA GPU" in str(info.value)

    backends.cupy_device_error.cache_clear()
    fake = _fake_device_count(monkeypatch, return_value=1)
    m = sjp.PSN(4, backend="cupy")
    m.backend = "cupy"
    assert sjp.set_backend(torch.nn.Sequential(m), "cupy") == ["0"]
    backends.check_backend_available("cupy")
    assert fake.call_count == 1  # the answer is cached
    # the input's device is still checked at forward time
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        m(torch.randn(4, 3))


def test_no_gpu_comes_first_when_cupy_is_missing(fresh_checks, monkeypatch):
    """Without CuPy and without a GPU, installing CuPy is not the fix."""
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ImportError) as info:
        sjp.PSN(4, backend="cupy")
    msg = str(info.value)
    assert msg.index("no CUDA GPU") < msg.index("not installed")
    assert "use backend='torch'" in msg and "pip install cupy-cuda" in msg
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
