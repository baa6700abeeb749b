"""Backend registry.

A backend is a module with the functions ``psn``, ``sliding_psn`` and ``mpe_psn`` of
:mod:`sj_parallel.backends.torch_backend`'s signatures, on flattened ``[T, M]``
inputs. ``"torch"`` runs everywhere; ``"cupy"`` runs fused CUDA kernels on CUDA
tensors (multi-step mode) and needs CuPy; ``"triton"`` runs fused Triton kernels on
CUDA/ROCm tensors (multi-step mode) and needs Triton (shipped with torch's GPU wheels).
:data:`REGISTRY` holds, per backend, its module, its availability check, the tensors
it takes and how to install it; :func:`get_backend` and
:func:`check_backend_available` dispatch through it.

Nothing falls back from one backend to another. A backend that cannot run on this
machine is refused when it is assigned (constructor, ``.backend = ...``,
:func:`sj_parallel.set_backend`), with the real reason, a fix, and the original
exception chained as ``__cause__``: ``"cupy"`` needs CuPy to import (else an
``ImportError``) and CuPy to see a CUDA device (else a ``RuntimeError``; a missing
GPU is named before a missing CuPy, which could not help); ``"triton"`` needs Triton
to import (else an ``ImportError``) and torch to see a GPU, or Triton's interpreter
(else a ``RuntimeError``). The device of the actual input is checked at every
forward pass. ``python -m sj_parallel doctor`` prints a full report.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from types import ModuleType
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

BACKENDS = ("torch", "cupy", "triton")

_CUPY_HINT = (
    "install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` (CUDA 12) "
    "or `pip install cupy-cuda13x` (CUDA 13)"
)
_DOCTOR_HINT = "Run `python -m sj_parallel doctor` for a full report."


def check_backend_name(name: str) -> str:
    """Validate a backend name; raises ``ValueError`` naming the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
    return name


@functools.cache
def cupy_import_error() -> Optional[BaseException]:
    """The exception ``import cupy`` raised, or ``None`` when CuPy imports.

    The result is cached (a failed import is not retried on every call);
    ``cupy_import_error.cache_clear()`` forgets it.

    :return: the original exception (``ModuleNotFoundError`` when CuPy is not
        installed; an ``ImportError``/``OSError``/... when it is installed but broken)
    :rtype: Optional[BaseException]
    """
    try:
        importlib.import_module("cupy")
    except Exception as e:
        return e
    return None


def cupy_available() -> bool:
    """True when CuPy imports (a GPU is not needed for the import).

    :func:`cupy_import_error` says why not.
    """
    return cupy_import_error() is None


def cupy_distributions() -> List[str]:
    """Names of the installed CuPy distributions (``cupy``, ``cupy-cuda12x``, ...).

    More than one means several CuPy wheels share the ``cupy`` package directory,
    which breaks it.
    """
    from importlib.metadata import distributions

    names = set()
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if re.fullmatch(r"(amd-)?cupy(-cuda\d+x?|-rocm[-\d]*)?", name):
            names.add(name)
    return sorted(names)


def cupy_install_hint() -> str:
    """How to install CuPy, for the CUDA version torch was built with."""
    cuda = torch.version.cuda
    if cuda:
        major = cuda.split(".")[0]
        return (
            f"{_CUPY_HINT}; this torch is built for CUDA {cuda}, so "
            f"`pip install cupy-cuda{major}x` matches it"
        )
    return _CUPY_HINT


def _original_error(err: BaseException) -> str:
    """``"Type: message"`` of the error behind ``err``: CuPy wraps a failed import of
    its core in a banner ("Failed to import CuPy. ... Original error: ...") raised
    from the original exception."""
    cause = err.__cause__
    if "Failed to import CuPy" in str(err) and cause is not None:
        return f"{type(cause).__name__}: {cause}"
    m = re.search(r"Original error:\s*\n\s*(.+)", str(err))
    if m:
        return m.group(1).strip()
    return f"{type(err).__name__}: {err}"


