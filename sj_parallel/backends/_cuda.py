"""A small NVRTC launcher for the kernels in ``sj_parallel/cuda``.

* Sources are the package's ``.cu`` files; ``#include "common.cuh"`` is inlined so one
  string is the whole translation unit (it is also the cache key).
* Kernels are compiled by NVRTC through ``cupy.RawModule`` and cached per
  (source, options, device).
* Launches go on torch's current CUDA stream and are checked for launch errors.
* Pointers travel as 64-bit integers, so float16/bfloat16 tensors need no CuPy dtype.

The same :func:`kernel_source`, :func:`variant_options` and :func:`launch_config` feed
the NVRTC compile checks, the CPU emulation harness in ``tests/`` and the static
performance model in ``benchmarks/kernel_model.py``, so what is tested is what runs.
SpikingJelly's own CuPy helpers are not used (their paths differ between versions).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ._occupancy import resident_blocks

# the surrogate kinds of common.cuh and their parameters (shared with 'triton')
from ._surrogates import SG_KINDS, surrogate_params  # noqa: F401

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


def kernel_source(name: str) -> str:
    """The full CUDA source of kernel file ``name`` with common.cuh inlined."""
    text = (CUDA_DIR / KERNEL_FILES[name]).read_text()
    common = (CUDA_DIR / "common.cuh").read_text()
    return text.replace('#include "common.cuh"', common)


def compile_options(dtype: torch.dtype) -> Tuple[str, ...]:
    """NVRTC/g++ options common to every variant of ``dtype``; raises a clear
    ``TypeError`` for a dtype the kernels do not support."""
    if dtype not in DTYPE_CODES:
        raise TypeError(
            f"backend 'cupy' supports float32, float16 and bfloat16 inputs, got "
            f"{dtype}; use backend='torch' for float64"
        )
    return ("-std=c++14", f"-DSJP_DTYPE={DTYPE_CODES[dtype]}")


#: The compile-time constant of each kernel file: ``T`` for PSN, ``k`` for sliding PSN.
CONSTANTS = {"psn": "SJP_T", "sliding": "SJP_K", "mpe": None}

Flags = Tuple[Tuple[str, int], ...]


class KernelVariant(NamedTuple):
    """One build of a kernel file: dtype, compile-time constant and switches."""

    name: str
    dtype: torch.dtype
    const: Optional[int] = None
    flags: Flags = ()


def sg_flags(sg_kind: int) -> Flags:
    """The compile-time surrogate of a backward kernel (``SG_KINDS`` value)."""
    return (("SJP_SG", int(sg_kind)),)


def psn_flags(sg_kind: int, vec: bool = True) -> Flags:
    """The switches of a PSN build: its surrogate and whether X, S and the gradients
    move as vectors (``vec``: ``M`` a multiple of 8 and 16-byte aligned tensors, see
    :func:`psn_vector_ok`)."""
    return sg_flags(sg_kind) + (("SJP_VEC", int(bool(vec))),)


def psn_vector_ok(M: int, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether the PSN kernels may move ``[T, M]`` tensors in 16-byte vectors."""
    return M % 8 == 0 and all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def mpe_flags(
    current: bool = False,
    stochastic: bool = True,
    need_mse: bool = True,
    sg_kind: int = 2,
    wide: bool = False,
) -> Flags:
    """MPE-PSN's compile-time switches (wiring, sampling, loss) and surrogate;
    ``wide``: the backward's hash counter may cross more than one 2^32 boundary per
    column (:func:`mpe_backward_wide`)."""
    return (
        (
            ("SJP_MPE_CURRENT", int(bool(current))),
            ("SJP_MPE_STOCHASTIC", int(bool(stochastic))),
            ("SJP_MPE_MSE", int(bool(need_mse))),
        )
        + sg_flags(sg_kind)
        + ((("SJP_MPE_WIDE", 1),) if wide else ())
    )


def mpe_backward_wide(T: int, M: int) -> bool:
    """Whether the MPE-PSN backward needs its general hash-key path: a column's
    counters (t0 + t) M + m, t < T, span (T - 1) M, which must stay below 2^32 for the
    fast path (keys of two high words per column, computed once)."""
    return (T - 1) * M >= 2**32


def variant_options(
    name: str, dtype: torch.dtype, const: Optional[int] = None, flags: Flags = ()
) -> Tuple[str, ...]:
    """The ``-D`` options of one kernel variant: file ``name``, ``dtype``, its
    compile-time constant (``T`` for ``"psn"``, ``k`` for ``"sliding"``; ``None`` for
    ``"mpe"``, which has none) and switches (:func:`sg_flags`, :func:`mpe_flags`)."""
    opts = compile_options(dtype)
    macro = CONSTANTS[name]
    if macro is not None:
        if const is None:
            raise ValueError(f"kernel file {name!r} needs its compile-time {macro}")
        opts += (f"-D{macro}={int(const)}",)
    return opts + tuple(f"-D{k}={int(v)}" for k, v in flags)


