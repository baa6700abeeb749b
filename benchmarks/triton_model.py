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
* instructions per element from the SASS: the largest loop that loads the inputs (its
  body runs once per ``BLOCK_M x rows`` elements; the PSN forward has none and counts
  its whole body plus its chunk loop ``TP/16`` times) times 32 threads times the
  warps; a backward split in two parts adds both parts' instructions and bytes;
* bounds per element: DRAM, issue (4 warp-instructions per SM and clock), FP32 lanes,
  MUFU, and the tensor cores (tf32 multiply-adds of the ``tl.dot`` s, three per
  product with tf32x3); the estimate is the smallest, as a % of the DRAM bound.

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

#: Kernels whose H100 occupancy is below 50 % (every dtype), with the reason; the test
#: fails if one of them reaches 50 % (then delete it) or if any other kernel misses.
_DOT_REGISTERS = (
    "tl.dot with tf32x3 keeps the [T, T] (or band) weight operands as tf32 hi/lo "
    "fragments in every warp's registers, with the weight-gradient accumulators: "
    "{} registers per thread (no spills)"
)
LOW_OCCUPANCY: Dict[Tuple[str, str], str] = {
    ("psn_backward_kernel", "TP=16,PART=0"): _DOT_REGISTERS.format("126-127"),
    ("psn_backward_kernel", "TP=32,PART=0"): _DOT_REGISTERS.format("198-205"),
    ("psn_backward_kernel", "TP=64,PART=1"): _DOT_REGISTERS.format("104"),
    ("psn_backward_kernel", "TP=64,PART=2"): _DOT_REGISTERS.format("139-148"),
    ("sliding_backward_kernel", "HAS_PREV=False,BT=16,PART=0"):
        _DOT_REGISTERS.format("121-128"),
    ("sliding_backward_kernel", "HAS_PREV=True,BT=16,PART=0"):
        _DOT_REGISTERS.format("173-205"),
    ("sliding_backward_kernel", "HAS_PREV=True,BT=32,PART=1"):
        _DOT_REGISTERS.format("139-242"),
    ("sliding_backward_kernel", "HAS_PREV=True,BT=32,PART=2"):
        _DOT_REGISTERS.format("216-222"),
    ("sliding_forward_kernel", "HAS_PREV=True,BT=32"): _DOT_REGISTERS.format("80-100"),
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


def _cache_file(v: K.Variant, arch: int) -> Path:
    text = json.dumps(
        [triton.__version__, v.kernel.cache_key, v.name, DTYPE_NAMES[v.dtype],
         [list(c) for c in v.constexprs], v.num_warps, arch, K.signature(v)]
    )  # fmt: skip
    return CACHE / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".json")


def compile_variant(v: K.Variant, arch: int) -> dict:
    """Compile one variant for ``sm_<arch>``: resources and the SASS opcodes."""
    cached = _cache_file(v, arch)
    if cached.exists():
        return json.loads(cached.read_text())
    src = ASTSource(
        fn=v.kernel, signature=K.signature(v), constexprs=dict(v.constexprs)
    )
    ck = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": v.num_warps, "num_stages": 1},
    )
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
    pattern = r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);"
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
    index = {a: i for i, (a, _, _) in enumerate(sass)}
    return [
        (index[t], i)
        for i, (a, _, t) in enumerate(sass)
        if t is not None and t < a and t in index
    ]


def _count(ops) -> Dict[str, int]:
    c = {"total": 0, "fp32": 0, "mufu": 0}
    for op in ops:
        base = op.split(".")[0]
        c["total"] += 1
        c["fp32"] += base in FP32_OPS
        c["mufu"] += base == "MUFU"
    return c


def _rows(v: K.Variant) -> int:
    ce = dict(v.constexprs)
    return ce.get("TP") or ce.get("BT") or 1


