r"""Triton kernels of the ``"triton"`` backend, one module per neuron family:

* :mod:`.psn` -- PSN and masked PSN (``tl.dot`` tiles over time),
* :mod:`.sliding_psn` -- sliding PSN (banded ``tl.dot`` tiles over time),
* :mod:`.mpe_psn` -- MPE-PSN (element-wise, a walk over time),
* :mod:`.common` -- surrogate gradients and the counter hash.

This module holds what the launcher (:mod:`sj_parallel.backends.triton_backend`), the
static checks (``benchmarks/triton_model.py``) and the tests share: the launch
configuration of every kernel (:func:`launch_params`), the argument types of each
kernel (:func:`signature`) and the list of every variant the launcher can build
(:func:`kernel_variants`). Importing it needs Triton; ``TRITON_INTERPRET=1`` must be
set before the first import for Triton's interpreter to run the kernels on CPU tensors.

The variant space is small on purpose: a kernel is compiled per input dtype (float32,
float16, bfloat16), per padded sequence length ``TP`` (PSN) or time tile ``BT``
(sliding PSN, from ``k``; ``k = 1`` has no previous tile), per surrogate kind (backward
kernels) and per MPE-PSN wiring. Everything else (sizes, seeds, the first step,
sampling, the membrane loss, optional states) is a run-time argument, and no integer
or pointer argument is specialised by value or alignment
(``do_not_specialize``), so Triton never builds variants of its own.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import torch

from . import mpe_psn, psn, sliding_psn

__all__ = [
    "PSN_MAX_T",
    "SLIDING_MAX_K",
    "DTYPES",
    "KERNELS",
    "Variant",
    "padded_t",
    "time_tile",
    "backward_parts",
    "launch_params",
    "signature",
    "kernel_variants",
    "dot_precision",
]

PSN_MAX_T = 64
SLIDING_MAX_K = 32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

#: The kernels of each family, (forward, backward).
KERNELS = {
    "psn": (psn.psn_forward_kernel, psn.psn_backward_kernel),
    "sliding": (
        sliding_psn.sliding_forward_kernel,
        sliding_psn.sliding_backward_kernel,
    ),
    "mpe": (mpe_psn.mpe_forward_kernel, mpe_psn.mpe_backward_kernel),
}

# Launch configurations (BLOCK_M, num_warps), chosen with benchmarks/triton_model.py
# (registers, stack, occupancy): per padded T (PSN) or time tile (sliding PSN), and per
# backward part (0: one kernel; 1 and 2: grad_X, then the weight gradients, where one
# kernel would spill registers).
PSN_FORWARD = {16: (32, 8), 32: (16, 8), 64: (16, 8)}
PSN_BACKWARD = {(16, 0): (16, 8), (32, 0): (16, 8), (64, 1): (16, 8), (64, 2): (16, 8)}
SLIDING_FORWARD = {(16, False): (32, 8), (16, True): (32, 8), (32, True): (16, 8)}
SLIDING_BACKWARD = {(16, False, 0): (16, 8), (16, True, 0): (16, 8),
                    (32, True, 1): (16, 4), (32, True, 2): (16, 8)}  # fmt: skip
MPE_FORWARD = (512, 4)
MPE_BACKWARD = (256, 4)


def padded_t(T: int) -> int:
    """PSN's ``T`` padded to 16, 32 or 64 (``tl.dot`` needs at least 16 rows)."""
    return max(16, 1 << (int(T) - 1).bit_length())


def time_tile(k: int) -> int:
    """Sliding PSN's time tile for window ``k``: a power of two >= max(16, k - 1), so
    a window reaches back at most one tile."""
    return max(16, 1 << max(int(k) - 2, 0).bit_length())


def backward_parts(family: str, const: int = 0) -> Tuple[int, ...]:
    """The backward launches of a kernel: ``(0,)`` (one kernel) or ``(1, 2)`` (grad_X,
    then the weight gradients; each reads ``X`` and ``grad_S`` again) for PSN with
    ``T > 32`` and sliding PSN with ``k > 17``."""
    if family == "psn" and padded_t(const) == 64:
        return (1, 2)
    if family == "sliding" and time_tile(const) == 32:
        return (1, 2)
    return (0,)


