"""
Property tests (hypothesis) against the live service: payload validation and the globals round
trip, with NaN/Infinity (answered as null), unicode (lone surrogates too), deep nesting, huge ints, bytes made by
the code, and duplicate keys. Bounded: ``CODEJAIL_PROPERTY_EXAMPLES`` (default 60) per property.
"""
import json
import math
import os

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CODEJAIL_PROPERTY_EXAMPLES", "60"))
bounded = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))

# Text as Python's JSON carries it: any code point, lone surrogates included.
any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=20)
json_scalars = (st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
                | st.integers(min_value=-(10 ** 300), max_value=10 ** 300) | any_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=25)


def post_payload(service, payload_text):
    return requests.post(service["url"] + "/api/v0/code-exec", data={"payload": payload_text}, timeout=30)


def strict_loads(text):
    """Parse an answer as the LMS does (simplejson 3.20 refuses bare NaN / Infinity)."""
    def refuse(token):
        raise AssertionError(f"bare {token} in the answer: the LMS cannot parse it")
    return json.loads(text, parse_constant=refuse)


def same_json(a, b):
    """``a`` (answered) equals ``b`` (sent or made) as JSON carries it: non-finite floats come back null."""
    if isinstance(b, float) and not math.isfinite(b):
        return a is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@bounded
@given(globals_dict=st.dictionaries(any_text, json_values, max_size=5))
def test_globals_round_trip_unchanged(service, globals_dict):
    """Globals that the code does not touch come back as sent (non-finite floats as null)."""
    response = post_payload(service, json.dumps({"code": "pass", "globals_dict": globals_dict}))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = strict_loads(response.text)
    assert "emsg" not in body, body
    assert same_json(body["globals_dict"], globals_dict), (globals_dict, body)


@bounded
@given(value=json_values)
def test_value_made_by_the_code_comes_back(service, value):
    """A value the code builds from its own literal comes back equal (tuples as lists)."""
    code = f"import math\nnan, inf = math.nan, math.inf\nmade = {_literal(value)}"
    response = post_payload(service, json.dumps({"code": code, "globals_dict": {}}))
    body = strict_loads(response.text)
    assert response.status_code == 200 and "emsg" not in body, (code, body)
    assert same_json(body["globals_dict"]["made"], value), (value, body)


def _literal(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


@bounded
@given(data=st.binary(max_size=40))
def test_bytes_made_by_the_code(service, data):
    """codejail keeps bytes that decode as UTF-8 (as text) and drops the others."""
    response = post_payload(service, json.dumps({"code": f"b = {data!r}\nkeep = 1", "globals_dict": {}}))
    body = json.loads(response.text)
    assert response.status_code == 200 and body["globals_dict"]["keep"] == 1, body
    try:
        expected = data.decode("utf-8")
    except UnicodeDecodeError:
        assert "b" not in body["globals_dict"], body
    else:
        assert body["globals_dict"]["b"] == expected, body


@bounded
@given(first=json_scalars, last=json_scalars)
def test_duplicate_keys_last_one_wins(service, first, last):
    """As in Python's json (the LMS's): a key given twice keeps its last value."""
    text = ('{"code": "pass", "globals_dict": {"k": ' + json.dumps(first) + ', "k": ' + json.dumps(last)
            + "}}")
    body = strict_loads(post_payload(service, text).text)
    assert same_json(body["globals_dict"], {"k": last}), body


def _valid(payload):
    """The service's rules for a payload it runs (SPEC.md), written independently of its code."""
    if not isinstance(payload, dict):
        return False
    if not isinstance(payload.get("code"), str) or not isinstance(payload.get("globals_dict"), dict):
        return False
    path = payload.get("python_path")
    if path is not None and not (isinstance(path, list) and all(isinstance(p, str) for p in path)):
        return False
    if path:  # any entry: only python_lib.zip is allowed, and no file is sent here
        return False
    for key in ("limit_overrides_context", "slug"):
        if payload.get(key) is not None and not isinstance(payload.get(key), str):
            return False
    if "unsafely" in payload and payload["unsafely"] is not False:
        return False
    return True


payload_fields = st.fixed_dictionaries({}, optional={
    "code": st.sampled_from(["x = 1", ""]) | json_scalars,
    "globals_dict": st.dictionaries(any_text, json_scalars, max_size=2) | json_scalars,
    "python_path": st.none() | st.lists(st.sampled_from(["python_lib.zip", "/etc/passwd", ""]), max_size=2)
    | json_scalars,
    "limit_overrides_context": st.none() | any_text | st.integers(),
    "slug": st.none() | any_text | st.booleans(),
    "unsafely": st.booleans() | st.none(),
    "extra": json_values,
})


@bounded
@given(payload=payload_fields | json_values)
def test_payload_accepted_exactly_when_valid(service, payload):
    """Any JSON payload: 200 with globals_dict when valid, else 400 {"error"} — never anything else."""
    response = post_payload(service, json.dumps(payload))
    body = json.loads(response.text)
    assert response.headers["Content-Type"] == "application/json"
    if _valid(payload):
        assert response.status_code == 200 and "globals_dict" in body, (payload, body)
    else:
        assert response.status_code == 400 and set(body) == {"error"} and body["error"], (payload, body)


@bounded
@given(text=any_text | st.binary(max_size=30).map(lambda b: b.decode("latin-1")))
def test_payload_that_is_not_json_is_a_400(service, text):
    try:
        json.loads(text)
        return  # valid JSON by chance: covered above
    except ValueError:
        pass
    response = post_payload(service, text)
    assert response.status_code == 400 and set(response.json()) == {"error"}, response.text
