r"""Triton kernels of the ``"triton"`` backend, one module per neuron family:

* :mod:`.psn` -- PSN and masked PSN (``tl.dot`` tiles, neurons by steps),
* :mod:`.sliding_psn` -- sliding PSN (a direct window over time in registers),
* :mod:`.mpe_psn` -- MPE-PSN (element-wise, a walk over time),
* :mod:`.common` -- surrogate gradients, the counter hash, vector-IO hints and the
  split products.

This module holds what the launcher (:mod:`sj_parallel.backends.triton_backend`), the
static checks (``benchmarks/triton_model.py``) and the tests share: the launch
configuration of every kernel (:func:`launch_params`), the argument types of each
kernel (:func:`signature`) and the list of every variant the launcher can build
(:func:`kernel_variants`). Importing it needs Triton; ``TRITON_INTERPRET=1`` must be
set before the first import for Triton's interpreter to run the kernels on CPU tensors.

The variant space is small on purpose: a kernel is compiled per input dtype (float32,
float16, bfloat16), per padded sequence length ``TP`` (PSN) or window ring ``KP``
(sliding PSN, from ``k``), per backward part (PSN ``T > 32``), per MPE-PSN wiring and
per ``VEC`` (vector IO, where the launcher finds ``M`` and the tensors aligned, else
single elements). Everything else (sizes, ``k``, seeds, the first step, sampling, the
membrane loss, optional states, the surrogate kind) is a run-time argument, and no
integer or pointer argument is specialised by value or alignment
(``do_not_specialize``, ``do_not_specialize_on_alignment``), so Triton never builds
variants of its own. The launch options are ``num_warps`` and ``num_stages = 1``
(:attr:`Variant.options`).
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
    "ring",
    "vec_width",
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


def _dkey(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f16"


# Launch configurations, chosen with benchmarks/triton_model.py (registers, stack,
# occupancy, instructions per element) for sm_80 and sm_90. Per padded T and dtype
# class ("f32", "f16": float16 and bfloat16):
#   PSN forward: (BLOCK_M, RB, KB, num_warps)
#   PSN backward: {part: (BLOCK_M, GWB, PHASES, num_warps, ROWS)}, parts (0,) or
#   (1, 2); ROWS: the steps as the rows of the tiles (where the neurons as rows need
#   a whole [TP, TP] operand per warp and spill)
PSN_FORWARD = {
    (16, "f32"): (64, 16, 16, 4),
    (32, "f32"): (64, 16, 16, 4),
    (64, "f32"): (64, 32, 16, 4),
    (16, "f16"): (64, 16, 16, 4),
    (32, "f16"): (64, 32, 32, 4),
    (64, "f16"): (64, 32, 32, 4),
}
PSN_BACKWARD = {
    (16, "f32"): {0: (64, 4, 2, 4, False)},
    (32, "f32"): {0: (16, 1, 1, 8, True)},
    (64, "f32"): {1: (16, 1, 1, 8, True), 2: (16, 1, 1, 8, True)},
    (16, "f16"): {0: (32, 2, 2, 2, False)},
    (32, "f16"): {0: (32, 1, 2, 2, False)},
    (64, "f16"): {1: (16, 1, 1, 8, True), 2: (16, 1, 1, 8, True)},
}
# Sliding PSN, per ring length KP: (elements per thread, num_warps), forward and
# backward.
SLIDING_RINGS = (2, 4, 8, 16, 32)
SLIDING_FORWARD = {2: (4, 4), 4: (2, 4), 8: (2, 4), 16: (1, 4), 32: (1, 4)}
SLIDING_BACKWARD = {2: (2, 4), 4: (1, 4), 8: (1, 4), 16: (1, 4), 32: (1, 4)}
# MPE-PSN: (elements per thread, num_warps), forward and backward.
MPE_FORWARD = (4, 4)
MPE_BACKWARD = (2, 4)


def padded_t(T: int) -> int:
    """PSN's ``T`` padded to 16, 32 or 64 (``tl.dot`` needs at least 16 rows)."""
    return max(16, 1 << (int(T) - 1).bit_length())


def ring(k: int) -> int:
    """Sliding PSN's ring length for window ``k``: ``k`` rounded up to a power of two,
    at least 2."""
    return max(2, 1 << (int(k) - 1).bit_length())