def dot_precision() -> str:
    """``tl.dot``'s input precision for float32 operands: ``"tf32x3"`` on NVIDIA GPUs
    (three tf32 products on the tensor cores, about float32 accuracy: the tolerance
    the cupy backend meets), ``"ieee"`` on AMD GPUs (which have no tf32x3)."""
    return "ieee" if torch.version.hip else "tf32x3"


class Variant(NamedTuple):
    """One compiled kernel: family, pass (0 forward, 1 backward), input dtype, its
    compile-time constants and launch options."""

    family: str
    backward: bool
    dtype: torch.dtype
    constexprs: Tuple[Tuple[str, object], ...]
    num_warps: int

    @property
    def kernel(self):
        return KERNELS[self.family][int(self.backward)]

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else "?"


def launch_params(
    family: str,
    backward: bool,
    const: int = 0,
    current: bool = False,
    precision: str = "tf32x3",
    part: int = 0,
) -> Tuple[Dict[str, object], int]:
    """``(constexprs, num_warps)`` of a kernel: ``const`` is ``T`` (PSN) or ``k``
    (sliding PSN), ``current`` the MPE-PSN wiring, ``part`` the backward part
    (:func:`backward_parts`)."""
    if family == "psn":
        tp = padded_t(const)
        if backward:
            block, warps = PSN_BACKWARD[(tp, part)]
        else:
            block, warps = PSN_FORWARD[tp]
        ce: Dict[str, object] = {"TP": tp, "BLOCK_M": block, "PRECISION": precision}
        if backward:
            ce["PART"] = part
        return ce, warps
    if family == "sliding":
        bt, prev = time_tile(const), int(const) > 1
        if backward:
            block, warps = SLIDING_BACKWARD[(bt, prev, part)]
        else:
            block, warps = SLIDING_FORWARD[(bt, prev)]
        ce = {"HAS_PREV": prev, "BT": bt, "BLOCK_M": block, "PRECISION": precision}
        if backward:
            ce["PART"] = part
        return ce, warps
    if family == "mpe":
        block, warps = MPE_BACKWARD if backward else MPE_FORWARD
        return {"CURRENT": bool(current), "BLOCK_M": block}, warps
    raise ValueError(f"unknown kernel family {family!r}")


def signature(variant: Variant) -> Dict[str, str]:
    """The argument types of a variant for ``triton.compile(ASTSource(...))``: what the
    launcher passes (``[T, M]`` tensors in the input dtype, parameters and partials in
    float32, integers as int32, scalars as float32)."""
    x = "*" + _TL_DTYPE[variant.dtype]
    names = variant.kernel.arg_names
    ce = dict(variant.constexprs)
    floats = {"tau", "sg_a", "sg_c", "sg_d"}
    f32_ptrs = {"w_ptr", "b_ptr", "gw_ptr", "gb_ptr", "part_ptr", "err_ptr", "v_ptr",
                "gm_ptr", "guh0_ptr", "gu0_ptr", "gv_ptr"}  # fmt: skip
    sig = {}
    for n in names:
        if n in ce:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = "*fp32" if n in f32_ptrs else x
        elif n in floats:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    return sig


def kernel_variants(precision: str = "tf32x3") -> List[Variant]:
    """Every kernel variant the launcher can build: each dtype, padded ``T`` and
    surrogate (PSN), time tile (``k`` = 1, 2..17, 18..33, 34..64) and surrogate
    (sliding PSN), wiring and surrogate
    (MPE-PSN), forward and backward."""
    out: List[Variant] = []

    def add(dtype, family, const=0, current=False):
        ce, warps = launch_params(family, False, const, current, precision)
        out.append(Variant(family, False, dtype, tuple(ce.items()), warps))
        for part in backward_parts(family, const):
            ce, warps = launch_params(family, True, const, current, precision, part)
            out.append(Variant(family, True, dtype, tuple(ce.items()), warps))

    for dtype in DTYPES:
        for tp in (16, 32, 64):
            add(dtype, "psn", tp)
        for k in (1, 2, 18):  # one k per (time tile, HAS_PREV)
            add(dtype, "sliding", k)
        for current in (False, True):
            add(dtype, "mpe", current=current)
    return out
