"""``python -m sj_parallel doctor`` on backend 'triton': its version, whether it can run
here (no GPU, no Triton, a CPU-only torch, the interpreter), a failed compile, each with
a fix; the compile check of one kernel per family for a GPU we do not have."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sj_parallel as sjp
import sj_parallel.backends as backends
from sj_parallel.__main__ import main

D = importlib.import_module("sj_parallel.doctor")
ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs Triton"
)


def _no_gpu(monkeypatch):
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@needs_triton
def test_doctor_reports_triton_without_a_gpu(monkeypatch, capsys):
    _no_gpu(monkeypatch)
    report = sjp.doctor(nvrtc_compile=False, run_ops=False)
    tri = report["backends"]["triton"]
    assert report["versions"]["triton"] == importlib.import_module("triton").__version__
    assert not tri["ok"] and tri["reason"].startswith("no GPU:")
    assert "backend='torch'" in tri["fix"] and "TRITON_INTERPRET=1" in tri["fix"]
    what = [p for p in report["problems"] if "backend 'triton'" in p["what"]]
    assert what and what[0]["severity"] == "warning"  # not the asked-for backend
    report = sjp.doctor(backend="triton", nvrtc_compile=False, run_ops=False)
    assert report["problems"][0]["severity"] == "error"
    assert main(["doctor", "--backend", "triton", "--no-compile", "--no-run"]) == 1
    out = capsys.readouterr().out
    assert "triton cannot run: no GPU" in out and "triton        " in out


def test_doctor_reports_triton_not_installed(monkeypatch):
    err = ModuleNotFoundError("No module named 'triton'", name="triton")
    monkeypatch.setattr(backends, "triton_import_error", lambda: err)
    report = sjp.doctor(backend="triton", nvrtc_compile=True, run_ops=False)
    tri = report["backends"]["triton"]
    assert tri["reason"].startswith("Triton is not installed")
    assert "pytorch.org" in tri["fix"] and report["versions"]["triton"] is None
    assert tri["compile"] is None  # nothing to compile with
    assert report["problems"][0]["severity"] == "error"
    text = D.format_report(report)
    assert "does not import" in text


@needs_triton
def test_doctor_with_the_interpreter_needs_no_gpu(monkeypatch):
    monkeypatch.setattr(backends, "triton_interpreting", lambda: True)
    report = sjp.doctor(backend="triton", nvrtc_compile=True, run_ops=False)
    tri = report["backends"]["triton"]
    assert tri["ok"] and tri["interpreter"]
    assert "cpu (Triton's interpreter)" in tri["devices"]
    # no GPU and no --arch: nothing is compiled for a GPU this machine lacks
    assert tri["compile"] is None and "--arch 80" in tri["compile_skipped"]
    assert "Triton compile: skipped" in D.format_report(report)
    report = sjp.doctor(backend="triton", nvrtc_compile=True, run_ops=False, arch="80")
    tri = report["backends"]["triton"]
    assert "TRITON_INTERPRET=1" in tri["compile"]["error"]  # nothing compiled
    assert not [p for p in report["problems"] if "triton" in p["what"].lower()]
    assert "triton can run (cpu (Triton's interpreter))" in D.format_report(report)


@needs_triton
def test_failed_triton_compile_is_reported_with_a_fix(monkeypatch):
    import triton
    import triton.compiler

    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(triton.compiler, "ASTSource", lambda **kw: kw)

    def broken(src, target=None, options=None):
        raise RuntimeError("ptxas fatal: Unsupported .version 9.9")

    monkeypatch.setattr(triton, "compile", broken)
    out = D.compile_triton_kernels("90")
    assert not out["ok"] and len(out["kernels"]) == 6
    assert "ptxas fatal" in out["error"] and "--force-reinstall torch" in out["fix"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU "exists"
    report = sjp.doctor(backend="triton", nvrtc_compile=True, run_ops=False, arch="90")
    tri = report["backends"]["triton"]
    assert not tri["ok"] and "could not be compiled" in tri["reason"]
    assert report["problems"][0]["severity"] == "error"


@needs_triton
@pytest.mark.sj_independent
def test_compile_triton_kernels_for_sm80_without_a_gpu():
    """The doctor's compile step, in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import json; from sj_parallel.doctor import compile_triton_kernels as c; "
        "print(json.dumps(c('80')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    assert sorted(r["kernel"] for r in out["kernels"]) == sorted(
        f"{f}_{p}_kernel" for f in ("psn", "sliding", "mpe")
        for p in ("forward", "backward")
    )  # fmt: skip
