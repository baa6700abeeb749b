"""Test-session set-up.

``SJP_SPIKINGJELLY_SRC=PATH`` runs the suite against a SpikingJelly source tree (a
git checkout of SpikingJelly master, say) instead of the installed wheel: ``PATH``
(the directory that holds the ``spikingjelly`` package) goes first on ``sys.path``
and on ``PYTHONPATH`` (for the tests that start subprocesses), and the report
header names the version, the path and the git commit in use.

Without a GPU, ``TRITON_INTERPRET=1`` is set so that Triton's interpreter runs the
triton backend's kernels on CPU tensors. ``SJP_SKIP_VERSION_INDEPENDENT=1`` (the
second SpikingJelly leg of ``.ci/run``) deselects the tests that do not depend on the
SpikingJelly version.
"""

import os
import sys

import pytest

# tests import their independent references as plain modules
sys.path.insert(0, os.path.dirname(__file__))

#: Test files whose results do not depend on the SpikingJelly version (the CUDA
#: kernels' emulation and NVRTC compiles, the kernel model, the built documentation
#: site). `.ci/run` runs the suite on SpikingJelly 2.0.0 and again on 0.0.0.0.14;
#: on the second leg it sets SJP_SKIP_VERSION_INDEPENDENT=1, which deselects these
#: files and the tests marked ``sj_independent`` (kernels, compilers, interpreters:
#: SpikingJelly only lends its surrogate objects, whose parameters are tested on both
#: legs); they ran on the first leg. Add new slow, version-independent files here.
VERSION_INDEPENDENT = (
    "test_cuda_emulation.py",
    "test_cuda_emulation_ops.py",
    "test_cuda_nvrtc.py",
    "test_kernel_model.py",
    "test_docs_site.py",
)


def _version_independent(item) -> bool:
    return item.path.name in VERSION_INDEPENDENT or "sj_independent" in item.keywords


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SJP_SKIP_VERSION_INDEPENDENT") != "1":
        return
    keep, drop = [], []
    for item in items:
        (drop if _version_independent(item) else keep).append(item)
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


_SRC_VAR = "SJP_SPIKINGJELLY_SRC"


def _inside(path: str, tree: str) -> bool:
    path, tree = os.path.abspath(path), os.path.abspath(tree)
    return os.path.commonpath([path, tree]) == tree


def _use_spikingjelly_source() -> None:
    src = os.environ.get(_SRC_VAR)
    if not src:
        return
    src = os.path.abspath(os.path.expanduser(src))
    if not os.path.isfile(os.path.join(src, "spikingjelly", "__init__.py")):
        raise pytest.UsageError(
            f"{_SRC_VAR}={src}: no spikingjelly/__init__.py there; point it at the "
            "root of a SpikingJelly checkout (the directory that holds the "
            "spikingjelly package)"
        )
    loaded = sys.modules.get("spikingjelly")
    if loaded is not None and not _inside(loaded.__file__, src):
        raise pytest.UsageError(
            f"{_SRC_VAR}={src}, but spikingjelly was already imported from "
            f"{loaded.__file__} before the tests' conftest ran (a pytest plugin?)"
        )
    sys.path.insert(0, src)
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


_use_spikingjelly_source()


def pytest_report_header(config):
    from sj_parallel import _compat

    line = _compat.describe_spikingjelly()
    src = os.environ.get(_SRC_VAR)
    if src:
        if not _inside(_compat.SJ_PATH, src):
            raise pytest.UsageError(
                f"{_SRC_VAR}={src}, but the tests imported spikingjelly from "
                f"{_compat.SJ_PATH}"
            )
        line += f" [{_SRC_VAR}={src}]"
    return [line]


# Without a GPU, the triton backend's kernels run on CPU tensors through Triton's
# interpreter. Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set
# here, before any test imports sj_parallel.triton; on a GPU machine (or when the
# variable is set already) nothing changes. Tests of what users see without a GPU
# patch sj_parallel.backends.triton_interpreting.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
