"""Comparing JSON-like records: contracts, run settings, video fingerprints, recorded metrics.

Every refusal of the form "differs in sampling.fps: the cache has 4.0, this run has 2.0" comes from
`first_difference`, so the dotted path, the order fields are visited in and the wording are one rule.
"""

import math
from collections.abc import Callable


def first_difference(
    first: object,
    second: object,
    labels: tuple[str, str] = ("recorded:", "now:"),
    same: Callable[[object, object], bool] = lambda a, b: a == b,
    path: str = "",
) -> str | None:
    """The first field where two records differ, with both values, or None when they agree: "{path}:
    {labels[0]} {first!r}, {labels[1]} {second!r}", so labels carry their verb ("the cache has").
    Dicts are followed key by key in sorted order (a missing key reads as None) and the field is
    named by its dotted path; other values are compared with `same`."""
    if isinstance(first, dict) and isinstance(second, dict):
        for key in sorted(set(first) | set(second)):
            found = first_difference(first.get(key), second.get(key), labels, same, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if same(first, second):
        return None
    return f"{path or 'the value'}: {labels[0]} {first!r}, {labels[1]} {second!r}"


def same_number(recorded: object, recomputed: object) -> bool:
    """A recorded number equals its recomputation to rounding (1e-9, relative or absolute); a
    recorded text (a reason a number is missing) equals it exactly."""
    if isinstance(recorded, str):
        return recorded == recomputed
    if isinstance(recorded, bool) or not isinstance(recorded, int | float):
        return False
    return math.isclose(recorded, recomputed, rel_tol=1e-9, abs_tol=1e-9)