def kernel_variants(
    representative: bool = True, minimal: bool = False
) -> List[KernelVariant]:
    """Every kernel variant the launcher can build (``representative=False``: every
    constant, dtype and switch), or a representative set (``True``): the smallest,
    typical and largest constants for each dtype, every surrogate and every MPE-PSN
    switch once, enough to compile every kernel function and code path; ``minimal``:
    one typical variant per file and dtype (every kernel function once). The launcher
    builds a variant the first time it is used and caches it."""
    dtypes = list(DTYPE_CODES)
    out: List[KernelVariant] = []
    sgs = sorted(set(SG_KINDS.values()))
    if minimal:
        for d in dtypes:
            out += [
                KernelVariant("psn", d, 16, psn_flags(0)),
                KernelVariant("sliding", d, 2, sg_flags(0)),
                KernelVariant("mpe", d, None, mpe_flags()),
            ]
        return out
    if representative:
        # PSN: both forward and both backward kernels, W pre-split or not, 1 or 4
        # warps per column slice; the scalar (unaligned) path once per kernel
        for name, consts, fl in (
            ("psn", [1, 5, 16, 33, PSN_MAX_T], psn_flags),
            ("sliding", [1, 2, 16, 33, SLIDING_MAX_K], sg_flags),
        ):
            out += [KernelVariant(name, d, c, fl(0)) for d in dtypes for c in consts]
            out += [KernelVariant(name, torch.float32, 16, fl(k)) for k in sgs[1:]]
        out += [
            KernelVariant("psn", d, t, psn_flags(0, vec=False))
            for d in dtypes
            for t in (4, 40)
        ]
        out += [KernelVariant("mpe", d, None, mpe_flags()) for d in dtypes]
        for cur in (False, True):
            for sto in (False, True):
                for mse in (False, True):
                    f = mpe_flags(cur, sto, mse)
                    if f != mpe_flags():
                        out.append(KernelVariant("mpe", torch.float32, None, f))
        out += [
            KernelVariant("mpe", torch.float32, None, mpe_flags(sg_kind=k))
            for k in sgs
            if k != 2
        ]
        out.append(KernelVariant("mpe", torch.float32, None, mpe_flags(wide=True)))
        return out
    for d in dtypes:
        for k in sgs:
            out += [
                KernelVariant("psn", d, t, psn_flags(k, vec))
                for t in range(1, PSN_MAX_T + 1)
                for vec in (True, False)
            ]
            out += [
                KernelVariant("sliding", d, c, sg_flags(k))
                for c in range(1, SLIDING_MAX_K + 1)
            ]
            for cur in (False, True):
                for sto in (False, True):
                    for mse in (False, True):
                        out.append(
                            KernelVariant("mpe", d, None, mpe_flags(cur, sto, mse, k))
                        )
    return out


def _ceil(a: int, b: int) -> int:
    return (a + b - 1) // b * b


def psn_backward_geometry(t: int, dtype: torch.dtype = torch.float32) -> Dict[str, int]:
    """The tensor-core PSN backward's work split for ``T = t > 4`` (psn.cu's macros):
    ``p`` warps share a slice of ``16 nmt`` columns, a block tile has ``cb`` columns;
    ``wsplit``: W is kept pre-split in shared memory; grad_W is split into ``s3`` warp
    tasks, each shared by ``kg`` warps."""
    nt, tm3 = (t + 7) // 8, (t + 15) // 16 * 16
    p = 4 if t > 32 else 1
    nmt = 2 if t <= 16 or (t > 32 and dtype != torch.float32) else 1
    ng = (nt + 3) // 4
    s3 = tm3 // 16 * ng
    kg = 8 if s3 == 1 else 4 if s3 == 2 else 2 if s3 <= 4 else 1
    return {"p": p, "nmt": nmt, "cb": 128 * nmt // p, "wsplit": int(nt <= 4),
            "ng": ng, "s3": s3, "kg": kg}  # fmt: skip


