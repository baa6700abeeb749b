"""A small NVRTC launcher for the kernels in ``sj_parallel/cuda``.

* Sources are the package's ``.cu`` files; ``#include "common.cuh"`` is inlined so one
  string is the whole translation unit (it is also the cache key).
* Kernels are compiled by NVRTC through ``cupy.RawModule`` and cached per
  (source, options, device).
* Launches go on torch's current CUDA stream and are checked for launch errors.
* Pointers travel as 64-bit integers, so float16/bfloat16 tensors need no CuPy dtype.

The same :func:`kernel_source` and :func:`compile_options` feed the NVRTC compile
checks and the CPU emulation harness in ``tests/``, so what is tested is what runs.
SpikingJelly's own CuPy helpers are not used (their paths differ between versions).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"
KERNEL_FILES = {"psn": "psn.cu", "sliding": "sliding_psn.cu", "mpe": "mpe_psn.cu"}
KERNELS = {
    "psn": ("sjp_psn_forward", "sjp_psn_backward"),
    "sliding": ("sjp_sliding_forward", "sjp_sliding_backward"),
    "mpe": ("sjp_mpe_forward", "sjp_mpe_backward"),
}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
PSN_MAX_T = 64
SLIDING_MAX_K = 64
MPE_MAX_T_MSE = 1024
BLOCKS = {"psn": 64, "sliding": 128, "mpe": 128}

# surrogate kinds, as in common.cuh
SG_KINDS = {
    "ATan": 0,
    "Sigmoid": 1,
    "PiecewiseQuadratic": 2,
    "SoftSign": 3,
    "Erf": 4,
    "PiecewiseLeakyReLU": 5,
}


def kernel_source(name: str) -> str:
    """The full CUDA source of kernel file ``name`` with common.cuh inlined."""
    text = (CUDA_DIR / KERNEL_FILES[name]).read_text()
    common = (CUDA_DIR / "common.cuh").read_text()
    return text.replace('#include "common.cuh"', common)


def compile_options(
    dtype: torch.dtype, fixed_t: Optional[int] = None
) -> Tuple[str, ...]:
    """NVRTC/g++ defines for a dtype (and optionally a compile-time ``T``)."""
    if dtype not in DTYPE_CODES:
        raise TypeError(
            f"backend 'cupy' supports float32, float16 and bfloat16 inputs, got "
            f"{dtype}; use backend='torch' for float64"
        )
    opts = ["-std=c++14", f"-DSJP_DTYPE={DTYPE_CODES[dtype]}"]
    if fixed_t is not None:
        opts.append(f"-DSJP_FIXED_T={int(fixed_t)}")
    return tuple(opts)


def variant_options(
    name: str, dtype: torch.dtype, const: Optional[int] = None
) -> Tuple[str, ...]:
    """The ``-D`` options of one kernel variant: file ``name``, ``dtype`` and its
    compile-time constant (``T`` for ``"psn"``; ``None`` where the file has none)."""
    return compile_options(dtype, const if name == "psn" else None)


def kernel_variants(
    representative: bool = True,
) -> List[Tuple[str, torch.dtype, Optional[int]]]:
    """Every ``(file, dtype, compile-time constant)`` the launcher can build.

    With ``representative=True`` only a few constants per file (the smallest, a
    typical and the largest), enough to compile every kernel function once per dtype.
    """
    out: List[Tuple[str, torch.dtype, Optional[int]]] = []
    for name in KERNEL_FILES:
        if name == "psn":
            consts = [1, 16, PSN_MAX_T] if representative else range(1, PSN_MAX_T + 1)
        else:
            consts = [None]
        for dtype in DTYPE_CODES:
            out += [(name, dtype, c) for c in consts]
    return out


@functools.cache
def cuda_include_dirs() -> Tuple[Tuple[str, int], ...]:
    """``(directory, CUDA major version)`` of every header set with ``cuda_fp16.h``.

    NVRTC has no built-in copy of ``cuda_fp16.h``/``cuda_bf16.h``.
    """
    candidates: List[Path] = []
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "include")
    for sp in sys.path:
        base = Path(sp) / "nvidia"
        if base.is_dir():
            candidates += sorted(base.glob("cu*/include"))
            candidates.append(base / "cuda_runtime" / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    found = {}
    for p in candidates:
        api = p / "cuda_runtime_api.h"
        if (p / "cuda_fp16.h").is_file() and api.is_file():
            m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", api.read_text())
            found.setdefault(str(p), int(m.group(1)) // 1000 if m else 0)
    return tuple(found.items())


def include_options(nvrtc_major: Optional[int] = None) -> Tuple[str, ...]:
    """``-I`` for the CUDA headers, preferring those of NVRTC's major version."""
    dirs = cuda_include_dirs()
    if not dirs:
        raise RuntimeError(
            "backend 'cupy' could not find the CUDA headers cuda_fp16.h/cuda_bf16.h "
            "(NVRTC has none built in; searched $CUDA_PATH/include, "
            "$CUDA_HOME/include, site-packages/nvidia/*/include, "
            "/usr/local/cuda/include): `pip install nvidia-cuda-runtime-cu12` "
            '(NVRTC 12) or `pip install "nvidia-cuda-runtime==13.*"` (NVRTC 13), '
            "or set CUDA_PATH to a CUDA toolkit"
        )
    match = [d for d, major in dirs if major == nvrtc_major]
    return (f"-I{(match or [dirs[0][0]])[0]}",)


