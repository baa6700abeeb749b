"""Run the package's CUDA kernels on the CPU (test-only).

How it works: :func:`load` takes a kernel file's source exactly as the launcher builds
it (``sj_parallel.backends._cuda.kernel_source``, same ``-D`` options), appends one
``emu_launch_<kernel>(grid, block, <kernel args>)`` wrapper per ``extern "C"
__global__`` kernel, and compiles it with ``g++ -fopenmp -include shim.h``. A wrapper
runs the grid block by block, each block as an OpenMP team of ``block`` threads.

Usage::

    lib = load("psn", torch.float32, 16, _cuda.sg_flags(0))
    block, cols, smem = _cuda.launch_config("psn", "sjp_psn_forward", 16)
    lib.launch("sjp_psn_forward", grid, block, x, W, b, s, M, smem=smem)

Tensors are passed as CPU torch tensors (their storage is used in place); Python
ints and floats are converted to the kernel's parameter types. Keep grids small:
barriers with more threads than cores are slow.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402

from sj_parallel.backends import _cuda as C  # noqa: E402

SHIM = Path(__file__).resolve().parent / "shim.h"
INSTRUMENT = Path(__file__).resolve().parent / "instrument.inc"
BUILD_DIR = Path(tempfile.gettempdir()) / "sjp_emulation_build"
_SIG = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?'
    r"(\w+)\s*\(([^)]*)\)",
    re.S,
)


def _params(sig: str) -> List[Tuple[str, str]]:
    out = []
    for p in sig.split(","):
        p = " ".join(p.split())
        name = re.findall(r"\w+", p)[-1]
        ctype = p[: p.rfind(name)].strip()
        out.append((ctype, name))
    return out


def _ctypes_type(ctype: str):
    if "*" in ctype:
        return ctypes.c_void_p
    base = ctype.replace("const", "").strip()
    return {
        "sjp_index": ctypes.c_longlong,
        "long long": ctypes.c_longlong,
        "int": ctypes.c_int,
        "float": ctypes.c_float,
        "unsigned int": ctypes.c_uint,
        "unsigned long long": ctypes.c_ulonglong,
    }[base]


class EmulatedModule:
    def __init__(
        self, path: Path, kernels: Dict[str, List[Tuple[str, str]]], instrument: bool
    ):
        self._lib = ctypes.CDLL(str(path))
        self.kernels = kernels
        self.instrument = instrument
        for name, params in kernels.items():
            fn = getattr(self._lib, f"emu_launch_{name}")
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong] + [
                _ctypes_type(t) for t, _ in params
            ]
            fn.restype = ctypes.c_int
        if instrument:
            self._lib.emu_stats_get.argtypes = [ctypes.POINTER(ctypes.c_double)]
        self._lib.emu_set_block_order.argtypes = [ctypes.c_int]

    def reset_stats(self) -> None:
        self._lib.emu_stats_reset()

    def stats(self) -> Dict[str, float]:
        """Access totals since :meth:`reset_stats` (instrumented builds only)."""
        out = (ctypes.c_double * len(STAT_FIELDS))()
        self._lib.emu_stats_get(out)
        return dict(zip(STAT_FIELDS, list(out)))

    def launch(
        self,
        kernel: str,
        grid: int,
        block: int,
        *args,
        smem: int = 0,
        order: str = "forward",
    ) -> None:
        """Run ``kernel`` over ``grid`` blocks of ``block`` threads; tensors (CPU,
        contiguous) or ``None`` for pointer parameters, Python numbers for the rest;
        ``order``: the order the blocks run in (:data:`BLOCK_ORDERS`)."""
        params = self.kernels[kernel]
        if len(args) != len(params):
            raise TypeError(f"{kernel} takes {len(params)} arguments, got {len(args)}")
        conv = []
        for (ctype, name), a in zip(params, args):
            if "*" in ctype:
                if a is None:
                    conv.append(None)
                else:
                    assert isinstance(a, torch.Tensor) and a.is_contiguous(), name
                    assert a.device.type == "cpu", name
                    conv.append(a.data_ptr())
            else:
                conv.append(a)
        self.launch_raw(kernel, grid, block, conv, smem=smem, order=order)

    def launch_raw(
        self,
        kernel: str,
        grid: int,
        block: int,
        args,
        smem: int = 0,
        order: str = "forward",
    ) -> None:
        """:meth:`launch` with host addresses (ints, 0 or ``None`` for null) for the
        pointer parameters."""
        self._lib.emu_set_block_order(BLOCK_ORDERS[order])
        rc = getattr(self._lib, f"emu_launch_{kernel}")(grid, block, smem, *args)
        if rc != 0:
            raise RuntimeError(f"OpenMP gave fewer than {block} threads for {kernel}")


#: Orders in which the emulation runs a grid's blocks (one at a time): the block that
#: finishes last (and so does the final fixed-order sums) differs between them.
BLOCK_ORDERS = {"forward": 0, "reverse": 1, "rotate": 2}

_ORDER_CODE = """
static int sjp_emu_order = 0;
extern "C" void emu_set_block_order(int order) { sjp_emu_order = order; }
static inline int sjp_emu_block_at(int i, int grid) {
  if (sjp_emu_order == 1) return grid - 1 - i;
  if (sjp_emu_order == 2) return (i + grid / 2) % grid;
  return i;
}
"""


def _wrappers(
    source: str, instrument: bool
) -> Tuple[str, Dict[str, List[Tuple[str, str]]]]:
    kernels = {}
    code = [_ORDER_CODE]
    done = "sjp_emu_block_done(block);" if instrument else ""
    for name, sig in _SIG.findall(source):
        if name in kernels:  # the same kernel in another #if branch (same signature)
            continue
        params = _params(sig)
        kernels[name] = params
        decl = ", ".join(f"{t} {n}" for t, n in params)
        call = ", ".join(n for _, n in params)
        code.append(
            f"""