def explain_cupy_error(err: BaseException) -> Tuple[str, str]:
    """``(reason, fix)`` for an exception raised by ``import cupy``.

    :param err: the exception (see :func:`cupy_import_error`)
    :return: a one-line reason naming the original error, and a fix to try
    :rtype: Tuple[str, str]
    """
    msg = _original_error(err)
    low = msg.lower()
    if isinstance(err, ModuleNotFoundError) and err.name == "cupy":
        return "CuPy is not installed", cupy_install_hint()
    reason = f"CuPy is installed but failed to import: {msg}"
    dists = cupy_distributions()
    if len(dists) > 1:
        fix = (
            f"several CuPy packages are installed at once ({', '.join(dists)}) and "
            "overwrite each other: `pip uninstall -y "
            + " ".join(dists)
            + "`, then install exactly one (e.g. `pip install cupy-cuda12x`)"
        )
    elif "libcuda.so" in low or "libcuda." in low:
        fix = (
            "the NVIDIA driver library (libcuda) was not found: install the NVIDIA "
            "driver (`nvidia-smi` must work); in a container, start it with GPU "
            "access (e.g. `docker run --gpus all`)"
        )
    elif "nvrtc" in low:
        fix = (
            "CuPy cannot load NVRTC (the CUDA runtime compiler): "
            "`pip install nvidia-cuda-nvrtc-cu12` for cupy-cuda12x, or "
            '`pip install "cupy-cuda12x[ctk]"` (the CUDA libraries as wheels), or add '
            "a CUDA toolkit's lib64 directory to LD_LIBRARY_PATH"
        )
    elif re.search(r"lib\w+\.so|\.dll|shared object", low):
        fix = (
            "a CUDA library CuPy needs cannot be loaded: "
            '`pip install "cupy-cuda12x[ctk]"` (or `"cupy-cuda13x[ctk]"`) installs '
            "the CUDA libraries as wheels; or install the CUDA toolkit matching your "
            "CuPy wheel and add its lib64 directory to LD_LIBRARY_PATH"
        )
    elif "insufficient" in low or "driver version" in low:
        fix = (
            "the NVIDIA driver is older than the CUDA version this CuPy wheel is "
            "built for: install the wheel for the CUDA version `nvidia-smi` shows "
            "(e.g. `pip uninstall -y cupy-cuda13x && pip install cupy-cuda12x`), or "
            "upgrade the driver"
        )
    elif "numpy" in low:
        fix = (
            "this CuPy does not support the installed NumPy: upgrade CuPy "
            "(`pip install -U cupy-cuda12x`) or install a NumPy version it supports"
        )
    elif isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        if top.startswith("cupy"):
            fix = (
                f"the CuPy installation is incomplete ({err.name} is missing): "
                "reinstall it, e.g. `pip install --force-reinstall cupy-cuda12x`"
            )
        else:
            fix = f"a module CuPy needs is missing: `pip install {top}`"
    else:
        fix = (
            "reinstall the one CuPy wheel matching your CUDA version (e.g. `pip "
            'install --force-reinstall cupy-cuda12x`); `python -c "import cupy"` '
            "shows the full traceback"
        )
    return reason, fix


def cupy_unavailable_message(err: Optional[BaseException]) -> str:
    """The message of the ``ImportError`` raised when backend 'cupy' cannot import
    CuPy: the real reason, a fix and where to get a full report."""
    if err is None:  # no recorded exception (e.g. cupy_available was overridden)
        reason, fix = "CuPy is not installed", cupy_install_hint()
    else:
        reason, fix = explain_cupy_error(err)
    if reason == "CuPy is not installed":
        return f"backend 'cupy' needs CuPy, which is not installed. Fix: {fix}. " + (
            _DOCTOR_HINT
        )
    return f"backend 'cupy' cannot be used: {reason}. Fix: {fix}. {_DOCTOR_HINT}"


def short_reason(message: str) -> str:
    """The first sentence of an error message (torch's and CUDA's driver messages go
    on with advice that does not fit on a line)."""
    text = " ".join(str(message).split())
    m = re.match(r"(.+?[.!])(\s|$)", text)
    return m.group(1).rstrip(".") if m else text


