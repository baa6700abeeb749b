"""SpikingJelly master as a supported version (issue 19 items 2 and 3).

* Our neurons opt out of being split in time (``__temporal_split__ = False``) and
  SpikingJelly master's memory optimiser honours that, whichever of the two is
  imported first (:mod:`sj_parallel._memopt`). The mechanism is tested here on every
  SpikingJelly version against a module with master's interface; the tests against
  master itself run when the suite runs on master
  (``SJP_SPIKINGJELLY_SRC=/path/to/spikingjelly python -m pytest``).
* ``SJP_SPIKINGJELLY_SRC`` (``tests/conftest.py``) and the SpikingJelly version/commit
  detection in ``sj_parallel._compat``.
* ``scripts/run_sj_tests_swapped.py``: SpikingJelly's own tests with our classes
  swapped in (on a small stand-in checkout here; on the real one when
  ``SJP_SPIKINGJELLY_SRC`` is a SpikingJelly git checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron

import sj_parallel as sjp
from sj_parallel import _compat, _memopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "scripts", "run_sj_tests_swapped.py")

try:
    from spikingjelly.activation_based.memopt import pipeline as _sj_pipeline

    SJ_MEMOPT_LIST = isinstance(
        getattr(_sj_pipeline, "TCGC_FORBIDDEN_MODULES", None), list
    )
except ImportError:  # SpikingJelly 0.0.0.0.14 has no memopt
    _sj_pipeline = None
    SJ_MEMOPT_LIST = False

needs_master_memopt = pytest.mark.skipif(
    not SJ_MEMOPT_LIST,
    reason=f"{_compat.describe_spikingjelly()} has no memopt.pipeline."
    "TCGC_FORBIDDEN_MODULES (SpikingJelly master has; run the suite with "
    "SJP_SPIKINGJELLY_SRC=<master checkout>)",
)


def _ours(T=4):
    return [
        sjp.PSN(T),
        sjp.MaskedPSN(2, T, step_mode="m"),
        sjp.SlidingPSN(3, step_mode="m"),
        sjp.MPEPSN(T, step_mode="m"),
    ]


def _python(code: str, cwd: str = ROOT, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_WAIT_POLICY="passive", **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------ the opt-out marker
def test_marker_is_the_opt_out_attribute():
    for m in _ours():
        assert m.__temporal_split__ is False
        assert isinstance(m, _memopt.NoTemporalSplit)
        assert not _memopt.allows_temporal_split(m)
    for m in (torch.nn.Linear(2, 2), neuron.IFNode(), layer.Linear(2, 2)):
        assert not isinstance(m, _memopt.NoTemporalSplit)
        assert _memopt.allows_temporal_split(m)

    class Mine(torch.nn.Module):  # anyone's module can opt out
        __temporal_split__ = False

    class Splittable(sjp.SlidingPSN):  # and a subclass can opt back in
        __temporal_split__ = True

    assert isinstance(Mine(), _memopt.NoTemporalSplit)
    assert issubclass(Mine, _memopt.NoTemporalSplit)
    assert not isinstance(Splittable(2), _memopt.NoTemporalSplit)
    assert not issubclass(Splittable, _memopt.NoTemporalSplit)
    one = torch.nn.Linear(2, 2)
    one.__temporal_split__ = False  # or a single instance
    assert isinstance(one, _memopt.NoTemporalSplit)
    # in a tuple, as memopt asks: isinstance(m, tuple(TCGC_FORBIDDEN_MODULES))
    assert isinstance(sjp.PSN(2), (torch.nn.LSTM, _memopt.NoTemporalSplit))


# A module with master's interface: the list and the check exactly as master's
# memopt/pipeline.py writes them (commit afb132264a8cbe38d0f221dcef04053e6ba134d3).
_STAND_IN = """
import torch.nn as nn

TCGC_FORBIDDEN_MODULES = [nn.LSTM]


def _cannot_temporally_split(block):
    for m in block.modules():
        if isinstance(m, tuple(TCGC_FORBIDDEN_MODULES)):
            return True
    return False
