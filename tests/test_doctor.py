"""``python -m sj_parallel doctor`` and the errors of backend 'cupy': the real reason
of a failed CuPy import, chained, with a fix.

Covered without a GPU: no CuPy, a CuPy whose import fails for another reason (each
kind of failure gets its own fix), several CuPy wheels at once, a driver older than
CuPy's CUDA, NVRTC without the GPU's arch, missing CUDA headers, the report on this
machine, the command line's exit statuses, the GPU comparison's code (torch against
torch on the CPU) and the GPU branch of the report (with the GPU faked). The real GPU
run is ``test_doctor_on_gpu`` (``pytest -m gpu``).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

import sj_parallel as sjp
import sj_parallel.backends as backends
from sj_parallel.__main__ import main
from sj_parallel.backends import _cuda as C

# sj_parallel.doctor is also the name of the function exported by sj_parallel
D = importlib.import_module("sj_parallel.doctor")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvrtc_loads() -> bool:
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception:
        return False
    return True


NVRTC = _nvrtc_loads()
HAS_GPU = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def fresh_cupy_check():
    """Each test sees (and leaves) a fresh ``import cupy`` result."""
    backends.cupy_import_error.cache_clear()
    yield
    backends.cupy_import_error.cache_clear()


def _hide_cupy(monkeypatch) -> None:
    """Make ``import cupy`` (and CuPy's NVRTC binding) fail as on a machine without
    CuPy."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("cupy", "cupy_backends"):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "cupy_backends", None)


def _broken_cupy(monkeypatch, tmp_path, raise_stmt: str) -> None:
    """An installed ``cupy`` package whose import raises ``raise_stmt``."""
    pkg = tmp_path / "cupy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(raise_stmt + "\n")
    for name in list(sys.modules):
        if name == "cupy" or name.startswith("cupy."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))


def _check_problems(report: dict) -> None:
    json.dumps(report)  # JSON-serialisable
    for p in report["problems"]:
        assert p["severity"] in ("error", "warning")
        assert p["what"] and p["fix"], p


