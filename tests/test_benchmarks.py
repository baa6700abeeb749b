"""Smoke test of the benchmark program in its smallest configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smallest_run(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--device",
            "cpu",
            "--T",
            "4",
            "--log2n",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["info"]["device"] == "cpu" and data["info"]["torch"]
    impls = {(r["neuron"], r["impl"]) for r in data["rows"]}
    for n in ("psn", "masked-psn", "sliding-psn", "mpe-psn"):
        assert (n, "ours-torch") in impls
    assert ("mpe-psn", "paper-torch") in impls and ("lif", "sj-torch") in impls
    for r in data["rows"]:
        assert (
            r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["saved_bytes"] > 0
        )
    assert (out / "results.csv").exists() and (out / "speedup_memory.png").exists()
    assert "target checks pass" in proc.stdout


def test_host_overhead_mode(tmp_path):
    """--host-overhead: the cupy ops' host path on the fake device, 2 launches per
    forward+backward, next to SpikingJelly's (or the MPE-PSN authors') modules."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed")
    out = tmp_path / "host"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--host-overhead",
            "--repeats",
            "5",
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "host_overhead.json").read_text())
    assert [r["neuron"] for r in rows] == ["psn", "sliding-psn", "mpe-psn"]
    for r in rows:
        assert r["launches_fwd_bwd"] == 2 and r["ours_us"] > 0
    assert "| psn |" in (out / "host_overhead.md").read_text()
