"""The documentation site and the README's facts (issue 18, item 7).

* The built HTML renders math without a network: MathJax comes from the
  ``sphinx-mathjax-offline`` package into ``_static/mathjax`` and no page loads a
  script from elsewhere.
* The example programs' pages are part of the site, reachable from the index.
* README's API table shows the real signatures (``surrogate_function=None``, which
  means ``ATan()``) and every public helper, ``set_memory`` included.
* MPE-PSN is cited the same way everywhere (ICASSP 2025, arXiv 2409.04978).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sj_parallel as sjp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", "-d",
         str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "html"


def _scripts(page: Path):
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page.read_text())


def test_math_renders_offline(site):
    pages = sorted(site.rglob("*.html"))
    with_math = [p for p in pages if 'class="math' in p.read_text()]
    assert len(with_math) >= 5  # the neuron pages, MPE-PSN training, the API
    for page in pages:
        for src in _scripts(page):
            assert not re.match(r"(https?:)?//", src), f"{page.name} loads {src}"
    for page in with_math:
        srcs = [s for s in _scripts(page) if "mathjax" in s.lower()]
        assert srcs, f"{page.name} has math but no MathJax"
        for src in srcs:
            local = (page.parent / src.split("?")[0]).resolve()
            assert local.is_file(), (page.name, src)
    mathjax = site / "_static" / "mathjax"
    core = (mathjax / "tex-chtml.js").read_text(errors="replace")
    assert "MathJax" in core and len(core) > 100_000
    fonts = list((mathjax / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's fonts are missing"
    page = (site / "neurons" / "psn.html").read_text()
    assert r"\Theta" in page  # the TeX is there for MathJax to typeset


def test_example_pages_are_reachable(site):
    index = (site / "index.html").read_text()
    for page in ("examples/dvs_gesture.html", "examples/sequential_cifar.html"):
        assert f'href="{page}"' in index
        text = (site / page).read_text()
        assert "run_synthetic.sh" in text or "sequential" in text.lower()
    dvs = (site / "examples" / "dvs_gesture.html").read_text()
    assert 'href="../reproduce.html' in dvs  # links into the site resolve


# ------------------------------------------------------------ README's API table
def _table_signatures():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\| `sjp\.(\w+)\(([^`]*)\)`", text, re.M)


def test_readme_api_table_shows_the_real_signatures():
    rows = dict(_table_signatures())
    for name in sjp.__all__:
        obj = getattr(sjp, name)
        if not callable(obj) or name in ("ParallelNeuron",):
            continue
        assert name in rows or f"`sjp.{name}(" in (ROOT / "README.md").read_text(), (
            f"README's API table lacks sjp.{name}"
        )
    for name, args in rows.items():
        sig = inspect.signature(getattr(sjp, name))
        shown = {}
        for part in re.split(r",\s*(?![^()]*\))", args):
            part = part.strip()
            if not part or part == "*":
                continue
            key, _, default = part.partition("=")
            shown[key.strip().lstrip("*")] = default.strip() or None
        params = {k: p for k, p in sig.parameters.items()}
        assert list(shown) == list(params), (name, list(shown), list(params))
        for key, default in shown.items():
            p = params[key]
            if p.default is inspect.Parameter.empty:
                assert default is None, (name, key, default)
            elif default is not None:
                assert default.replace('"', "'") == repr(p.default), (
                    name, key, default, p.default,
                )  # fmt: skip


def test_mpe_psn_is_cited_consistently():
    files = [ROOT / "README.md", ROOT / "UPSTREAMING.md"]
    files += sorted((ROOT / "docs").rglob("*.md")) + sorted(
        (ROOT / "docs").rglob("*.rst")
    )
    files += sorted((ROOT / "sj_parallel").rglob("*.py"))
    for f in files:
        if "_build" in f.parts:
            continue
        text = " ".join(f.read_text().split())
        for m in re.finditer(r"Chen et al\.,?[^.;)]*", text):
            cite = m.group(0)
            assert "2024" not in cite, f"{f.relative_to(ROOT)}: {cite}"
        for m in re.finditer(r"MPE-PSN \(Chen et al\.[^)]*\)", text):
            assert "ICASSP 2025" in m.group(0) and "2409.04978" in m.group(0), (
                f"{f.relative_to(ROOT)}: {m.group(0)}"
            )
