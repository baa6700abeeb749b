"""Speed and memory of sj_parallel's neurons against SpikingJelly, in one run.

For each neuron, backend (torch; on a GPU also cupy and triton where they run), dtype, T
and neuron count it measures the median time of
forward (training mode), forward+backward and inference (no grad) after warm-up
(CUDA events on a GPU), the bytes saved for backward (``saved_tensors_hooks``) and, on
a GPU, the allocator's peak memory and the achieved bandwidth as a fraction of a
measured device-to-device copy. Baselines in the same run: SpikingJelly 2.0's PSN,
MaskedPSN and SlidingPSN (torch), SpikingJelly's LIFNode (torch; its CuPy backend on
0.0.0.0.14, its Triton backend on SpikingJelly master), and the paper code's MPE-PSN
(``mpe_baseline.py``).

    python benchmarks/bench.py --quick            # about 30 s on 2 CPU cores
    python benchmarks/bench.py --device cuda      # the full grid on a GPU
    python benchmarks/bench.py --host-overhead    # the cupy ops' host time, no GPU

Writes ``results.json``, ``results.csv`` and PNG plots to ``--out`` and prints ratio
tables and the target checks (PASS/MISS).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from spikingjelly.activation_based import base, functional, neuron

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpe_baseline import AuthorsMPEPSN  # noqa: E402

import sj_parallel as sjp  # noqa: E402
from sj_parallel import _compat  # noqa: E402
from sj_parallel.backends import check_backend_available, cupy_available  # noqa: E402

K = 2  # order of masked/sliding PSN in the benchmark (the PSN paper's CIFAR10-DVS k)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid, ~30 s on 2 cores")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, nargs="*", help="time steps (default 4..64)")
    p.add_argument("--log2n", type=int, nargs="*", help="log2 neuron counts")
    p.add_argument("--dtypes", nargs="*", help="float32 float16 (GPU)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument(
        "--neurons",
        nargs="*",
        default=["psn", "masked-psn", "sliding-psn", "mpe-psn", "lif"],
    )
    p.add_argument(
        "--memory",
        nargs="*",
        default=["auto"],
        choices=["auto", "lean", "fast"],
        help="torch-backend memory policies of ours to measure (default: auto)",
    )
    p.add_argument("--out", default="benchmarks/results/latest")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--host-overhead",
        action="store_true",
        help="CPU: host time of the cupy ops' Python path (kernel call stubbed) "
        "against SpikingJelly's forward+backward on a tiny tensor",
    )
    a = p.parse_args(argv)
    if a.host_overhead:
        return a
    dev = torch.device(a.device)
    if a.T is None:
        a.T = [4, 16, 64] if a.quick else [4, 8, 16, 32, 64]
    if a.log2n is None:
        if a.quick:
            a.log2n = [12, 16]
        elif dev.type == "cuda":
            a.log2n = list(range(10, 25, 2))
        else:
            a.log2n = list(range(10, 21, 2))
    if a.dtypes is None:
        a.dtypes = ["float32", "float16"] if dev.type == "cuda" else ["float32"]
    if a.repeats is None:
        a.repeats = 5 if a.quick else 20
    if a.warmup is None:
        a.warmup = 1 if a.quick else 3
    return a


# --------------------------------------------------------------------- cases
def cases(
    T: int, device: torch.device, names: List[str], memories: List[str]
) -> Dict[str, Callable]:
    """name -> module factory; ``None`` entries are skipped with a printed reason."""
    on_gpu = device.type == "cuda"
    out: Dict[str, Optional[Callable]] = {}
    ours = {
        "psn": lambda mem: sjp.PSN(T, memory=mem),
        "masked-psn": lambda mem: sjp.MaskedPSN(
            K, T, lambda_init=1.0, step_mode="m", memory=mem
        ),
        "sliding-psn": lambda mem: sjp.SlidingPSN(K, step_mode="m", memory=mem),
        "mpe-psn": lambda mem: sjp.MPEPSN(T, step_mode="m", memory=mem),
    }
    sj = {
        "psn": (lambda: _compat.SJ_PSN(T)) if _compat.SJ_HAS_PSN else None,
        "masked-psn": (lambda: _compat.SJ_MASKED_PSN(K, T, 1.0, step_mode="m"))
        if _compat.SJ_HAS_PSN
        else None,
        "sliding-psn": (lambda: _compat.SJ_SLIDING_PSN(K, step_mode="m"))
        if _compat.SJ_HAS_PSN
        else None,
        "mpe-psn": lambda: AuthorsMPEPSN(T, batch_first=False),
    }
    for n in names:
        if n == "lif":
            out["lif/sj-torch"] = lambda: neuron.LIFNode(step_mode="m")
            if on_gpu and hasattr(neuron.LIFNode(), "supported_backends"):
                if "cupy" in neuron.LIFNode().supported_backends and cupy_available():
                    out["lif/sj-cupy"] = lambda: neuron.LIFNode(
                        step_mode="m", backend="cupy"
                    )
                if "triton" in neuron.LIFNode().supported_backends:  # SJ master
                    out["lif/sj-triton"] = lambda: neuron.LIFNode(
                        step_mode="m", backend="triton"
                    )
            continue
        for mem in memories:
            suffix = "" if mem == "auto" else f"-{mem}"
            out[f"{n}/ours-torch{suffix}"] = functools.partial(ours[n], mem)
        if on_gpu and cupy_available():
            out[f"{n}/ours-cupy"] = _ours_cupy(functools.partial(ours[n], "lean"))
        if on_gpu and _runs("triton"):
            out[f"{n}/ours-triton"] = _ours_cupy(
                functools.partial(ours[n], "lean"), "triton"
            )
        base = "paper" if n == "mpe-psn" else "sj"
        out[f"{n}/{base}-torch"] = sj[n]
    return out


def _ours_cupy(factory, backend: str = "cupy"):
    def make():
        m = factory()
        sjp.set_backend(m, backend)
        return m

    return make


def _runs(backend: str) -> bool:
    try:
        check_backend_available(backend)
    except (ImportError, RuntimeError):
        return False
    return True


# ------------------------------------------------------------------- timing
def _timer(device: torch.device):
    """``run(fns, repeats)``: the median time of each function of ``fns`` (a dict),
    the repeats of all of them interleaved, so that a slow spell of the machine
    (another process, a frequency change) falls on every candidate alike."""
    if device.type == "cuda":

        def once(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3

    else:

        def once(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    def run(fns, repeats):
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(once(fn))
        return {k: statistics.median(v) for k, v in times.items()}

    return run


def saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def copy_bandwidth(device: torch.device) -> Optional[float]:
    """Bytes/s of a large device-to-device copy (read + write): the memory roofline."""
    if device.type != "cuda":
        return None
    n = 1 << 28
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    t = _timer(device)({"copy": lambda: b.copy_(a)}, 20)["copy"]
    return 2 * n / t


def aux_loss(m) -> Optional[torch.Tensor]:
    """The auxiliary membrane loss of an MPE-PSN module (ours or the authors')."""
    if isinstance(m, sjp.MPEPSN):
        return sjp.membrane_loss(m)
    if isinstance(m, AuthorsMPEPSN):
        return m.mem_loss
    return None


#: On a GPU the inputs rotate over copies totalling at least this many bytes, more
#: than the L2 cache of an H100/H200 (50 MB): every timed pass reads from DRAM.
ROTATE_BYTES = 64 << 20


def measure_group(factories, T, n, dtype, device, a, timer) -> Dict[str, dict]:
    """Speed and memory of every module of ``factories`` (name -> factory) on the
    same input, their timed runs interleaved (see :func:`_timer`). On a GPU: the
    inputs rotate over copies larger than L2 together, the first call (NVRTC compile
    included) is reported apart (``first_call_s``), and the host time of a
    forward+backward (until the call returns, work queued) next to the device time
    (CUDA events)."""
    rot = 1
    if device.type == "cuda":
        nbytes = T * n * torch.empty((), dtype=dtype).element_size()
        rot = min(64, max(1, -(-ROTATE_BYTES // max(nbytes, 1))))
    xs = [torch.randn(T, n, device=device, dtype=dtype) for _ in range(rot)]
    gs = [torch.randn_like(xs[0]) for _ in range(rot)]
    xgs = [t.clone().requires_grad_(True) for t in xs]
    turn = [0]

    def inputs():
        i = turn[0] % rot
        turn[0] += 1
        return xs[i], xgs[i], gs[i]

    xg = xgs[0]  # saved_bytes and peak memory use the first copy
    mods = {}
    for key, factory in factories.items():
        m = factory().to(device)
        if isinstance(m, base.MemoryModule):
            functional.set_step_mode(m, "m")
        mods[key] = m

    def fwd(m):
        def run():
            m.train()
            m(inputs()[1])
            functional.reset_net(m)

        return run

    def fwd_bwd(m):
        def run():
            _, xg, g = inputs()
            m.train()
            out = m(xg)
            loss = (out * g).sum()
            aux = aux_loss(m)  # MPE-PSN trains with its membrane loss
            if aux is not None:
                loss = loss + aux
            loss.backward()
            functional.reset_net(m)
            xg.grad = None
            for p in m.parameters():
                p.grad = None

        return run

    def infer(m):
        def run():
            m.eval()
            with torch.no_grad():
                m(inputs()[0])
            functional.reset_net(m)

        return run

    rows = {key: {} for key in mods}
    if device.type == "cuda":  # the first call: kernel compile and module load
        for key, m in mods.items():
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fwd_bwd(m)()
            torch.cuda.synchronize(device)
            rows[key]["first_call_s"] = time.perf_counter() - t0
    for name, make in (
        ("forward", fwd),
        ("forward_backward", fwd_bwd),
        ("inference", infer),
    ):
        fns = {key: make(m) for key, m in mods.items()}
        for _ in range(a.warmup):
            for fn in fns.values():
                fn()
        for key, t in timer(fns, a.repeats).items():
            rows[key][f"{name}_s"] = t
        if device.type == "cuda" and name == "forward_backward":
            for key, fn in fns.items():  # host time: until the pass is queued
                host = []
                for _ in range(a.repeats):
                    torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    fn()
                    host.append(time.perf_counter() - t0)
                torch.cuda.synchronize(device)
                rows[key]["forward_backward_host_s"] = statistics.median(host)
    for key, m in mods.items():
        m.train()
        rows[key]["saved_bytes"] = saved_bytes(lambda m=m: m(xg))
        functional.reset_net(m)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            mem0 = torch.cuda.memory_allocated(device)
            fwd_bwd(m)()
            rows[key]["peak_bytes"] = torch.cuda.max_memory_allocated(device) - mem0
    return rows


# ------------------------------------------------------------- host overhead
def host_overhead(a) -> int:
    """The host (CPU) time of one forward+backward of each cupy op, with only the
    kernel launch itself stubbed, next to SpikingJelly's module on the same tiny CPU
    tensor ([T=8, N=16]: its time is dispatch, not arithmetic), interleaved medians.

    The cupy ops run their real Python path -- the neuron's functional call, custom
    op / autograd dispatch, the launcher's caches, allocations, argument lists --
    on the CPU with the fake device of ``tests/emulation/fake_gpu.py`` (light
    stand-ins for ``cupy.cuda.Device``, torch's current stream and device properties;
    the ``cupy.RawKernel`` call returns at once). Not included: the CUDA driver's
    launch (``cuLaunchKernel`` through CuPy's argument packing, a few microseconds per
    launch on a GPU host), which SpikingJelly's aten ops pay as well on a GPU.
    """
    import pytest  # MonkeyPatch, for the fake device

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from emulation import fake_gpu
    from spikingjelly.activation_based import surrogate

    import sj_parallel.backends.cupy_backend as cb

    T, N = 8, 16
    torch.manual_seed(0)
    sg = surrogate.ATan()
    x = torch.randn(T, N, requires_grad=True)
    g = torch.randn(T, N)
    leaves = [x]

    def leaf(t):
        t = t.clone().requires_grad_(True)
        leaves.append(t)
        return t

    W, b = leaf(torch.randn(T, T) / T), leaf(torch.full((T, 1), -1.0))
    w, bs = leaf(torch.tensor([0.5, 1.0])), leaf(torch.tensor(-1.0))
    v = leaf(torch.tensor(1.0))
    mpe_kw = dict(estimate_from="previous", stochastic=True, seed=(1, 2), t0=0,
                  u_hat0=None, u0=None, need_mse=True)  # fmt: skip
    gm = torch.randn(T)

    def ours_psn():
        cb.psn(x, W, b, sg).backward(g)

    def ours_sliding():
        cb.sliding_psn(x, w, bs, sg).backward(g)

    def ours_mpe():
        s, mse, _, _ = cb.mpe_psn(x, v, 0.25, surrogate.PiecewiseQuadratic(1.0),
                                  **mpe_kw)  # fmt: skip
        torch.autograd.backward([s, mse], [g, gm])

    def module(m):
        def run():
            out = m(x)
            loss = (out * g).sum()
            if isinstance(m, AuthorsMPEPSN):
                loss = loss + m.mem_loss
            loss.backward()
            if isinstance(m, base.MemoryModule):
                functional.reset_net(m)

        return run

    pairs = {"psn": (ours_psn, "SpikingJelly PSN", None),
             "sliding-psn": (ours_sliding, "SpikingJelly SlidingPSN", None),
             "mpe-psn": (ours_mpe, "MPE-PSN authors' code", None)}  # fmt: skip
    if _compat.SJ_HAS_PSN:
        pairs["psn"] = (ours_psn, "SpikingJelly PSN", module(_compat.SJ_PSN(T)))
        sliding = _compat.SJ_SLIDING_PSN(K, step_mode="m")
        pairs["sliding-psn"] = (ours_sliding, "SpikingJelly SlidingPSN",
                                module(sliding))  # fmt: skip
    authors = AuthorsMPEPSN(T, batch_first=False)
    pairs["mpe-psn"] = (ours_mpe, "MPE-PSN authors' code", module(authors))
    repeats = a.repeats or 300
    rows = []
    with pytest.MonkeyPatch.context() as mp:
        gpu = fake_gpu.install(mp, light=True)
        timer = _timer(torch.device("cpu"))
        for name, (ours, base_name, theirs) in pairs.items():
            fns = {"ours": ours}
            if theirs is not None:
                fns["base"] = theirs
            for fn in fns.values():  # warm-up: kernels built, caches filled
                for _ in range(20):
                    fn()
            before = gpu.calls
            ours()
            launches = gpu.calls - before
            for t in leaves:
                t.grad = None
            med = timer(fns, repeats)
            base_us = med["base"] * 1e6 if "base" in med else None
            row = {"neuron": name, "ours_us": med["ours"] * 1e6,
                   "launches_fwd_bwd": launches, "baseline": base_name,
                   "baseline_us": base_us}  # fmt: skip
            row["ratio"] = (row["ours_us"] / row["baseline_us"]
                            if row["baseline_us"] else None)  # fmt: skip
            rows.append(row)
    lines = [
        f"# host time per forward+backward, [T={T}, N={N}] CPU tensors, median of "
        f"{repeats} interleaved runs (SpikingJelly {_compat.SJ_VERSION}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs); cupy ops: kernel launch stubbed",
        "| neuron | cupy op host us | launches (fwd+bwd) | baseline | baseline us | "
        "ratio | target <= 1.0x |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        base_us = f"{r['baseline_us']:.1f}" if r["baseline_us"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        verdict = "-" if r["ratio"] is None else "PASS" if r["ratio"] <= 1 else "MISS"
        lines.append(
            f"| {r['neuron']} | {r['ours_us']:.1f} | {r['launches_fwd_bwd']} | "
            f"{r['baseline']} | {base_us} | {ratio} | {verdict} |"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_overhead.json").write_text(json.dumps(rows, indent=1))
    (out / "host_overhead.md").write_text(text + "\n")
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.host_overhead:
        return host_overhead(a)
    device = torch.device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _timer(device)
    bw = copy_bandwidth(device)
    info = {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu",
        "torch": torch.__version__,
        "spikingjelly": _compat.SJ_VERSION,
        "sj_parallel": sjp.__version__,
        "copy_bandwidth_Bps": bw,
        "args": {k: v for k, v in vars(a).items()},
    }
    print(
        f"# {info['device']} | torch {info['torch']} | "
        f"SpikingJelly {info['spikingjelly']}"
    )
    if not _compat.SJ_HAS_PSN:
        print(
            f"# SpikingJelly {_compat.SJ_VERSION} has no PSN family: "
            "those baselines are skipped"
        )
    rows = []
    free = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        for T in a.T:
            for log2n in a.log2n:
                n = 1 << log2n
                if device.type == "cpu" and T * n > (1 << 26):
                    continue  # over ~256 MB per tensor: too slow for a CPU run
                if free is not None and T * n * 4 * 12 > free:
                    continue
                groups: Dict[str, Dict[str, Callable]] = {}
                for key, factory in cases(T, device, a.neurons, a.memory).items():
                    if factory is None:
                        continue
                    if dtype != torch.float32 and key.startswith("lif/sj-cupy"):
                        continue
                    groups.setdefault(key.split("/")[0], {})[key] = factory
                for neuron_name, group in groups.items():
                    try:
                        measured = measure_group(group, T, n, dtype, device, a, timer)
                    except Exception as e:  # report and keep going
                        print(f"# {neuron_name} T={T} n=2^{log2n} {dtype_name}: "
                              f"failed: {e}")  # fmt: skip
                        continue
                    elem = torch.empty((), dtype=dtype).element_size()
                    for key, r in measured.items():
                        impl = key.split("/")[1]
                        r.update(
                            neuron=neuron_name,
                            impl=impl,
                            T=T,
                            log2n=log2n,
                            dtype=dtype_name,
                        )
                        if bw:
                            fwd_bytes = 2 * T * n * elem  # read X once, write S once
                            r["forward_roofline"] = fwd_bytes / r["forward_s"] / bw
                        rows.append(r)
                        print(
                            f"{neuron_name:12s} {impl:11s} T={T:<3d} n=2^{log2n:<3d} "
                            f"{dtype_name:8s} fwd {r['forward_s'] * 1e3:9.3f} ms  "
                            f"fwd+bwd {r['forward_backward_s'] * 1e3:9.3f} ms  "
                            f"inf {r['inference_s'] * 1e3:9.3f} ms  "
                            f"saved {r['saved_bytes'] / 2**20:8.2f} MiB",
                            flush=True,
                        )
    (out / "results.json").write_text(
        json.dumps({"info": info, "rows": rows}, indent=1)
    )
    with open(out / "results.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r})
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    report = ratio_report(rows, device)
    (out / "report.txt").write_text(report)
    print(report)
    if not a.no_plots:
        plot(rows, out)
    return 0


# ------------------------------------------------------------------ reports
def _index(rows):
    return {(r["neuron"], r["impl"], r["T"], r["log2n"], r["dtype"]): r for r in rows}


def ratio_report(rows, device) -> str:
    idx = _index(rows)
    lines = [
        "",
        "## Ratios (baseline time / ours: > 1 means ours is faster; "
        "bytes: ours / baseline)",
    ]
    lines.append(
        "| neuron | ours | baseline | dtype | T | n | fwd speed-up | "
        "fwd+bwd speed-up | inference speed-up | saved-bytes ratio |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    checks = []
    for (nrn, impl, T, l2, dt), r in sorted(idx.items()):
        if not impl.startswith("ours"):
            continue
        base_impl = "paper-torch" if nrn == "mpe-psn" else "sj-torch"
        b = idx.get((nrn, base_impl, T, l2, dt))
        if b is None:
            continue
        sp = {
            k: b[f"{k}_s"] / r[f"{k}_s"]
            for k in ("forward", "forward_backward", "inference")
        }
        mem = r["saved_bytes"] / max(b["saved_bytes"], 1)
        lines.append(
            f"| {nrn} | {impl} | {base_impl} | {dt} | {T} | 2^{l2} | "
            f"{sp['forward']:.2f} | "
            f"{sp['forward_backward']:.2f} | {sp['inference']:.2f} | {mem:.2f} |"
        )
        if impl == "ours-torch" and device.type == "cpu":
            # issue 11: the PSN family >= 1.0x SpikingJelly 2.0 everywhere in "auto",
            # saved bytes <= 0.6x at >= 2^16 neurons; MPE-PSN >= 1.5x the authors'
            # code with <= 0.5x its saved bytes; inference no slower anywhere.
            mpe = nrn == "mpe-psn"
            need = 1.5 if mpe else 1.0
            checks.append(
                (
                    f"CPU {nrn} T={T} n=2^{l2}: fwd+bwd speed >= {need}x baseline",
                    sp["forward_backward"] >= need,
                    sp["forward_backward"],
                )
            )
            if mpe or l2 >= 16:
                cap = 0.5 if mpe else 0.6
                checks.append(
                    (
                        f"CPU {nrn} T={T} n=2^{l2}: saved bytes <= {cap}x baseline",
                        mem <= cap,
                        mem,
                    )
                )
            checks.append(
                (
                    f"CPU {nrn} T={T} n=2^{l2}: inference speed >= 1.0x baseline",
                    sp["inference"] >= 1.0,
                    sp["inference"],
                )
            )
        if impl == "ours-cupy":
            if nrn == "mpe-psn":
                checks.append(
                    (
                        f"GPU mpe-psn {dt} T={T} n=2^{l2}: >= 3x paper code",
                        sp["forward_backward"] >= 3,
                        sp["forward_backward"],
                    )
                )
            elif l2 == 22 and T <= 32:
                checks.append(
                    (
                        f"GPU {nrn} {dt} T={T} n=2^22: fwd+bwd >= 2x SpikingJelly",
                        sp["forward_backward"] >= 2,
                        sp["forward_backward"],
                    )
                )
            if "forward_roofline" in r:
                checks.append(
                    (
                        f"GPU {nrn} {dt} T={T} n=2^{l2}: "
                        "forward >= 70% of copy bandwidth",
                        r["forward_roofline"] >= 0.7,
                        r["forward_roofline"],
                    )
                )
    # PSN vs LIF, for information; on a GPU: ours-cupy faster than SJ's fastest LIF
    lines += ["", "## PSN family vs SpikingJelly's LIF (LIF time / ours, fwd+bwd)"]
    for (nrn, impl, T, l2, dt), r in sorted(idx.items()):
        if nrn == "lif" or not impl.startswith("ours"):
            continue
        lifs = [idx[k] for k in idx if k[0] == "lif" and k[2:] == (T, l2, dt)]
        if not lifs:
            continue
        fastest = min(x["forward_backward_s"] for x in lifs)
        ratio = fastest / r["forward_backward_s"]
        lines.append(f"- {nrn} {impl} {dt} T={T} n=2^{l2}: {ratio:.2f}")
        if impl == "ours-cupy" and T >= 8:
            checks.append(
                (
                    f"GPU {nrn} {dt} T={T} n=2^{l2}: faster than SJ's fastest LIF",
                    ratio > 1,
                    ratio,
                )
            )
    lines += ["", "## Targets"]
    for text, ok, val in checks:
        lines.append(f"{'PASS' if ok else 'MISS'} {text} (measured {val:.2f})")
    n_pass = sum(ok for _, ok, _ in checks)
    lines.append(f"{n_pass} of {len(checks)} target checks pass")
    return "\n".join(lines) + "\n"


def plot(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(rows)
    dts = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for nrn in ("psn", "masked-psn", "sliding-psn", "mpe-psn"):
        base_impl = "paper-torch" if nrn == "mpe-psn" else "sj-torch"
        for impl in ("ours-torch", "ours-cupy", "ours-triton"):
            for dt in dts:
                pts = [
                    (
                        k[2],
                        k[3],
                        idx[(nrn, base_impl) + k[2:]]["forward_backward_s"]
                        / r["forward_backward_s"],
                        r["saved_bytes"]
                        / max(idx[(nrn, base_impl) + k[2:]]["saved_bytes"], 1),
                    )
                    for k, r in idx.items()
                    if k[0] == nrn
                    and k[1] == impl
                    and k[4] == dt
                    and (nrn, base_impl) + k[2:] in idx
                ]
                if not pts:
                    continue
                big = max(p[1] for p in pts)
                vs_t = sorted((p[0], p[2]) for p in pts if p[1] == big)
                ts = sorted({p[0] for p in pts})
                t_mid = ts[len(ts) // 2]
                vs_n = sorted((p[1], p[2]) for p in pts if p[0] == t_mid)
                mem = sorted((p[0], p[3]) for p in pts if p[1] == big)
                label = f"{nrn} {impl} {dt}"
                axes[0].plot(*zip(*vs_t), marker="o", label=label)
                axes[1].plot(*zip(*vs_n), marker="o", label=f"{label} (T={t_mid})")
                axes[2].plot(*zip(*mem), marker="o", label=label)
    axes[0].set(
        xlabel="T (largest n)",
        ylabel="fwd+bwd speed-up over baseline",
        xscale="log",
        xticks=[4, 8, 16, 32, 64],
    )
    axes[1].set(xlabel="log2 neurons", ylabel="fwd+bwd speed-up over baseline")
    axes[2].set(
        xlabel="T (largest n)",
        ylabel="saved-for-backward bytes / baseline",
        xscale="log",
        xticks=[4, 8, 16, 32, 64],
    )
    for ax in axes:
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "sj_parallel vs SpikingJelly (baseline: SJ PSN family; paper code for MPE-PSN)"
    )
    fig.tight_layout()
    fig.savefig(out / "speedup_memory.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
