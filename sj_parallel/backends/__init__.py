"""Backend registry.

A backend is a module with the functions ``psn``, ``sliding_psn`` and ``mpe_psn`` of
:mod:`sj_parallel.backends.torch_backend`'s signatures, on flattened ``[T, M]``
inputs. ``"torch"`` runs everywhere; ``"cupy"`` runs fused CUDA kernels on CUDA
tensors (multi-step mode) and needs CuPy.

Nothing falls back from one backend to another. A backend that cannot run on this
machine is refused when it is assigned (constructor, ``.backend = ...``,
:func:`sj_parallel.set_backend`), with the real reason, a fix, and the original
exception chained as ``__cause__``: ``"cupy"`` needs CuPy to import (else an
``ImportError``) and CuPy to see a CUDA device (else a ``RuntimeError``; a missing
GPU is named before a missing CuPy, which could not help). The device of the actual
input is checked at every forward pass. ``python -m sj_parallel doctor`` prints a
full report.
"""

from __future__ import annotations

import functools
import importlib
import re
from types import ModuleType
from typing import List, Optional, Tuple

import torch

BACKENDS = ("torch", "cupy")

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


def torch_gpu_reason() -> Optional[str]:
    """Why torch sees no CUDA (or ROCm) GPU, or ``None`` when it sees one."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()  # raises with the reason
    except Exception as e:
        return f"torch: {short_reason(str(e))}"
    return "torch.cuda.is_available() is False"


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


def check_backend_available(name: str) -> None:
    """Raise a clear error when ``name`` cannot run on this machine.

    ``'cupy'`` needs CuPy to import and a CUDA device that CuPy sees. A missing GPU
    is reported first: installing CuPy cannot help on a machine without one.

    :param name: ``'torch'`` or ``'cupy'``
    :raises ValueError: unknown backend name
    :raises ImportError: ``'cupy'`` when CuPy does not import; the message names the
        real reason and a fix (and the missing GPU first, if torch sees none), and
        the original exception is chained (``__cause__``)
    :raises RuntimeError: ``'cupy'`` when CuPy imports but sees no CUDA device (no
        driver, a driver too old for CuPy's CUDA, no visible device); the exception
        of ``cupy.cuda.runtime.getDeviceCount()`` is chained
    """
    check_backend_name(name)
    if name != "cupy":
        return
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


def get_backend(name: str, x: torch.Tensor | None = None) -> ModuleType:
    """Return the backend module for ``name``, checking ``x``'s device for 'cupy'."""
    check_backend_available(name)
    if name == "torch":
        from . import torch_backend

        return torch_backend
    if x is not None and not x.is_cuda:
        raise ValueError(
            f"backend 'cupy' needs CUDA tensors, but the input is on {x.device}; "
            "move the model and data to a GPU (`.cuda()`) or use backend='torch'"
        )
    try:
        return importlib.import_module("sj_parallel.backends.cupy_backend")
    except ModuleNotFoundError as e:
        if e.name != "sj_parallel.backends.cupy_backend":
            raise
        raise ImportError("this build of sj_parallel has no 'cupy' backend") from e
