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
#: (kernels, compilers, interpreters: nothing of SpikingJelly's is involved) ran on
#: the first leg already.
SKIP_SJ_INDEPENDENT = os.environ.get("SJP_SKIP_SJ_INDEPENDENT", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not SKIP_SJ_INDEPENDENT:
        return
    skip = pytest.mark.skip(
        reason="SJP_SKIP_SJ_INDEPENDENT: does not depend on the SpikingJelly version "
        "(run on the other CI leg)"
    )
    for item in items:
        if "sj_independent" in item.keywords:
            item.add_marker(skip)
