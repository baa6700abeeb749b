"""Sphinx configuration of the sj_parallel documentation.

Build (as CI does; warnings are errors):
``python -m sphinx -W --keep-going -b html docs docs/_build/html``
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from docutils import nodes  # noqa: E402
from sphinx import addnodes  # noqa: E402
from sphinx.transforms.post_transforms import SphinxPostTransform  # noqa: E402

import sj_parallel  # noqa: E402

project = "sj_parallel"
author = "sj_parallel contributors"
copyright = "sj_parallel contributors, Apache-2.0"  # noqa: A001
release = sj_parallel.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    # MathJax 3 from the pip package into _static/mathjax: math renders offline
    # (sphinx.ext.mathjax alone loads it from a CDN)
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# MyST: $...$ / $$...$$ math, ::: fences, heading anchors for #section links
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# SpikingJelly's and torch's docstrings of overridden methods are not ours (and use
# labels from their own docs): document only what sj_parallel writes
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# keep the signatures readable: surrogate defaults etc. as written in the source
autodoc_preserve_defaults = True

html_theme = "sphinx_rtd_theme"
html_title = f"sj_parallel {release}"
html_theme_options = {"navigation_depth": 3}


def _resolve_top_level_alias(app, env, node, contnode):
    """Resolve ``sj_parallel.PSN`` (what users type) to where the object is
    documented (``sj_parallel.neuron.PSN``), for every name in ``__all__``."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("sj_parallel."):
        return None
    head, _, rest = target[len("sj_parallel.") :].partition(".")
    if head not in sj_parallel.__all__:
        return None
    module = getattr(getattr(sj_parallel, head), "__module__", None)
    if not module or module == "sj_parallel":
        return None
    full = f"{module}.{head}" + (f".{rest}" if rest else "")
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
    )


class RepositoryPathLinks(SphinxPostTransform):
    """Markdown pages link to repository files outside ``docs/`` the way GitHub's
    file view wants them (``[results](../benchmarks/results/)``). Sphinx has no page
    for those: they are shown as the repository path in code font instead of a
    broken link. Links to anything that does not exist still fail the build."""

    default_priority = 5  # before MyST's reference resolver

    def run(self, **kwargs) -> None:
        docs_dir = os.path.join(ROOT, "docs") + os.sep
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            target = node["reftarget"].split("#")[0]
            if not target or "://" in target:
                continue
            source = str(self.env.doc2path(node.get("refdoc", self.env.docname)))
            path = os.path.normpath(os.path.join(os.path.dirname(source), target))
            # links to Markdown files arrive without their suffix
            path = next(
                (p for p in (path, path + ".md", path + ".rst") if os.path.exists(p)),
                None,
            )
            if path is None or path.startswith(docs_dir):
                continue
            if not path.startswith(ROOT + os.sep):
                continue
            rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
            rel += "/" if os.path.isdir(path) else ""
            text = node.astext().strip()
            if text.rstrip("/") in ("", rel.rstrip("/")):
                node.replace_self(nodes.literal(rel, rel))
            else:
                node.replace_self(
                    nodes.inline(
                        "",
                        "",
                        nodes.Text(f"{text} ("),
                        nodes.literal(rel, rel),
                        nodes.Text(")"),
                    )
                )


def setup(app):
    app.connect("missing-reference", _resolve_top_level_alias)
    app.add_post_transform(RepositoryPathLinks)
