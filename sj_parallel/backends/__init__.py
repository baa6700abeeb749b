"""Backend registry.

A backend is a module with the functions ``psn``, ``sliding_psn`` and ``mpe_psn`` of
:mod:`sj_parallel.backends.torch_backend`'s signatures, on flattened ``[T, M]``
inputs. ``"torch"`` runs everywhere; ``"cupy"`` runs fused CUDA kernels on CUDA
tensors (multi-step mode) and needs CuPy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

BACKENDS = ("torch", "cupy")

_CUPY_HINT = (
    "install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` (CUDA 12) "
    "or `pip install cupy-cuda13x` (CUDA 13), or `pip install sj_parallel[cuda12]`"
)


def check_backend_name(name: str) -> str:
    """Validate a backend name; raises ``ValueError`` naming the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
    return name


def cupy_available() -> bool:
    """True when CuPy imports (a GPU is not needed for the import)."""
    try:
        importlib.import_module("cupy")
    except Exception:
        return False
    return True


def check_backend_available(name: str) -> None:
    """Raise a clear error when ``name`` cannot run in this environment."""
    check_backend_name(name)
    if name == "cupy" and not cupy_available():
        raise ImportError(
            f"backend 'cupy' needs CuPy, which is not installed: {_CUPY_HINT}"
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
