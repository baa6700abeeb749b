"""Static model of the Triton kernels (``sj_parallel/triton``): no GPU needed.

Every kernel variant the triton backend can launch
(:func:`sj_parallel.triton.kernel_variants`: each dtype, padded T or time tile,
surrogate and MPE-PSN wiring, forward and backward) is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for sm_80 and
sm_90, with the launcher's own constants, argument types, ``num_warps`` and
``num_stages`` (:func:`sj_parallel.triton.launch_params`, :func:`~sj_parallel.triton.
signature`), and the cubin is read with the ``cuobjdump`` Triton ships
(``--dump-resource-usage``: registers, stack frame (where ptxas puts spilled registers),
local memory, static shared memory). Each record also has the dynamic shared memory
Triton asks for, the warps, the theoretical occupancy on H100 and A100
(``sj_parallel/backends/_occupancy.py``), the float atomics in the PTX (there must be
none: reductions are per-program partials), and an estimated % of the DRAM roofline:

* DRAM bytes per element: what the kernel must move (read ``X`` once and write ``S``
  once forward; read ``X`` and ``grad_S``, write ``grad_X`` backward), in the dtype;
* instructions per element from the SASS of the path a training step takes: the
  run-time switches are bound to constants in a second compile of the same kernel
  (:data:`PATH`: the ATan surrogate of PSN and sliding PSN, MPE-PSN sampling with
  the membrane loss and its triangle surrogate, no incoming state), so the uniform
  branches not taken do not count (the registers, stack and occupancy are those of
  the kernel that is launched). The steady state is the innermost loop that loads
  the inputs: its body runs once per ``BLOCK_M x rows`` elements (``rows``: ``TP``
  for a PSN backward tile, the ring ``KP`` for sliding PSN, 1 for MPE-PSN); the PSN
  forward counts its whole program, each loop's body times its trip count, per
  ``BLOCK_M x TP`` elements. Times 32 threads times the warps; a backward split in
  two parts adds both parts' instructions and bytes;
* bounds per element: DRAM, issue (4 warp-instructions per SM and clock), FP32 lanes,
  MUFU, and the tensor cores (the multiply-adds of the ``HMMA``/``HGMMA``
  instructions counted as above, a 16-bit one as half a tf32 one); the estimate is
  the smallest, as a % of the DRAM bound.

Latency is not modelled (the occupancy column is the guard). The same machines as
``benchmarks/kernel_model.py``: H100 SXM (132 SMs, 1.755 GHz, 3.35 TB/s), A100 SXM4
(108 SMs, 1.41 GHz, 2.04 TB/s).

Compiled results are cached on disk, keyed by the kernel's source hash (Triton's
``cache_key``, which covers the helpers it calls), the variant and the target, so a
second run takes seconds. ``TRITON_INTERPRET`` must be unset: the interpreter replaces
the kernels by Python functions that cannot be compiled.

    python benchmarks/triton_model.py                  # table of every variant (sm_90)
    python benchmarks/triton_model.py --json out.json  # one record per variant and arch
    python benchmarks/triton_model.py --markdown out.md --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

if os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes"):
    raise SystemExit(
        "benchmarks/triton_model.py compiles the kernels for GPUs: unset "
        "TRITON_INTERPRET (Triton's interpreter replaces them by Python functions)"
    )

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sj_parallel import triton as K  # noqa: E402
from sj_parallel.backends import _occupancy as O  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CACHE = Path(tempfile.gettempdir()) / "sjp_triton_model_cache"
ARCHS = (80, 90)
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}  # fmt: skip
SIZES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}

#: (name, compute capability, SMs, clock Hz, DRAM bytes/s, FP32 lanes per SM,
#: tf32 multiply-adds per SM and clock on the tensor cores)
MACHINES = (
    ("H100", 90, 132, 1.755e9, 3.35e12, 128, 512),
    ("A100", 80, 108, 1.41e9, 2.039e12, 64, 512),
)

#: Kernels whose H100 occupancy is below 50 % (in some dtype), with the reason; the test
#: fails if one of them reaches 50 % (then delete it) or if any other kernel misses.
_COLS = (
    "PSN backward with the neurons as rows: tl.dot needs the whole [TP, TP] weight "
    "operand in every warp (tf32 or 16-bit parts) next to the recomputed H, GH and the "
    "weight-gradient accumulators: {} registers per thread (no spills); smaller tiles, "
    "fewer warps and register caps spill"
)
_ROWS = (
    "PSN backward with the steps as rows (the neuron-row layout spills here): tf32x3 "
    "keeps W and W^T as tf32 high/low fragments spread over the warps with the "
    "weight-gradient accumulators: {} registers per thread (no spills)"
)
_RING = (
    "sliding PSN backward: the input ring, the GH ring and the tap sums (KP values "
    "each per neuron) stay in registers: {} registers per thread (no spills); a "
    "shifted ring in a loop (tried) spills"
)
_FWD = (
    "PSN forward: the [BLOCK_M, RB] accumulator and the split parts of a chunk of W "
    "(tf32x3 or 16-bit): {} registers per thread in some dtypes (no spills); smaller "
    "step blocks cost more instructions than the occupancy gains"
)
LOW_OCCUPANCY: Dict[Tuple[str, str], str] = {
    ("psn_forward_kernel", "TP=32"): _FWD.format("66-80"),
    ("psn_forward_kernel", "TP=64"): _FWD.format("72-89"),
    ("psn_backward_kernel", "TP=16,PART=0"): _COLS.format("95-174"),
    ("psn_backward_kernel", "TP=32,PART=0"): _COLS.format("167-243") + "; float32: "
        + _ROWS.format("205"),
    ("psn_backward_kernel", "TP=64,PART=1"): _ROWS.format("104-106"),
    ("psn_backward_kernel", "TP=64,PART=2"): _ROWS.format("140-149"),
    ("sliding_backward_kernel", "KP=16"): _RING.format("95-96"),
    ("sliding_backward_kernel", "KP=32"): _RING.format("226-254"),
}  # fmt: skip

#: The run-time switches bound to constants in the instruction-count compile (the path
#: of a training step): PSN/sliding PSN with SpikingJelly's default ATan surrogate,
#: MPE-PSN sampling, with the membrane loss, its triangle (PiecewiseQuadratic)
#: surrogate and no incoming state.
PATH = {
    ("psn", True): {"sg_kind": 0},
    ("sliding", True): {"sg_kind": 0},
    ("mpe", False): {"stochastic": 1, "need_mse": 1, "has_uh0": 0, "has_u0": 0},
    ("mpe", True): {"sg_kind": 2, "stochastic": 1, "need_mse": 1, "has_uh0": 0,
                    "has_u0": 0, "has_guhl": 0, "has_gul": 0},
}  # fmt: skip

FP32_OPS = {"FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSET", "FSETP", "FCHK",
            "FMUL32I", "FADD32I", "FFMA32I", "FSWZADD"}  # fmt: skip


def variant_key(v: K.Variant) -> str:
    """A readable name of a variant: kernel, dtype and constants."""
    ce = ",".join(f"{k}={val}" for k, val in v.constexprs if k != "PRECISION")
    return f"{v.name}[{DTYPE_NAMES[v.dtype]};{ce};warps={v.num_warps}]"


def _run(cmd: List[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout + proc.stderr


def _cache_file(v: K.Variant, arch: int, path: bool) -> Path:
    text = json.dumps(
        [triton.__version__, v.kernel.cache_key, v.name, DTYPE_NAMES[v.dtype],
         [list(c) for c in v.constexprs], v.options, arch, K.signature(v), path]
    )  # fmt: skip
    return CACHE / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".json")


def compile_variant(v: K.Variant, arch: int, path: bool = False) -> dict:
    """Compile one variant for ``sm_<arch>`` with its launch options: resources and
    the SASS opcodes. ``path``: with the run-time switches of :data:`PATH` bound to
    constants (for the instruction count)."""
    cached = _cache_file(v, arch, path)
    if cached.exists():
        return json.loads(cached.read_text())
    sig = K.signature(v)
    constexprs = dict(v.constexprs)
    if path:
        for name, value in PATH.get((v.family, v.backward), {}).items():
            sig[name] = "constexpr"
            constexprs[name] = value
    src = ASTSource(fn=v.kernel, signature=sig, constexprs=constexprs)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=v.options)
    ptx = ck.asm["ptx"]
    name = ck.metadata.name
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        usage = _run([str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)])
        sass = _run([str(BIN / "cuobjdump"), "-sass", str(cubin)])
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    out = {
        "kernel": name,
        "registers": int(m.group(1)),
        "stack_bytes": int(m.group(2)),
        "static_smem_bytes": int(m.group(3)),
        "local_bytes": int(m.group(4)),
        "dynamic_smem_bytes": int(ck.metadata.shared),
        "float_atomics": len(re.findall(r"\b(?:atom|red)\.[\w.]*f(?:16|32|64)", ptx)),
        "sass": _sass_ops(sass),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out))
    return out


def _sass_ops(dump: str) -> List[Tuple[int, str, Optional[int]]]:
    """``[(address, opcode, branch target or None)]`` of the cubin's one function."""
    out = []
    pattern = r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);"
    for m in re.finditer(pattern, dump):
        addr, op, rest = int(m.group(1), 16), m.group(2), m.group(3)
        target = None
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", rest)
            target = int(t.group(1), 16) if t else None
        out.append((addr, op, target))
    return out