# ------------------------------------------------------------- no CuPy installed
def _fake_gpu(monkeypatch) -> None:
    """A GPU as the doctor and the backend check see it (torch's device queries).

    Triton is reported as not installed: these tests are about backend 'cupy', and
    Triton would otherwise compile for the fake GPU and try to run its ops on it
    (tests/test_triton_doctor.py covers the Triton section)."""
    monkeypatch.setattr(D, "_gpus", lambda: ([FAKE_GPU], None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    no_triton = ModuleNotFoundError("No module named 'triton'", name="triton")
    monkeypatch.setattr(backends, "triton_import_error", lambda: no_triton)


def _no_gpu(monkeypatch) -> None:
    """No GPU, with torch's long driver message (as on a machine without a driver)."""
    monkeypatch.setattr(D, "_gpus", lambda: ([], f"torch.cuda.init(): {DRIVER_MSG}"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


DRIVER_MSG = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU "
    "and installed a driver from http://www.nvidia.com/Download/index.aspx"
)


def test_no_cupy(monkeypatch, capsys):
    """With a GPU and without CuPy: install CuPy."""
    _hide_cupy(monkeypatch)
    _fake_gpu(monkeypatch)
    err = backends.cupy_import_error()
    assert isinstance(err, ModuleNotFoundError) and err.name == "cupy"
    assert not backends.cupy_available()
    for make in (
        lambda: backends.check_backend_available("cupy"),
        lambda: sjp.PSN(4, backend="cupy"),
        lambda: sjp.set_backend(torch.nn.Sequential(sjp.SlidingPSN(2)), "cupy"),
        C._cupy,
    ):
        with pytest.raises(ImportError, match="which is not installed") as info:
            make()
        msg = str(info.value)
        assert "pip install cupy-cuda12x" in msg and "sj_parallel doctor" in msg
        assert info.value.__cause__ is not None
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
    backends.check_backend_available("torch")  # torch is unaffected

    report = sjp.doctor(backend="cupy")
    _check_problems(report)
    assert report["versions"]["cupy"] is None and report["versions"]["nvrtc"] is None
    cupy = report["backends"]["cupy"]
    assert not cupy["ok"] and cupy["reason"] == "CuPy is not installed"
    assert "pip install cupy-cuda" in cupy["fix"]
    assert report["backends"]["torch"]["ok"]
    assert report["compile"][0]["error"].startswith("NVRTC could not be loaded")
    assert report["ops"]["ran"] is False
    assert report["problems"][0]["severity"] == "error"  # the asked-for backend
    assert any("CuPy is not installed" in p["what"] for p in report["problems"])

    # without --backend a missing CuPy is a warning and the exit status is 0
    assert all(p["severity"] == "warning" for p in sjp.doctor()["problems"])
    assert main(["doctor", "--no-compile"]) == 0
    assert main(["doctor", "--backend", "cupy", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert "cupy   cannot run: CuPy is not installed" in out
    assert "fix: install CuPy" in out
    assert main(["doctor", "--backend", "torch", "--no-compile"]) == 0


def test_no_gpu_comes_before_no_cupy(monkeypatch, capsys):
    """Without a GPU, installing CuPy cannot help: the missing GPU is the reason,
    its fix is backend 'torch', and torch's long driver message is printed once."""
    _hide_cupy(monkeypatch)
    _no_gpu(monkeypatch)
    report = sjp.doctor(backend="cupy")
    _check_problems(report)
    cupy = report["backends"]["cupy"]
    assert cupy["reason"].startswith("no CUDA GPU (see GPUs)")
    assert "CuPy is not installed either" in cupy["reason"]
    assert "use backend='torch'" in cupy["fix"] and "pip install" not in cupy["fix"]
    assert report["problems"][0]["severity"] == "error"
    assert not any(p["what"] == "CuPy is not installed" for p in report["problems"])
    assert main(["doctor", "--backend", "cupy"]) == 1
    out = capsys.readouterr().out
    assert out.count("Found no NVIDIA driver") == 1, out
    assert "cupy   cannot run: no CUDA GPU (see GPUs)" in out
    assert "pip install cupy" not in out
    # the same order in the error of the assignment
    with pytest.raises(ImportError) as info:
        sjp.PSN(4, backend="cupy")
    msg = str(info.value)
    assert msg.index("no CUDA GPU") < msg.index("not installed")
    assert "use backend='torch'" in msg


# ------------------------------------------- CuPy installed, import fails otherwise
BROKEN = {
    "nvrtc": (
        "raise ImportError('libnvrtc.so.12: cannot open shared object file: No such "
        "file or directory')",
        ImportError,
        "libnvrtc.so.12: cannot open shared object file",
        "nvidia-cuda-nvrtc-cu12",
    ),
    "cudart": (
        "raise OSError('libcudart.so.12: cannot open shared object file')",
        OSError,
        "OSError: libcudart.so.12",
        "cupy-cuda12x[ctk]",
    ),
    "cupy-banner": (
        # what CuPy itself raises when its core fails to import
        "try:\n"
        "    raise ImportError('libcudart.so.12: cannot open shared object file')\n"
        "except ImportError as exc:\n"
        "    raise ImportError('\\n' + '=' * 64 + '\\nFailed to import CuPy.\\n\\n'\n"
        "        'If you installed CuPy via wheels (cupy-cudaXXX or cupy-rocm-X-X), '\n"
        "        'make sure that the package matches with the version of CUDA.\\n\\n'\n"
        "        'Original error:\\n  ImportError: ' + str(exc) + '\\n' + '=' * 64)"
        " from exc",
        ImportError,
        "failed to import: ImportError: libcudart.so.12: cannot open shared object "
        "file.",
        "cupy-cuda12x[ctk]",
    ),
    "driver": (
        "raise ImportError('libcuda.so.1: cannot open shared object file')",
        ImportError,
        "libcuda.so.1",
        "NVIDIA driver",
    ),
    "dependency": (
        "raise ModuleNotFoundError(\"No module named 'fastrlock'\", name='fastrlock')",
        ModuleNotFoundError,
        "No module named 'fastrlock'",
        "pip install fastrlock",
    ),
    "numpy": (
        "raise ImportError('numpy.core.multiarray failed to import')",
        ImportError,
        "numpy.core.multiarray failed to import",
        "NumPy",
    ),
    "cuda-mismatch": (
        "raise RuntimeError('CUDA driver version is insufficient for CUDA runtime "
        "version')",
        RuntimeError,
        "RuntimeError: CUDA driver version is insufficient",
        "install the wheel for the CUDA version `nvidia-smi` shows",
    ),
    "other": (
        "raise AttributeError('module has no attribute _core')",
        AttributeError,
        "AttributeError: module has no attribute _core",
        "--force-reinstall",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_cupy_import_fails_for_another_reason(kind, monkeypatch, tmp_path, capsys):
    stmt, etype, original, fix = BROKEN[kind]
    _broken_cupy(monkeypatch, tmp_path, stmt)
    _fake_gpu(monkeypatch)
    err = backends.cupy_import_error()
    assert type(err) is etype
    reason, hint = backends.explain_cupy_error(err)
    assert reason.startswith("CuPy is installed but failed to import: ")
    assert original.rstrip(".") in reason and fix in hint
    assert "=====" not in reason and "\n" not in reason

    for make in (lambda: sjp.MPEPSN(4, backend="cupy"), C._cupy):
        with pytest.raises(ImportError) as info:
            make()
        msg = str(info.value)
        assert "not installed" not in msg
        assert "CuPy is installed but failed to import" in msg
        assert original in msg and fix in msg
        assert info.value.__cause__ is err or type(info.value.__cause__) is etype

    report = sjp.doctor(nvrtc_compile=False)
    _check_problems(report)
    cupy = report["backends"]["cupy"]
    assert not cupy["ok"] and original.rstrip(".") in cupy["reason"]
    assert fix in cupy["fix"]
    # a broken installation is an error even when 'cupy' was not asked for
    assert report["problems"][0]["severity"] == "error"
    assert main(["doctor", "--backend", "cupy", "--no-compile"]) == 1
    assert original.rstrip(".") in capsys.readouterr().out

    # without a GPU that is the reason; the broken CuPy is still reported
    _no_gpu(monkeypatch)
    report = sjp.doctor(nvrtc_compile=False)
    assert report["backends"]["cupy"]["reason"] == "no CUDA GPU (see GPUs)"
    broken = [p for p in report["problems"] if original.rstrip(".") in p["what"]]
    assert broken and broken[0]["severity"] == "warning" and fix in broken[0]["fix"]
    with pytest.raises(ImportError) as info:
        sjp.MPEPSN(4, backend="cupy")
    msg = str(info.value)
    assert msg.index("no CUDA GPU") < msg.index("CuPy is installed but failed")
    assert original in msg and fix in msg


def test_several_cupy_wheels(monkeypatch):
    monkeypatch.setattr(
        backends, "cupy_distributions", lambda: ["cupy-cuda12x", "cupy-cuda13x"]
    )
    reason, fix = backends.explain_cupy_error(ImportError("cannot import _core"))
    assert "installed but failed to import" in reason
    assert "pip uninstall -y cupy-cuda12x cupy-cuda13x" in fix
    # the same check when the import happens to succeed
    monkeypatch.setattr(backends, "cupy_import_error", lambda: None)
    _fake_gpu(monkeypatch)
    report = sjp.doctor(nvrtc_compile=False)
    cupy = report["backends"]["cupy"]
    assert "several CuPy packages" in cupy["reason"]
    assert "pip uninstall -y cupy-cuda12x cupy-cuda13x" in cupy["fix"]
    assert report["problems"][0]["severity"] == "error"
    _no_gpu(monkeypatch)  # a warning without a GPU
    report = sjp.doctor(nvrtc_compile=False)
    assert report["backends"]["cupy"]["reason"] == "no CUDA GPU (see GPUs)"
    (p,) = [p for p in report["problems"] if "several CuPy" in p["what"]]
    assert p["severity"] == "warning" and "pip uninstall" in p["fix"]


def test_not_installed_hint_follows_torch_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "`pip install cupy-cuda13x` matches it" in backends.cupy_install_hint()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "pip install cupy-cuda12x" in backends.cupy_install_hint()


# ------------------------------------------------------------ missing CUDA headers
def test_missing_headers(monkeypatch):
    monkeypatch.setattr(C, "cuda_include_dirs", lambda: ())
    with pytest.raises(RuntimeError, match="cuda_fp16.h") as info:
        C.include_options(12)
    msg = str(info.value)
    assert "pip install nvidia-cuda-runtime-cu12" in msg and "CUDA_PATH" in msg

    report = sjp.doctor(backend="cupy", arch="80")
    _check_problems(report)
    assert report["versions"]["cuda_headers"] == []
    hp = [p for p in report["problems"] if "CUDA headers" in p["what"]]
    assert hp and "pip install nvidia-cuda-runtime-cu12" in hp[0]["fix"]
    assert not report["backends"]["cupy"]["ok"]
    if NVRTC:
        (c,) = report["compile"]
        assert "could not find the CUDA headers" in c["error"] and not c["variants"]
    assert "cuda headers  not found" in D.format_report(report)


# ------------------------------------------------------------ this (CPU) machine
@pytest.fixture(scope="module")
def cpu_report():
    backends.cupy_import_error.cache_clear()
    return sjp.doctor()


@pytest.mark.skipif(HAS_GPU, reason="describes a machine without a GPU")
def test_report_on_this_machine(cpu_report):
    r = cpu_report
    _check_problems(r)
    v = r["versions"]
    assert v["python"] == ".".join(map(str, sys.version_info[:3]))
    assert v["torch"] == torch.__version__ and v["torch_cuda"] == torch.version.cuda
    assert v["spikingjelly"] and v["numpy"] and v["sj_parallel"] == sjp.__version__
    assert r["gpus"] == [] and r["gpu_reason"]
    assert r["backends"]["torch"] == {
        "ok": True,
        "reason": None,
        "fix": None,
        "devices": ["cpu"],
    }
    cupy = r["backends"]["cupy"]
    assert not cupy["ok"] and cupy["fix"]
    if backends.cupy_available():
        assert v["cupy"] and cupy["reason"].startswith("no CUDA GPU")
    assert r["ops"] == {
        "ran": False,
        "reason": "backend 'cupy' cannot run (see Backends)",
        "results": [],
    }
    assert all(p["severity"] == "warning" for p in r["problems"])
    text = D.format_report(r)
    for section in ("Versions", "GPUs", "Backends", "Kernel compile", "Ops on the GPU"):
        assert section in text
    assert r["seconds"] < 60


@pytest.mark.skipif(HAS_GPU, reason="describes a machine without a GPU")
def test_no_compile_without_a_gpu_unless_asked(cpu_report, capsys):
    """Compiling for an arch this machine cannot run says little: skipped, with the
    command that does it anyway."""
    assert cpu_report["compile"] == []
    assert "--arch 80" in cpu_report["compile_skipped"]
    text = D.format_report(cpu_report)
    assert "Kernel compile: skipped (no GPU here; `python -m sj_parallel doctor " in (
        text
    )
    assert " ok " not in text.split("Kernel compile")[1].split("Ops on the GPU")[0]


@pytest.mark.skipif(not NVRTC or HAS_GPU, reason="needs CuPy's NVRTC; no GPU")
def test_report_compiles_every_kernel_for_sm80():
    report = sjp.doctor(arch="80", run_ops=False)
    (c,) = report["compile"]
    text = D.format_report(report)
    assert c["present"] is False
    assert "Kernel compile for sm_80 (NVRTC" in text and "no sm_80 GPU here" in text
    assert text.count("compiles for sm_80 ") == len(c["variants"])
    assert c["arch"] == "80" and c["error"] is None and c["ok"], c
    variants = C.kernel_variants(minimal=True)
    assert len(c["variants"]) == len(variants)
    for row, (name, dtype, const, _) in zip(c["variants"], variants):
        assert row["file"] == C.KERNEL_FILES[name]
        assert row["dtype"] == str(dtype).replace("torch.", "")
        assert row["const"] == const
        assert row["ok"] and row["kernels"] == list(C.KERNELS[name]), row
    assert report["versions"]["nvrtc"] == c["nvrtc"]
    assert c["seconds"] < 30


def test_compile_reports_failures():
    """A kernel NVRTC rejects is reported with its log, not raised."""

    class Program:
        def __init__(self, src):
            self.src = src

    class FakeNVRTC:
        def getVersion(self):
            return (12, 9)

        def createProgram(self, src, name, headers, include_names):
            return Program(src)

        def compileProgram(self, prog, opts):
            assert "--gpu-architecture=compute_75" in opts
            assert any(o.startswith("-I") for o in opts)
            if "sjp_mpe_forward" in prog.src:
                raise RuntimeError("NVRTC_ERROR_COMPILATION (6)")

        def getPTX(self, prog):
            return "".join(f".entry {k}(" for ks in C.KERNELS.values() for k in ks)

        def getProgramLog(self, prog):
            return "mpe_psn.cu(1): error: something" if "sjp_mpe" in prog.src else ""

        def destroyProgram(self, prog):
            pass

    if not C.cuda_include_dirs():
        pytest.skip("no CUDA headers here")
    out = D.compile_kernels("75", FakeNVRTC())
    assert not out["ok"] and out["nvrtc"] == "12.9"
    bad = [r for r in out["variants"] if not r["ok"]]
    assert {r["file"] for r in bad} == {"mpe_psn.cu"}
    assert "error: something" in bad[0]["log"]


# ------------------------------------------------------------------ command line
def test_cli_exit_statuses(capsys):
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--backend", "tpu"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--arch", "sm_80"])
    assert info.value.code == 2
    assert main([]) == 2
    capsys.readouterr()
    with pytest.raises(ValueError, match="unknown backend"):
        sjp.doctor(backend="tpu")


@pytest.mark.skipif(HAS_GPU, reason="on a GPU 'cupy' may run")
def test_cli_subprocess_json_and_exit_status():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="passive")
    cmd = [sys.executable, "-m", "sj_parallel", "doctor", "--no-compile", "--json"]
    proc = subprocess.run(
        cmd + ["--backend", "cupy"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["requested_backend"] == "cupy"
    assert not report["backends"]["cupy"]["ok"]
    assert report["problems"][0]["severity"] == "error"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and json.loads(proc.stdout)["compile"] == []


# ------------------------------------------------------------ the GPU branch
def test_compare_backends_code_path_on_cpu():
    """Everything of the GPU comparison but the CUDA calls: torch against torch."""
    rows = D.compare_backends(device="cpu", backend="torch", shape=(2, 64))
    assert [r["op"] for r in rows] == list(D._cases())
    assert len(rows) == 5
    for r in rows:
        assert r["ok"], r
        assert r["max_abs_diff_spikes"] == 0.0 and r["spike_mismatch"] == 0.0
        assert r["max_abs_diff_grad_input"] == 0.0 and r["grad_scale"] > 1e-6


def test_compare_backends_reports_errors():
    rows = D.compare_backends(device="meta", backend="torch", shape=(2,))
    assert all(not r["ok"] and r["error"] for r in rows)


FAKE_GPU = {
    "index": 0,
    "name": "Fake GPU",
    "compute_capability": "7.0",
    "arch": "70",
    "memory_gib": 16.0,
    "torch_has_kernels": True,
}


def test_gpu_branch_with_faked_gpu(monkeypatch, capsys):
    monkeypatch.setattr(D, "_gpus", lambda: ([FAKE_GPU], None))
    monkeypatch.setattr(D, "_cupy_prerequisites", lambda *a: (None, None, False))
    good = {
        "ok": True,
        "max_abs_diff_spikes": 0.0,
        "spike_mismatch": 0.0,
        "max_abs_diff_grad_input": 1e-7,
        "grad_scale": 1.0,
    }
    rows = [dict(good, op=op) for op in D._cases()]
    calls = []

    def fake_compare(device, backend):
        calls.append((device, backend))
        return rows

    monkeypatch.setattr(D, "compare_backends", fake_compare)
    report = sjp.doctor(backend="cupy", nvrtc_compile=False)
    # backend 'triton' is compared too where it runs (here: Triton's interpreter)
    assert calls[0] == ("cuda", "cupy")
    assert set(calls[1:]) <= {("cuda", "triton")}
    assert report["backends"]["cupy"]["ok"] and report["ops"]["ran"]
    assert report["backends"]["torch"]["devices"] == ["cpu", "cuda"]
    assert main(["doctor", "--backend", "cupy", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "Fake GPU  compute capability 7.0 (sm_70)" in out
    assert "cupy   can run" in out and "No problems found." in out

    rows[1] = dict(good, op=rows[1]["op"], ok=False, spike_mismatch=0.2)
    rows[3] = {"op": rows[3]["op"], "ok": False, "error": "RuntimeError: boom"}
    report = sjp.doctor(nvrtc_compile=False)
    cupy = report["backends"]["cupy"]
    assert not cupy["ok"] and cupy["reason"].startswith("2 of 5 ops differ")
    assert report["problems"][0]["severity"] == "error"
    assert main(["doctor", "--backend", "cupy", "--no-compile"]) == 1
    assert "FAIL MPEPSN(8, estimate_from='previous'): RuntimeError: boom" in (
        capsys.readouterr().out
    )


def test_gpu_branch_other_arch_and_crash(monkeypatch):
    """``--arch`` for another GPU reports, but does not decide whether 'cupy' runs
    here; a crashing GPU check is reported and 'cupy' is not claimed to work."""

    class FakeNVRTC:
        def getVersion(self):
            return (13, 0)

        def getSupportedArchs(self):
            return (75, 80, 90)

    gpu = dict(FAKE_GPU, arch="90", compute_capability="9.0")
    monkeypatch.setattr(D, "_gpus", lambda: ([gpu], None))
    monkeypatch.setattr(D, "_nvrtc", lambda: (FakeNVRTC(), None))
    monkeypatch.setattr(D, "_cupy_prerequisites", lambda *a: (None, None, False))
    rows = [{"op": op, "ok": True} for op in D._cases()]
    monkeypatch.setattr(D, "compare_backends", lambda device, backend: rows)
    report = sjp.doctor(backend="cupy", arch="70")
    assert report["backends"]["cupy"]["ok"]
    (p,) = report["problems"]
    assert p["severity"] == "warning" and "cannot compile for sm_70" in p["what"]
    assert "dropped sm_70" in p["fix"]

    def crash(device, backend):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(D, "compare_backends", crash)
    report = sjp.doctor(nvrtc_compile=False)
    assert not report["backends"]["cupy"]["ok"] and not report["ops"]["ran"]
    assert "illegal memory access" in report["problems"][0]["what"]
    assert report["problems"][0]["severity"] == "error"


@pytest.mark.skipif(not backends.cupy_available(), reason="needs CuPy")
def test_gpu_prerequisites_driver_and_arch(monkeypatch):
    """With a GPU, CuPy's runtime errors and NVRTC's arch list are checked."""
    import cupy

    class FakeNVRTC:
        def getVersion(self):
            return (13, 0)

        def getSupportedArchs(self):
            return (75, 80, 86, 89, 90, 100, 120)

    def insufficient():
        raise RuntimeError(
            "cudaErrorInsufficientDriver: CUDA driver version is "
            "insufficient for CUDA runtime version"
        )

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", insufficient)
    reason, fix, broken = D._cupy_prerequisites([FAKE_GPU], None, FakeNVRTC(), None)
    assert reason.startswith("CuPy cannot use the GPU") and broken
    assert "driver" in fix and "cupy-cuda12x" in fix

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    reason, fix, broken = D._cupy_prerequisites([FAKE_GPU], None, FakeNVRTC(), None)
    assert "NVRTC 13.0 cannot compile for Fake GPU (sm_70)" in reason and broken
    assert "dropped sm_70" in fix and "nvidia-cuda-nvrtc-cu12" in fix
    new = dict(FAKE_GPU, arch="130", name="Future GPU")
    reason, fix, _ = D._cupy_prerequisites([new], None, FakeNVRTC(), None)
    assert "sm_130" in reason and "older than the GPU" in fix
    ok = dict(FAKE_GPU, arch="90")
    assert D._cupy_prerequisites([ok], None, FakeNVRTC(), None) == (None, None, False)


def test_compile_for_an_arch_nvrtc_lacks():
    class FakeNVRTC:
        def getVersion(self):
            return (13, 0)

        def getSupportedArchs(self):
            return (75, 80, 90)

        def createProgram(self, *args):  # pragma: no cover - must not be reached
            raise AssertionError("compiled for an unsupported arch")

    out = D.compile_kernels("70", FakeNVRTC())
    assert not out["ok"] and out["variants"] == []
    assert out["error"] == (
        "NVRTC 13.0 cannot compile for sm_70; it supports sm_75, sm_80, sm_90"
    )
    assert "dropped sm_70" in out["fix"] and "nvidia-cuda-nvrtc-cu12" in out["fix"]


@pytest.mark.skipif(not NVRTC, reason="needs CuPy's NVRTC")
def test_doctor_arch_option_reports_unsupported_arch(monkeypatch):
    from cupy_backends.cuda.libs import nvrtc

    supported = tuple(int(a) for a in nvrtc.getSupportedArchs())
    arch = "70" if 70 not in supported else None
    if arch is None:
        pytest.skip("this NVRTC compiles for sm_70")
    report = sjp.doctor(arch=arch, run_ops=False)
    (c,) = report["compile"]
    assert "cannot compile for sm_70" in c["error"]
    assert any("dropped sm_70" in p["fix"] for p in report["problems"])


def test_torch_kernel_check():
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "compute_90"]
    assert D._torch_has_kernels(8, 9, archs)  # sm_86 binary runs on 8.9
    assert D._torch_has_kernels(12, 0, archs)  # PTX of 9.0 JITs for 12.0
    assert not D._torch_has_kernels(7, 0, archs)
    assert D._torch_has_kernels(7, 0, [])


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAS_GPU and backends.cupy_available()), reason="needs a CUDA GPU and CuPy"
)
def test_doctor_on_gpu(capsys):
    rows = D.compare_backends("cuda", "cupy")
    assert len(rows) == 5 and all(r["ok"] for r in rows), rows
    report = sjp.doctor(backend="cupy")
    assert report["gpus"] and report["backends"]["cupy"]["ok"], report["problems"]
    assert report["ops"]["ran"] and all(r["ok"] for r in report["ops"]["results"])
    assert all(c["ok"] for c in report["compile"])
    assert main(["doctor", "--backend", "cupy"]) == 0
    print(D.format_report(report), file=sys.stderr)


# ------------------------------------------------- issue 18: answers that mislead
def test_dropped_arch_fix_names_only_what_is_missing(monkeypatch):
    """``--arch 70`` with NVRTC 13: with CUDA 12's packages installed the fix says why
    NVRTC 12 was not loaded instead of asking to install them again."""
    installed = {"cupy-cuda12x": "14.2.0", "nvidia-cuda-nvrtc-cu12": "12.9.86"}
    monkeypatch.setattr(D, "_dist_version", lambda name: installed.get(name))
    fix = D._dropped_arch_fix(13, "70")
    assert "pip install cupy" not in fix and "pip install nvidia" not in fix
    assert "are installed, but this process loaded NVRTC 13" in fix
    assert "CUDA 12 build of torch" in fix
    del installed["nvidia-cuda-nvrtc-cu12"]
    fix = D._dropped_arch_fix(13, "70")
    assert "`pip install nvidia-cuda-nvrtc-cu12`" in fix
    installed.clear()
    assert "`pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12`" in (
        D._dropped_arch_fix(13, "70")
    )


@pytest.mark.skipif(not NVRTC, reason="needs CuPy's NVRTC")
def test_arch_70_with_nvrtc_13_on_this_machine():
    from cupy_backends.cuda.libs import nvrtc

    if 70 in tuple(int(a) for a in nvrtc.getSupportedArchs()):
        pytest.skip("this NVRTC compiles for sm_70")
    report = sjp.doctor(arch="70", run_ops=False)
    (p,) = [p for p in report["problems"] if "sm_70" in p["what"]]
    for pkg in ("cupy-cuda12x", "nvidia-cuda-nvrtc-cu12"):
        if D._dist_version(pkg) is not None:
            assert f"pip install {pkg}" not in p["fix"] and (
                f"`pip install cupy-cuda12x {pkg}`" not in p["fix"]
            )


@pytest.mark.skipif(HAS_GPU, reason="describes a machine without a GPU")
def test_cli_reports_true_wall_time():
    """``(doctor ran in N s; M s since the process started, imports included)``: M
    is the process's wall time, not only the doctor's own part."""
    import re
    import time

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="passive")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sj_parallel", "doctor"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    m = re.search(
        r"\(doctor ran in ([\d.]+) s; ([\d.]+) s since the process started, "
        r"imports included\)",
        proc.stdout,
    )
    assert m, proc.stdout[-500:]
    own, total = float(m.group(1)), float(m.group(2))
    assert own <= total <= wall + 0.5
    assert total >= 0.5 * wall  # only the interpreter's exit comes after it


# --------------------------------------------- the sample output in the docs
DOC = os.path.join(ROOT, "docs", "cupy_backend.md")
BEGIN, END = "<!-- doctor-sample: begin -->", "<!-- doctor-sample: end -->"


def _doc_sample() -> str:
    text = open(DOC).read()
    block = text.split(BEGIN)[1].split(END)[0]
    return block.split("```text\n")[1].split("```")[0]


@pytest.mark.skipif(HAS_GPU, reason="the sample is of a machine without a GPU")
def test_docs_sample_output_is_generated():
    """The sample report in docs/cupy_backend.md is what `python -m sj_parallel
    doctor` prints on a machine without a GPU (paths, versions and times aside).
    Refresh it with `python scripts/doctor_sample.py`."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import doctor_sample
    finally:
        sys.path.pop(0)
    expect = doctor_sample.sample()
    got = _doc_sample()
    norm = doctor_sample.normalize
    assert norm(got) == norm(expect), (
        "docs/cupy_backend.md's doctor sample is stale: run "
        "`python scripts/doctor_sample.py`"
    )
    assert "Kernel compile: skipped" in got and "no CUDA GPU (see GPUs)" in got
