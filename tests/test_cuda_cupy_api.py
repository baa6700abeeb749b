"""The installed CuPy has every class, attribute and signature the launcher uses
(``sj_parallel/backends/_cuda.py``), and its version is in the range setup.cfg
declares. Runs without a GPU (an attribute that needs a device raises CuPy's CUDA
error there, not ``AttributeError``) and on one.

``scripts/check_cupy_range.sh`` runs this file and the fake-GPU tests against the
oldest and the newest CuPy of the range.
"""

from __future__ import annotations

import configparser
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch  # noqa: F401,E402 - loads the NVRTC CuPy uses, as in the launcher

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
from cupy_backends.cuda.api import driver, runtime  # noqa: E402
from cupy_backends.cuda.libs import nvrtc  # noqa: E402

pytestmark = pytest.mark.sj_independent

ROOT = Path(__file__).resolve().parents[1]
CODE = 'extern "C" __global__ void sjp_probe(float* p) { p[threadIdx.x] = 1.0f; }'
DEVICE_ERRORS = (runtime.CUDARuntimeError, driver.CUDADriverError, RuntimeError)


def _extras() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return dict(cfg["options.extras_require"])


def _range(requirement: str):
    lo = re.search(r">=\s*([\d.]+)", requirement)
    hi = re.search(r"<\s*([\d.]+)", requirement)
    return tuple(int(p) for p in lo.group(1).split(".")), int(hi.group(1))


def test_cupy_range_is_declared_and_installed_version_is_in_it():
    extras = _extras()
    for extra, wheel in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        (req,) = [r for r in extras[extra].split() if r.startswith(wheel)]
        lo, hi = _range(req)
        assert lo >= (13, 0) and hi == 15, req
    dev = [r for r in extras["dev"].split() if r.startswith("cupy-cuda12x")]
    assert dev and _range(dev[0]) == _range(extras["cuda12"].strip()), dev
    for wheel in ("cupy-cuda12x", "cupy-cuda13x"):
        try:
            v = version(wheel)
        except PackageNotFoundError:
            continue
        (req,) = [r for r in "".join(extras.values()).split() if r.startswith(wheel)][
            :1
        ]
        lo, hi = _range(req)
        got = tuple(int(p) for p in re.findall(r"\d+", v)[:2])
        assert lo <= got and got[0] < hi, f"{wheel} {v} outside {req}"


def test_raw_module_and_kernel_api():
    mod = cupy.RawModule(code=CODE, options=("-std=c++14",), backend="nvrtc")
    assert mod.code == CODE and mod.options == ("-std=c++14",)
    with pytest.raises(TypeError):  # options must be a tuple (the launcher's are)
        cupy.RawModule(code=CODE, options=["-std=c++14"], backend="nvrtc")
    assert callable(mod.get_function)
    k = cupy.RawKernel(CODE, "sjp_probe")
    # k(grid, block, args, shared_mem=..., stream=...): RawKernel.__call__ passes its
    # keyword arguments to cupy.cuda.function.Function.__call__ (shared_mem, stream)
    # in every CuPy of the range; Cython hides those signatures from inspect
    assert callable(k)
    # present and readable (needs a device: CuPy's CUDA error without one)
    for attr in ("num_regs", "shared_size_bytes", "max_dynamic_shared_size_bytes"):
        assert attr in dir(type(k)), attr
        try:
            assert isinstance(getattr(k, attr), int)
        except DEVICE_ERRORS:
            pass
    try:  # settable: no AttributeError("not writable")
        k.max_dynamic_shared_size_bytes = 1024
    except DEVICE_ERRORS:
        pass
    # what the launcher before issue 16 used, and CuPy does not have
    assert not hasattr(type(k), "ptr") and not hasattr(runtime, "getLastError")


def test_device_stream_and_runtime_api():
    dev = cupy.cuda.Device(0)
    assert hasattr(dev, "__enter__") and hasattr(dev, "__exit__") and dev.id == 0
    assert callable(cupy.cuda.runtime.getDeviceCount)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:  # CuPy >= 14
        from sj_parallel.backends._cuda import _StreamHandle

        s = from_external(_StreamHandle(0x1234))
    else:  # CuPy 13
        s = cupy.cuda.ExternalStream(0x1234, 0)
    assert s.ptr == 0x1234 and isinstance(s, cupy.cuda.stream._BaseStream)


def test_nvrtc_binding_api():
    major, minor = nvrtc.getVersion()
    assert major >= 12
    for fn in ("createProgram", "compileProgram", "getPTX", "getProgramLog",
               "destroyProgram"):  # fmt: skip
        assert callable(getattr(nvrtc, fn)), fn
