"""``python -m sj_parallel doctor``: what can run here, and why not.

CuPy set-up is where SpikingJelly users lose the most time: an ``ImportError`` shown
as "CuPy is not installed", NVRTC errors, kernels built for the wrong GPU. The doctor
collects, in one report:

* the versions of Python, torch (and its CUDA), SpikingJelly, CuPy, NVRTC, the CUDA
  headers found and NumPy;
* the GPUs with their compute capability, and whether each backend can run, with the
  reason when it cannot;
* an NVRTC compile of every kernel of the launcher (one typical variant per kernel
  file and dtype, :func:`sj_parallel.backends._cuda.kernel_variants` with
  ``minimal=True``) for the GPUs present; without a GPU only for an ``--arch``
  asked for, and labelled "compiles for sm_XX" (it shows that NVRTC and the headers
  work, not that the kernels run here);
* on a GPU, one run of each op with backend ``'cupy'`` against backend ``'torch'``
  (:func:`compare_backends`), with the largest differences;
* backend ``'triton'``: the Triton version, whether it imports and torch sees a GPU
  (or Triton's interpreter is on), a ``triton.compile`` of one kernel per family and
  pass for the GPU present (or ``sm_80`` without one, :func:`compile_triton_kernels`),
  and on a GPU the same comparison with backend ``'torch'``;
* a fix for every problem found.

:func:`doctor` returns the report as a dict (JSON-serialisable);
:func:`format_report` renders it as text. The command line is in
:mod:`sj_parallel.__main__`::

    python -m sj_parallel doctor                  # the report; exit status 0
    python -m sj_parallel doctor --backend cupy   # exit status 1 if 'cupy' cannot run
    python -m sj_parallel doctor --backend triton # ... if 'triton' cannot run
    python -m sj_parallel doctor --json           # the dict as JSON
    python -m sj_parallel doctor --arch 80        # also compile for sm_80
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import _compat
from . import backends as B

__all__ = [
    "doctor",
    "format_report",
    "compile_kernels",
    "compile_triton_kernels",
    "compare_backends",
]

#: the default of :func:`compile_kernels` (the doctor compiles for the GPUs present,
#: and without a GPU only for an ``arch`` asked for)
DEFAULT_ARCH = "80"
#: tolerances of :func:`compare_backends` (float32): fraction of differing spikes,
#: and the largest input-gradient difference relative to the gradient's scale
SPIKE_MISMATCH_TOL = 1e-3
GRAD_REL_TOL = 1e-3

HEADERS_FIX = (
    "`pip install nvidia-cuda-runtime-cu12` (NVRTC 12) or "
    '`pip install "nvidia-cuda-runtime==13.*"` (NVRTC 13), or set CUDA_PATH to a '
    "CUDA toolkit"
)
NVRTC_FIX = (
    '`pip install "cupy-cuda12x[ctk]"` (CuPy with the CUDA libraries as wheels), or '
    "`pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12`"
)
_NO_GPU_FIX = (
    "on this machine use backend='torch' (the default); backend 'cupy' needs an "
    "NVIDIA GPU with its driver (`nvidia-smi` must list it) and a CUDA build of torch"
)
_NO_GPU = "no CUDA GPU (see GPUs)"


# ------------------------------------------------------------------------- helpers
def _dist_version(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cuda_version(v: int) -> Optional[str]:
    """12090 -> '12.9'; 0 (no driver) -> None."""
    if not v:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def process_seconds() -> Optional[float]:
    """Wall time since this process started (Linux ``/proc``), imports included;
    ``None`` where it cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 1)
    except Exception:
        return None


def _loaded_nvrtc() -> Optional[str]:
    """The NVRTC library file this process has loaded (Linux), if any."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "libnvrtc.so" in ln}
    except Exception:
        return None
    return sorted(paths)[0] if paths else None


def _nvrtc() -> Tuple[Any, Optional[BaseException]]:
    """CuPy's NVRTC binding (the one ``cupy.RawModule`` compiles with), or the
    exception that stopped it from loading."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()  # loads the library
    except Exception as e:
        return None, e
    return nvrtc, None


# ------------------------------------------------------------------------ sections
def _versions(nvrtc: Any, nvrtc_error: Optional[BaseException]) -> Dict[str, Any]:
    from . import __version__

    v: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sj_parallel": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "spikingjelly": _compat.SJ_VERSION,
        "spikingjelly_source": (
            f"{_compat.SJ_PATH} (git {_compat.SJ_COMMIT or 'unknown commit'})"
            if _compat.SJ_FROM_SOURCE
            else None
        ),
        "numpy": _dist_version("numpy"),
        "cupy": None,
        "cupy_packages": [],
        "cupy_cuda_runtime": None,
        "cuda_driver": None,
        "nvrtc": None,
        "nvrtc_error": None,
        "cuda_headers": [],
        "triton": None,
    }
    if B.triton_import_error() is None:
        import triton

        v["triton"] = triton.__version__
    try:
        v["cupy_packages"] = [
            f"{name}=={_dist_version(name)}" for name in B.cupy_distributions()
        ]
    except Exception as e:  # pragma: no cover - broken metadata
        v["cupy_packages"] = [f"? ({_err(e)})"]
    if B.cupy_import_error() is None:
        import cupy

        v["cupy"] = cupy.__version__
        try:
            v["cupy_cuda_runtime"] = _cuda_version(
                cupy.cuda.runtime.runtimeGetVersion()
            )
        except Exception as e:
            v["cupy_cuda_runtime"] = f"? ({_err(e)})"
        try:
            v["cuda_driver"] = _cuda_version(cupy.cuda.runtime.driverGetVersion())
        except Exception as e:
            v["cuda_driver"] = f"? ({_err(e)})"
    if nvrtc is not None:
        major, minor = nvrtc.getVersion()
        v["nvrtc"] = f"{major}.{minor}"
    elif nvrtc_error is not None:
        v["nvrtc_error"] = _err(nvrtc_error)
    from .backends import _cuda as C

    v["cuda_headers"] = [
        {"path": path, "cuda": major} for path, major in C.cuda_include_dirs()
    ]
    return v


