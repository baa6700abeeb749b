"""A small all-pairs (pairwise) covering design for parametrised tests.

Every value of every factor meets every value of every other factor in at least one
case, with far fewer cases than the full product. The greedy construction is
deterministic, so the test ids are stable.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Sequence


def pairwise(**factors: Sequence) -> List[Dict[str, object]]:
    """Cases (dicts of factor values) that cover every pair of values of two factors.

    :param factors: ``name=values``
    :return: the cases, in a fixed order
    """
    names = list(factors)
    values = [list(factors[n]) for n in names]
    idx = list(itertools.product(*[range(len(v)) for v in values]))
    uncovered = {
        (a, i, b, j)
        for a, b in itertools.combinations(range(len(names)), 2)
        for i in range(len(values[a]))
        for j in range(len(values[b]))
    }
    cases = []
    while uncovered:
        best, gain = None, -1
        for combo in idx:
            g = sum(
                (a, combo[a], b, combo[b]) in uncovered
                for a, b in itertools.combinations(range(len(names)), 2)
            )
            if g > gain:
                best, gain = combo, g
        for a, b in itertools.combinations(range(len(names)), 2):
            uncovered.discard((a, best[a], b, best[b]))
        cases.append({n: values[k][best[k]] for k, n in enumerate(names)})
    return cases


def case_id(case: Dict[str, object]) -> str:
    """A short test id of a case."""
    parts = []
    for k, v in case.items():
        v = getattr(v, "__name__", None) or str(v).replace("torch.", "")
        parts.append(f"{k}={v}")
    return "-".join(parts)
