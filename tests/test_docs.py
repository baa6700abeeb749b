"""The documentation runs as written (issue 18, item 4).

Every Python block of README.md, docs/**/*.md, docs/**/*.rst and examples/**/*.md is
executed with Sybil (https://sybil.readthedocs.io), as a user pastes it:

* each block runs on its own, in a fresh namespace, so it needs its own imports;
* a block that is deliberately a fragment (a training loop that uses the reader's
  ``net`` and ``loader``) is preceded by its set-up, an invisible code block in an
  HTML comment (``<!-- invisible-code-block: python ... -->``); the names it defines
  are what the fragment sees, and nothing else;
* the only skips are conditional, Sybil's ``<!-- skip: next if(not SJ2,
  reason="...") -->``, for blocks about SpikingJelly 2.0's own PSN classes (``SJ2``
  is true on SpikingJelly 2.x).

New pages are picked up by the globs. Shell blocks that name a run of the examples,
the doctor, the benchmarks or the scripts are parsed by the programs' own argument
parsers, and the example runs without a dataset are run at the smallest settings.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil")  # the dev extra installs it
from sybil import Sybil  # noqa: E402
from sybil.parsers import myst, rest  # noqa: E402

from sj_parallel import _compat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GLOBS = ("README.md", "docs/**/*.md", "docs/**/*.rst", "examples/**/*.md")


def doc_files():
    files = set()
    for pattern in GLOBS:
        for p in ROOT.glob(pattern):
            if "_build" not in p.parts:
                files.add(p)
    return sorted(files)


DOCS = doc_files()


class BlockByBlock:
    """Wrap a code-block parser so that every visible block runs in a fresh
    namespace holding only what the invisible set-up blocks just before it
    defined."""

    def __init__(self, parser):
        self.parser = parser

    def __call__(self, document):
        for region in self.parser(document):
            inner = region.evaluator
            invisible = "invisible" in str(region.lexemes.get("directive") or "")
            region.evaluator = functools.partial(self._run, inner, invisible)
            yield region

    @staticmethod
    def _run(inner, invisible, example):
        doc = example.document
        pending = getattr(doc, "_setup_namespace", None)
        if pending is None:
            pending = {}
        fresh = {"__name__": "__doc_block__"}
        fresh.update(pending)
        example.namespace = fresh
        try:
            result = inner(example)
        finally:
            if invisible:  # set-up: its names flow into the next visible block
                doc._setup_namespace = fresh
            else:
                doc._setup_namespace = None
        return result


def _setup(namespace):
    namespace["SJ2"] = _compat.SJ_HAS_FUNCTIONAL_API


SYBIL = Sybil(
    parsers=[
        BlockByBlock(myst.PythonCodeBlockParser()),
        BlockByBlock(rest.PythonCodeBlockParser()),
        myst.SkipParser(),
    ],
    patterns=["*.md", "*.rst"],
    path="..",
    setup=_setup,
)


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    doc = SYBIL.parse(path)
    _setup(doc.namespace)  # what the conditional skips see
    skipped = []
    for example in doc:
        try:
            example.evaluate()
        except unittest.SkipTest as e:  # that block only; the others still run
            skipped.append(str(e))
    # every conditional skip is about SpikingJelly 0.0.0.0.14: all run on 2.x
    assert not (skipped and _compat.SJ_HAS_FUNCTIONAL_API), skipped


PY_FENCE = re.compile(r"^[ \t]*(```|~~~)\s*(\{code-block\}\s*)?python\s*$", re.M)
RST_BLOCK = re.compile(r"^\s*\.\. (code-block|code|sourcecode):: python\s*$", re.M)


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_every_python_block_is_collected(path):
    """No Python block escapes the runner (a ``py``/``python3`` fence would), and no
    block is skipped unconditionally."""
    text = path.read_text()
    fences = len(PY_FENCE.findall(text)) + len(RST_BLOCK.findall(text))
    other = re.findall(r"^[ \t]*```\s*(py|python3|pycon|ipython)\s*$", text, re.M)
    assert not other, f"{path}: use ```python fences, found {other}"
    doc = SYBIL.parse(path)
    visible = [
        e
        for e in doc
        if "invisible" not in str(e.region.lexemes.get("directive") or "")
        and e.region.lexemes.get("source") is not None
    ]
    assert len(visible) == fences, (path, len(visible), fences)
    for m in re.finditer(r"skip:\s*(\S+)(.*)", text):
        assert m.group(1) == "next" and m.group(2).strip().startswith("if("), (
            f"{path}: only conditional skips (skip: next if(...)) are allowed: "
            f"{m.group(0)}"
        )


def test_the_main_pages_are_covered():
    names = set(_ids(DOCS))
    for page in ("README.md", "docs/quickstart.md", "docs/neurons/psn.md",
                 "docs/mpe_training.md", "examples/dvs_gesture/README.md"):  # fmt: skip
        assert page in names
    total = sum(
        len(PY_FENCE.findall(p.read_text())) + len(RST_BLOCK.findall(p.read_text()))
        for p in DOCS
    )
    assert total >= 20


# -------------------------------------------------------------- shell commands
def _shell_blocks(text: str):
    return re.findall(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", text, re.M | re.S)


def _commands(block: str):
    """Commands of a shell block: continuation lines joined, comments dropped,
    ``&&`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            part = part.strip()
            if part:
                yield shlex.split(part)


def _runs(argv):
    """``(program, args)`` for a command that names one of our programs."""
    if not argv:
        return None
    if argv[0] in ("python", "python3") and len(argv) > 1:
        if argv[1] == "-m" and argv[2:3] == ["sj_parallel"]:
            return "sj_parallel", argv[3:]
        return argv[1], argv[2:]
    if argv[0] == "bash" and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[0] == "torchrun":
        rest = argv[1:]
        while rest and rest[0].startswith("--"):
            rest = rest[2:] if "=" not in rest[0] else rest[1:]
        return (rest[0], rest[1:]) if rest else None
    return None


def _synthetic_base():
    """The fixed arguments run_synthetic.sh passes to train.py."""
    text = (ROOT / "examples/dvs_gesture/run_synthetic.sh").read_text()
    cmd = re.search(r"exec python examples/dvs_gesture/train\.py(.*?)\"\$@\"", text,
                    re.S).group(1)  # fmt: skip
    return shlex.split(cmd.replace("\\\n", " "))


def _parser_for(program: str):
    """A function that parses (and validates) a program's arguments, or None for a
    program that is not ours."""
    sys.path.insert(0, str(ROOT / "examples" / "dvs_gesture"))
    try:
        if program in ("examples/dvs_gesture/train.py",
                       "examples/dvs_gesture/run_synthetic.sh"):  # fmt: skip
            import train as dvs

            base = _synthetic_base() if program.endswith(".sh") else []
            return lambda args: dvs.parse_args(base + args)
        if program == "examples/sequential_cifar/train.py":
            sys.path.insert(0, str(ROOT / "examples" / "sequential_cifar"))
            import importlib.util

            spec = importlib.util.spec_from_file_location(
                "seq_train", ROOT / "examples/sequential_cifar/train.py"
            )
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod.parse_args
        if program == "sj_parallel":
            from sj_parallel.__main__ import _parser

            return _parser().parse_args
    finally:
        while str(ROOT / "examples" / "dvs_gesture") in sys.path:
            sys.path.remove(str(ROOT / "examples" / "dvs_gesture"))
    return None


def _documented_runs():
    out = []
    for path in DOCS:
        for block in _shell_blocks(path.read_text()):
            for argv in _commands(block):
                run = _runs(argv)
                if run is None:
                    continue
                program, args = run
                if program.startswith(("examples/", "benchmarks/", "scripts/", ".ci/"))\
                        or program == "sj_parallel":  # fmt: skip
                    out.append((path.relative_to(ROOT), program, args))
    return out


RUNS = _documented_runs()


@functools.cache
def _help(program: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / program), "--help"], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_documented_commands_exist_and_parse():
    """Every documented run of our programs names a file that exists and arguments
    its parser accepts (e.g. the quick start's `--neuron mpe-psn --loss tet` was
    refused by train.py)."""
    assert len(RUNS) >= 15, RUNS
    for where, program, args in RUNS:
        if program != "sj_parallel":
            assert (ROOT / program).exists(), (where, program)
        parse = _parser_for(program)
        if parse is not None:
            try:
                parse(args)
            except SystemExit as e:
                raise AssertionError(f"{where}: `{program} {' '.join(args)}` is "
                                     f"refused (exit {e.code})") from None  # fmt: skip
        elif program.endswith(".py"):  # its --help works and names every option
            proc = _help(program)
            assert proc.returncode == 0, (where, program, proc.stderr[-2000:])
            own = args[: args.index("--")] if "--" in args else args
            for flag in [a.split("=")[0] for a in own if a.startswith("--")]:
                assert flag in proc.stdout, (where, program, flag)


#: the smallest settings of the example runs (appended: the last value wins)
TINY_DVS = ["-T", "4", "--img-size", "16", "--channels", "4", "--hidden", "32", "-b",
            "8", "--no-progress", "--synthetic-train", "2", "--synthetic-test", "1",
            "--synthetic-events", "300", "--epochs", "1"]  # fmt: skip
TINY_SEQ = ["--img-size", "8", "--channels", "4", "--fake-train", "16",
            "--fake-test", "8", "--epochs", "1", "-b", "8",
            "--no-progress"]  # fmt: skip


def _local_runs():
    """Documented example runs that need no dataset, each combination once."""
    seen, out = set(), []
    for where, program, args in RUNS:
        if (
            not program.startswith("examples/")
            or "train" not in program
            and (not program.endswith("run_synthetic.sh"))
        ):
            continue
        if any(a.startswith("--data-dir") or a == "--download" for a in args):
            continue
        key = (program, tuple(args))
        if key not in seen:
            seen.add(key)
            out.append((where, program, args))
    return out


LOCAL = _local_runs()


@pytest.mark.parametrize(
    "where,program,args", LOCAL, ids=[" ".join([p, *a]) for _, p, a in LOCAL]
)
def test_documented_example_runs_at_the_smallest_settings(
    where, program, args, tmp_path_factory, tmp_path
):
    cache = tmp_path_factory.getbasetemp() / "doc_runs_cache"
    out = ["--out-dir", str(tmp_path / "run"), "--overwrite"]
    if program.startswith("examples/dvs_gesture/"):
        sys.path.insert(0, str(ROOT / "examples" / "dvs_gesture"))
        import train as dvs

        base = _synthetic_base() if program.endswith(".sh") else []
        argv = base + args + TINY_DVS + ["--cache-dir", str(cache)] + out
        if "cifar10dvs" in args:  # the stand-in needs frames of at least 16 pixels
            argv += ["--img-size", "16"]
        assert dvs.main(argv) == 0
    else:
        parse = _parser_for(program)
        assert parse is not None
        import importlib.util

        spec = importlib.util.spec_from_file_location("seq_train_run", ROOT / program)
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(ROOT / "examples" / "sequential_cifar"))
        spec.loader.exec_module(mod)
        assert mod.main(args + TINY_SEQ + out) == 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------ times (item 5)
def test_stated_times_agree():
    """README, the quick start, the example's README and the scripts state the same
    times; the example's script lets idle OpenMP threads sleep (spinning threads made
    a busy 2-core machine 4x slower)."""
    script = (ROOT / "examples/dvs_gesture/run_synthetic.sh").read_text()
    assert 'export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"' in script
    assert "about a minute on 2 cores" in script
    claims = {
        "README.md": "the training takes about a minute on 2 cores",
        "docs/quickstart.md": "# PSN, CPU, about a minute",
        "examples/dvs_gesture/README.md": "# PSN, CPU, about 1 minute",
    }
    for name, claim in claims.items():
        text = (ROOT / name).read_text()
        assert claim in text, name
        assert not re.search(r"few minutes|couple of minutes|~1 minute", text), name
    bench = (ROOT / "benchmarks/bench.py").read_text()
    page = (ROOT / "docs/benchmarks.md").read_text()
    assert "--quick            # about 30 s on 2 CPU cores" in bench
    assert "--quick                 # about 30 s on 2 cores" in page
    assert "28 s wall" in page and "load average" in page
