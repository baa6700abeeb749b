"""A small NVRTC launcher for the kernels in ``sj_parallel/cuda``.

* Sources are the package's ``.cu`` files, read once per process; ``#include
  "common.cuh"`` is inlined so one string is the whole translation unit.
* Kernels are compiled by NVRTC through ``cupy.RawModule`` the first time a variant
  (file, kernel, dtype, compile-time constant, switches) is used on a device; the
  compiled kernel, its attributes (registers, static shared memory, read inside
  ``cupy.cuda.Device(index)``) and its grid sizes are cached per
  ``(file, kernel, dtype, constant, switches, device)``, so a launch after the first is
  a few dictionary look-ups.
* The device is the one the tensors are on (``tensor.device.index``), never
  ``torch.cuda.current_device()``. Launches go on torch's current stream of that
  device, pass every buffer as an address and allocate nothing outside torch's
  allocator, so they can be captured in CUDA graphs. CuPy launches through the driver
  API, which raises a launch error synchronously.
* Pointers travel as 64-bit integers, so float16/bfloat16 tensors need no CuPy dtype.

The same :func:`kernel_source`, :func:`variant_options` and :func:`launch_config` feed
the NVRTC compile checks, the CPU emulation harness in ``tests/`` and the static
performance model in ``benchmarks/kernel_model.py``, so what is tested is what runs.
SpikingJelly's own CuPy helpers are not used (their paths differ between versions).

Supported CuPy: 13.0 to 14.x (``cupy-cuda12x`` >= 13.0, ``cupy-cuda13x`` >= 13.6, the
first CUDA 13 wheel); ``tests/test_cuda_cupy_api.py`` checks the installed CuPy has
every attribute and signature used here.
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


@functools.cache
def kernel_source(name: str) -> str:
    """The full CUDA source of kernel file ``name`` with common.cuh inlined (read once
    per process)."""
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
    keep: bool = False,
) -> Flags:
    """MPE-PSN's compile-time switches (wiring, sampling, loss) and surrogate;
    ``wide``: the backward's offsets inside a column need 64 bits
    (:func:`mpe_backward_wide`); ``keep``: the forward writes its samples for the
    backward (training, stochastic)."""
    return (
        (
            ("SJP_MPE_CURRENT", int(bool(current))),
            ("SJP_MPE_STOCHASTIC", int(bool(stochastic))),
            ("SJP_MPE_MSE", int(bool(need_mse))),
        )
        + sg_flags(sg_kind)
        + ((("SJP_MPE_WIDE", 1),) if wide else ())
        + ((("SJP_MPE_KEEP", 1),) if keep else ())
    )


def mpe_backward_wide(T: int, M: int) -> bool:
    """Whether the MPE-PSN backward needs 64-bit offsets inside a column: step t of
    a column is t M elements past its first, and (T - 1) M must stay below 2^32 for
    the 32-bit path."""
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
        # the training forward, which keeps its samples for the backward
        out += [KernelVariant("mpe", d, None, mpe_flags(keep=True)) for d in dtypes]
        out.append(
            KernelVariant("mpe", torch.float32, None, mpe_flags(True, keep=True))
        )
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
                        for keep in (False, True) if sto else (False,):
                            f = mpe_flags(cur, sto, mse, k, keep=keep)
                            out.append(KernelVariant("mpe", d, None, f))
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


def psn_forward_ahead(t: int, dtype: torch.dtype = torch.float32) -> int:
    """k-steps (8 rows each) of X the tensor-core PSN forward (``T = t > 8``) keeps
    in flight (psn.cu's SJP_F_AHEAD): half types all of them for T <= 32, 4 above
    T = 56, else 2; float32 2 for 16 < T <= 32, else 1."""
    nt = (t + 7) // 8
    if dtype != torch.float32:
        return nt if nt <= 4 else 4 if nt == 8 else 2
    return 2 if 2 < nt <= 4 else 1


@functools.cache
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
    for MPE-PSN's per-step sums (forward) and loss weights (backward; 0 when the loss
    is not differentiated)."""
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
    # the block sum's scratch | the per-step loss weights (T = 0 without the loss)
    return 128, 128, 4 * (4 + T)


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
#: Blocks per group of the kernels' fixed-order final sums (common.cuh SJP_GROUP).
REDUCE_GROUP = 16


def reduce_workspace(grid: int, n: int) -> int:
    """Floats of scratch a launch of ``grid`` blocks needs to reduce ``n`` sums per
    block (``sjp_finish_sums``): a partial row per block, then a row per group."""
    return (grid + -(-grid // REDUCE_GROUP)) * n


def reduce_counters(grid: int) -> int:
    """Ticket counters a launch of ``grid`` blocks uses (one per group, one more)."""
    return -(-grid // REDUCE_GROUP) + 1


class _Counters:
    """Placeholder in a launch's arguments for the ticket counters of torch's current
    stream (see :func:`launch`)."""

    def __repr__(self) -> str:
        return "COUNTERS"


#: Put in a kernel's argument list where it takes its ``unsigned int* counters``.
COUNTERS = _Counters()


def _cupy():
    """``import cupy`` (a dictionary look-up once imported), or an ``ImportError``
    with the real reason and a fix, the original exception chained."""
    try:
        import cupy
    except Exception as e:  # the real reason and a fix, original chained
        from . import cupy_unavailable_message

        raise ImportError(cupy_unavailable_message(e)) from e
    return cupy


@functools.cache
def nvrtc_major() -> int:
    """The major version of the NVRTC CuPy compiles with (picks the CUDA headers)."""
    _cupy()
    from cupy_backends.cuda.libs import nvrtc

    return int(nvrtc.getVersion()[0])


class Kernel:
    """One compiled kernel on one device and what launching it needs: the CuPy kernel
    (``fn``, a ``cupy.RawKernel``), its registers and static shared memory, the
    device's SM count and compute capability, and the largest grid per launch shape."""

    __slots__ = ("fn", "device", "regs", "static_smem", "sms", "cc", "opted_smem",
                 "_grids")  # fmt: skip

    def __init__(self, fn, device: Optional[int], regs: int, static_smem: int,
                 sms: int, cc: int) -> None:  # fmt: skip
        self.fn = fn
        self.device = device
        self.regs = int(regs)
        self.static_smem = int(static_smem)
        self.sms = int(sms)
        self.cc = int(cc)
        self.opted_smem = 48 * 1024  # usable without an opt-in
        self._grids: Dict[Tuple[int, int], int] = {}

    def grid(self, n_tiles: int, block: int, dyn_smem: int) -> int:
        """Blocks for a grid-stride launch: every SM filled with as many blocks as fit
        at once (registers, shared memory, threads), never more than there are tiles.

        The same device always gets the same grid for the same launch, so the
        fixed-order sums over the blocks, and the results, are the same every run.
        """
        full = self._grids.get((block, dyn_smem))
        if full is None:
            per_sm = resident_blocks(self.cc, block, self.regs,
                                     self.static_smem + dyn_smem)  # fmt: skip
            full = self.sms * max(per_sm, 1)
            self._grids[(block, dyn_smem)] = full
        return max(1, min(n_tiles, full))


_KERNELS: Dict[tuple, Kernel] = {}
_MODULES: Dict[tuple, object] = {}
_DEVICES: Dict[Optional[int], Tuple[int, int]] = {}


def _device_info(device: Optional[int]) -> Tuple[int, int]:
    """``(SM count, compute capability as 10 major + minor)`` of a device."""
    info = _DEVICES.get(device)
    if info is None:
        props = torch.cuda.get_device_properties(device)
        info = (props.multi_processor_count, props.major * 10 + props.minor)
        _DEVICES[device] = info
    return info


def get_kernel(
    name: str,
    kernel: str,
    dtype: torch.dtype,
    const: Optional[int] = None,
    flags: Flags = (),
    device: Optional[int] = None,
) -> Kernel:
    """The compiled ``kernel`` of file ``name`` for ``dtype`` (compile-time constant
    and switches, see :func:`variant_options`) on CUDA device ``device`` (the index of
    the tensors' device). Built the first time (NVRTC compile, module load, attribute
    queries inside ``cupy.cuda.Device(device)``), then cached."""
    key = (name, kernel, dtype, const, flags, device)
    k = _KERNELS.get(key)
    if k is not None:
        return k
    cupy = _cupy()
    mkey = (name, dtype, const, flags)
    mod = _MODULES.get(mkey)
    if mod is None:
        opts = variant_options(name, dtype, const, flags)
        opts += include_options(nvrtc_major())
        mod = cupy.RawModule(code=kernel_source(name), options=opts, backend="nvrtc")
        _MODULES[mkey] = mod
    sms, cc = _device_info(device)
    with cupy.cuda.Device(device):
        fn = mod.get_function(kernel)  # compiled for and loaded on this device
        k = Kernel(fn, device, fn.num_regs, fn.shared_size_bytes, sms, cc)
    _KERNELS[key] = k
    return k


class _StreamHandle:
    """A raw CUDA stream handle with the CUDA stream protocol (for
    ``cupy.cuda.Stream.from_external``)."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> Tuple[int, int]:
        return (0, self.handle)


_STREAMS: Dict[Tuple[int, Optional[int]], object] = {}
_COUNTER_BUFS: Dict[Tuple[int, torch.device], torch.Tensor] = {}


def _cupy_stream(cupy, handle: int, device: Optional[int]):
    """The CuPy stream object of a raw stream handle (cached; it holds only the
    handle): ``Stream.from_external`` on CuPy >= 14, ``ExternalStream`` before."""
    key = (handle, device)
    s = _STREAMS.get(key)
    if s is None:
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None:
            s = from_external(_StreamHandle(handle))
        else:  # CuPy 13
            s = cupy.cuda.ExternalStream(handle, -1 if device is None else device)
        _STREAMS[key] = s
    return s


def _counters(handle: int, device: torch.device, n: int) -> torch.Tensor:
    """The ticket counters of one stream: zero once when made, and every kernel leaves
    them zero, so no launch needs a fill. One set per stream, so kernels on different
    streams never share a counter."""
    key = (handle, device)
    buf = _COUNTER_BUFS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTER_BUFS[key] = buf
    return buf


def launch(
    k: Kernel,
    grid: int,
    block: int,
    args: Sequence,
    device: torch.device,
    smem: int = 0,
) -> None:
    """Launch ``k`` on torch's current stream of ``device`` (the tensors' device).

    Tensor arguments (and ``None`` for a null pointer) are passed as addresses;
    :data:`COUNTERS` as the address of that stream's ticket counters. The caller's
    ``args`` keeps every tensor alive until the kernel is queued, so a temporary (a
    dtype conversion, a contiguous copy) cannot be freed and its memory handed to the
    next temporary before the kernel reads it. ``smem`` is the dynamic shared memory
    in bytes (above 48 KB the kernel is opted in once). CuPy raises a launch error
    (e.g. too much shared memory) synchronously, from the driver call.
    """
    cupy = _cupy()
    handle = torch.cuda.current_stream(device.index).cuda_stream
    raw = []
    for a in args:
        if isinstance(a, torch.Tensor):
            raw.append(np.uint64(a.data_ptr()))
        elif a is None:
            raw.append(np.uint64(0))
        elif a is COUNTERS:
            buf = _counters(handle, device, reduce_counters(grid))
            raw.append(np.uint64(buf.data_ptr()))
        else:
            raw.append(a)
    stream = _cupy_stream(cupy, handle, k.device)
    with cupy.cuda.Device(k.device):
        if smem > k.opted_smem:
            k.fn.max_dynamic_shared_size_bytes = smem
            k.opted_smem = smem
        k.fn((grid,), (block,), tuple(raw), shared_mem=smem, stream=stream)