def vec_width(family: str, backward: bool, dtype: torch.dtype, const: int = 0) -> int:
    """``VEC`` of the vector-IO variant of a kernel (1: it has none): 16 bytes of the
    dtype (PSN; not with ``ROWS``), or the neighbouring elements each thread owns
    (sliding PSN, MPE-PSN), at most 16 bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    if family == "psn":
        parts = PSN_BACKWARD[(padded_t(const), _dkey(dtype))]
        if backward and all(cfg[-1] for cfg in parts.values()):
            return 1  # the steps as rows: no vector IO along the neurons
        return 16 // size
    if family == "sliding":
        table = SLIDING_BACKWARD if backward else SLIDING_FORWARD
        per_thread = table[ring(const)][0]
    else:
        per_thread = (MPE_BACKWARD if backward else MPE_FORWARD)[0]
    return min(per_thread, 16 // size)


def backward_parts(family: str, const: int = 0, dtype=torch.float32) -> Tuple[int, ...]:
    """The backward launches of a kernel: ``(0,)`` (one kernel) or ``(1, 2)``
    (``grad_X``, then the weight gradients; each reads ``X`` and ``grad_S`` again, which
    PSN with ``T > 32`` needs to stay within the registers without spilling)."""
    if family == "psn":
        return tuple(PSN_BACKWARD[(padded_t(const), _dkey(dtype))])
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

    @property
    def options(self) -> Dict[str, int]:
        """The launch (and ``triton.compile``) options."""
        return {"num_warps": self.num_warps, "num_stages": 1}


def launch_params(
    family: str,
    backward: bool,
    const: int = 0,
    current: bool = False,
    precision: str = "tf32x3",
    part: int = 0,
    dtype: torch.dtype = torch.float32,
    vec: int = 1,
) -> Tuple[Dict[str, object], Dict[str, int]]:
    """``(constexprs, options)`` of a kernel: ``const`` is ``T`` (PSN) or ``k``
    (sliding PSN), ``current`` the MPE-PSN wiring, ``part`` the backward part
    (:func:`backward_parts`), ``vec`` 1 or :func:`vec_width` (vector IO); ``options``
    as :attr:`Variant.options`."""
    if family == "psn":
        tp = padded_t(const)
        key = (tp, _dkey(dtype))
        if backward:
            block, gwb, phases, warps, rows = PSN_BACKWARD[key][part]
            ce: Dict[str, object] = {"TP": tp, "BLOCK_M": block, "GWB": gwb,
                                     "PHASES": phases}  # fmt: skip
        else:
            block, rb, kb, warps = PSN_FORWARD[key]
            ce = {"TP": tp, "BLOCK_M": block, "RB": rb, "KB": kb}
        ce.update(VEC=vec, PRECISION=precision)
        if backward:
            ce.update(PART=part, ROWS=rows)
    elif family == "sliding":
        kp = ring(const)
        per_thread, warps = (SLIDING_BACKWARD if backward else SLIDING_FORWARD)[kp]
        ce = {"KP": kp, "BLOCK_M": per_thread * 32 * warps, "VEC": vec}
    elif family == "mpe":
        per_thread, warps = MPE_BACKWARD if backward else MPE_FORWARD
        ce = {"CURRENT": bool(current), "BLOCK_M": per_thread * 32 * warps, "VEC": vec}
    else:
        raise ValueError(f"unknown kernel family {family!r}")
    options = Variant(family, backward, dtype, (), warps).options
    return ce, options


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
    """Every kernel variant the launcher can build: each dtype and ``VEC``, padded
    ``T`` and backward part (PSN), ring length (sliding PSN: ``k`` in 1..32), wiring
    (MPE-PSN), forward and backward."""
    out: List[Variant] = []

    def add(dtype, family, backward, const=0, current=False, part=0):
        vw = vec_width(family, backward, dtype, const)
        for vec in sorted({1, vw}):
            ce, opts = launch_params(family, backward, const, current, precision,
                                     part, dtype, vec)  # fmt: skip
            out.append(Variant(family, backward, dtype, tuple(ce.items()),
                               opts["num_warps"]))  # fmt: skip

    for dtype in DTYPES:
        for tp in (16, 32, 64):
            add(dtype, "psn", False, tp)
            for part in backward_parts("psn", tp, dtype):
                add(dtype, "psn", True, tp, part=part)
        for kp in SLIDING_RINGS:
            add(dtype, "sliding", False, kp)
            add(dtype, "sliding", True, kp)
        for current in (False, True):
            add(dtype, "mpe", False, current=current)
            add(dtype, "mpe", True, current=current)
    return out