extern "C" int emu_launch_{name}(int grid, int block, long long smem_bytes, {decl}) {{
  gridDim = {{(unsigned)grid, 1, 1}};
  blockDim = {{(unsigned)block, 1, 1}};
  omp_set_dynamic(0);
  int bad = 0;
  const size_t smem_size = (size_t)((smem_bytes + 127) / 128 * 128 + 128);
  sjp_emu_dyn_smem = (unsigned char*)aligned_alloc(128, smem_size);
  for (int w = 0; w < (block + 31) / 32; ++w)
    pthread_barrier_init(&sjp_emu_warp_bar[w], nullptr, 32);
  for (int emu_i = 0; emu_i < grid && !bad; ++emu_i) {{
    const int emu_block = sjp_emu_block_at(emu_i, grid);
    blockIdx = {{(unsigned)emu_block, 0, 0}};
    memset(sjp_emu_dyn_smem, 0xff, smem_size);  // NaN: unwritten shared data shows
#pragma omp parallel num_threads(block)
    {{
      if (omp_get_num_threads() != block) {{
#pragma omp atomic write
        bad = 1;
      }} else {{
        threadIdx = {{(unsigned)omp_get_thread_num(), 0, 0}};
        {name}({call});
      }}
    }}
    {done}
  }}
  for (int w = 0; w < (block + 31) / 32; ++w)
    pthread_barrier_destroy(&sjp_emu_warp_bar[w]);
  free(sjp_emu_dyn_smem);
  sjp_emu_dyn_smem = nullptr;
  return bad;
}}
"""
        )
    return "\n".join(code), kernels


_CACHE: Dict[tuple, EmulatedModule] = {}

#: The totals :meth:`EmulatedModule.stats` returns (see instrument.inc).
STAT_FIELDS = (
    "shared_instr",
    "shared_wavefronts",
    "shared_ideal_wavefronts",
    "max_shared_conflict",
    "global_instr",
    "global_wavefronts",
    "dram_read_sectors",
    "dram_write_sectors",
    "float_atomics",
    "warp_shuffles",
    "mma",
    "worst_site",
)


def load(
    name: str,
    dtype: torch.dtype,
    const: Optional[int] = None,
    flags: Tuple[Tuple[str, int], ...] = (),
    *,
    instrument: bool = False,
    defines: Tuple[str, ...] = (),
) -> EmulatedModule:
    """Compile (cached) kernel file ``name`` for ``dtype``, its compile-time constant
    and switches exactly as the launcher would (``_cuda.variant_options``);
    ``instrument`` adds the access accounting of instrument.inc; ``defines`` adds
    ``-D`` options (tests only)."""
    key = (name, dtype, const, tuple(flags), instrument, defines)
    if key in _CACHE:
        return _CACHE[key]
    opts = list(C.variant_options(name, dtype, const, flags)) + list(defines)
    mod = load_source(name, C.kernel_source(name), opts, instrument=instrument)
    _CACHE[key] = mod
    return mod


def load_source(
    name: str, source: str, options, *, instrument: bool = False
) -> EmulatedModule:
    """Compile (cached on disk) a whole translation unit ``source`` with the ``-D``
    options among ``options`` (the NVRTC options of a launch: the others, ``-I`` and
    ``-std``, are NVRTC's); ``name`` names the build files."""
    wrappers, kernels = _wrappers(source, instrument)
    opts = [o for o in options if o.startswith("-D")]
    if instrument:
        opts.append("-DSJP_INSTRUMENT")
    extra = INSTRUMENT.read_text() if instrument else ""
    text = source + "\n" + extra + "\n" + wrappers
    digest = hashlib.sha256(
        (text + " ".join(opts) + SHIM.read_text()).encode()
    ).hexdigest()[:16]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    so = BUILD_DIR / f"{name}_{digest}.so"
    if not so.exists():
        src = BUILD_DIR / f"{name}_{digest}.cpp"
        src.write_text(text)
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        cmd = ["g++", "-O1", "-std=c++14", "-fopenmp", "-shared", "-fPIC"]
        cmd += ["-include", str(SHIM), *opts, str(src), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ failed for {name}:\n{proc.stderr[-6000:]}")
        os.replace(tmp, so)
    return EmulatedModule(so, kernels, instrument)


def to_kernel(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor in the kernel's storage type (bfloat16 is kept as raw bits)."""
    return t.detach().to(dtype).contiguous()


def aligned(t: torch.Tensor, alignment: int = 256) -> torch.Tensor:
    """A contiguous copy of ``t`` whose storage starts on an ``alignment``-byte
    boundary, as CUDA allocations do (the L1/DRAM accounting counts 128-byte lines
    and 32-byte sectors, so CPU tensors' 64-byte alignment would inflate it)."""
    n, size = t.numel(), t.element_size()
    pad = alignment // size
    buf = torch.empty(n + pad, dtype=t.dtype)
    off = (-buf.data_ptr() % alignment) // size
    out = buf[off : off + n].view(t.shape)
    out.copy_(t)
    return out


def poisoned(shape, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of NaN, so an element the kernel never writes fails."""
    return torch.full(shape, float("nan"), dtype=dtype)
