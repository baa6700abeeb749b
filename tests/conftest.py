import os
import sys

import pytest

# tests import their independent references as plain modules
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    """``SJP_SKIP_SJ_INDEPENDENT=1`` (set by .ci/run for its second SpikingJelly leg)
    skips the slow suites marked ``sj_independent``: they do not depend on the
    SpikingJelly version, so one leg runs them."""
    if os.environ.get("SJP_SKIP_SJ_INDEPENDENT") != "1":
        return
    skip = pytest.mark.skip(
        reason="independent of the SpikingJelly version: run on the first CI leg"
    )
    for item in items:
        if item.get_closest_marker("sj_independent"):
            item.add_marker(skip)
