import os
import sys

import pytest

# tests import their independent references as plain modules
sys.path.insert(0, os.path.dirname(__file__))

#: Test files whose results do not depend on the SpikingJelly version (the CUDA
#: kernels' emulation and NVRTC compiles, the kernel model, the built documentation
#: site). `.ci/run` runs the suite on SpikingJelly 2.0.0 and again on 0.0.0.0.14;
#: on the second leg it sets SJP_SKIP_VERSION_INDEPENDENT=1, which deselects these
#: files (they ran on the first leg). Add new slow, version-independent files here.
VERSION_INDEPENDENT = (
    "test_cuda_emulation.py",
    "test_cuda_emulation_ops.py",
    "test_cuda_nvrtc.py",
    "test_kernel_model.py",
    "test_docs_site.py",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SJP_SKIP_VERSION_INDEPENDENT") != "1":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.path.name in VERSION_INDEPENDENT else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def cupy_sees_a_gpu(monkeypatch):
    """CuPy reports one CUDA device, so backend 'cupy' can be assigned on a machine
    without one: the installed CuPy's own ``cupy.cuda.runtime.getDeviceCount`` is
    replaced by ``unittest.mock.create_autospec`` of itself. The input's device is
    still checked at forward time. Yields the fake."""
    from unittest import mock

    from sj_parallel import backends

    if not backends.cupy_available():
        pytest.skip("CuPy is not installed")
    import cupy

    fake = mock.create_autospec(cupy.cuda.runtime.getDeviceCount, return_value=1)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", fake)
    backends.cupy_device_error.cache_clear()
    yield fake
    backends.cupy_device_error.cache_clear()
