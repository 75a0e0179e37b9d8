"""JSON answers that the LMS's strict parser reads."""

import math

from rest_framework.renderers import JSONRenderer


class StrictJSONRenderer(JSONRenderer):
    """
    DRF's JSON renderer, strict (no bare ``NaN``/``Infinity`` tokens), with every non-finite
    float answered as ``null``.

    The LMS parses answers with ``requests`` + ``simplejson`` (3.19 and later refuse those tokens):
    one of them would fail the whole problem. ``null`` is what ECMA-262's ``JSON.stringify`` and
    simplejson's own ``ignore_nan`` write for them. Requests may still carry them (Python's JSON).
    """

    strict = True

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except ValueError as exc:
            if not str(exc).startswith("Out of range float values"):
                raise
            # Rare, so the walk is paid only then.
            return super().render(finite_floats(data), accepted_media_type, renderer_context)


def finite_floats(value):
    """A copy of ``value`` (JSON-shaped: dicts, lists, tuples, scalars) with non-finite floats as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, (dict, list, tuple)):
        return value
    # Iterative: globals may be nested as deep as the request allowed, and deeper if the code made them.
    root = [None]
    stack = [(root, 0, value)]
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, dict):
            copy = {}
            stack.extend((copy, k, v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            copy = [None] * len(item)
            stack.extend((copy, i, v) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            copy = None
        else:
            copy = item
        parent[key] = copy
    return root[0]
