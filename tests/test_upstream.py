"""The upstream patch series for SpikingJelly (``upstream/``).

Without a SpikingJelly checkout (as in CI): every patch file is well formed (a
``git format-patch`` header with a numbered subject in SpikingJelly's
``type(scope): subject`` convention, a diffstat that lists exactly the files the
diff touches with the line counts its hunks hold), the series touches only
SpikingJelly's tree, ``upstream/README.md`` lists the patches as they are,
``upstream/check.sh`` is valid bash, pins the same commit as the README and
refuses checkouts without that commit.

With ``SJP_SPIKINGJELLY_SRC`` pointing at a SpikingJelly git checkout that contains
the pinned commit: ``git apply --check`` of each patch in turn against that commit
(in a temporary shared clone; the checkout is never written), and the whole
``upstream/check.sh --clone`` run (series applied, SpikingJelly's PSN-related tests
and the new tests, also under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO / "upstream"
CHECK = UPSTREAM / "check.sh"
PIN = "afb132264a8cbe38d0f221dcef04053e6ba134d3"

#: Where the series may write in SpikingJelly's tree.
SJ_PATHS = ("spikingjelly/", "test/", "docs/source/", "CHANGELOG.md")
SUBJECT = re.compile(r"^(feat|fix|test|docs|refactor|perf|chore)\([a-z_]+\): \S.*$")

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


class Patch(NamedTuple):
    path: Path
    number: int
    total: int
    subject: str
    stat: List[Tuple[str, int]]  # (path as the diffstat prints it, changed lines)
    stat_summary: Tuple[int, int, int]  # files, insertions, deletions
    files: List[str]  # the paths of the diff's "diff --git" headers
    changes: dict  # path -> [insertions, deletions] counted in the hunks
    added: List[str]  # the added lines


def _patch_files() -> List[Path]:
    return sorted((UPSTREAM / "patches").glob("*.patch"))


def _parse(path: Path) -> Patch:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert re.fullmatch(r"From [0-9a-f]{40} Mon Sep 17 00:00:00 2001", lines[0]), (
        f"{path.name}: not git format-patch output"
    )
    header = text[: text.index("\n\n")]
    for field in ("From: ", "Date: ", "Subject: "):
        assert f"\n{field}" in header, f"{path.name}: no {field.strip()} header"
    # the subject may be folded over several header lines
    subject_text = re.search(r"\nSubject: (.*(?:\n .*)*)", header).group(1)
    subject_text = " ".join(part.strip() for part in subject_text.split("\n"))
    m = re.fullmatch(r"\[PATCH (\d+)/(\d+)\] (.+)", subject_text)
    assert m, f"{path.name}: subject {subject_text!r} is not '[PATCH i/n] ...'"
    number, total, subject = int(m.group(1)), int(m.group(2)), m.group(3)

    # the diffstat: " path | N +-" lines, then " F files changed, ..."
    sep = lines.index("---")
    stat, summary = [], None
    for line in lines[sep + 1 :]:
        s = re.fullmatch(r" (\S.*?)\s+\|\s+(\d+) ?[+-]*", line)
        if s:
            stat.append((s.group(1), int(s.group(2))))
            continue
        s = re.fullmatch(
            r" (\d+) files? changed(?:, (\d+) insertions?\(\+\))?"
            r"(?:, (\d+) deletions?\(-\))?",
            line,
        )
        if s:
            summary = tuple(int(g or 0) for g in s.groups())
            break
    assert summary is not None, f"{path.name}: no diffstat summary"

    # the diff: file headers and hunks, with the line counts of each hunk checked
    files, changes, added = [], {}, []
    i = lines.index(next(x for x in lines if x.startswith("diff --git ")))
    current = None
    while i < len(lines):
        line = lines[i]
        d = re.fullmatch(r"diff --git a/(\S+) b/(\S+)", line)
        if d:
            assert d.group(1) == d.group(2), f"{path.name}: a rename: {line}"
            current = d.group(2)
            files.append(current)
            changes[current] = [0, 0]
            i += 1
            continue
        h = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", line)
        if h:
            old = int(h.group(1) if h.group(1) is not None else 1)
            new = int(h.group(2) if h.group(2) is not None else 1)
            i += 1
            while old or new:
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                tag = body[:1]
                assert tag in (" ", "+", "-"), f"{path.name}: bad hunk line {body!r}"
                if tag in (" ", "-"):
                    old -= 1
                if tag in (" ", "+"):
                    new -= 1
                if tag == "+":
                    changes[current][0] += 1
                    added.append(body[1:])
                elif tag == "-":
                    changes[current][1] += 1
                assert old >= 0 and new >= 0, f"{path.name}: hunk too long in {current}"
                i += 1
            continue
        i += 1
    return Patch(path, number, total, subject, stat, summary, files, changes, added)


@pytest.fixture(scope="module")
def series() -> List[Patch]:
    paths = _patch_files()
    assert paths, "upstream/patches/ holds no patches"
    return [_parse(p) for p in paths]


def test_series_is_numbered_and_named_after_its_subjects(series):
    assert len(series) >= 6
    for i, patch in enumerate(series, start=1):
        assert (patch.number, patch.total) == (i, len(series)), patch.path.name
        assert patch.path.name.startswith(f"{i:04d}-"), patch.path.name
        assert SUBJECT.match(patch.subject), patch.subject


def test_each_patch_touches_the_paths_its_diffstat_claims(series):
    for patch in series:
        name = patch.path.name
        assert patch.files and len(set(patch.files)) == len(patch.files), name
        n_files, insertions, deletions = patch.stat_summary
        assert n_files == len(patch.files) == len(patch.stat), name
        assert insertions == sum(c[0] for c in patch.changes.values()), name
        assert deletions == sum(c[1] for c in patch.changes.values()), name
        for (shown, count), path in zip(patch.stat, patch.files):
            # git abbreviates long paths as "...tail"
            if shown.startswith("..."):
                assert path.endswith(shown[3:]), (name, shown, path)
            else:
                assert shown == path, (name, shown, path)
            assert count == sum(patch.changes[path]), (name, path)


def test_series_stays_in_spikingjelly_tree_and_style(series):
    touched = set()
    for patch in series:
        for path in patch.files:
            assert path.startswith(SJ_PATHS), (patch.path.name, path)
            touched.add(path)
        for line in patch.added:
            assert "sj_parallel" not in line, (patch.path.name, line)
            assert len(line) <= 200, (patch.path.name, line[:80])
            assert line == line.rstrip(), (patch.path.name, "trailing whitespace")
    # the pieces the issue asks for
    for path in (
        "spikingjelly/activation_based/memopt/pipeline.py",
        "spikingjelly/activation_based/memopt/checkpointing.py",
        "spikingjelly/activation_based/neuron/psn.py",
        "spikingjelly/activation_based/neuron/mpe_psn.py",
        "spikingjelly/activation_based/triton_kernel/neuron_kernel/psn.py",
        "spikingjelly/activation_based/triton_kernel/neuron_kernel/mpe_psn.py",
        "test/activation_based/test_psn_triton.py",
        "test/activation_based/test_mpe_psn.py",
        "CHANGELOG.md",
        "docs/source/changelog.rst",
    ):
        assert path in touched, path
    # the changelog page is regenerated in every patch that changes the changelog
    for patch in series:
        if "CHANGELOG.md" in patch.files:
            assert "docs/source/changelog.rst" in patch.files, patch.path.name


def test_memopt_opt_out_and_mpe_psn_are_separate_patches(series):
    by_file = {}
    for patch in series:
        for path in patch.files:
            by_file.setdefault(path, []).append(patch.number)
    mpe = set(by_file["spikingjelly/activation_based/neuron/mpe_psn.py"])
    assert len(mpe) == 1
    (mpe_patch,) = mpe
    assert mpe_patch not in by_file["spikingjelly/activation_based/memopt/pipeline.py"]
    assert (
        mpe_patch
        not in by_file[
            "spikingjelly/activation_based/triton_kernel/neuron_kernel/psn.py"
        ]
    )
    opt_out = series[by_file["spikingjelly/activation_based/memopt/pipeline.py"][0] - 1]
    assert any('getattr(m, "__temporal_split__", True) is False' in line
               for line in opt_out.added)  # fmt: skip
    assert sum("__temporal_split__ = False" in line for line in opt_out.added) >= 3


def test_readme_lists_the_patches_and_the_pinned_commit(series):
    readme = (UPSTREAM / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `(.+?)` \|", readme, flags=re.M)
    assert [(int(n), s) for n, s in rows] == [(p.number, p.subject) for p in series]
    assert PIN in readme
    assert "upstream/README.md" in (REPO / "UPSTREAMING.md").read_text(encoding="utf-8")


def _added_file(series: List[Patch], path: str) -> str:
    """The text a patch adds as the new file ``path``."""
    for patch in series:
        text = patch.path.read_text(encoding="utf-8")
        m = re.search(
            rf"^diff --git a/{re.escape(path)} b/{re.escape(path)}\nnew file mode \d+\n"
            r"index \S+\n--- /dev/null\n\+\+\+ b/.*?\n@@ .*? @@\n((?:\+.*\n)+)",
            text,
            flags=re.M,
        )
        if m:
            return "".join(line[1:] + "\n" for line in m.group(1).splitlines())
    raise AssertionError(f"no patch adds {path}")


def test_mpe_psn_patch_pins_sj_parallels_counter_hash(series):
    """The counter-hash values pinned in the series' MPE-PSN test are those of
    sj_parallel.reference: the same seed draws the same samples in both projects."""
    import torch

    from sj_parallel import reference

    source = _added_file(series, "test/activation_based/test_mpe_psn.py")
    seed = eval(re.search(r"^SEED = (\(.+\))$", source, flags=re.M).group(1))
    body = source[source.index("def test_mpe_psn_counter_hash_values") :]
    indices = eval(re.search(r"indices = (\[.+?\])", body, flags=re.S).group(1))
    expected = eval(re.search(r"expected = (\[.+?\])", body, flags=re.S).group(1))
    assert len(indices) == len(expected) >= 8 and max(indices) >= 2**32
    u = reference.hash_uniform(seed, torch.tensor(indices), torch.float64)
    assert [int(v * 2**24) for v in u] == expected


@needs_bash
def test_check_script_is_valid_bash_and_pins_the_commit():
    r = subprocess.run(["bash", "-n", str(CHECK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^PIN={PIN}$", CHECK.read_text(), flags=re.M)
    assert os.access(CHECK, os.X_OK)


def _git(cwd, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@localhost")  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, check=True
    )


@needs_git
@needs_bash
def test_check_script_refuses_a_checkout_without_the_pinned_commit(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    r = subprocess.run(["bash", str(CHECK), str(plain)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a git checkout" in r.stderr

    repo = tmp_path / "other"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("not SpikingJelly\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "init")
    r = subprocess.run(["bash", str(CHECK), str(repo)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"does not contain the pinned commit {PIN}" in r.stderr
    assert _git(repo, "worktree", "list").stdout.count("\n") == 1  # nothing added

    r = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True)
    assert r.returncode == 2 and "SJ_CHECKOUT" in r.stderr


def _spikingjelly_checkout() -> str:
    src = os.environ.get("SJP_SPIKINGJELLY_SRC")
    if not src:
        pytest.skip("set SJP_SPIKINGJELLY_SRC=<a SpikingJelly git checkout>")
    if shutil.which("git") is None or shutil.which("bash") is None:
        pytest.skip("needs git and bash")
    r = subprocess.run(
        ["git", "-C", src, "cat-file", "-e", f"{PIN}^{{commit}}"], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"SJP_SPIKINGJELLY_SRC={src} has no commit {PIN}")
    return src


def test_series_applies_to_the_pinned_commit(tmp_path):
    src = _spikingjelly_checkout()
    clone = tmp_path / "spikingjelly"
    _git(tmp_path, "clone", "-q", "--shared", "--no-checkout", src, str(clone))
    _git(clone, "read-tree", PIN)
    for patch in _patch_files():
        r = subprocess.run(
            ["git", "apply", "--cached", "--check", str(patch)],
            cwd=clone,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"{patch.name}: {r.stderr}"
        _git(clone, "apply", "--cached", str(patch))


_SAME_DRAWS = """
import torch
import sj_parallel as sjp
from spikingjelly.activation_based import neuron