"""


def test_registration_whichever_is_imported_first(tmp_path):
    """In a fresh interpreter: the list's module imported before ``install``,
    after it, and reloaded; a module without the list is left alone; installing
    twice adds one hook and one marker."""
    for name in ("pipe_before", "pipe_after", "pipe_reload"):
        (tmp_path / f"{name}.py").write_text(_STAND_IN)
    (tmp_path / "pipe_other.py").write_text("X = 1\n")
    code = """
    import importlib, sys, torch
    import pipe_before
    from sj_parallel import _memopt
    import sj_parallel as sjp

    ours = [sjp.PSN(4), sjp.MaskedPSN(2, 4), sjp.SlidingPSN(2), sjp.MPEPSN(4)]
    seq = lambda m: torch.nn.Sequential(torch.nn.Linear(2, 2), m)
    lin = torch.nn.Sequential(torch.nn.Linear(2, 2))

    assert _memopt.install("pipe_before") is True          # already imported
    assert _memopt.install("pipe_after") is None            # hook, imported later
    assert _memopt.install("pipe_reload") is None
    assert _memopt.install("pipe_other") is None
    _memopt.install("pipe_after")                           # twice: one hook
    assert sum(getattr(f, "name", "") == "pipe_after" for f in sys.meta_path) == 1
    import pipe_after, pipe_reload, pipe_other
    assert not hasattr(pipe_other, "TCGC_FORBIDDEN_MODULES")
    assert _memopt.register(pipe_other) is False
    pipe_reload = importlib.reload(pipe_reload)             # a new list
    for mod in (pipe_before, pipe_after, pipe_reload):
        assert mod.TCGC_FORBIDDEN_MODULES[0] is torch.nn.LSTM
        assert mod.TCGC_FORBIDDEN_MODULES.count(_memopt.NoTemporalSplit) == 1
        assert all(mod._cannot_temporally_split(seq(m)) for m in ours)
        assert not mod._cannot_temporally_split(lin)
    _memopt.install("pipe_before")
    assert pipe_before.TCGC_FORBIDDEN_MODULES.count(_memopt.NoTemporalSplit) == 1
    # the hooked module still has its source for inspect/tracebacks
    import inspect
    assert "TCGC_FORBIDDEN_MODULES" in inspect.getsource(pipe_after)
    print("ok")
    """
    pythonpath = os.pathsep.join(
        [str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")]
    )
    r = _python(code, PYTHONPATH=pythonpath)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_sj_parallel_installs_the_hook_at_import():
    hooks = [f for f in sys.meta_path if getattr(f, "name", None) == _memopt.PIPELINE]
    assert len(hooks) == 1
    if SJ_MEMOPT_LIST:
        assert _memopt.NoTemporalSplit in _sj_pipeline.TCGC_FORBIDDEN_MODULES


# ------------------------------------------------------- against SpikingJelly master
_MASTER_ORDER = """
import torch
order = {order!r}
if order == "memopt_first":
    from spikingjelly.activation_based.memopt import pipeline
    import sj_parallel as sjp
else:
    import sj_parallel as sjp
    from spikingjelly.activation_based.memopt import pipeline
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.memopt import GCContainer

ours = [sjp.PSN(4), sjp.MaskedPSN(2, 4, step_mode="m"),
        sjp.SlidingPSN(3, step_mode="m"), sjp.MPEPSN(4, step_mode="m")]
for m in ours:
    block = GCContainer(None, torch.nn.Linear(3, 3), m)
    assert pipeline._cannot_temporally_split(block), type(m).__name__
    assert pipeline._temporally_split_gc_container(block, 2) is None