def _torch_has_kernels(major: int, minor: int, arch_list: List[str]) -> bool:
    """Whether torch's binaries run on compute capability ``major.minor``: a cubin
    of the same major and a minor not above it, or PTX of an arch not above it."""
    if not arch_list:  # unknown: do not claim a problem
        return True
    for a in arch_list:
        kind, _, num = a.partition("_")
        num = num.rstrip("af")
        if not num.isdigit():
            continue
        amaj, amin = int(num[:-1]), int(num[-1])
        if kind == "sm" and amaj == major and amin <= minor:
            return True
        if kind == "compute" and (amaj, amin) <= (major, minor):
            return True
    return False


def _gpus() -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """The CUDA GPUs torch sees, or ``([], reason)``."""
    if torch.version.cuda is None:
        return [], f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()  # raises with the reason
        except Exception as e:
            return [], f"torch.cuda.init(): {e}"
        return [], "torch.cuda.is_available() is False"
    arch_list = torch.cuda.get_arch_list()
    out = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "compute_capability": f"{major}.{minor}",
                "arch": f"{major}{minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "torch_has_kernels": _torch_has_kernels(major, minor, arch_list),
            }
        )
    return out, None


def compile_kernels(
    arch: str = DEFAULT_ARCH, nvrtc: Any = None, representative: bool = True
) -> Dict[str, Any]:
    """Compile every kernel variant the launcher builds with NVRTC, without a GPU.

    Sources and options come from :mod:`sj_parallel.backends._cuda`
    (:func:`~sj_parallel.backends._cuda.kernel_variants`,
    :func:`~sj_parallel.backends._cuda.variant_options`,
    :func:`~sj_parallel.backends._cuda.include_options`), so this compiles exactly
    what ``backend='cupy'`` compiles on a GPU.

    :param arch: target compute capability without the dot, e.g. ``"80"``
    :type arch: str
    :param nvrtc: CuPy's NVRTC binding (``cupy_backends.cuda.libs.nvrtc``); loaded
        when ``None``
    :param representative: compile one typical variant per kernel file and dtype
        (every kernel function once); ``False`` compiles every variant the launcher
        can build (hundreds: slow)
    :type representative: bool
    :return: ``{"arch", "nvrtc", "include", "ok", "seconds", "variants", "error",
        "fix"}`` (``error``/``fix`` when nothing could be compiled: NVRTC missing, an
        arch it does not support, no CUDA headers); each variant ``{"file", "dtype",
        "const", "ok", "kernels", "seconds", "log"}``
    :rtype: Dict[str, Any]
    """
    from .backends import _cuda as C

    out: Dict[str, Any] = {
        "arch": str(arch),
        "nvrtc": None,
        "include": None,
        "ok": False,
        "seconds": 0.0,
        "variants": [],
        "error": None,
        "fix": None,
    }
    start = time.perf_counter()
    if nvrtc is None:
        nvrtc, e = _nvrtc()
        if nvrtc is None:
            out["error"] = f"NVRTC could not be loaded: {_err(e)}"
            out["fix"] = NVRTC_FIX
            return out
    major, minor = nvrtc.getVersion()
    out["nvrtc"] = f"{major}.{minor}"
    bad_arch = _arch_problem(nvrtc, str(arch))
    if bad_arch is not None:
        out["error"], out["fix"] = bad_arch
        return out
    try:
        include = C.include_options(major)
    except RuntimeError as e:
        out["error"], out["fix"] = str(e), HEADERS_FIX
        return out
    out["include"] = include[0][2:]
    arch_opt = (f"--gpu-architecture=compute_{arch}",)
    variants = (
        C.kernel_variants(minimal=True)
        if representative
        else C.kernel_variants(representative=False)
    )
    for variant in variants:
        name, dtype, const, flags = variant
        t0 = time.perf_counter()
        row: Dict[str, Any] = {
            "file": C.KERNEL_FILES[name],
            "dtype": str(dtype).replace("torch.", ""),
            "const": const,
            "ok": False,
            "kernels": [],
            "seconds": 0.0,
            "log": "",
        }
        opts = C.variant_options(name, dtype, const, flags) + include + arch_opt
        prog = nvrtc.createProgram(C.kernel_source(name), C.KERNEL_FILES[name], [], [])
        try:
            nvrtc.compileProgram(prog, list(opts))
            ptx = nvrtc.getPTX(prog)
            ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
            row["kernels"] = [k for k in C.KERNELS[name] if f".entry {k}" in ptx]
            missing = [k for k in C.KERNELS[name] if k not in row["kernels"]]
            row["ok"] = not missing
            log = nvrtc.getProgramLog(prog)
            if missing:
                log = f"kernels missing from the PTX: {missing}\n{log}"
        except Exception as e:  # the program log says why
            try:
                log = f"{_err(e)}\n{nvrtc.getProgramLog(prog)}"
            except Exception:  # pragma: no cover
                log = _err(e)
        finally:
            nvrtc.destroyProgram(prog)
        row["log"] = (log or "").strip()[-2000:]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        out["variants"].append(row)
    out["ok"] = bool(out["variants"]) and all(r["ok"] for r in out["variants"])
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


