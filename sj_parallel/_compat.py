"""SpikingJelly version bridging.

sj_parallel supports SpikingJelly 0.0.0.0.14 (no PSN family, has a ``backend``
concept) and 2.0.0 (PSN family in plain torch, explicit-state functional API, no
``backend``). Everything that differs between the two is looked up here.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Optional, Tuple

import spikingjelly
import torch.nn as nn
from spikingjelly.activation_based import base, functional, surrogate

#: The directory of the imported ``spikingjelly`` package.
SJ_PATH = os.path.dirname(os.path.abspath(spikingjelly.__file__))


def _git_commit(tree: str) -> Optional[str]:
    """The commit checked out in the git work tree ``tree`` (``None`` if not one)."""
    if not os.path.exists(os.path.join(tree, ".git")):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", tree, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _sj_version() -> Tuple[str, Optional[str], bool]:
    """``(version, git commit or None, from a source tree)`` of the imported
    SpikingJelly.

    An installed distribution is believed only when the imported package is the one
    it installed: a source tree first on ``sys.path`` (SpikingJelly master) may
    shadow it, and then the tree's ``pyproject.toml`` and git commit are read.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("spikingjelly")
        located = os.path.abspath(str(dist.locate_file("spikingjelly")))
        if os.path.samefile(located, SJ_PATH):
            return dist.version, None, False
    except (PackageNotFoundError, OSError):
        pass
    tree = os.path.dirname(SJ_PATH)
    version = "unknown"
    try:
        with open(os.path.join(tree, "pyproject.toml"), encoding="utf-8") as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        if m:
            version = m.group(1)
    except OSError:
        pass
    return version, _git_commit(tree), True


#: SpikingJelly's version, e.g. ``"2.0.0"``, or ``"2.0.0.dev1"`` for a source tree
#: (``SJ_FROM_SOURCE``); ``SJ_COMMIT`` is that tree's git commit (else ``None``).
SJ_VERSION, SJ_COMMIT, SJ_FROM_SOURCE = _sj_version()


def describe_spikingjelly() -> str:
    """One line naming the SpikingJelly in use: version, and for a source tree its
    path and commit."""
    if not SJ_FROM_SOURCE:
        return f"spikingjelly {SJ_VERSION} ({SJ_PATH})"
    commit = SJ_COMMIT or "unknown commit"
    return f"spikingjelly {SJ_VERSION} from source {SJ_PATH} (git {commit})"


#: True on SpikingJelly 2.x, which has the explicit-state functional API.
SJ_HAS_FUNCTIONAL_API = hasattr(base, "to_functional_forward")

try:
    from spikingjelly.activation_based.neuron import psn as _sj_psn

    SJ_PSN = _sj_psn.PSN
    SJ_MASKED_PSN = _sj_psn.MaskedPSN
    SJ_SLIDING_PSN = _sj_psn.SlidingPSN
    SJ_HAS_PSN = True
except Exception:  # SpikingJelly 0.0.0.0.14 has no PSN family
    from spikingjelly.activation_based import neuron as _sj_neuron

    SJ_PSN = getattr(_sj_neuron, "PSN", None)
    SJ_MASKED_PSN = getattr(_sj_neuron, "MaskedPSN", None)
    SJ_SLIDING_PSN = getattr(_sj_neuron, "SlidingPSN", None)
    SJ_HAS_PSN = SJ_PSN is not None

MemoryModule = base.MemoryModule


def default_surrogate() -> nn.Module:
    """SpikingJelly's default surrogate for the PSN family: ``surrogate.ATan()``."""
    return surrogate.ATan()


def mpe_default_surrogate() -> nn.Module:
    """The MPE-PSN paper's triangle surrogate ``max(0, 1 - |x|)``."""
    return surrogate.PiecewiseQuadratic(alpha=1.0)


def invalidate_reset_cache(net: nn.Module) -> None:
    """Drop SpikingJelly 2.0's cached list of resettable modules, if it has one."""
    fn = getattr(functional, "invalidate_reset_cache", None)
    if fn is not None:
        fn(net)
