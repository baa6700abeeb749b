"""Static checks of the CUDA kernels from benchmarks/kernel_model.py (issue 9): no GPU,
no timing; ptxas resources of the exact sources and options the launcher builds, and
the model's estimates against the targets.

* every representative variant (``_cuda.kernel_variants()``: every kernel function,
  code path, dtype and switch) and every variant the model covers, for sm_80 and sm_90:
  no spilled registers, no stack frame, H100 occupancy >= 50 %;
* every modelled variant: no shared access in its steady state worse than 2-way bank
  conflicts, no float atomics;
* the estimated % of the H100 DRAM roofline meets ``kernel_model.target_pct`` except
  for the variants in ``kernel_model.KNOWN_MISSES``, which must still miss (a stale
  entry fails, so the list stays honest).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_model():
    spec = importlib.util.spec_from_file_location(
        "kernel_model", ROOT / "benchmarks" / "kernel_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernel_model"] = mod
    spec.loader.exec_module(mod)
    return mod


def _toolchain_missing() -> str:
    try:
        import cupy_backends.cuda.libs.nvrtc  # noqa: F401
        import nvidia.cuda_nvrtc  # noqa: F401
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"NVRTC 12 / triton ptxas missing: {e}"
    return ""


pytestmark = pytest.mark.skipif(bool(_toolchain_missing()), reason=_toolchain_missing())


@pytest.fixture(scope="module")
def K():
    return _load_model()


@pytest.fixture(scope="module")
def records(K):
    return K.model(full=False)


def _variants(K):
    from sj_parallel.backends import _cuda as C

    seen, out = set(), []
    for v in C.kernel_variants(representative=True) + K.variants(False):
        key = (v.name, v.dtype, v.const, v.flags)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


@pytest.mark.parametrize("arch", [80, 90])
def test_no_spills_no_stack_and_half_occupancy(K, arch):
    from sj_parallel.backends import _cuda as C
    from sj_parallel.backends import _occupancy as O

    bad = []
    for v in _variants(K):
        comp = K.compile_variant(v, arch)
        for kernel, c in comp.items():
            T = v.const if v.name == "psn" else K.MODEL_T[v.name]
            block, _, dyn = C.launch_config(v.name, kernel, v.const, T, v.dtype)
            occ = O.occupancy(90, block, c["registers"], c["static_smem_bytes"] + dyn)
            what = f"{kernel} {v.dtype} const={v.const} flags={v.flags} sm_{arch}"
            if c["spill_bytes"] or c["stack_bytes"]:
                bad.append(f"{what}: spill {c['spill_bytes']} B, stack "
                           f"{c['stack_bytes']} B")  # fmt: skip
            if arch == 90 and occ < 0.5:
                bad.append(f"{what}: H100 occupancy {occ:.0%} ({c['registers']} "
                           f"registers, {dyn} B dynamic shared memory)")  # fmt: skip
    assert not bad, "\n".join(bad)


def test_shared_conflicts_and_atomics(records):
    bad = [
        f"{r.kernel} {r.dtype} const={r.const}: {r.max_shared_conflict:.0f}-way "
        f"conflicts, {r.float_atomics} float atomics"
        for r in records
        if r.max_shared_conflict > 2 or r.float_atomics
    ]
    assert not bad, "\n".join(bad)


def test_estimated_roofline_targets(K, records):
    misses, stale = [], []
    met = {}
    for r in records:
        target = K.target_pct(r)
        if target is None:
            continue
        key = K.miss_key(r)
        ok = r.est_pct_dram_roofline_h100 >= target
        met[key] = met.get(key, True) and ok
        if not ok and key not in K.KNOWN_MISSES:
            misses.append(f"{key}: {r.est_pct_dram_roofline_h100:.0f}% < {target:.0f}%"
                          f" ({r.limiter_h100}-bound)")  # fmt: skip
    for key in K.KNOWN_MISSES:
        assert key in met, f"KNOWN_MISSES names a variant the model lacks: {key}"
        if met[key]:
            stale.append(f"{key} now meets its target: delete it from KNOWN_MISSES")
    assert not misses and not stale, "\n".join(misses + stale)