def instructions_per_element(v: K.Variant, sass) -> Dict[str, float]:
    """Thread-instructions per element of the variant's steady state (see the module
    docstring)."""
    ce = dict(v.constexprs)
    threads = 32 * v.num_warps
    elements = ce["BLOCK_M"] * _rows(v)
    loops = _loops(sass)
    if v.family == "psn" and not v.backward:
        body = _count(op for _, op, _ in sass)
        trips = ce["TP"] // 16 - 1  # the chunk loop's body counts once above
        for a, b in loops:
            for k, n in _count(sass[i][1] for i in range(a, b + 1)).items():
                body[k] += n * trips
    else:
        loading = [
            lp
            for lp in loops
            if any(sass[i][1].startswith("LDG") for i in range(lp[0], lp[1] + 1))
        ]
        if not loading:
            raise RuntimeError(f"{variant_key(v)}: no loop loads its inputs")
        a, b = max(loading, key=lambda lp: lp[1] - lp[0])  # fmt: skip
        body = _count(sass[i][1] for i in range(a, b + 1))
    return {k: n * threads / elements for k, n in body.items()}


def dram_bytes_per_element(v: K.Variant) -> float:
    """Forward: read X, write S; backward: read X and grad_S, write grad_X."""
    return SIZES[v.dtype] * (3 if v.backward else 2)


def tensor_macs_per_element(v: K.Variant) -> float:
    """tf32 multiply-adds per element on the tensor cores (tf32x3: three per product;
    padded rows included)."""
    ce = dict(v.constexprs)
    if v.family == "mpe":
        return 0.0
    rows = _rows(v)
    dots = {"psn": (1, 3), "sliding": (2, 6)}[v.family][int(v.backward)]
    if v.family == "sliding" and not ce["HAS_PREV"]:
        dots //= 2
    return 3.0 * dots * rows


def estimate(v: K.Variant, rec: dict, machine) -> Tuple[float, str, Dict[str, float]]:
    name, cc, sms, clock, dram, lanes, macs = machine
    ins = rec["instr_per_elt"]
    per_sm = sms * clock
    bounds = {"dram": dram / dram_bytes_per_element(v)}
    bounds["issue"] = per_sm * 128 / ins["total"]
    if ins["fp32"]:
        bounds["fp32"] = per_sm * lanes / ins["fp32"]
    if ins["mufu"]:
        bounds["mufu"] = per_sm * 16 / ins["mufu"]
    tm = tensor_macs_per_element(v)
    if tm:
        bounds["tensor"] = per_sm * macs / tm
    limiter = min(bounds, key=bounds.get)
    return 100.0 * bounds[limiter] / bounds["dram"], limiter, bounds


def record(v: K.Variant, arch: int, c: dict) -> dict:
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
        "tensor_macs_per_elt": tensor_macs_per_element(v),
    }
    rec["instr_per_elt"] = instructions_per_element(v, c["sass"])
    for machine in MACHINES:
        pct, limiter, bounds = estimate(v, rec, machine)
        tag = machine[0].lower()
        rec[f"est_pct_dram_roofline_{tag}"] = round(pct, 1)
        rec[f"limiter_{tag}"] = limiter
    return rec


def _compile_one(args) -> dict:
    i, arch = args
    v = K.kernel_variants()[i]
    return record(v, arch, compile_variant(v, arch))


def model(jobs: int = 1, archs=ARCHS, families=None) -> List[dict]:
    """One record per variant and arch (compiled in ``jobs`` processes)."""
    variants = K.kernel_variants()
    work = [(i, a) for i, v in enumerate(variants) for a in archs
            if not families or v.family in families]  # fmt: skip
    if jobs <= 1:
        return [_compile_one(w) for w in work]
    ctx = __import__("multiprocessing").get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        return list(pool.map(_compile_one, work, chunksize=4))


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
    tags = [f"{k}={ce[k]}" for k in ("TP", "HAS_PREV", "BT", "PART", "CURRENT")
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
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a variant has a stack frame (spills), local "
                   "memory, float atomics or (outside LOW_OCCUPANCY) H100 occupancy "
                   "< 50 %")  # fmt: skip
    a = p.parse_args(argv)
    fam = a.families.split(",") if a.families else None
    records = model(a.jobs, families=fam)
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
