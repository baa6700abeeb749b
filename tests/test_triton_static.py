"""Static checks of the Triton kernels without a GPU (benchmarks/triton_model.py):
every variant the triton backend can launch (:func:`sj_parallel.triton.kernel_variants`,
101 kernels, most with a vector-IO twin) compiled by ``triton.compile`` for sm_80 and
sm_90 with the launcher's own constants, argument types and warps, read back with the
``cuobjdump`` Triton ships.

* no stack frame (where ptxas puts spilled registers) and no local memory, on both
  architectures;
* no float atomics in the PTX (reductions are per-program partials);
* H100 occupancy >= 50 %, except the kernels of ``triton_model.LOW_OCCUPANCY``, which
  must still miss (a stale entry fails, so the list stays honest);
* a record (registers, shared memory, warps, occupancy, estimated % of the DRAM
  roofline) for every variant and arch, as ``benchmarks/kernel_model.py --json``
  includes.

The model runs in a subprocess without ``TRITON_INTERPRET`` (the test session sets it
for the interpreter tests; interpreted kernels cannot be compiled). Compiled results
are cached on disk by source hash, so only changed kernels are compiled again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "benchmarks" / "triton_model.py"

pytestmark = [
    pytest.mark.sj_independent,
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None
        or not (Path(importlib.util.find_spec("triton").origin).parent / "backends"
                / "nvidia" / "bin" / "cuobjdump").exists(),
        reason="needs Triton with its NVIDIA backend (ptxas, cuobjdump)",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_model") / "model.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    # --no-path: the launched kernels only (the model's instruction-count compiles
    # of PATH, half the compile time, feed the committed results, not these checks)
    cmd = [sys.executable, str(MODEL), "--json", str(out), "--jobs", "2", "--no-path"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _model():
    spec = importlib.util.spec_from_file_location("triton_model_rules", MODEL)
    mod = importlib.util.module_from_spec(spec)
    env = os.environ.pop("TRITON_INTERPRET", None)
    try:  # importing the rules compiles nothing
        spec.loader.exec_module(mod)
    finally:
        if env is not None:
            os.environ["TRITON_INTERPRET"] = env
    return mod


def test_every_variant_compiled_for_both_archs(records):
    from sj_parallel import triton as K

    n = len(K.kernel_variants())
    assert n == 101
    assert len(records) == 2 * n
    assert {r["arch"] for r in records} == {"sm_80", "sm_90"}
    kernels = {r["kernel"] for r in records}
    assert kernels == {f"{f}_{p}_kernel" for f in ("psn", "sliding", "mpe")
                       for p in ("forward", "backward")}  # fmt: skip
    for r in records:
        assert r["registers"] > 0 and r["block"] == 32 * r["num_warps"]
        assert 0 < r["occupancy_h100"] <= 1 and r["est_pct_dram_roofline_h100"] > 0


def test_no_spills_no_stack_no_float_atomics_and_occupancy(records):
    bad = _model().problems(records)
    assert not bad, "\n".join(bad)


def test_problems_are_found():
    """The rules catch what they claim to (a check that cannot fail is no check)."""
    M = _model()
    key = next(iter(M.LOW_OCCUPANCY))
    good = {"variant": "v", "arch": "sm_90", "kernel": "mpe_forward_kernel",
            "constexprs": {"CURRENT": False, "BLOCK_M": 512}, "registers": 40,
            "stack_bytes": 0, "local_bytes": 0, "float_atomics": 0,
            "occupancy_h100": 0.75}  # fmt: skip
    assert M.problems([good]) == []
    assert "stack frame 8 B" in M.problems([dict(good, stack_bytes=8)])[0]
    assert "float atomics" in M.problems([dict(good, float_atomics=2)])[0]
    assert "occupancy 25%" in M.problems([dict(good, occupancy_h100=0.25)])[0]
    ce = dict(x.split("=") for x in key[1].split(","))
    listed = dict(good, kernel=key[0], constexprs=ce, occupancy_h100=0.75)
    assert "now reaches 50 %" in M.problems([listed])[0]


@pytest.mark.skipif(
    importlib.util.find_spec("cupy_backends") is None,
    reason="benchmarks/kernel_model.py needs CuPy's NVRTC binding",
)
def test_kernel_model_json_includes_the_triton_records(tmp_path, monkeypatch):
    """``kernel_model.py --json ... --triton`` appends triton_model's records, tagged
    with their backend (the CuPy model itself is replaced by an empty one here)."""
    spec = importlib.util.spec_from_file_location(
        "kernel_model_hook", ROOT / "benchmarks" / "kernel_model.py"
    )
    km = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = km
    spec.loader.exec_module(km)
    monkeypatch.setattr(km, "model", lambda full, files=None: [])
    tm = _model()
    monkeypatch.setitem(sys.modules, "triton_model", tm)
    monkeypatch.setattr(tm, "model", lambda jobs=1: [{"kernel": "psn_forward_kernel"}])
    out = tmp_path / "model.json"
    assert km.main(["--json", str(out), "--triton"]) == 0
    assert json.loads(out.read_text()) == [
        {"kernel": "psn_forward_kernel", "backend": "triton"}
    ]
    assert km.main(["--json", str(out)]) == 0
    assert json.loads(out.read_text()) == []