# -------------------------------------------------------------- GPU equivalence
def _cases() -> Dict[str, Callable[[], torch.nn.Module]]:
    from .neuron import MPEPSN, PSN, MaskedPSN, SlidingPSN

    return {
        "PSN(8)": lambda: PSN(8, step_mode="m"),
        "MaskedPSN(2, 8, lambda_init=1)": lambda: MaskedPSN(
            2, 8, lambda_init=1.0, step_mode="m"
        ),
        "SlidingPSN(3)": lambda: SlidingPSN(3, step_mode="m"),
        "MPEPSN(8, estimate_from='previous')": lambda: MPEPSN(
            8, estimate_from="previous", step_mode="m"
        ),
        "MPEPSN(8, estimate_from='current')": lambda: MPEPSN(
            8, estimate_from="current", step_mode="m"
        ),
    }


def _run_once(
    m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, seed: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    from spikingjelly.activation_based import functional

    from .utils import membrane_loss

    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # MPE-PSN's Bernoulli samples
    s = m(x)
    loss = (s.float() * g).sum() + membrane_loss(m)
    loss.backward()
    functional.reset_net(m)
    return s.detach().float(), x.grad.detach().float()


def compare_backends(
    device: str = "cuda",
    backend: str = "cupy",
    reference: str = "torch",
    shape: Tuple[int, ...] = (4, 1024),
    seed: int = 0,
) -> List[Dict[str, Any]]:
    """Run each op once with ``backend`` and with ``reference`` and compare.

    Each neuron (``PSN(8)``, ``MaskedPSN(2, 8, lambda_init=1)``, ``SlidingPSN(3)``,
    ``MPEPSN(8)`` with both ``estimate_from`` wirings) is built twice on ``device``
    with the same state dict, fed the same float32 input ``[8, *shape]`` (and the
    same Bernoulli seed), and its spikes and input gradients (of a random linear
    function of the spikes plus :func:`sj_parallel.membrane_loss`) are compared.

    :param device: where to run, ``"cuda"`` for the doctor's GPU check
    :type device: str
    :param backend: the backend under test
    :type backend: str
    :param reference: the backend it is compared with
    :type reference: str
    :param shape: the input's shape after the time dimension
    :param seed: seed of the input and of the Bernoulli samples
    :type seed: int
    :return: one dict per op: ``op``, ``ok``, ``max_abs_diff_spikes``,
        ``spike_mismatch``, ``max_abs_diff_grad_input``, ``grad_scale``, or
        ``error`` when it raised
    :rtype: List[Dict[str, Any]]
    """
    from .utils import set_backend

    rows = []
    for op, make in _cases().items():
        row: Dict[str, Any] = {"op": op}
        try:
            torch.manual_seed(seed)
            a = make().to(device)
            b = make().to(device)
            b.load_state_dict(a.state_dict())
            set_backend(a, reference)
            set_backend(b, backend)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            x = (torch.randn(8, *shape, generator=gen) * 1.5).to(device)
            g = torch.randn(8, *shape, generator=gen).to(device)
            sa, gxa = _run_once(a, x, g, seed + 1)
            sb, gxb = _run_once(b, x, g, seed + 1)
            scale = float(gxa.abs().max()) + 1e-6
            row.update(
                max_abs_diff_spikes=float((sa - sb).abs().max()),
                spike_mismatch=float((sa != sb).float().mean()),
                max_abs_diff_grad_input=float((gxa - gxb).abs().max()),
                grad_scale=scale,
            )
            row["ok"] = (
                row["spike_mismatch"] <= SPIKE_MISMATCH_TOL
                and row["max_abs_diff_grad_input"] <= GRAD_REL_TOL * scale
            )
        except Exception as e:
            row.update(ok=False, error=_err(e))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- main
def _arch_problem(nvrtc: Any, arch: str, what: str = "") -> Optional[Tuple[str, str]]:
    """``(reason, fix)`` when ``nvrtc`` cannot compile for ``arch``, else ``None``."""
    try:
        supported = tuple(int(a) for a in nvrtc.getSupportedArchs())
    except Exception:  # an NVRTC without the query: let the compile say
        return None
    if not supported or int(arch) in supported:
        return None
    major, minor = nvrtc.getVersion()
    if int(arch) < min(supported):
        fix = _dropped_arch_fix(major, arch)
    else:
        fix = (
            "this NVRTC is older than the GPU: upgrade CuPy and NVRTC "
            "(e.g. `pip install -U cupy-cuda12x nvidia-cuda-nvrtc-cu12`)"
        )
    target = f"{what} (sm_{arch})" if what else f"sm_{arch}"
    reason = (
        f"NVRTC {major}.{minor} cannot compile for {target}; it supports "
        f"sm_{', sm_'.join(map(str, supported))}"
    )
    return reason, fix


def _dropped_arch_fix(major: int, arch: str) -> str:
    """How to compile for an arch this NVRTC has dropped: CUDA 12. Names only the
    packages that are missing; when they are all installed, says why NVRTC 12 was not
    the one loaded."""
    wanted = ("cupy-cuda12x", "nvidia-cuda-nvrtc-cu12")
    missing = [p for p in wanted if _dist_version(p) is None]
    if missing:
        return (
            f"NVRTC {major} has dropped sm_{arch}: use CUDA 12 (`pip install "
            f"{' '.join(missing)}`, and a CUDA 12 build of torch)"
        )
    loaded = _loaded_nvrtc()
    where = f" ({loaded})" if loaded else ""
    return (
        f"NVRTC {major} has dropped sm_{arch}. cupy-cuda12x and "
        f"nvidia-cuda-nvrtc-cu12 are installed, but this process loaded NVRTC "
        f"{major}{where}, which comes with the CUDA {major} libraries of this "
        "environment (e.g. torch's CUDA 13 wheels) and is found first. For an "
        f"sm_{arch} GPU use an environment whose CUDA libraries are 12.x: a CUDA 12 "
        "build of torch (`pip install torch --index-url "
        "https://download.pytorch.org/whl/cu126`) with cupy-cuda12x"
    )


def _cupy_prerequisites(
    gpus: List[Dict[str, Any]], gpu_reason: Optional[str], nvrtc: Any, nvrtc_err: Any
) -> Tuple[Optional[str], Optional[str], bool]:
    """``(reason, fix, malfunction)`` of the first thing that stops backend 'cupy',
    or ``(None, None, False)``; ``malfunction`` marks a broken set-up (as opposed to
    something simply absent). A missing GPU comes first: without one, installing or
    repairing CuPy cannot make the backend run."""
    err = B.cupy_import_error()
    if not gpus:
        reason = _NO_GPU
        if err is not None and B.explain_cupy_error(err)[0] == "CuPy is not installed":
            reason += "; CuPy is not installed either (it is needed only with a GPU)"
        return reason, _NO_GPU_FIX, False
    if err is not None:
        reason, fix = B.explain_cupy_error(err)
        return reason, fix, reason != "CuPy is not installed"
    dists = B.cupy_distributions()
    if len(dists) > 1:
        return (
            f"several CuPy packages are installed at once: {', '.join(dists)}",
            f"`pip uninstall -y {' '.join(dists)}`, then install exactly one "
            "(e.g. `pip install cupy-cuda12x`)",
            True,
        )
    import cupy

    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        _, fix = B.explain_cupy_error(e)
        return f"CuPy cannot use the GPU: {_err(e)}", fix, True
    if n < len(gpus):
        return (
            f"CuPy sees {n} GPU(s) but torch sees {len(gpus)}",
            "make CuPy and torch use the same driver and CUDA_VISIBLE_DEVICES",
            True,
        )
    if nvrtc is None:
        return (
            f"NVRTC could not be loaded: {_err(nvrtc_err)}",
            NVRTC_FIX,
            True,
        )
    for gpu in gpus:
        problem = _arch_problem(nvrtc, gpu["arch"], gpu["name"])
        if problem is not None:
            return problem[0], problem[1], True
    return None, None, False


# -------------------------------------------------------------------------- triton
def compile_triton_kernels(arch: str = DEFAULT_ARCH) -> Dict[str, Any]:
    """Compile one float32 variant of each Triton kernel (every family, forward and
    backward) with ``triton.compile`` for ``sm_<arch>``, without a GPU.

    The constants, argument types and warps are the launcher's
    (:func:`sj_parallel.triton.launch_params`, :func:`~sj_parallel.triton.signature`);
    ``benchmarks/triton_model.py`` compiles every variant.

    :param arch: target compute capability without the dot, e.g. ``"80"``
    :return: ``{"arch", "triton", "ok", "seconds", "kernels", "error", "fix"}``; each
        kernel ``{"kernel", "ok", "seconds", "log"}``
    :rtype: Dict[str, Any]
    """
    out: Dict[str, Any] = {
        "arch": str(arch),
        "triton": None,
        "ok": False,
        "seconds": 0.0,
        "kernels": [],
        "error": None,
        "fix": None,
    }
    start = time.perf_counter()
    err = B.triton_import_error()
    if err is not None:
        out["error"], out["fix"] = B.explain_triton_error(err)
        return out
    if B.triton_interpreting():
        out["error"] = (
            "TRITON_INTERPRET=1: the kernels run in Triton's interpreter and are not "
            "compiled"
        )
        out["fix"] = "unset TRITON_INTERPRET to compile them"
        return out
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton as K

    out["triton"] = triton.__version__
    seen = set()
    for v in K.kernel_variants():
        if v.dtype != torch.float32 or (v.family, v.backward) in seen:
            continue
        seen.add((v.family, v.backward))
        row: Dict[str, Any] = {"kernel": v.name, "ok": False, "seconds": 0.0,
                               "log": ""}  # fmt: skip
        t0 = time.perf_counter()
        try:
            src = ASTSource(
                fn=v.kernel, signature=K.signature(v), constexprs=dict(v.constexprs)
            )
            triton.compile(
                src, target=GPUTarget("cuda", int(arch), 32), options=v.options
            )
            row["ok"] = True
        except Exception as e:
            row["log"] = _err(e)[-2000:]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        out["kernels"].append(row)
    out["ok"] = bool(out["kernels"]) and all(r["ok"] for r in out["kernels"])
    if not out["ok"]:
        bad = [r for r in out["kernels"] if not r["ok"]]
        out["error"] = (
            f"{len(bad)} kernels failed to compile, e.g. {bad[0]['kernel']}: "
        )
        out["error"] += bad[0]["log"][:500]
        out["fix"] = (
            "install the Triton version your torch was built with (`pip install "
            "--force-reinstall torch`); if it persists, report it with `python -m "
            "sj_parallel doctor --json`"
        )
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def _triton_prerequisites() -> Tuple[Optional[str], Optional[str], bool]:
    """``(reason, fix, malfunction)`` of what stops backend 'triton', or ``(None,
    None, False)``."""
    err = B.triton_import_error()
    if err is not None:
        reason, fix = B.explain_triton_error(err)
        return reason, fix, not isinstance(err, ModuleNotFoundError)
    problem = B.triton_gpu_problem()
    if problem is not None:
        return f"no GPU: {problem[0]}", problem[1], False
    return None, None, False


def _triton_section(
    gpus: List[Dict[str, Any]],
    arch: Optional[str],
    compile_kernels_: bool,
    run_ops: bool,
    problem: Callable[..., None],
    guarded: Callable[..., Any],
) -> Dict[str, Any]:
    """Backend 'triton': whether it can run here, the compile check and, on a GPU, the
    ops against backend 'torch'."""
    reason, fix, broken = guarded(
        "triton", _triton_prerequisites,
        ("the triton check failed", "see the problems below", True),
    )  # fmt: skip
    if reason is not None:
        problem(f"backend 'triton' cannot run: {reason}", fix, "triton", broken)
    section: Dict[str, Any] = {
        "ok": reason is None,
        "reason": reason,
        "fix": fix,
        "interpreter": B.triton_interpreting(),
        "devices": ["cpu (Triton's interpreter)"] if B.triton_interpreting() else [],
        "compile": None,
        "compile_skipped": None,
        "ops": {"ran": False, "reason": "not requested", "results": []},
    }
    if gpus:
        section["devices"] = ["cuda"] + section["devices"]
    present = {g["arch"] for g in gpus}
    target = str(arch) if arch is not None else max(present, default=None)
    if compile_kernels_ and B.triton_import_error() is None and target is None:
        section["compile_skipped"] = (
            "no GPU here; `python -m sj_parallel doctor --arch 80` compiles them for "
            "sm_80 anyway"
        )
    elif compile_kernels_ and B.triton_import_error() is None:
        comp = guarded("triton compile", lambda: compile_triton_kernels(target), None)
        if comp is not None:
            comp["present"] = target in present
        section["compile"] = comp
        if comp is not None and not comp["ok"] and not B.triton_interpreting():
            what = f"the Triton kernels could not be compiled: {comp['error']}"
            problem(what, comp["fix"], "triton", malfunction=True)
            if reason is None:
                reason, fix = what, comp["fix"]
    if run_ops and reason is None and gpus:
        rows = guarded("triton GPU op", lambda: compare_backends("cuda", "triton"), [])
        section["ops"] = {"ran": bool(rows), "reason": None, "results": rows}
        bad = [r for r in rows if not r.get("ok")]
        if not rows or bad:
            r = bad[0] if bad else {"op": "?", "error": "the check failed"}
            detail = r.get("error") or (
                f"spike mismatch {r['spike_mismatch']:.2e}, input-gradient "
                f"difference {r['max_abs_diff_grad_input']:.2e}"
            )
            reason = f"{len(bad)} of {len(rows)} ops differ from backend 'torch', e.g. "
            reason += f"{r['op']}: {detail}"
            fix = (
                "report it with the output of `python -m sj_parallel doctor --json`; "
                "use backend='torch' meanwhile"
            )
            problem(reason, fix, "triton", malfunction=True)
    elif run_ops:
        section["ops"]["reason"] = (
            "backend 'triton' cannot run (see Backends)" if reason else "no GPU"
        )
    section["ok"], section["reason"], section["fix"] = reason is None, reason, fix
    return section


def _cupy_installation_problems() -> List[Tuple[str, str]]:
    """``(what, fix)`` of a CuPy installation that would fail on a GPU: one that is
    installed but does not import, or several CuPy wheels at once (not installed at
    all is not a problem: it is only needed with a GPU)."""
    out = []
    err = B.cupy_import_error()
    if err is not None:
        reason, fix = B.explain_cupy_error(err)
        if reason != "CuPy is not installed":
            out.append((reason, fix))
        return out
    dists = B.cupy_distributions()
    if len(dists) > 1:
        out.append(
            (
                f"several CuPy packages are installed at once: {', '.join(dists)}",
                f"`pip uninstall -y {' '.join(dists)}`, then install exactly one "
                "(e.g. `pip install cupy-cuda12x`)",
            )
        )
    return out


def doctor(
    backend: Optional[str] = None,
    nvrtc_compile: bool = True,
    run_ops: bool = True,
    arch: Optional[str] = None,
) -> Dict[str, Any]:
    """Check what can run here; the report of ``python -m sj_parallel doctor``.

    :param backend: the backend the user intends to use (``'torch'``, ``'cupy'`` or
        ``'triton'``);
        problems that stop it are marked ``"error"``, others ``"warning"`` (a broken
        set-up is always an ``"error"``)
    :type backend: Optional[str]
    :param nvrtc_compile: compile every kernel with NVRTC and one Triton kernel per
        family and pass for the GPUs present (a few seconds on 2 CPU cores); without
        a GPU only when ``arch`` is given
    :type nvrtc_compile: bool
    :param run_ops: on a GPU, run each op with backend 'cupy' against 'torch'
    :type run_ops: bool
    :param arch: compile for this compute capability (e.g. ``"90"``) instead of the
        GPUs present; a result for an arch no GPU here has is marked
        ``"present": False`` ("compiles for sm_XX")
    :type arch: Optional[str]
    :return: ``{"requested_backend", "versions", "gpus", "gpu_reason", "backends",
        "compile", "compile_skipped", "ops", "problems", "seconds"}``;
        ``backends[name]`` is ``{"ok", "reason", "fix", ...}``, every problem
        ``{"severity", "what", "fix"}``, ``compile_skipped`` says why nothing was
        compiled (or is None). ``seconds`` is the doctor's own wall time (the command
        line adds ``process_seconds``, imports included). JSON-serialisable.
    :rtype: Dict[str, Any]
    """
    if backend is not None:
        B.check_backend_name(backend)
    start = time.perf_counter()
    problems: List[Dict[str, str]] = []

    def problem(what: str, fix: str, about: str, malfunction: bool = False) -> None:
        sev = "error" if malfunction or about == backend else "warning"
        problems.append({"severity": sev, "what": what, "fix": fix})

    def guarded(section: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as e:  # the doctor itself must never crash
            problem(
                f"the {section} check failed: {_err(e)} "
                f"({traceback.format_exc(limit=-1).strip().splitlines()[1].strip()})",
                "please report this with the output of "
                "`python -m sj_parallel doctor --json`",
                "doctor",
                True,
            )
            return default

    nvrtc, nvrtc_err = _nvrtc()
    versions = guarded("versions", lambda: _versions(nvrtc, nvrtc_err), {})
    gpus, gpu_reason = guarded("GPU", _gpus, ([], "the GPU check failed"))
    report: Dict[str, Any] = {
        "requested_backend": backend,
        "versions": versions,
        "gpus": gpus,
        "gpu_reason": gpu_reason,
        "backends": {},
        "compile": None,
        "compile_skipped": None,
        "ops": None,
        "problems": problems,
        "seconds": 0.0,
    }

    # torch runs everywhere
    report["backends"]["torch"] = {
        "ok": True,
        "reason": None,
        "fix": None,
        "devices": ["cpu"] + (["cuda"] if gpus else []),
    }
    for gpu in gpus:
        if not gpu["torch_has_kernels"]:
            problem(
                f"this torch build has no kernels for {gpu['name']} "
                f"(sm_{gpu['arch']}; it has {', '.join(torch.cuda.get_arch_list())})",
                "install a torch build for your GPU (https://pytorch.org/get-started)",
                "torch",
            )

    # cupy: the first thing that stops it is its reason
    reason, fix, broken = guarded(
        "cupy",
        lambda: _cupy_prerequisites(gpus, gpu_reason, nvrtc, nvrtc_err),
        ("the cupy check failed", "see the problems below", True),
    )
    if reason is not None:
        problem(f"backend 'cupy' cannot run: {reason}", fix, "cupy", broken)
    if not gpus:  # what would stop CuPy on a GPU, as warnings
        for what, how in guarded("cupy", _cupy_installation_problems, []):
            problem(what, how, "cupy-installation")
    no_headers = versions.get("cuda_headers") == []
    if no_headers:
        what = "the CUDA headers cuda_fp16.h/cuda_bf16.h were not found"
        problem(what, HEADERS_FIX, "cupy", malfunction=reason is None)
        if reason is None:
            reason, fix = what, HEADERS_FIX

    # compile the kernels: for the GPUs present, or for the arch asked for
    present = {g["arch"] for g in gpus}
    archs = [str(arch)] if arch is not None else sorted(present)
    if nvrtc_compile and not archs:
        report["compile"] = []
        report["compile_skipped"] = (
            "no GPU here; `python -m sj_parallel doctor --arch 80` compiles every "
            "kernel for sm_80 anyway, which checks NVRTC and the CUDA headers"
        )
    elif nvrtc_compile:
        results = [
            guarded("kernel compile", lambda a=a: compile_kernels(a, nvrtc), None)
            for a in archs
        ]
        report["compile"] = [r for r in results if r is not None]
        for r in report["compile"]:
            r["present"] = r["arch"] in present
            # an --arch other than the GPUs' does not decide whether 'cupy' runs here
            decides = arch is None or r["arch"] in present
            if r["error"] and not no_headers:
                what = f"the kernels could not be compiled: {r['error']}"
                broken_here = decides and B.cupy_available()
                about = "cupy" if decides else f"sm_{r['arch']}"
                problem(what, r["fix"], about, malfunction=broken_here)
                if reason is None and decides:
                    reason, fix = what, r["fix"]
            failed = [v for v in r["variants"] if not v["ok"]]
            if failed:
                v = failed[0]
                what = (
                    f"{len(failed)} of {len(r['variants'])} kernel variants failed "
                    f"to compile with NVRTC {r['nvrtc']} for compute_{r['arch']}, "
                    f"e.g. {v['file']} {v['dtype']} const={v['const']}: "
                    f"{v['log'][:500]}"
                )
                compile_fix = (
                    "use NVRTC 12 or newer (`pip install -U nvidia-cuda-nvrtc-cu12`, "
                    "or CuPy's `[ctk]` extra); if it persists, report it with "
                    "`python -m sj_parallel doctor --json`"
                )
                problem(what, compile_fix, "cupy", malfunction=True)
                if reason is None and decides:
                    reason, fix = what, compile_fix
    else:
        report["compile"] = []
        report["compile_skipped"] = "not requested"

    # run each op on the GPU against the torch backend
    if not run_ops:
        report["ops"] = {"ran": False, "reason": "not requested", "results": []}
    elif reason is not None:
        report["ops"] = {
            "ran": False,
            "reason": "backend 'cupy' cannot run (see Backends)",
            "results": [],
        }
    else:
        rows = guarded("GPU op", lambda: compare_backends("cuda", "cupy"), [])
        report["ops"] = {"ran": bool(rows), "reason": None, "results": rows}
        bad = [r for r in rows if not r.get("ok")]
        if not rows:
            reason = "the check of the ops on the GPU failed (see the problems)"
            fix = "see the problems"
        elif bad:
            r = bad[0]
            detail = r.get("error") or (
                f"spike mismatch {r['spike_mismatch']:.2e}, input-gradient "
                f"difference {r['max_abs_diff_grad_input']:.2e} (scale "
                f"{r['grad_scale']:.2e})"
            )
            reason = (
                f"{len(bad)} of {len(rows)} ops differ from backend 'torch', e.g. "
                f"{r['op']}: {detail}"
            )
            fix = (
                "report it with the output of `python -m sj_parallel doctor "
                "--json`; use backend='torch' meanwhile"
            )
            problem(reason, fix, "cupy", malfunction=True)

    report["backends"]["cupy"] = {
        "ok": reason is None,
        "reason": reason,
        "fix": fix,
    }
    # triton: imports, a GPU (or the interpreter), a compile, the ops on a GPU
    report["backends"]["triton"] = _triton_section(
        gpus, arch, nvrtc_compile, run_ops, problem, guarded
    )
    # errors first
    report["problems"] = sorted(problems, key=lambda p: p["severity"] != "error")
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def format_report(report: Dict[str, Any]) -> str:
    """The report of :func:`doctor` as text (what ``python -m sj_parallel doctor``
    prints)."""
    v = report.get("versions", {})
    lines = [f"sj_parallel doctor (sj_parallel {v.get('sj_parallel', '?')})", ""]
    lines.append("Versions")

    def row(key: str, value: Any) -> None:
        lines.append(f"  {key:<14}{value}")

    row("python", f"{v.get('python')} ({v.get('platform')})")
    row("torch", f"{v.get('torch')} (CUDA {v.get('torch_cuda') or 'none: CPU build'})")
    row("spikingjelly", v.get("spikingjelly") or "not installed")
    if v.get("spikingjelly_source"):
        row("  source tree", v["spikingjelly_source"])
    cupy = v.get("cupy")
    if cupy:
        extra = f"CUDA runtime {v.get('cupy_cuda_runtime')}"
        extra += f", driver CUDA {v.get('cuda_driver') or 'none'}"
        row("cupy", f"{cupy} ({extra})")
    else:
        row("cupy", "does not import (see below)")
    row("cupy wheels", ", ".join(v.get("cupy_packages") or []) or "none")
    row("nvrtc", v.get("nvrtc") or f"not loaded ({v.get('nvrtc_error')})")
    headers = v.get("cuda_headers") or []
    if not headers:
        row("cuda headers", "not found")
    for i, h in enumerate(headers):
        row("cuda headers" if i == 0 else "", f"{h['path']} (CUDA {h['cuda']})")
    row("numpy", v.get("numpy"))
    row("triton", v.get("triton") or "does not import (see below)")
    lines += ["", "GPUs"]
    if report.get("gpus"):
        for g in report["gpus"]:
            lines.append(
                f"  cuda:{g['index']}  {g['name']}  compute capability "
                f"{g['compute_capability']} (sm_{g['arch']}), {g['memory_gib']} GiB"
            )
    else:
        lines.append(f"  none ({report.get('gpu_reason')})")
    lines += ["", "Backends"]
    for name, b in report.get("backends", {}).items():
        if b["ok"]:
            where = ", ".join(b.get("devices", ["cuda"]))
            lines.append(f"  {name:<6} can run ({where})")
        else:
            lines.append(f"  {name:<6} cannot run: {b['reason']}")
            lines.append(f"         fix: {b['fix']}")
    if report.get("compile_skipped"):
        lines += ["", f"Kernel compile: skipped ({report['compile_skipped']})"]
    for c in report.get("compile") or []:
        n_ok = sum(r["ok"] for r in c["variants"])
        here = c.get("present", True)
        nvrtc = f"NVRTC {c['nvrtc'] or '?'}"
        if here:
            head = f"Kernel compile ({nvrtc}, sm_{c['arch']}): "
            head += f"{n_ok}/{len(c['variants'])} variants OK"
        else:
            head = (
                f"Kernel compile for sm_{c['arch']} ({nvrtc}; no sm_{c['arch']} GPU "
                "here, so this checks NVRTC and the headers, not a run): "
                f"{n_ok}/{len(c['variants'])} variants compile"
            )
        lines += ["", f"{head} in {c['seconds']} s"]
        if c["error"]:
            lines.append(f"  not compiled: {c['error']}")
        ok = "ok  " if here else f"compiles for sm_{c['arch']}"
        for r in c["variants"]:
            const = "" if r["const"] is None else f" T={r['const']}"
            status = ok if r["ok"] else "FAIL"
            lines.append(
                f"  {status} {r['file']:<15} {r['dtype']:<9}{const:<6} "
                f"{', '.join(r['kernels']) or '-'}"
            )
            if not r["ok"] and r["log"]:
                lines += ["       " + ln for ln in r["log"].splitlines()[:10]]
    ops = report.get("ops") or {}
    lines += ["", "Ops on the GPU, backend 'cupy' against backend 'torch' (float32)"]
    if not ops.get("ran"):
        lines.append(f"  not run: {ops.get('reason', 'no results')}")
    for r in ops.get("results", []):
        if "error" in r:
            lines.append(f"  FAIL {r['op']}: {r['error']}")
        else:
            lines.append(
                f"  {'ok  ' if r['ok'] else 'FAIL'} {r['op']:<38} max |diff| "
                f"spikes {r['max_abs_diff_spikes']:.3g} (mismatch "
                f"{r['spike_mismatch']:.2e}), input grad "
                f"{r['max_abs_diff_grad_input']:.3g} (scale {r['grad_scale']:.3g})"
            )
    tri = report.get("backends", {}).get("triton") or {}
    comp = tri.get("compile")
    if tri.get("compile_skipped"):
        lines += ["", f"Triton compile: skipped ({tri['compile_skipped']})"]
    if comp:
        n_ok = sum(r["ok"] for r in comp["kernels"])
        here = comp.get("present", True)
        triton = f"Triton {comp['triton'] or '?'}"
        if here:
            head = f"Triton compile ({triton}, sm_{comp['arch']}): "
            head += f"{n_ok}/{len(comp['kernels'])} kernels OK"
        else:
            head = (
                f"Triton compile for sm_{comp['arch']} ({triton}; no sm_{comp['arch']} "
                f"GPU here, so this checks the compiler, not a run): "
                f"{n_ok}/{len(comp['kernels'])} kernels compile"
            )
        lines += ["", f"{head} in {comp['seconds']} s"]
        if comp["error"]:
            lines.append(f"  not compiled: {comp['error']}")
        ok = "ok  " if here else f"compiles for sm_{comp['arch']}"
        for r in comp["kernels"]:
            lines.append(f"  {ok if r['ok'] else 'FAIL'} {r['kernel']}")
    if tri.get("ops", {}).get("ran"):
        lines += ["", "Ops on the GPU, backend 'triton' against backend 'torch'"]
        for r in tri["ops"]["results"]:
            if "error" in r:
                lines.append(f"  FAIL {r['op']}: {r['error']}")
            else:
                lines.append(
                    f"  {'ok  ' if r['ok'] else 'FAIL'} {r['op']:<38} spike mismatch "
                    f"{r['spike_mismatch']:.2e}, input grad "
                    f"{r['max_abs_diff_grad_input']:.3g} (scale {r['grad_scale']:.3g})"
                )
    problems = report.get("problems", [])
    lines += ["", f"Problems ({len(problems)})" if problems else "No problems found."]
    for i, p in enumerate(problems, 1):
        lines.append(f"  {i}. [{p['severity']}] {p['what']}")
        lines.append(f"     fix: {p['fix']}")
    took = f"doctor ran in {report.get('seconds')} s"
    if report.get("process_seconds") is not None:
        took += (
            f"; {report['process_seconds']} s since the process started, "
            "imports included"
        )
    lines += ["", f"({took})"]
    return "\n".join(lines)