# ------------------------------------------------------------------ estimates
def _loops(sass) -> List[Tuple[int, int]]:
    """``[(first, last)]`` instruction indices of each loop (a backward branch)."""
    index = {a: i for i, (a, _, _) in enumerate(sass)}
    return [
        (index[t], i)
        for i, (a, _, t) in enumerate(sass)
        if t is not None and t < a and t in index
    ]


def _mma_macs(op: str) -> float:
    """tf32-equivalent multiply-adds of one warp's tensor-core instruction (a 16-bit
    multiply-add counts half): ``HMMA.16816`` 2048 (16-bit), ``HMMA.1688`` 1024
    (tf32), ``HGMMA.64xNxK`` (a warpgroup's, a quarter per warp)."""
    parts = op.split(".")
    half = any(p in ("F16", "BF16") for p in parts[2:])
    if parts[0] == "HMMA":
        shape = {"16816": 2048, "1688": 1024, "1684": 512, "884": 256}.get(parts[1], 0)
    elif parts[0] == "HGMMA":
        m = re.match(r"(\d+)x(\d+)x(\d+)", parts[1])
        shape = int(m.group(1)) * int(m.group(2)) * int(m.group(3)) // 4 if m else 0
        half = half or not any(p == "TF32" for p in parts[2:])
    else:
        return 0.0
    return shape * (0.5 if half else 1.0)