lif = GCContainer(None, torch.nn.Linear(3, 3), neuron.LIFNode(step_mode="m"))
split = pipeline._temporally_split_gc_container(lif, 2)
assert split is not None and split.n_chunk == 2
print("ok", order)
"""


@needs_master_memopt
@pytest.mark.parametrize("order", ["memopt_first", "sj_parallel_first"])
def test_master_memopt_never_splits_ours_in_either_import_order(order):
    r = _python(_MASTER_ORDER.format(order=order))
    assert r.returncode == 0 and r.stdout.strip() == f"ok {order}", r.stderr[-3000:]


class _Block(torch.nn.Sequential):
    """A checkpointing target: a linear layer and a neuron, multi-step."""

    def __init__(self, node):
        super().__init__(layer.Linear(3, 3, step_mode="m"), node)


@needs_master_memopt
@pytest.mark.parametrize("which", range(4))
def test_master_memory_optimization_two_chunk_split_leaves_ours_whole(
    which, monkeypatch
):
    """``memory_optimization(level=3, temporal_split_factor=2)`` with the memory
    probes faked as SpikingJelly's own tests fake them (they measure CUDA memory)
    and set so that every split looks profitable: the LIF block is cut into two
    chunks, ours stays whole and computes what it computed before."""
    from spikingjelly.activation_based import memopt
    from spikingjelly.activation_based.memopt import GCContainer, TCGCContainer

    pipeline = _sj_pipeline
    monkeypatch.setattr(pipeline, "resolve_device", lambda: "cpu")
    peaks = iter(range(100, 0, -10))  # each trial "saves memory"
    monkeypatch.setattr(
        pipeline, "_train_peak_memory", lambda *a, **k: (next(peaks),) * 2
    )

    def profile(net, *args, **kwargs):
        rows = [
            (f"GCContainer {name}", 0.0)
            for name, m in net.named_modules()
            if type(m) is GCContainer
        ]
        return (rows, 100, 100) if kwargs.get("return_peak") else rows

    monkeypatch.setattr(pipeline, "_train_memory_profile", profile)
    torch.manual_seed(which)
    ours = _Block(_ours()[which])
    net = torch.nn.Sequential(_Block(neuron.LIFNode(step_mode="m")), ours)
    functional.set_step_mode(net, "m")
    net.eval()
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        expect = net(x)
    functional.reset_net(net)
    optimized = memopt.memory_optimization(
        net,
        _Block,
        dummy_input=(x,),
        compress_x=False,
        level=3,
        temporal_split_factor=2,
        warmup_in_main_process=False,
    )
    assert isinstance(optimized[0], TCGCContainer) and optimized[0].n_chunk == 2
    assert type(optimized[1]) is GCContainer
    assert not any(isinstance(m, TCGCContainer) for m in optimized[1].modules())
    functional.reset_net(optimized)
    with torch.no_grad():
        got = optimized(x)
    assert torch.equal(got, expect)


# --------------------------------------------------- SJP_SPIKINGJELLY_SRC, versions
def _source_tree(tmp_path):
    """A SpikingJelly source tree: the imported package copied next to a
    pyproject.toml, committed to git."""
    tree = tmp_path / "sj-src"
    shutil.copytree(
        _compat.SJ_PATH,
        tree / "spikingjelly",
        ignore=shutil.ignore_patterns("__pycache__", "examples", "datasets"),
    )
    (tree / "pyproject.toml").write_text(
        '[project]\nname = "spikingjelly"\nversion = "9.9.9.dev7"\n'
    )
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "tree"], check=True)
    commit = subprocess.run(
        git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return tree, commit


def test_spikingjelly_src_puts_a_source_tree_first_and_names_its_commit(tmp_path):
    if not shutil.which("git"):
        pytest.fail("git is needed to make a SpikingJelly source tree")
    tree, commit = _source_tree(tmp_path)
    # the suite's conftest next to a probe test, run as the suite runs
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), run / "conftest.py")
    (run / "test_probe.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            import spikingjelly
            from sj_parallel import _compat

            def test_source_tree_is_used():
                src = os.environ["SJP_SPIKINGJELLY_SRC"]
                assert spikingjelly.__file__.startswith(src)
                assert _compat.SJ_VERSION == "9.9.9.dev7" and _compat.SJ_FROM_SOURCE
                out = subprocess.run(
                    [sys.executable, "-c",
                     "import spikingjelly; print(spikingjelly.__file__)"],
                    capture_output=True, text=True, check=True,
                ).stdout
                assert out.startswith(src)  # subprocesses too
            """
        )
    )
    pythonpath = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env = dict(
        os.environ,
        SJP_SPIKINGJELLY_SRC=str(tree),
        PYTHONPATH=pythonpath,
        OMP_WAIT_POLICY="passive",
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_probe.py"]
    r = subprocess.run(
        cmd, cwd=run, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    header = f"spikingjelly 9.9.9.dev7 from source {tree}/spikingjelly (git {commit})"
    assert header in r.stdout
    assert f"[SJP_SPIKINGJELLY_SRC={tree}]" in r.stdout
    # a path that is not a SpikingJelly tree is refused, saying what to give
    env["SJP_SPIKINGJELLY_SRC"] = str(run)
    r = subprocess.run(
        cmd, cwd=run, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode != 0
    assert "no spikingjelly/__init__.py there" in r.stdout + r.stderr


def test_installed_version_is_the_wheels():
    if _compat.SJ_FROM_SOURCE:
        assert _compat.SJ_COMMIT is None or len(_compat.SJ_COMMIT) == 40
        assert "from source" in _compat.describe_spikingjelly()
    else:
        from importlib.metadata import version

        assert _compat.SJ_VERSION == version("spikingjelly")
        assert _compat.SJ_COMMIT is None
    report = sjp.doctor(nvrtc_compile=False, run_ops=False)
    assert report["versions"]["spikingjelly"] == _compat.SJ_VERSION


# ------------------------------------------- SpikingJelly's tests, our classes in
_PROBE = """
import os

from spikingjelly.activation_based import neuron

import sj_parallel as sjp

SWAPPED = os.environ["SJP_SWAP_CLASSES"] == "1"


def test_the_names_are_swapped_or_not():
    for name in ("PSN", "MaskedPSN", "SlidingPSN"):
        assert (getattr(neuron, name, None) is getattr(sjp, name)) == SWAPPED


def test_fails_with_our_classes():
    assert not SWAPPED


def test_memopt_was_imported_before_the_swap():
    try:
        from spikingjelly.activation_based.memopt import pipeline
    except ImportError:
        return
    forbidden = getattr(pipeline, "TCGC_FORBIDDEN_MODULES", [])
    assert sjp.PSN not in forbidden and sjp.SlidingPSN not in forbidden
"""


def _run_runner(*args, **env):
    full_env = dict(os.environ, OMP_WAIT_POLICY="passive", **env)
    return subprocess.run(
        [sys.executable, RUNNER, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_runner_swaps_our_classes_in_and_counts(tmp_path):
    checkout = tmp_path / "spikingjelly-checkout"
    tests = checkout / "test" / "activation_based"
    tests.mkdir(parents=True)
    (tests / "test_probe.py").write_text(_PROBE)
    r = _run_runner(
        str(checkout), "--package", "installed", "--", "test/activation_based"
    )
    out = r.stdout
    assert r.returncode == 1, out[-3000:] + r.stderr[-3000:]
    assert "swapped into spikingjelly.activation_based.neuron" in out
    assert "SpikingJelly's own classes (no swap)" in out
    table = out[out.rindex("classes ") :].splitlines()
    assert table[1].split() == ["spikingjelly", "3", "3", "0", "0"]
    assert table[2].split() == ["sj_parallel", "3", "2", "1", "0"]
    assert table[3].strip().endswith("test_probe::test_fails_with_our_classes")
    r = _run_runner(str(tmp_path))
    assert r.returncode == 2 and "not a SpikingJelly checkout" in r.stderr


def _sj_checkout():
    src = os.environ.get("SJP_SPIKINGJELLY_SRC")
    test = "test/activation_based/test_functional_neuron.py"
    if not src or not os.path.isfile(os.path.join(src, test)):
        pytest.skip(
            "needs SJP_SPIKINGJELLY_SRC=<a SpikingJelly git checkout with its "
            "test/ directory> (SpikingJelly master)"
        )
    return src


def test_spikingjelly_psn_tests_pass_with_our_classes_swapped_in():
    """SpikingJelly's own PSN tests on its own package (master), both ways."""
    src = _sj_checkout()
    r = _run_runner(src, "-q")
    out = r.stdout
    assert r.returncode == 0, out[-5000:] + r.stderr[-3000:]
    table = out[out.rindex("classes ") :].splitlines()
    assert table[1].split() == ["spikingjelly", "3", "3", "0", "0"]
    assert table[2].split() == ["sj_parallel", "3", "3", "0", "0"]


def test_spikingjelly_step_function_tests_pass_on_the_installed_package():
    """The same tests' step-function half on the installed SpikingJelly (2.0.0;
    the memopt test needs master's memopt)."""
    src = _sj_checkout()
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    pythonpath = os.pathsep.join(p for p in paths if p and p != src)
    probe = _python(
        "import spikingjelly.activation_based.functional as f;"
        "print(hasattr(f, 'sliding_psn_step'))",
        PYTHONPATH=pythonpath,
    )
    if probe.stdout.strip() != "True":
        pytest.skip("the installed SpikingJelly has no functional.sliding_psn_step")
    tests = [t for t in _runner_psn_tests() if "test_functional_neuron" in t]
    r = _run_runner(
        src, "--package", "installed", "-q", "--", *tests, PYTHONPATH=pythonpath
    )
    out = r.stdout
    assert r.returncode == 0, out[-5000:] + r.stderr[-3000:]
    assert "spikingjelly from " + os.path.dirname(src) not in out
    table = out[out.rindex("classes ") :].splitlines()
    assert table[2].split() == ["sj_parallel", "2", "2", "0", "0"]


def _runner_psn_tests():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sj_runner", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # for its dataclass
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return list(mod.PSN_TESTS)
