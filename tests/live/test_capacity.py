"""
Beyond capacity the service answers at once with 503 + Retry-After (apps/core/admission.py),
instead of leaving requests queued unseen until the LMS gives up (3.5 s).

The service under test runs 4 workers (conftest) and as many concurrent runs as the sandbox user
pool has slots, whichever workers the requests land on; at most CODEJAIL_ADMISSION["max_waiting"]
(8) requests wait per worker. No timing is asserted here: a request refused with reason
"queue_full" was refused on arrival, without waiting.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


def _post(service, code):
    payload = {"code": code, "globals_dict": {"x": 1}, "python_path": [], "limit_overrides_context": None,
               "slug": "live-capacity", "unsafely": False}
    # The LMS's timeouts, with room for this shared host: every request must get an answer.
    return requests.post(service["url"] + "/api/v0/code-exec", data={"payload": json.dumps(payload)},
                         timeout=(5, 30))


def _burst(service, code, count):
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: _post(service, code), range(count)))


@pytest.mark.outside_layer  # admission, not confinement
def test_deny_burst_beyond_capacity_waiting_unanswered(service):
    # pool (4 here) running + 4 workers x 8 waiting = 36 places; 80 requests of 0.5 s each.
    answers = _burst(service, "import time\ntime.sleep(0.5)\nx = x + 1", 80)
    refused = [answer for answer in answers if answer.status_code == 503]
    ran = [answer for answer in answers if answer.status_code == 200]
    assert len(refused) + len(ran) == len(answers), [answer.status_code for answer in answers]
    assert refused, "a burst beyond capacity was all queued"
    for answer in refused:
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"].startswith("The service is at capacity")
    assert any("(queue_full)" in answer.json()["error"] for answer in refused)  # refused on arrival
    assert all(answer.json()["globals_dict"] == {"x": 2} for answer in ran)


def test_allow_requests_within_capacity(service):
    """As many runs at once as the pool has slots all start, whichever workers they land on."""
    # The service's own list: the basic_execution check ran as every user of its pool.
    health = requests.get(service["url"] + "/health/", timeout=10).json()
    slots = len(health["checks"]["basic_execution"]["sandbox_users"])
    assert slots >= 2
    for _ in range(5):
        answers = _burst(service, "x = x + 1", slots)
        assert [answer.status_code for answer in answers] == [200] * slots, [answer.text for answer in answers]
        assert [answer.json() for answer in answers] == [{"globals_dict": {"x": 2}}] * slots
