"""Test-session set-up.

``SJP_SPIKINGJELLY_SRC=PATH`` runs the suite against a SpikingJelly source tree (a
git checkout of SpikingJelly master, say) instead of the installed wheel: ``PATH``
(the directory that holds the ``spikingjelly`` package) goes first on ``sys.path``
and on ``PYTHONPATH`` (for the tests that start subprocesses), and the report
header names the version, the path and the git commit in use.

Without a GPU, ``TRITON_INTERPRET=1`` is set so that Triton's interpreter runs the
triton backend's kernels on CPU tensors. ``SJP_SKIP_SJ_INDEPENDENT=1`` (the second
SpikingJelly leg of ``.ci/run``) skips the tests that do not depend on the
SpikingJelly version.
"""

import os
import sys

import pytest

# tests import their independent references as plain modules
sys.path.insert(0, os.path.dirname(__file__))

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

#: Set by .ci/run for its second SpikingJelly leg: tests marked ``sj_independent``
#: (kernels, compilers, interpreters: SpikingJelly only lends its surrogate objects,
#: whose parameters are tested on both legs) ran on the first leg already.
SKIP_SJ_INDEPENDENT = os.environ.get("SJP_SKIP_SJ_INDEPENDENT", "") not in ("", "0")
#: Whole test files of that kind (the CUDA kernels' compile, emulation and model
#: checks), counted as marked.
SJ_INDEPENDENT_FILES = {
    "test_cuda_emulation.py",
    "test_cuda_emulation_ops.py",
    "test_cuda_nvrtc.py",
    "test_kernel_model.py",
}


def pytest_collection_modifyitems(config, items):
    if not SKIP_SJ_INDEPENDENT:
        return
    skip = pytest.mark.skip(
        reason="SJP_SKIP_SJ_INDEPENDENT: does not depend on the SpikingJelly version "
        "(run on the other CI leg)"
    )
    for item in items:
        if "sj_independent" in item.keywords or item.path.name in SJ_INDEPENDENT_FILES:
            item.add_marker(skip)
