"""NVRTC compile checks of every kernel, dtype and compile-time T, without a GPU.

``pytest -k nvrtc`` selects them. NVRTC 12 (the nvidia-cuda-nvrtc-cu12 wheel) covers
sm_70, sm_80 and sm_90; the NVRTC that CuPy loads by default (here torch's CUDA 13)
covers sm_80 and sm_90, which is what a CUDA 13 GPU machine compiles with.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

from sj_parallel.backends import _cuda as C

pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy is not installed")

pytestmark = pytest.mark.sj_independent

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = ["torch.float32", "torch.float16", "torch.bfloat16"]


def _nvrtc12_available() -> bool:
    try:
        import nvidia.cuda_nvrtc as wheel
    except ImportError:
        return False
    return os.path.exists(
        os.path.join(list(wheel.__path__)[0], "lib", "libnvrtc.so.12")
    )


@functools.cache
def _compile(major: int, archs: tuple) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_nvrtc_compile.py"), str(major), *archs],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _check(report: dict, arch: str, name: str, dtype: str) -> None:
    rows = [
        r
        for r in report["results"]
        if r["arch"] == arch and r["name"] == name and r["dtype"] == dtype
    ]
    assert rows, "nothing was compiled"
    expected = [
        (v.const, [list(f) for f in v.flags])
        for v in C.kernel_variants()
        if v.name == name and str(v.dtype) == dtype
    ]
    assert [(r["const"], r["flags"]) for r in rows] == expected
    for r in rows:
        assert r["ok"], f"{name} {dtype} const={r['const']} sm_{arch}: {r['log']}"
        # the PSN backward for T > 4 runs on tensor cores from sm_80 on (on FMAs
        # before); T <= 4 is FP32 FMAs everywhere
        if name == "psn":
            assert r["mma"] == (int(arch) >= 80 and r["const"] > 4), r


@pytest.mark.skipif(not _nvrtc12_available(), reason="nvidia-cuda-nvrtc-cu12 missing")
@pytest.mark.parametrize("arch", ["70", "80", "90"])
@pytest.mark.parametrize("name", list(C.KERNEL_FILES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc12_compiles(arch, name, dtype):
    report = _compile(12, ("70", "80", "90"))
    assert report["version"][0] == 12, report["version"]
    _check(report, arch, name, dtype)


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("name", list(C.KERNEL_FILES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc_default_compiles(arch, name, dtype):
    report = _compile(0, ("80", "90"))
    _check(report, arch, name, dtype)


def test_every_cuda_file_is_compiled():
    cu = sorted(f for f in os.listdir(C.CUDA_DIR) if f.endswith(".cu"))
    assert cu == sorted(C.KERNEL_FILES.values())
