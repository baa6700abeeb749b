"""A CPU stand-in for CUDA devices for the cupy backend's CPU tests (and the
host-overhead benchmark): the real launcher and op code run; only what needs a device
is replaced, each replacement specified by the installed CuPy or torch, so that an
attribute, function or signature they do not have fails here as it would on a GPU.

* ``cupy.RawModule`` -> :class:`DeviceRawModule`, a subclass of the installed class
  (construction and its argument checks are CuPy's own). ``get_function`` -- on a GPU
  an NVRTC compile and a module load on the current device -- compiles the module's
  own source and options with the installed CuPy's NVRTC binding for the fake
  device's architecture (no device needed; a compile error fails as on a GPU) and
  returns a :class:`DeviceRawKernel`. It must run inside ``cupy.cuda.Device(i)``.
* :class:`DeviceRawKernel`, a subclass of the installed ``cupy.RawKernel``: only the
  members that query or launch on a device are overridden (``num_regs``,
  ``shared_size_bytes``, ``max_dynamic_shared_size_bytes`` get/set, ``__call__``);
  everything else is CuPy's (``RawKernel`` has no ``ptr``: reading it raises, as on a
  GPU). Each checks what CuPy and the driver would: that it runs inside
  ``cupy.cuda.Device`` of the kernel's device; for a launch, the grid and block tuples,
  the argument count and each argument's type against the kernel's C signature (CuPy
  passes a numpy scalar with its own width, a Python int as int64, a float as
  float64), dynamic shared memory within the opted-in limit, and the stream (torch's
  current stream of the device). The launch then runs in the CPU emulation
  (:func:`harness.load_source`: the same source and ``-D`` options, compiled by g++),
  unless ``run=False`` (the host-overhead benchmark).
* ``cupy.cuda.Device`` -> ``create_autospec`` of the installed class, whose context
  manager tracks the current device; ``cupy.cuda.runtime.getDeviceCount`` ->
  ``create_autospec`` of the installed function.
* ``torch.cuda.current_stream`` / ``get_device_properties`` / ``current_device`` ->
  ``create_autospec`` of torch's functions, returning spec'd ``torch.cuda.Stream`` /
  ``torch._C._CudaDeviceProperties`` instances (a device of compute capability 9.0
  with ``sms`` SMs) / device 0.

Tensors stay on the CPU (torch has no CUDA tensor without a device): their host
addresses go to the emulated kernels. Use :func:`install` with pytest's
``monkeypatch``.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from unittest import mock

import numpy as np
import torch

from . import harness as H

try:
    import cupy
    from cupy_backends.cuda.libs import nvrtc
except Exception:  # noqa: BLE001 - the tests that need it skip
    cupy = None
    nvrtc = None

CC = 90  # the fake device's compute capability
MAX_DYN_SMEM = 227 * 1024  # sm_90's opt-in limit per block
DEFAULT_DYN_SMEM = 48 * 1024
STREAM_BASE = 0x5000  # torch's current stream handle of fake device i: BASE + i

# the numpy scalar type CuPy must receive for each C parameter type
_C_TYPES = {
    "sjp_index": np.int64,
    "long long": np.int64,
    "int": np.int32,
    "unsigned int": np.uint32,
    "float": np.float32,
}


@dataclass
class Launch:
    kernel: str
    grid: int
    block: int
    smem: int
    stream: int
    device: Optional[int]


@dataclass
class FakeGPU:
    """The state of the fake devices: the launches made, the device stack."""

    sms: int = 2
    run: bool = True  # run the kernels in the emulation
    light: bool = False  # no checks in a launch (the host-overhead benchmark)
    order: str = "forward"  # the order the emulation runs a grid's blocks in
    calls: int = 0  # kernel launches (also counted when light)
    launches: List[Launch] = field(default_factory=list)
    compiles: List[Tuple[str, Tuple[str, ...]]] = field(default_factory=list)
    stack: List[Optional[int]] = field(default_factory=list)

    def current(self) -> Optional[int]:
        """The device CuPy would use now (what ``Device(i)`` made current)."""
        if not self.stack:
            raise AssertionError(
                "a CuPy call that needs a device ran outside `with "
                "cupy.cuda.Device(i)`: CuPy would use whatever device is current, not "
                "the tensors' device"
            )
        return self.stack[-1]

    def kernels(self) -> List[str]:
        return [launch.kernel for launch in self.launches]


_STATE: Optional[FakeGPU] = None
_REAL: Dict[str, object] = {}  # the installed objects the fakes are spec'd on
_PTX: Dict[Tuple[str, Tuple[str, ...]], str] = {}
_EMU: Dict[Tuple[str, Tuple[str, ...]], H.EmulatedModule] = {}


def _state() -> FakeGPU:
    if _STATE is None:
        raise AssertionError("fake_gpu.install() was not called")
    return _STATE


def _ptx(code: str, options: Tuple[str, ...]) -> str:
    """NVRTC's PTX of a module for the fake device's architecture (cached)."""
    key = (code, options)
    if key not in _PTX:
        digest = hashlib.sha256((code + "\0".join(options)).encode()).hexdigest()[:20]
        path = H.BUILD_DIR / f"fake_gpu_{digest}.ptx"
        if path.exists():
            _PTX[key] = path.read_text()
        else:
            prog = nvrtc.createProgram(code, "sjp.cu", [], [])
            try:
                try:
                    nvrtc.compileProgram(
                        prog, list(options) + [f"--gpu-architecture=compute_{CC}"]
                    )
                except Exception as e:  # the log says why, as on a GPU
                    raise RuntimeError(
                        f"NVRTC: {e}\n{nvrtc.getProgramLog(prog)}"
                    ) from e
                ptx = nvrtc.getPTX(prog)
            finally:
                nvrtc.destroyProgram(prog)
            ptx = (ptx.decode() if isinstance(ptx, bytes) else ptx).rstrip("\x00")
            H.BUILD_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(ptx)
            _PTX[key] = ptx
        _state().compiles.append(key)
    return _PTX[key]


def _static_smem(ptx: str, kernel: str) -> int:
    """Bytes of static shared memory of ``kernel`` in ``ptx``: its own ``.shared``
    declarations and the module-scope ones (function-static ``__shared__``) it uses."""
    body = ptx.split(f".entry {kernel}(", 1)[1].split("\n}\n", 1)[0]
    decl = re.compile(r"\.shared\s+\.align\s+\d+\s+\.b8\s+(\w+)\[(\d+)\]")
    total = sum(int(n) for _, n in decl.findall(body))
    for name, n in decl.findall(ptx.split(".entry", 1)[0]):
        if re.search(rf"\b{re.escape(name)}\b", body):
            total += int(n)
    return total


def _signature(code: str, kernel: str) -> List[Tuple[str, str]]:
    for name, sig in H._SIG.findall(code):
        if name == kernel:
            return H._params(sig)
    raise AssertionError(f'no extern "C" __global__ {kernel} in the module\'s source')


if cupy is not None:

    class DeviceRawKernel(cupy.RawKernel):
        """A real ``cupy.RawKernel`` whose device members run on the fake device."""

        def _bind(self, device: Optional[int], ptx: str) -> DeviceRawKernel:
            self._device = device
            self._ptx = ptx
            self._opted = DEFAULT_DYN_SMEM
            self._params = _signature(self.code, self.name)
            return self

        def _on_device(self, what: str) -> None:
            cur = _state().current()
            if cur != self._device:
                raise AssertionError(
                    f"{self.name}.{what} on device {cur}, but the kernel was loaded on "
                    f"device {self._device}"
                )

        @property
        def num_regs(self) -> int:
            self._on_device("num_regs")
            # what __launch_bounds__ allows (ptxas may use fewer)
            threads, blocks = _bounds_from_ptx(self._ptx, self.name)
            return min(255, 65536 // (threads * blocks) // 8 * 8)

        @property
        def shared_size_bytes(self) -> int:
            self._on_device("shared_size_bytes")
            return _static_smem(self._ptx, self.name)

        @property
        def max_dynamic_shared_size_bytes(self) -> int:
            self._on_device("max_dynamic_shared_size_bytes")
            return self._opted

        @max_dynamic_shared_size_bytes.setter
        def max_dynamic_shared_size_bytes(self, nbytes) -> None:
            self._on_device("max_dynamic_shared_size_bytes")
            if not isinstance(nbytes, int) or not 0 <= nbytes <= MAX_DYN_SMEM:
                raise RuntimeError(
                    f"CUDA_ERROR_INVALID_VALUE: cuFuncSetAttribute("
                    f"MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes!r})"
                )
            self._opted = nbytes

        def __call__(self, grid, block, args, **kwargs):
            state = _state()
            state.calls += 1
            if state.light:  # the launch itself is the only thing left out
                return
            self._on_device("__call__")
            allowed = {"shared_mem", "stream"}
            if set(kwargs) - allowed:
                raise TypeError(f"unexpected launch options {set(kwargs) - allowed}")
            if not (isinstance(grid, tuple) and isinstance(block, tuple)):
                raise TypeError("grid and block must be tuples (CuPy's Function)")
            (g,), (b,) = grid, block
            smem = kwargs.get("shared_mem", 0)
            if not 1 <= b <= 1024 or not 1 <= g < 2**31:
                raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: grid {g}, block {b}")
            if smem > self._opted:
                raise RuntimeError(
                    f"CUDA_ERROR_INVALID_VALUE: {self.name} launched with {smem} B of "
                    f"dynamic shared memory, opted in to {self._opted} B"
                )
            stream = kwargs.get("stream")
            expected = STREAM_BASE + (self._device or 0)
            if stream is None or not isinstance(stream, cupy.cuda.stream._BaseStream):
                raise AssertionError(
                    f"{self.name} not launched on a CuPy stream object (got "
                    f"{stream!r}): CuPy would use its own current stream, not torch's"
                )
            if stream.ptr != expected:
                raise AssertionError(
                    f"{self.name} launched on stream {stream.ptr:#x}, torch's current "
                    f"stream of device {self._device} is {expected:#x}"
                )
            args = tuple(args)
            if len(args) != len(self._params):
                raise TypeError(
                    f"{self.name} takes {len(self._params)} arguments, got {len(args)}"
                )
            conv = []
            for (ctype, pname), a in zip(self._params, args):
                conv.append(_marshal(self.name, ctype, pname, a))
            state.launches.append(Launch(self.name, g, b, smem, stream.ptr,
                                         self._device))  # fmt: skip
            if state.run:
                key = (self.code, tuple(self.options))
                lib = _EMU.get(key)
                if lib is None:
                    stem = self.name.split("_")[1]
                    lib = H.load_source(stem, self.code, self.options)
                    _EMU[key] = lib
                lib.launch_raw(self.name, g, b, conv, smem=smem, order=state.order)

    class DeviceRawModule(cupy.RawModule):
        """A real ``cupy.RawModule`` whose ``get_function`` compiles with NVRTC (no
        device) and loads on the fake current device."""

        def get_function(self, name):
            device = _state().current()
            if self.code is None or self.backend != "nvrtc":
                raise AssertionError("the launcher compiles source with NVRTC")
            ptx = _ptx(self.code, tuple(self.options))
            if f".entry {name}(" not in ptx:
                raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: no kernel {name!r}")
            ker = DeviceRawKernel(self.code, name, self.options, self.backend)
            return ker._bind(device, ptx)


def _bounds_from_ptx(ptx: str, kernel: str) -> Tuple[int, int]:
    """``(.maxntid, .minnctapersm)`` of a kernel's PTX entry (its launch bounds)."""
    head = ptx.split(f".entry {kernel}(", 1)[1].split("{", 1)[0]
    threads = re.search(r"\.maxntid\s+(\d+)", head)
    blocks = re.search(r"\.minnctapersm\s+(\d+)", head)
    return (
        int(threads.group(1)) if threads else 1024,
        int(blocks.group(1)) if blocks else 1,
    )