# ------------------------------------------------------------------ surrogates
def surrogate_params(surrogate_function) -> Tuple[int, float, float, float]:
    """``(kind, a, c, d)`` of a SpikingJelly surrogate object for the kernels."""
    name = type(surrogate_function).__name__
    if name not in SG_KINDS or not getattr(surrogate_function, "spiking", True):
        raise ValueError(
            f"backend 'cupy' supports the SpikingJelly surrogates {tuple(SG_KINDS)} "
            f"(spiking=True); got {surrogate_function!r}. Use backend='torch' for "
            "other surrogate functions"
        )
    kind = SG_KINDS[name]
    if name == "PiecewiseLeakyReLU":
        w, c = float(surrogate_function.w), float(surrogate_function.c)
        # SpikingJelly 0.0.0.0.14 uses slope 1/w inside |x| < w, 2.0.0 uses 1/(2w):
        # ask the installed object for its slope at 0.
        z = torch.zeros(1, requires_grad=True)
        (d,) = torch.autograd.grad(surrogate_function(z).sum(), z)
        return kind, w, c, float(d)
    return kind, float(surrogate_function.alpha), 0.0, 0.0


# ---------------------------------------------------------------------- launch
_MODULES: Dict[tuple, object] = {}


def _cupy():
    try:
        import cupy
    except Exception as e:  # the real reason and a fix, original chained
        from . import cupy_unavailable_message

        raise ImportError(cupy_unavailable_message(e)) from e
    return cupy


def get_kernel(
    name: str, kernel: str, dtype: torch.dtype, fixed_t: Optional[int] = None
):
    """The compiled ``kernel`` of file ``name`` for ``dtype`` on the current device."""
    cupy = _cupy()
    src = kernel_source(name)
    from cupy_backends.cuda.libs import nvrtc

    opts = compile_options(dtype, fixed_t) + include_options(nvrtc.getVersion()[0])
    key = (src, opts, torch.cuda.current_device())
    mod = _MODULES.get(key)
    if mod is None:
        mod = cupy.RawModule(code=src, options=opts, backend="nvrtc")
        _MODULES[key] = mod
    return mod.get_function(kernel)


def ptr(t: Optional[torch.Tensor]) -> np.uint64:
    """A tensor's device address as a kernel argument (0 for ``None``)."""
    return np.uint64(0 if t is None else t.data_ptr())


def grid_for(M: int, block: int, cap: int = 65535) -> int:
    """Blocks for ``M`` columns; kernels are grid-stride, so the grid is capped."""
    if M <= 0:
        return 1
    return int(min((M + block - 1) // block, cap))


def launch(kernel, grid: int, block: int, args: Sequence, device: torch.device) -> None:
    """Launch on torch's current stream of ``device`` and check for launch errors.

    Tensor arguments (and ``None`` for a null pointer) are passed as addresses. The
    caller's ``args`` keeps every tensor alive until the kernel is queued, so a
    temporary (a dtype conversion, a contiguous copy) cannot be freed and its memory
    handed to the next temporary before the kernel reads it.
    """
    cupy = _cupy()
    raw = tuple(ptr(a) if a is None or isinstance(a, torch.Tensor) else a for a in args)
    with cupy.cuda.Device(device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
        with stream:
            kernel((grid,), (block,), raw)
        # launch-configuration errors surface here, not asynchronously later
        cupy.cuda.runtime.getLastError()
