"""`.ci/run`'s second leg (SpikingJelly 0.0.0.0.14) deselects the suites that do
not depend on the SpikingJelly version (tests/conftest.py: VERSION_INDEPENDENT and
the tests marked ``sj_independent``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import VERSION_INDEPENDENT

ROOT = Path(__file__).resolve().parents[1]


def test_version_independent_files_exist_and_the_second_leg_deselects_them():
    for name in VERSION_INDEPENDENT:
        assert (ROOT / "tests" / name).is_file(), name
    assert (
        "SJP_SKIP_VERSION_INDEPENDENT=1 python -m pytest"
        in (ROOT / ".ci" / "run").read_text()
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p",
           "no:cacheprovider", "tests/test_docs_site.py",
           "tests/test_ci_legs.py",
           "tests/test_triton_backend.py::test_registry_has_one_entry_per_backend",
           "tests/test_triton_static.py::test_problems_are_found"]  # fmt: skip
    env = dict(os.environ, SJP_SKIP_VERSION_INDEPENDENT="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "test_docs_site.py" not in proc.stdout and "deselected" in proc.stdout
    # a file of the list and a test marked sj_independent go; others stay
    assert "test_problems_are_found" not in proc.stdout
    assert "test_registry_has_one_entry_per_backend" in proc.stdout
    env.pop("SJP_SKIP_VERSION_INDEPENDENT")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert "test_docs_site.py" in proc.stdout and "deselected" not in proc.stdout
    assert "test_problems_are_found" in proc.stdout