def _marshal(kernel: str, ctype: str, pname: str, a):
    """What CuPy packs for ``a`` checked against the C parameter; the emulation's
    value (host address, int or float)."""
    if "*" in ctype:
        if not isinstance(a, np.uint64):
            raise TypeError(
                f"{kernel}: pointer argument {pname} must be a numpy.uint64 address, "
                f"got {type(a).__name__}"
            )
        return int(a) or None
    base = ctype.replace("const", "").strip()
    want = _C_TYPES[base]
    got = type(a)
    if got is int and want is np.int64:
        return a  # CuPy passes a Python int as int64
    if got is not want:
        raise TypeError(
            f"{kernel}: argument {pname} ({base}) must be {want.__name__}, got "
            f"{got.__name__} (CuPy would pass {np.asarray(a).dtype})"
        )
    return float(a) if want is np.float32 else int(a)


class _LightDevice:
    """``cupy.cuda.Device`` for :func:`install` ``(light=True)``: a context manager
    that tracks the current device and nothing else (a mock's own cost would swamp
    what the benchmark measures)."""

    __slots__ = ("id",)

    def __init__(self, device=None):
        self.id = device

    def __enter__(self):
        _STATE.stack.append(self.id)
        return self

    def __exit__(self, *exc):
        _STATE.stack.pop()


