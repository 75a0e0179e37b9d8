"""
Slow clients (issue 20): hundreds of requests that stall part way, beside ordinary ones.

gunicorn's worker receives each request in its event loop and hands it to a thread only once all
of it has arrived (codejail_service/gunicorn_worker.py). Here 240 connections send part of a
code-exec request and stall (after the headers, in the body, in the headers), on loopback; beside
them ordinary requests must each be answered within REALTIME plus a small margin (the LMS gives up
after 3.5 s), and every stalled one must be dropped once CODEJAIL_SERVICE_RECEIVE_TIMEOUT has
passed. Its twin: an upload that arrives slowly but in time is answered.

What bounds this is the worker, not our confinement layer: the deny tests are ``outside_layer``.
Answer times are printed (``-s``).
"""
import http.client
import json
import os
import resource
import selectors
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import pytest
import requests

STALLED = 240  # what the audit opened
ORDINARY = 24  # ordinary requests beside them, ORDINARY_AT_ONCE at a time
ORDINARY_AT_ONCE = 4
REALTIME = 3  # settings.CODE_JAIL["limits"]["REALTIME"]
ANSWER_WITHIN = REALTIME + 1.0
# The service's (conftest starts it with this environment); 20 s is gunicorn_config.py's default.
RECEIVE_TIMEOUT = float(os.environ.get("CODEJAIL_SERVICE_RECEIVE_TIMEOUT", 20))
# A stalled request is dropped by the worker's next look at its deadlines (at most 1 s later).
DROPPED_WITHIN = RECEIVE_TIMEOUT + 3.0


def _form(code, slug):
    payload = {"code": code, "globals_dict": {"x": 1}, "python_path": [], "limit_overrides_context": None,
               "slug": slug, "unsafely": False}
    return urlencode({"payload": json.dumps(payload)}).encode()


def _request(service, body):
    """A code-exec request's bytes as the LMS's requests sends them."""
    host = urlsplit(service["url"]).netloc
    return (f"POST /api/v0/code-exec HTTP/1.1\r\nHost: {host}\r\nUser-Agent: live-slow-clients\r\n"
            "Accept: */*\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _stall_bytes(service, case):
    whole = _request(service, _form("x = x + 1", "live-slow-stalled"))
    head = whole.index(b"\r\n\r\n") + 4
    return {"headers": whole[:head], "part of the body": whole[:head + (len(whole) - head) // 2],
            "part of the headers": whole[:head // 2]}[case]


def _address(service):
    parts = urlsplit(service["url"])
    return parts.hostname, parts.port


@pytest.fixture
def descriptors():
    """Room in this process's descriptor limit for the stalled connections and the ordinary requests."""
    # Not the worker's own helper: the AppArmor VM's test runner has no gunicorn to import it with.
    limits = soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STALLED + 256 if hard == resource.RLIM_INFINITY else min(STALLED + 256, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def _ordinary(service):
    """(status, seconds, answer or None) of one ordinary run, with room to measure a slow answer."""
    started = time.monotonic()
    try:
        response = requests.post(service["url"] + "/api/v0/code-exec",
                                 data={"payload": json.dumps({"code": "x = x + 1", "globals_dict": {"x": 1},
                                                              "python_path": [], "limit_overrides_context": None,
                                                              "slug": "live-slow-ordinary", "unsafely": False})},
                                 timeout=(5, 3 * ANSWER_WITHIN))
    except requests.RequestException as error:
        return type(error).__name__, time.monotonic() - started, None
    return response.status_code, time.monotonic() - started, response.json() if response.ok else response.text


def _dropped(stalled, deadline):
    """{"408": n, "closed": n, "open": n} of ``stalled`` by ``deadline`` (each read until the server closes it)."""
    outcome = {}
    selector = selectors.DefaultSelector()
    received = {}
    for client in stalled:
        client.setblocking(False)
        selector.register(client, selectors.EVENT_READ)
        received[client] = b""
    while received and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
            client = key.fileobj
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                received[client] += chunk
                continue
            selector.unregister(client)
            data = received.pop(client)
            kind = "408" if data.startswith(b"HTTP/1.1 408 ") else ("closed" if not data else data[:12].decode())
            outcome[kind] = outcome.get(kind, 0) + 1
    selector.close()
    if received:
        outcome["open"] = len(received)
    return outcome


@pytest.mark.outside_layer  # gunicorn's worker (its receiving front), not confinement
@pytest.mark.parametrize("case", ["headers", "part of the body", "part of the headers"])
def test_deny_stalled_uploads_hold_back_ordinary_requests(service, descriptors, case):
    stall = _stall_bytes(service, case)
    stalled = []
    try:
        started = time.monotonic()
        for _ in range(STALLED):
            client = socket.create_connection(_address(service), timeout=5)
            client.sendall(stall)
            stalled.append(client)
        with ThreadPoolExecutor(max_workers=ORDINARY_AT_ONCE) as pool:
            answers = list(pool.map(lambda _: _ordinary(service), range(ORDINARY)))
        ordinary_done = time.monotonic()
        outcome = _dropped(stalled, started + DROPPED_WITHIN)
        seconds = [answer[1] for answer in answers]
        print(f"\n{case}: {STALLED} stalled; {ORDINARY} ordinary answered in median "
              f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s; stalled ones after "
              f"{DROPPED_WITHIN:.0f} s: {outcome}")
        # Ordinary requests ran while every stalled one was still held, or this proved nothing.
        assert ordinary_done < started + RECEIVE_TIMEOUT, "the ordinary requests outlasted the stall"
        assert [answer[0] for answer in answers] == [200] * ORDINARY, answers
        assert all(answer[2] == {"globals_dict": {"x": 2}} for answer in answers), answers
        assert max(seconds) <= ANSWER_WITHIN, seconds
        # Each stalled request dropped, with a 408 (it had sent something).
        assert outcome == {"408": STALLED}, outcome
    finally:
        for client in stalled:
            client.close()


def test_allow_a_slow_steady_upload_within_the_receive_time(service):
    """An upload of ~3 s, well within the receive time, in 30 pieces: answered as if sent at once."""
    whole = _request(service, _form("x = x + 1", "live-slow-steady"))
    pieces = 30
    size = -(-len(whole) // pieces)
    with socket.create_connection(_address(service), timeout=30) as client:
        for offset in range(0, len(whole), size):
            client.sendall(whole[offset:offset + size])
            time.sleep(3.0 / pieces)
        response = http.client.HTTPResponse(client)
        response.begin()
        assert response.status == 200
        assert json.loads(response.read()) == {"globals_dict": {"x": 2}}


def test_allow_ordinary_requests_with_no_stalled_one(service):
    """The same ordinary requests with no stalled one: what the deny tests' figures compare with."""
    with ThreadPoolExecutor(max_workers=ORDINARY_AT_ONCE) as pool:
        answers = list(pool.map(lambda _: _ordinary(service), range(ORDINARY)))
    seconds = [answer[1] for answer in answers]
    print(f"\nno stalled: {ORDINARY} ordinary answered in median {statistics.median(seconds):.2f} s, "
          f"max {max(seconds):.2f} s")
    assert [answer[0] for answer in answers] == [200] * ORDINARY, answers
    assert max(seconds) <= ANSWER_WITHIN, seconds
