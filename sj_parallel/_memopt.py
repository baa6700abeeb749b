"""Keep SpikingJelly's memory optimiser from splitting our neurons in time.

SpikingJelly master (``2.0.0.dev1``; checked at commit
``afb132264a8cbe38d0f221dcef04053e6ba134d3``) has a memory optimiser,
``spikingjelly.activation_based.memopt``, whose level 3 cuts a checkpointed segment
into chunks along time (``TCGCContainer``) unless one of its modules is an instance
of a class in ``memopt.pipeline.TCGC_FORBIDDEN_MODULES`` (SpikingJelly's own ``PSN``,
``MaskedPSN`` and ``SlidingPSN``). Our neurons are not subclasses of those, so
memopt would split them: ``PSN`` and ``MaskedPSN`` then raise (they need all ``T``
steps at once) and ``SlidingPSN`` silently loses the last ``k - 1`` inputs of the
previous chunk.

A module says "never split me in time" with the class (or instance) attribute
``__temporal_split__ = False`` (every :class:`~sj_parallel.ParallelNeuron` has it),
the counterpart of the ``__spatial_split__`` method memopt already reads; that is
what we propose upstream. Until SpikingJelly reads the attribute itself,
:func:`register` appends one marker class, :class:`NoTemporalSplit`, to
``TCGC_FORBIDDEN_MODULES``: ``isinstance(m, NoTemporalSplit)`` is true exactly for
the modules whose ``__temporal_split__`` is ``False``, ours and anyone else's.

:func:`install` does that whichever is imported first: at once when memopt is
already imported, otherwise from an import hook the moment it is. SpikingJelly
versions without ``TCGC_FORBIDDEN_MODULES`` (0.0.0.0.14 has no memopt; 2.0.0's
``optimize_memory`` splits only what its ``can_chunk`` callback allows) are left
alone.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType
from typing import Optional

__all__ = ["PIPELINE", "NoTemporalSplit", "allows_temporal_split", "install"]

#: The module that holds ``TCGC_FORBIDDEN_MODULES`` in SpikingJelly master.
PIPELINE = "spikingjelly.activation_based.memopt.pipeline"


def allows_temporal_split(module: object) -> bool:
    """``False`` when ``module`` opts out of being split in time.

    The opt-out is ``__temporal_split__ = False`` on the module or its class.
    """
    try:
        return getattr(module, "__temporal_split__", True) is not False
    except Exception:  # an object whose __getattr__ raises something odd
        return True


class _NoTemporalSplitMeta(type):
    def __instancecheck__(cls, instance: object) -> bool:
        return not allows_temporal_split(instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return not allows_temporal_split(subclass)


class NoTemporalSplit(metaclass=_NoTemporalSplitMeta):
    """Marker for ``TCGC_FORBIDDEN_MODULES``: ``isinstance(m, NoTemporalSplit)``
    is ``True`` for every module with ``__temporal_split__ = False``."""


def register(pipeline: ModuleType) -> bool:
    """Add :class:`NoTemporalSplit` to ``pipeline.TCGC_FORBIDDEN_MODULES``.

    :return: whether ``pipeline`` has that list (SpikingJelly master) and now
        holds the marker; ``False`` for memopt versions without it
    """
    forbidden = getattr(pipeline, "TCGC_FORBIDDEN_MODULES", None)
    if not isinstance(forbidden, list):
        return False
    # compare by name too: a reloaded sj_parallel has a new marker class
    if not any(getattr(c, "__name__", None) == "NoTemporalSplit" for c in forbidden):
        forbidden.append(NoTemporalSplit)
    return True


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader, then :func:`register` on the new module."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register(module)

    def __getattr__(self, name: str):  # get_source, get_filename, ... for inspect
        return getattr(self._loader, name)


class _PipelineImportHook(importlib.abc.MetaPathFinder):
    """Finds :data:`PIPELINE` with the other finders and wraps its loader."""

    _sj_parallel_memopt_hook = True

    def __init__(self, name: str = PIPELINE):
        self.name = name

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_sj_parallel_memopt_hook", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = None if find_spec is None else find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install(name: str = PIPELINE) -> Optional[bool]:
    """Make SpikingJelly's memopt honour ``__temporal_split__ = False``.

    Registers at once when ``name`` is already imported, and installs (once) an
    import hook that registers whenever ``name`` is imported or reloaded later.

    :param name: the module that holds ``TCGC_FORBIDDEN_MODULES`` (tests pass
        another)
    :return: :func:`register`'s answer when ``name`` is already imported, ``None``
        when the import hook will do it later
    """
    if not any(getattr(f, "name", None) == name for f in _hooks()):
        sys.meta_path.insert(0, _PipelineImportHook(name))
    module = sys.modules.get(name)
    return None if module is None else register(module)


def _hooks() -> list:
    return [f for f in sys.meta_path if getattr(f, "_sj_parallel_memopt_hook", False)]