def _count(ops, weights=None) -> Dict[str, float]:
    c = {"total": 0.0, "fp32": 0.0, "mufu": 0.0, "tensor_macs": 0.0}
    for i, op in enumerate(ops):
        w = 1.0 if weights is None else weights[i]
        base = op.split(".")[0]
        c["total"] += w
        c["fp32"] += w * (base in FP32_OPS)
        c["mufu"] += w * (base == "MUFU")
        c["tensor_macs"] += w * _mma_macs(op)
    return c


def _rows(v: K.Variant) -> int:
    ce = dict(v.constexprs)
    return ce.get("TP") or ce.get("KP") or 1


def _psn_forward_weights(v: K.Variant, sass) -> List[float]:
    """Each instruction's executions per program of the PSN forward: its step-block
    loop runs ``TP / RB`` times, the chunk loop inside ``TP / KB`` times (loops with
    one trip are straight code)."""
    ce = dict(v.constexprs)
    trips = [n for n in (ce["TP"] // ce["RB"], ce["TP"] // ce["KB"]) if n > 1]
    loops = sorted(_loops(sass), key=lambda lp: lp[0] - lp[1])  # outermost first
    depth = [0] * len(sass)
    for a, b in loops:
        for i in range(a, b + 1):
            depth[i] += 1
    if max(depth, default=0) != len(trips) or len(loops) != len(trips):
        raise RuntimeError(
            f"{variant_key(v)}: {len(loops)} loops in the SASS for the trip counts "
            f"{trips}; update _psn_forward_weights"
        )
    weights = []
    for d in depth:
        w = 1.0
        for n in trips[:d]:
            w *= n
        weights.append(w)
    return weights


def instructions_per_element(v: K.Variant, sass) -> Dict[str, float]:
    """Thread-instructions (and tensor-core multiply-adds) per element of the
    variant's steady state (see the module docstring)."""
    ce = dict(v.constexprs)
    threads = 32 * v.num_warps
    ops = [op for _, op, _ in sass]
    if v.family == "psn" and not v.backward:
        body = _count(ops, _psn_forward_weights(v, sass))
        elements = ce["BLOCK_M"] * ce["TP"]
    else:
        loading = [
            lp
            for lp in _loops(sass)
            if any(ops[i].startswith("LDG") for i in range(lp[0], lp[1] + 1))
        ]
        if not loading:
            raise RuntimeError(f"{variant_key(v)}: no loop loads its inputs")
        a, b = min(loading, key=lambda lp: lp[1] - lp[0])  # the innermost
        body = _count(ops[a : b + 1])
        elements = ce["BLOCK_M"] * _rows(v)
    out = {k: n * threads / elements for k, n in body.items() if k != "tensor_macs"}
    # a warp's tensor-core instruction multiplies for the whole warp
    out["tensor_macs"] = body["tensor_macs"] * v.num_warps / elements
    return out


def dram_bytes_per_element(v: K.Variant) -> float:
    """Forward: read X, write S; backward: read X and grad_S, write grad_X (a part of
    a split backward: what it moves, see :func:`combine_parts`)."""
    part = dict(v.constexprs).get("PART", 0)
    units = {0: 3 if v.backward else 2, 1: 3, 2: 2}[part]
    return SIZES[v.dtype] * units


def estimate(v: K.Variant, rec: dict, machine) -> Tuple[float, str, Dict[str, float]]:
    """The bounds (elements per second) of one record and the smallest as a % of the
    DRAM bound of the pass (its useful bytes)."""
    name, cc, sms, clock, dram, lanes, macs = machine
    ins = rec["instr_per_elt"]
    per_sm = sms * clock
    useful = SIZES[v.dtype] * (3 if v.backward else 2)
    bounds = {"dram": dram / rec["dram_bytes_per_elt"]}
    bounds["issue"] = per_sm * 128 / ins["total"]
    if ins["fp32"]:
        bounds["fp32"] = per_sm * lanes / ins["fp32"]
    if ins["mufu"]:
        bounds["mufu"] = per_sm * 16 / ins["mufu"]
    if ins.get("tensor_macs"):
        bounds["tensor"] = per_sm * macs / ins["tensor_macs"]
    limiter = min(bounds, key=bounds.get)
    return 100.0 * bounds[limiter] / (dram / useful), limiter, bounds


def record(v: K.Variant, arch: int, c: dict, path: Optional[dict] = None) -> dict:
    """One variant's record; ``c`` the launched kernel's compile, ``path`` the compile
    with :data:`PATH` (the instruction count; ``c`` where there is nothing to bind)."""
    block = 32 * v.num_warps
    smem = c["static_smem_bytes"] + c["dynamic_smem_bytes"]
    rec = {
        "variant": variant_key(v),
        "family": v.family,
        "pass": "backward" if v.backward else "forward",
        "kernel": c["kernel"],
        "dtype": DTYPE_NAMES[v.dtype],
        "constexprs": {k: val for k, val in v.constexprs},
        "arch": f"sm_{arch}",
        "num_warps": v.num_warps,
        "block": block,
        "registers": c["registers"],
        "stack_bytes": c["stack_bytes"],
        "local_bytes": c["local_bytes"],
        "static_smem_bytes": c["static_smem_bytes"],
        "dynamic_smem_bytes": c["dynamic_smem_bytes"],
        "float_atomics": c["float_atomics"],
        "occupancy_h100": O.occupancy(90, block, c["registers"], smem),
        "occupancy_a100": O.occupancy(80, block, c["registers"], smem),
        "dram_bytes_per_elt": dram_bytes_per_element(v),
    }
    rec["instr_per_elt"] = instructions_per_element(v, (path or c)["sass"])
    rec["tensor_macs_per_elt"] = rec["instr_per_elt"]["tensor_macs"]
    _estimates(v, rec)
    return rec


def _estimates(v: K.Variant, rec: dict) -> None:
    for machine in MACHINES:
        pct, limiter, bounds = estimate(v, rec, machine)
        tag = machine[0].lower()
        rec[f"est_pct_dram_roofline_{tag}"] = round(pct, 1)
        rec[f"limiter_{tag}"] = limiter


def combine_parts(records: List[dict]) -> None:
    """A backward run in two parts is one pass: both part records get the estimate of
    the pass (both parts' bytes and instructions per element, one after the other)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        ce = r["constexprs"]
        if ce.get("PART", 0):
            key = (r["kernel"], r["dtype"], r["arch"], ce.get("TP"), ce.get("VEC"))
            groups.setdefault(key, []).append(r)
    for parts in groups.values():
        if len(parts) != 2:
            continue
        for r in parts:
            r["part_instr_per_elt"] = dict(r["instr_per_elt"])
            r["part_dram_bytes_per_elt"] = r["dram_bytes_per_elt"]
        ins = {k: sum(p["part_instr_per_elt"][k] for p in parts)
               for k in parts[0]["instr_per_elt"]}  # fmt: skip
        for r in parts:
            r["instr_per_elt"] = ins
            r["dram_bytes_per_elt"] = sum(p["part_dram_bytes_per_elt"] for p in parts)
            v = _variant_of(r)
            for machine in MACHINES:  # time per element adds: combine as a harmonic sum
                name = machine[0].lower()
                per = [estimate(_variant_of(p), dict(p, instr_per_elt=p[
                    "part_instr_per_elt"], dram_bytes_per_elt=p[
                    "part_dram_bytes_per_elt"]), machine) for p in parts]  # fmt: skip
                inv = sum(1.0 / min(b.values()) for _, _, b in per)
                useful = SIZES[v.dtype] * 3
                r[f"est_pct_dram_roofline_{name}"] = round(
                    100.0 * (1.0 / inv) / (machine[4] / useful), 1
                )
                r[f"limiter_{name}"] = "+".join(lim for _, lim, _ in per)


def _variant_of(r: dict) -> K.Variant:
    for v in K.kernel_variants():
        if variant_key(v) == r["variant"]:
            return v
    raise KeyError(r["variant"])


def _compile_cost(v: K.Variant) -> int:
    """A rough rank of a variant's compile time: the unrolled work of its kernel."""
    ce = dict(v.constexprs)
    n = ce.get("KP", 0) ** 2 * (3 if v.backward else 1) + ce.get("TP", 0) * 8
    return n * (2 if v.backward else 1)


def _compile_one(args) -> dict:
    i, arch, with_path = args
    v = K.kernel_variants()[i]
    on_path = with_path and (v.family, v.backward) in PATH
    path = compile_variant(v, arch, True) if on_path else None
    return record(v, arch, compile_variant(v, arch), path)


def model(
    jobs: int = 1, archs=ARCHS, families=None, with_path: bool = True
) -> List[dict]:
    """One record per variant and arch (compiled in ``jobs`` processes).
    ``with_path=False`` skips the second compile of the kernels with run-time
    switches (:data:`PATH`): their instruction counts then come from the launched
    kernel's whole SASS, every branch counted (an upper bound, so the estimates are
    lower bounds); resources, spills and occupancy are the same."""
    variants = K.kernel_variants()
    work = [(i, a, with_path) for i, v in enumerate(variants) for a in archs
            if not families or v.family in families]  # fmt: skip
    # the longest compiles first (unrolled sliding-PSN rings, PSN backward), so
    # that the processes finish together; the records keep the variants' order
    order = sorted(range(len(work)), key=lambda j: -_compile_cost(variants[work[j][0]]))
    if jobs <= 1:
        done = [_compile_one(work[j]) for j in order]
    else:
        ctx = __import__("multiprocessing").get_context("spawn")
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            done = list(pool.map(_compile_one, [work[j] for j in order]))
    records: List[dict] = [{}] * len(work)
    for j, r in zip(order, done):
        records[j] = r
    combine_parts(records)
    return records


def table(records: List[dict], arch: str = "sm_90") -> str:
    lines = [
        "| kernel | dtype | constants | warps | regs | stack | local | smem | "
        "occ H100 | occ A100 | DRAM B/elt | instr/elt | % roofline H100 (limit) | "
        "% roofline A100 (limit) |",
        "| --- " * 14 + "|",
    ]
    for r in records:
        if r["arch"] != arch:
            continue
        ce = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items()
                       if k not in ("PRECISION", "BLOCK_M"))  # fmt: skip
        ce += f", BLOCK_M={r['constexprs']['BLOCK_M']}"
        smem = r["static_smem_bytes"] + r["dynamic_smem_bytes"]
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {ce} | {r['num_warps']} | "
            f"{r['registers']} | {r['stack_bytes']} | {r['local_bytes']} | {smem} | "
            f"{r['occupancy_h100']:.0%} | {r['occupancy_a100']:.0%} | "
            f"{r['dram_bytes_per_elt']:.0f} | {r['instr_per_elt']['total']:.1f} | "
            f"{r['est_pct_dram_roofline_h100']:.0f}% ({r['limiter_h100']}) | "
            f"{r['est_pct_dram_roofline_a100']:.0f}% ({r['limiter_a100']}) |"
        )
    return "\n".join(lines)


