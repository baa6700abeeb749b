#!/usr/bin/env python
"""Run SpikingJelly's own tests with sj_parallel's neurons swapped in.

A user swaps a class by assigning it in SpikingJelly's namespace::

    from spikingjelly.activation_based import neuron
    import sj_parallel as sjp
    neuron.PSN = sjp.PSN
    neuron.MaskedPSN = sjp.MaskedPSN
    neuron.SlidingPSN = sjp.SlidingPSN

This script runs tests from a SpikingJelly checkout twice, once as they are (with
SpikingJelly's classes) and once with that swap done before any test module is
imported, and prints the counts side by side::

    python scripts/run_sj_tests_swapped.py /path/to/spikingjelly            # master
    python scripts/run_sj_tests_swapped.py /path/to/spikingjelly --package installed
    python scripts/run_sj_tests_swapped.py /path/to/spikingjelly --suite neuron -v

``--package checkout`` (default) imports the ``spikingjelly`` package of the
checkout (SpikingJelly master); ``--package installed`` keeps the installed one
(2.0.0, say) and takes only the tests from the checkout. ``--suite psn`` (default)
runs the tests that build PSN-family neurons; ``--suite neuron`` adds the whole
files that run neurons generically (functional step functions, the explicit-state
API, ``reset_net``/``set_step_mode``, checkpointing and memopt); test ids given
after ``--`` replace the suite. SpikingJelly's memopt (where it exists) is imported
before the swap, as in a program that imported SpikingJelly first, so its list of
modules it must not split in time holds SpikingJelly's classes, not ours.
The exit status is 1 when a test fails with our classes.

The same file is the pytest plugin that does the swap (``-p run_sj_tests_swapped``,
active when ``SJP_SWAP_CLASSES=1``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: The SpikingJelly tests that build PSN-family neurons (checked at master commit
#: afb132264a8cbe38d0f221dcef04053e6ba134d3).
PSN_TESTS = [
    "test/activation_based/test_functional_neuron.py::"
    "test_sliding_psn_step_matches_module",
    "test/activation_based/test_functional_neuron.py::"
    "test_masked_psn_step_matches_module_sequence",
    "test/activation_based/test_checkpointing.py::"
    "test_memory_optimization_level3_skips_when_no_temporal_split_candidates",
]

#: Whole files that run neurons generically (step functions against modules, the
#: explicit-state API, reset/step-mode helpers, checkpointing and memopt).
NEURON_FILES = [
    "test/activation_based/test_functional_neuron.py",
    "test/activation_based/test_checkpointing.py",
    "test/activation_based/test_memory.py",
    "test/activation_based/test_functional.py",
]

SWAPPED = ("PSN", "MaskedPSN", "SlidingPSN")


# ----------------------------------------------------------------- pytest plugin
def _import_spikingjelly() -> str:
    """Import spikingjelly now, before SpikingJelly's conftest can put the checkout
    on ``sys.path``, and check it is the expected one."""
    import spikingjelly

    where = os.path.dirname(os.path.abspath(spikingjelly.__file__))
    expect = os.environ.get("SJP_EXPECT_SPIKINGJELLY")
    if expect and where != os.path.abspath(expect):
        raise RuntimeError(f"spikingjelly was imported from {where}, expected {expect}")
    return where


def _swap() -> str:
    """Swap our classes into ``spikingjelly.activation_based.neuron``."""
    from spikingjelly.activation_based import neuron

    try:  # as a program that imported SpikingJelly's memopt before sj_parallel
        import spikingjelly.activation_based.memopt  # noqa: F401
    except ImportError:
        pass
    import sj_parallel as sjp

    for name in SWAPPED:
        setattr(neuron, name, getattr(sjp, name))
    return (
        f"sj_parallel {sjp.__version__} ({os.path.dirname(sjp.__file__)}): "
        f"{', '.join(SWAPPED)} swapped into spikingjelly.activation_based.neuron"
    )


_HEADER: List[str] = []

if "SJP_SWAP_CLASSES" in os.environ:
    # at plugin import, before conftest files and test modules are imported
    _HEADER.append(f"spikingjelly from {_import_spikingjelly()}")
    if os.environ["SJP_SWAP_CLASSES"] == "1":
        _HEADER.append(_swap())
    else:
        _HEADER.append("SpikingJelly's own classes (no swap)")


def pytest_report_header(config) -> List[str]:
    return list(_HEADER)


# ------------------------------------------------------------------------ runner
def _git_commit(tree: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "-C", tree, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _installed_spikingjelly(checkout: str) -> str:
    """Where ``import spikingjelly`` goes without the checkout."""
    spec = importlib.util.find_spec("spikingjelly")
    if spec is None or spec.origin is None:
        raise SystemExit("--package installed: spikingjelly is not installed")
    where = os.path.dirname(os.path.abspath(spec.origin))
    if os.path.commonpath([where, checkout]) == checkout:
        raise SystemExit(
            f"--package installed: spikingjelly resolves to {where}, inside the "
            "checkout; take the checkout off PYTHONPATH"
        )
    return where


# pytest.main without the current directory (the checkout) first on sys.path when
# the installed spikingjelly is wanted (what `python -m pytest` would put there)
_BOOT = (
    "import os, sys, pytest\n"
    "if os.environ.get('SJP_DROP_CWD') == '1':\n"
    "    sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
    "sys.exit(pytest.main(sys.argv[1:]))\n"
)


@dataclass
class Counts:
    """Test counts of one or more pytest runs (from their JUnit XML reports)."""

    tests: int = 0
    passed: int = 0
    failed: int = 0  # failures and errors
    skipped: int = 0
    failed_ids: List[str] = field(default_factory=list)
    returncodes: List[int] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.tests += other.tests
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        self.failed_ids += other.failed_ids
        self.returncodes += other.returncodes


def _counts(junit: str, returncode: int) -> Counts:
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = Counts(returncodes=[returncode])
    for s in suites:
        c.tests += int(s.get("tests", 0))
        c.failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        c.skipped += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                c.failed_ids.append(f"{case.get('classname')}::{case.get('name')}")
    c.passed = c.tests - c.failed - c.skipped
    return c


def _run(
    checkout: str,
    package_dir: Optional[str],
    swap: bool,
    tests: List[str],
    pytest_args: List[str],
) -> Counts:
    env = dict(os.environ)
    path = [HERE, REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_dir is not None:
        path.insert(0, package_dir)
        env["SJP_EXPECT_SPIKINGJELLY"] = os.path.join(package_dir, "spikingjelly")
    else:
        env["SJP_EXPECT_SPIKINGJELLY"] = _installed_spikingjelly(checkout)
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["SJP_SWAP_CLASSES"] = "1" if swap else "0"
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # leave the checkout clean
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        cmd = [
            sys.executable,
            "-c",
            _BOOT,
            "-p",
            "run_sj_tests_swapped",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            *pytest_args,
            *tests,
        ]
        if package_dir is None:
            # SpikingJelly's pytest configuration puts the checkout on sys.path
            cmd[3:3] = ["-o", "pythonpath="]
            env["SJP_DROP_CWD"] = "1"
        shown = ["python", "-m", "pytest", *cmd[3:]]
        print("$", " ".join(shown), flush=True)
        proc = subprocess.run(cmd, cwd=checkout, env=env)
        if not os.path.exists(junit):
            raise SystemExit(f"pytest wrote no report (exit status {proc.returncode})")
        return _counts(junit, proc.returncode)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "checkout",
        nargs="?",
        default=os.environ.get("SJP_SPIKINGJELLY_SRC"),
        help="a SpikingJelly git checkout (default: $SJP_SPIKINGJELLY_SRC)",
    )
    ap.add_argument(
        "--package",
        choices=("checkout", "installed"),
        default="checkout",
        help="import spikingjelly from the checkout (default) or the installed one",
    )
    ap.add_argument("--suite", choices=("psn", "neuron"), default="psn")
    ap.add_argument(
        "--classes",
        choices=("both", "ours", "spikingjelly"),
        default="both",
        help="which runs to do (default both, side by side)",
    )
    args, rest = ap.parse_known_args(argv)
    if not args.checkout:
        ap.error("give a SpikingJelly checkout (or set SJP_SPIKINGJELLY_SRC)")
    checkout = os.path.abspath(args.checkout)
    if not os.path.isdir(os.path.join(checkout, "test", "activation_based")):
        ap.error(
            f"{checkout} has no test/activation_based: not a SpikingJelly checkout"
        )
    if "--" in rest:
        i = rest.index("--")
        pytest_args, tests = rest[:i], rest[i + 1 :]
    else:
        pytest_args, tests = rest, []
    if not tests:
        tests = list(PSN_TESTS if args.suite == "psn" else NEURON_FILES)
    package_dir = checkout if args.package == "checkout" else None

    print(f"tests from {checkout} (git {_git_commit(checkout) or 'unknown'})")
    results: Dict[str, Counts] = {}
    runs = {"both": (False, True), "ours": (True,), "spikingjelly": (False,)}
    # one pytest process per test file: SpikingJelly's own suite has order
    # dependencies between files (test_functional.py's weakref test fails after
    # test_checkpointing.py in one process, with SpikingJelly's classes too)
    groups: Dict[str, List[str]] = {}
    for t in tests:
        groups.setdefault(t.split("::")[0], []).append(t)
    for swap in runs[args.classes]:
        total = Counts()
        for group in groups.values():
            total.add(_run(checkout, package_dir, swap, group, pytest_args))
        results["sj_parallel" if swap else "spikingjelly"] = total

    print()
    print(f"{'classes':<14}{'tests':>7}{'passed':>8}{'failed':>8}{'skipped':>9}")
    for label, c in results.items():
        print(f"{label:<14}{c.tests:>7}{c.passed:>8}{c.failed:>8}{c.skipped:>9}")
        for name in c.failed_ids:
            print(f"    failed: {name}")
    ours = results.get("sj_parallel")
    if ours is not None and (
        ours.failed or any(rc not in (0, 5) for rc in ours.returncodes)
    ):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