def launch_config(
    name: str,
    kernel: str,
    const: Optional[int] = None,
    T: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """``(threads per block, neuron columns per tile, dynamic shared memory bytes)`` of
    a kernel, mirroring the macros at the top of its ``.cu`` file (the emulation tests
    launch with these numbers, so a mismatch fails them). ``T`` is the sequence length
    for the MPE-PSN forward's per-step sums."""
    if name == "psn":
        t = int(const)
        tk = _ceil(t, 8)
        sw = 32 if tk <= 32 else 64  # row stride of W in shared memory
        if kernel == "sjp_psn_forward":
            if t <= 8:  # FP32 FMAs
                v = 8 if t <= 4 else 4
                return 128, 128 * v, 4 * (t * _ceil(t, 4) + t)
            nmt = 2 if tk <= 16 else 1  # tensor cores
            return 256, 128 * nmt, 4 * (2 * tk * sw + tk)
        if t <= 4:  # FP32 FMAs
            return 128, 512, 4 * 4 * (t * t + t)
        geo = psn_backward_geometry(t, dtype)
        cb = geo["cb"]
        w_floats = (4 if geo["wsplit"] else 1) * tk * sw  # W, W^T as tf32 hi/lo pairs
        tiles = (tk + _ceil(t, 16)) * (cb + 4)  # X and GH tiles
        return 256, cb, 4 * (w_floats + tk + tiles)
    if name == "sliding":
        k = int(const)
        if kernel == "sjp_sliding_forward":
            return 128, 128 // (1 if k <= 16 else 2 if k <= 32 else 4), 0
        lanes = 1 if k <= 8 else 2 if k <= 16 else 4 if k <= 32 else 8
        # [warps][k + 1] gradient sums | k > 8: the rings' flush [8][block]
        return 128, 128 // lanes, 4 * (4 * (k + 1) + (8 * 128 if k > 8 else 0))
    if kernel == "sjp_mpe_forward":
        return 128, 128, 4 * 4 * max(T, 1)
    return 128, 128, 4 * 4


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
    name: str,
    kernel: str,
    dtype: torch.dtype,
    const: Optional[int] = None,
    flags: Flags = (),
):
    """The compiled ``kernel`` of file ``name`` for ``dtype`` (compile-time constant
    and switches, see :func:`variant_options`) on the current device; cached per
    (source, options, device), so each variant is built once, when first used."""
    cupy = _cupy()
    src = kernel_source(name)
    from cupy_backends.cuda.libs import nvrtc

    opts = variant_options(name, dtype, const, flags)
    opts += include_options(nvrtc.getVersion()[0])
    key = (src, opts, torch.cuda.current_device())
    mod = _MODULES.get(key)
    if mod is None:
        mod = cupy.RawModule(code=src, options=opts, backend="nvrtc")
        _MODULES[key] = mod
    return mod.get_function(kernel)


def ptr(t: Optional[torch.Tensor]) -> np.uint64:
    """A tensor's device address as a kernel argument (0 for ``None``)."""
    return np.uint64(0 if t is None else t.data_ptr())


# CUfunction_attribute values (CUDA driver API)
_ATTR_SHARED_SIZE_BYTES = 1
_ATTR_NUM_REGS = 4
_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_OPTED_IN: Dict[int, int] = {}


def kernel_resources(kernel) -> Tuple[int, int]:
    """``(registers per thread, static shared memory bytes)`` of a compiled kernel."""
    drv = _cupy().cuda.driver
    return (
        drv.funcGetAttribute(_ATTR_NUM_REGS, kernel.ptr),
        drv.funcGetAttribute(_ATTR_SHARED_SIZE_BYTES, kernel.ptr),
    )


def device_grid(
    kernel, n_tiles: int, block: int, dyn_smem: int, device: torch.device
) -> int:
    """Blocks for a grid-stride kernel: every SM filled with as many blocks as fit at
    once (registers, shared memory, threads), never more than there are tiles.

    The same device always gets the same grid, so the per-block partial sums, and the
    results, are the same on every run.
    """
    props = torch.cuda.get_device_properties(device)
    regs, static_smem = kernel_resources(kernel)
    per_sm = resident_blocks(props.major * 10 + props.minor, block, regs,
                             static_smem + dyn_smem)  # fmt: skip
    return int(max(1, min(n_tiles, props.multi_processor_count * max(per_sm, 1))))


def allow_dynamic_smem(kernel, nbytes: int) -> None:
    """Opt the kernel in to more than 48 KB of dynamic shared memory if it needs it."""
    if nbytes > 48 * 1024 and _OPTED_IN.get(kernel.ptr, 0) < nbytes:
        _cupy().cuda.driver.funcSetAttribute(
            kernel.ptr, _ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes
        )
        _OPTED_IN[kernel.ptr] = nbytes


def launch(
    kernel,
    grid: int,
    block: int,
    args: Sequence,
    device: torch.device,
    smem: int = 0,
) -> None:
    """Launch on torch's current stream of ``device`` and check for launch errors.

    Tensor arguments (and ``None`` for a null pointer) are passed as addresses. The
    caller's ``args`` keeps every tensor alive until the kernel is queued, so a
    temporary (a dtype conversion, a contiguous copy) cannot be freed and its memory
    handed to the next temporary before the kernel reads it. ``smem`` is the dynamic
    shared memory in bytes.
    """
    cupy = _cupy()
    raw = tuple(ptr(a) if a is None or isinstance(a, torch.Tensor) else a for a in args)
    with cupy.cuda.Device(device.index):
        allow_dynamic_smem(kernel, smem)
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
        with stream:
            kernel((grid,), (block,), raw, shared_mem=smem)
        # launch-configuration errors surface here, not asynchronously later
        cupy.cuda.runtime.getLastError()