def torch_gpu_problem() -> Optional[Tuple[str, Optional[BaseException]]]:
    """``(reason, cause)`` when torch sees no CUDA (or ROCm) GPU, else ``None``;
    ``cause`` is the exception of ``torch.cuda.init()`` when it raised."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch ({torch.__version__}) is a CPU-only build", None
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()  # raises with the reason
    except Exception as e:
        return f"torch: {short_reason(str(e))}", e
    return "torch.cuda.is_available() is False", None


def torch_gpu_reason() -> Optional[str]:
    """Why torch sees no CUDA (or ROCm) GPU, or ``None`` when it sees one."""
    problem = torch_gpu_problem()
    return None if problem is None else problem[0]


class _NoDevice(RuntimeError):
    """CuPy answered, but with zero devices."""


@functools.cache
def cupy_device_error() -> Optional[BaseException]:
    """Why CuPy cannot use a CUDA device, or ``None`` when it sees one.

    Asks ``cupy.cuda.runtime.getDeviceCount()`` (which raises
    ``CUDARuntimeError`` without a driver); zero devices is reported as a
    ``RuntimeError`` too. Needs CuPy to import. Cached like
    :func:`cupy_import_error` (``cupy_device_error.cache_clear()`` forgets it).

    :rtype: Optional[BaseException]
    """
    import cupy

    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return e
    if n < 1:
        return _NoDevice("cupy.cuda.runtime.getDeviceCount() returned 0")
    return None


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def explain_cupy_device_error(err: BaseException) -> Tuple[str, str]:
    """``(reason, fix)`` for an error of :func:`cupy_device_error`."""
    use_torch = "use backend='torch' (the default) on this machine"
    msg = short_reason(str(err))
    if isinstance(err, _NoDevice):
        return (
            "no CUDA GPU: CuPy sees no device (getDeviceCount() is 0)",
            f"{use_torch}; if the machine has a GPU, check CUDA_VISIBLE_DEVICES and, "
            "in a container, that it was started with GPU access (e.g. `docker run "
            "--gpus all`)",
        )
    if "InsufficientDriver" in msg or "insufficient" in msg.lower():
        try:
            import cupy

            driver = cupy.cuda.runtime.driverGetVersion()
            runtime = cupy.cuda.runtime.runtimeGetVersion()
        except Exception:  # pragma: no cover - the query itself failed
            driver, runtime = 0, 0
        if not driver:
            return (
                f"no CUDA GPU: no NVIDIA driver is installed (CUDA reports {msg} "
                "when there is none)",
                f"{use_torch}; on a machine with an NVIDIA GPU, install its driver "
                "(`nvidia-smi` must list the GPU)",
            )
        return (
            f"no usable CUDA GPU: the NVIDIA driver supports CUDA "
            f"{_cuda_version(driver)}, older than the CUDA "
            f"{_cuda_version(runtime) if runtime else '?'} runtime of this CuPy wheel "
            f"({msg})",
            "install the CuPy wheel for the CUDA version `nvidia-smi` shows (e.g. "
            "`pip uninstall -y cupy-cuda13x && pip install cupy-cuda12x`), or "
            f"upgrade the driver; or {use_torch}",
        )
    if "NoDevice" in msg or "no CUDA-capable device" in msg:
        return (
            f"no CUDA GPU: {msg}",
            f"{use_torch}; if the machine has a GPU, check CUDA_VISIBLE_DEVICES and "
            "the driver (`nvidia-smi`)",
        )
    return (
        f"CuPy cannot use the GPU: {type(err).__name__}: {msg}",
        f"check the driver with `nvidia-smi`; {use_torch} meanwhile",
    )


def _check_cupy() -> None:
    """Raise when 'cupy' cannot run here: CuPy must import and see a CUDA device. A
    missing GPU is reported first (installing CuPy cannot help without one).

    :raises ImportError: CuPy does not import (the missing GPU named first, if torch
        sees none); the original exception chained
    :raises RuntimeError: CuPy imports but sees no CUDA device (no driver, a driver
        too old for CuPy's CUDA, no visible device); the exception of
        ``cupy.cuda.runtime.getDeviceCount()`` chained
    """
    if not cupy_available():
        err = cupy_import_error()
        gpu = torch_gpu_reason()
        if gpu is None:
            raise ImportError(cupy_unavailable_message(err)) from err
        raise ImportError(no_gpu_message(gpu, err)) from err
    dev = cupy_device_error()
    if dev is not None:
        reason, fix = explain_cupy_device_error(dev)
        raise RuntimeError(
            f"backend 'cupy' cannot run here: {reason}. Fix: {fix}. {_DOCTOR_HINT}"
        ) from dev


def no_gpu_message(gpu_reason: str, err: Optional[BaseException]) -> str:
    """The message for backend 'cupy' without a GPU and without a working CuPy: the
    missing GPU first (its fix is backend 'torch'), then what CuPy would need."""
    if err is None:
        reason, fix = "CuPy is not installed", cupy_install_hint()
    else:
        reason, fix = explain_cupy_error(err)
    head = f"backend 'cupy' cannot run here: no CUDA GPU ({gpu_reason})"
    use_torch = "use backend='torch' (the default) on this machine"
    if reason == "CuPy is not installed":
        return (
            f"{head}, and CuPy, which it needs as well, is not installed. Fix: "
            f"{use_torch}; on a machine with an NVIDIA GPU, {fix}. {_DOCTOR_HINT}"
        )
    return (
        f"{head}. Fix: {use_torch}. Besides that, {reason}. Fix for that: {fix}. "
        + _DOCTOR_HINT
    )


def _check_cupy_tensor(x: torch.Tensor) -> None:
    if not x.is_cuda:
        raise ValueError(
            f"backend 'cupy' needs CUDA tensors, but the input is on {x.device}; "
            "move the model and data to a GPU (`.cuda()`) or use backend='torch'"
        )


# ----------------------------------------------------------------------- triton
_TRITON_HINT = (
    "Triton ships with torch's CUDA and ROCm wheels: install one from "
    "https://pytorch.org/get-started (e.g. `pip install torch --index-url "
    "https://download.pytorch.org/whl/cu128`), or `pip install triton` next to a GPU "
    "build of torch"
)


@functools.cache
def triton_import_error() -> Optional[BaseException]:
    """The exception ``import triton`` raised, or ``None`` when Triton imports
    (cached; ``triton_import_error.cache_clear()`` forgets it)."""
    try:
        importlib.import_module("triton")
    except Exception as e:
        return e
    return None


def triton_interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``): read
    from the kernels once they are imported (Triton reads the variable when a kernel
    is decorated), else from the environment."""
    common = sys.modules.get("sj_parallel.triton.common")
    if common is not None:
        return bool(common.INTERPRETED)
    value = os.environ.get("TRITON_INTERPRET", "").lower()
    return value in ("1", "true", "on", "yes")  # as Triton reads it


def explain_triton_error(err: BaseException) -> Tuple[str, str]:
    """``(reason, fix)`` for an exception raised by ``import triton``."""
    if isinstance(err, ModuleNotFoundError) and err.name == "triton":
        if torch.version.cuda is None and torch.version.hip is None:
            reason = (
                f"Triton is not installed (this torch, {torch.__version__}, is a "
                "CPU-only build, which comes without it)"
            )
        else:
            reason = "Triton is not installed"
        return reason, _TRITON_HINT
    return (
        f"Triton is installed but failed to import: {type(err).__name__}: {err}",
        "reinstall the Triton version your torch was built with (`pip install "
        '--force-reinstall torch` brings it back); `python -c "import triton"` '
        "shows the full traceback",
    )


def triton_gpu_problem() -> Optional[Tuple[str, str, Optional[BaseException]]]:
    """``(reason, fix, cause)`` when torch sees no CUDA/ROCm GPU for Triton (and the
    interpreter is off), else ``None``."""
    if triton_interpreting():
        return None
    problem = torch_gpu_problem()
    if problem is None:
        return None
    fix = (
        "the triton backend needs an NVIDIA GPU (compute capability 8.0 or newer for "
        "the tensor-core kernels) or an AMD GPU, and a CUDA or ROCm build of torch; "
        "on this machine use backend='torch' (the default). For tests only, "
        "TRITON_INTERPRET=1 set before sj_parallel is imported runs the kernels on CPU "
        "tensors through Triton's interpreter (slow)"
    )
    reason, cause = problem
    return reason, fix, cause


def _check_triton() -> None:
    err = triton_import_error()
    if err is not None:
        reason, fix = explain_triton_error(err)
        raise ImportError(
            f"backend 'triton' cannot be used: {reason}. Fix: {fix}. {_DOCTOR_HINT}"
        ) from err
    problem = triton_gpu_problem()
    if problem is not None:
        reason, fix, cause = problem
        raise RuntimeError(
            f"backend 'triton' cannot run here: {reason}. Fix: {fix}. {_DOCTOR_HINT}"
        ) from cause


def _check_triton_tensor(x: torch.Tensor) -> None:
    if not (x.is_cuda or (x.device.type == "cpu" and triton_interpreting())):
        raise ValueError(
            f"backend 'triton' needs CUDA (or ROCm) tensors, but the input is on "
            f"{x.device}; move the model and data to a GPU (`.cuda()`) or use "
            "backend='torch'"
        )


# --------------------------------------------------------------------- registry
class BackendSpec(NamedTuple):
    """One backend: the module with its ops, a check that raises (with the reason,
    a fix and the original exception chained) when it cannot run here, a check of
    the input tensor, and how to install what it needs."""

    name: str
    module: str
    check: Callable[[], None]
    check_tensor: Optional[Callable[[torch.Tensor], None]]
    install_hint: Callable[[], str]


REGISTRY: Dict[str, BackendSpec] = {
    "torch": BackendSpec(
        "torch", "sj_parallel.backends.torch_backend", lambda: None, None,
        lambda: "nothing to install",
    ),
    "cupy": BackendSpec(
        "cupy", "sj_parallel.backends.cupy_backend", _check_cupy, _check_cupy_tensor,
        cupy_install_hint,
    ),
    "triton": BackendSpec(
        "triton", "sj_parallel.backends.triton_backend", _check_triton,
        _check_triton_tensor, lambda: _TRITON_HINT,
    ),
}  # fmt: skip


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def check_backend_available(name: str) -> None:
    """Raise a clear error when ``name`` cannot run in this environment.

    :param name: ``'torch'``, ``'cupy'`` or ``'triton'``
    :raises ValueError: unknown backend name
    :raises ImportError: ``'cupy'`` when CuPy does not import, ``'triton'`` when
        Triton does not import; the message names the real reason and a fix, and the
        original exception is chained (``__cause__``)
    :raises RuntimeError: ``'triton'`` when torch sees no GPU (and Triton's
        interpreter is off)
    """
    check_backend_name(name)
    REGISTRY[name].check()


def get_backend(name: str, x: torch.Tensor | None = None) -> ModuleType:
    """Return the backend module for ``name``, checking that it can run and that it
    takes ``x``'s device.

    While torch.compile traces, a backend module already imported is returned as it
    is: its availability was checked when the backend was assigned (and the ops check
    their inputs themselves)."""
    if _compiling() and name in _LOADED:
        # (our own small table: Dynamo guards on what it reads, and sys.modules
        # changes size whenever anything is imported meanwhile)
        return _LOADED[name]
    check_backend_available(name)
    spec = REGISTRY[name]
    if x is not None and spec.check_tensor is not None:
        spec.check_tensor(x)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as e:
        if e.name != spec.module:
            raise
        raise ImportError(f"this build of sj_parallel has no {name!r} backend") from e
    _LOADED[name] = module
    return module


#: The backend modules :func:`get_backend` has returned, by name.
_LOADED: Dict[str, ModuleType] = {}
