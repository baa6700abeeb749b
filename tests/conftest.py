import os
import sys

import pytest

# tests import their independent references as plain modules
sys.path.insert(0, os.path.dirname(__file__))

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