def occupancy_key(r: dict) -> Tuple[str, str]:
    """``(kernel, constants)`` of a record, the key of :data:`LOW_OCCUPANCY`."""
    ce = r["constexprs"]
    tags = [f"{k}={ce[k]}" for k in ("TP", "KP", "PART", "CURRENT")
            if k in ce]  # fmt: skip
    return r["kernel"], ",".join(tags)


def problems(records: List[dict]) -> List[str]:
    """What the static checks reject: a stack frame (spills), local memory, float
    atomics (any arch), H100 occupancy below 50 % outside :data:`LOW_OCCUPANCY`, and
    stale entries of that list."""
    bad, low, seen = [], set(), set()
    for r in records:
        what = f"{r['variant']} {r['arch']}"
        if r["stack_bytes"] or r["local_bytes"]:
            bad.append(f"{what}: stack frame {r['stack_bytes']} B (spills), local "
                       f"memory {r['local_bytes']} B")  # fmt: skip
        if r["float_atomics"]:
            bad.append(f"{what}: {r['float_atomics']} float atomics")
        if r["arch"] != "sm_90":
            continue
        key = occupancy_key(r)
        seen.add(key)
        if r["occupancy_h100"] < 0.5:
            low.add(key)
            if key not in LOW_OCCUPANCY:
                bad.append(f"{what}: H100 occupancy {r['occupancy_h100']:.0%} "
                           f"({r['registers']} registers)")  # fmt: skip
    for key in LOW_OCCUPANCY:
        if key in seen and key not in low:
            bad.append(f"LOW_OCCUPANCY lists {key}, which now reaches 50 %: delete it")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write one record per variant and arch")
    p.add_argument("--markdown", help="write the sm_90 table as Markdown")
    p.add_argument("--jobs", type=int, default=1, help="compile in N processes")
    p.add_argument("--families", help="comma-separated families (psn,sliding,mpe)")
    p.add_argument("--no-path", action="store_true",
                   help="skip the compiles with the run-time switches bound (PATH): "
                   "instruction counts from the whole SASS, half the compile time "
                   "(the static checks are the same)")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a variant has a stack frame (spills), local "
                   "memory, float atomics or (outside LOW_OCCUPANCY) H100 occupancy "
                   "< 50 %")  # fmt: skip
    a = p.parse_args(argv)
    fam = a.families.split(",") if a.families else None
    records = model(a.jobs, families=fam, with_path=not a.no_path)
    text = table(records)
    print(f"# Triton {triton.__version__}, {len(records)} records, tl.dot precision "
          f"{K.dot_precision()!r}")  # fmt: skip
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    bad = problems(records)
    for b in bad:
        print("PROBLEM:", b, file=sys.stderr)
    return 1 if (a.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