class _LightStream:
    __slots__ = ("cuda_stream",)

    def __init__(self, handle: int):
        self.cuda_stream = handle


def install(
    monkeypatch,
    sms: int = 2,
    run: bool = True,
    devices: int = 1,
    light: bool = False,
) -> FakeGPU:
    """Replace what needs a device (see the module docstring) for one test; returns the
    state (launch log). Clears the launcher's caches so kernels are built through the
    fakes. ``light``: for the host-overhead benchmark, plain stand-ins instead of the
    spec'd mocks, and launches that return at once (no checks, no emulation)."""
    global _STATE
    if cupy is None:
        raise RuntimeError("CuPy is not installed")
    from sj_parallel.backends import _cuda as C

    state = FakeGPU(sms=sms, run=run and not light, light=light)
    _STATE = state
    if light:
        stream = _LightStream(STREAM_BASE)
        monkeypatch.setattr(cupy, "RawModule", DeviceRawModule)
        monkeypatch.setattr(cupy.cuda, "Device", _LightDevice)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
        props = mock.create_autospec(torch._C._CudaDeviceProperties, instance=True)
        props.major, props.minor, props.multi_processor_count = CC // 10, CC % 10, sms
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
        for name in ("_KERNELS", "_MODULES", "_DEVICES", "_STREAMS", "_COUNTER_BUFS"):
            if isinstance(getattr(C, name, None), dict):
                monkeypatch.setattr(C, name, {})
        return state
    real_device = _REAL.setdefault("Device", cupy.cuda.Device)
    real_count = _REAL.setdefault("getDeviceCount", cupy.cuda.runtime.getDeviceCount)
    real_stream = _REAL.setdefault("current_stream", torch.cuda.current_stream)
    real_props = _REAL.setdefault("props", torch.cuda.get_device_properties)
    real_current = _REAL.setdefault("current_device", torch.cuda.current_device)

    def device(device=None):
        if device is not None and not isinstance(device, int):
            raise TypeError(f"cupy.cuda.Device(device): an int or None, got {device!r}")
        inst = mock.create_autospec(real_device, instance=True)
        inst.id = device

        def enter(*_):
            state.stack.append(device)
            return inst

        def leave(*_):
            state.stack.pop()

        inst.__enter__.side_effect = enter
        inst.__exit__.side_effect = leave
        return inst

    def current_stream(device=None):
        index = device.index if isinstance(device, torch.device) else device
        s = mock.create_autospec(torch.cuda.Stream, instance=True)
        s.cuda_stream = STREAM_BASE + (index or 0)
        return s

    def props(device=None):
        p = mock.create_autospec(torch._C._CudaDeviceProperties, instance=True)
        p.major, p.minor, p.multi_processor_count = CC // 10, CC % 10, sms
        p.name = "fake sm_90 (CPU emulation)"
        return p

    monkeypatch.setattr(cupy, "RawModule", DeviceRawModule)
    monkeypatch.setattr(
        cupy.cuda, "Device", mock.create_autospec(real_device, side_effect=device)
    )
    monkeypatch.setattr(
        cupy.cuda.runtime,
        "getDeviceCount",
        mock.create_autospec(real_count, return_value=devices),
    )
    monkeypatch.setattr(
        torch.cuda,
        "current_stream",
        mock.create_autospec(real_stream, side_effect=current_stream),
    )
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        mock.create_autospec(real_props, side_effect=props),
    )
    monkeypatch.setattr(
        torch.cuda,
        "current_device",
        mock.create_autospec(real_current, return_value=0),
    )
    # the launcher's caches, emptied so this test builds its kernels through the fakes
    for name in ("_KERNELS", "_MODULES", "_DEVICES", "_STREAMS", "_COUNTER_BUFS"):
        if isinstance(getattr(C, name, None), dict):
            monkeypatch.setattr(C, name, {})
    return state


@contextmanager
def block_order(state: FakeGPU, order: str):
    """Run the emulated grids' blocks in another order inside the block."""
    prev, state.order = state.order, order
    try:
        yield
    finally:
        state.order = prev