assert neuron.__file__.startswith({tree!r}), neuron.__file__
for wiring in ("previous", "current"):
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        ours = sjp.MPEPSN(6, estimate_from=wiring, step_mode="m")
        theirs = neuron.MPEPSN(6, estimate_from=wiring, step_mode="m", backend=backend)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(6, 3, 50)
        outs = []
        for m in (ours, theirs):
            torch.manual_seed(1)
            outs.append((m(x[:2]), m(x[2:]), m.seed, m.mem_loss))
        assert outs[0][2] == outs[1][2]
        assert torch.equal(outs[0][0], outs[1][0])
        assert torch.equal(outs[0][1], outs[1][1])
        torch.testing.assert_close(outs[1][3], outs[0][3])
print("same draws")
"""


def test_patched_mpe_psn_draws_what_sj_parallel_draws(tmp_path):
    """SpikingJelly's MPEPSN (the series applied) and sj_parallel's, seeded alike,
    draw the same samples and spike alike, in both wirings and both of the series'
    backends (Triton through its interpreter)."""
    src = _spikingjelly_checkout()
    tree = tmp_path / "spikingjelly"
    _git(tmp_path, "clone", "-q", "--shared", "--no-checkout", src, str(tree))
    _git(tree, "checkout", "-q", "--detach", PIN)
    _git(tree, "am", "-q", *map(str, _patch_files()))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tree), str(REPO)]),
        TRITON_INTERPRET="1",
    )
    r = subprocess.run(
        [sys.executable, "-c", _SAME_DRAWS.format(tree=str(tree))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0 and "same draws" in r.stdout, r.stderr[-3000:]


def test_check_script_passes_on_the_checkout(tmp_path):
    src = _spikingjelly_checkout()
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    r = subprocess.run(
        ["bash", str(CHECK), "--clone", src],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "== all checks passed" in r.stdout
