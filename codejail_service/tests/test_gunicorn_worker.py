"""
The receiving front of gunicorn's worker (codejail_service/gunicorn_worker.py), in process: the
worker's event loop runs in a thread here, on a loopback listener, with two request threads, so
that a few stalled clients would hold them all if the front let them.
"""

import os
import resource
import socket
import threading
import time

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from codejail_service import gunicorn_config, gunicorn_worker
from codejail_service.gunicorn_worker import (
    HEAD_BYTES,
    DeadlineUnreader,
    ReceivingThreadWorker,
    body_length,
    expects_continue,
    head_length,
)

THREADS = 2
MAX_BODY = 1000
# Far longer than any test waits for an answer: only the tests that want a drop shorten it.
PATIENT = 60.0
ANSWER_WAIT = 10.0  # a client's wait for an answer that must come now, far below PATIENT


def app(environ, start_response):
    """Reads the body it is told about (none when the request is chunked), answers its size."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = b"" if "HTTP_TRANSFER_ENCODING" in environ or length > MAX_BODY else environ["wsgi.input"].read(length)
    answer = f"read {len(body)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]


class Running:
    """A worker's event loop in a thread, and the address it listens on."""

    def __init__(self, receive_timeout, monkeypatch, settings):
        settings.CODEJAIL_MAX_REQUEST_BYTES = MAX_BODY
        monkeypatch.setattr(gunicorn_config, "receive_timeout", receive_timeout)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.address = self.listener.getsockname()
        cfg = Config()
        cfg.set("threads", THREADS)
        cfg.set("worker_connections", 100)
        cfg.set("keepalive", 5)
        self.worker = ReceivingThreadWorker(1, os.getppid(), [self.listener], None, 30, cfg, Logger(cfg))
        self.worker.configure()
        self.worker.tpool = self.worker.get_thread_pool()
        self.worker.poller = gunicorn_worker.selectors.DefaultSelector()
        self.worker.method_queue.init()
        self.worker.wsgi = app
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.worker.alive = False
            self.worker.method_queue.defer(lambda: None)
            self.thread.join(30)
            self.worker.tmp.close()


@pytest.fixture
def serve(monkeypatch, settings):
    started = []

    def start(receive_timeout=PATIENT):
        started.append(Running(receive_timeout, monkeypatch, settings))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def clients():
    """Client sockets, all closed at the end."""
    opened = []

    def connect(address):
        client = socket.create_connection(address, timeout=ANSWER_WAIT)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def post(length, body=b"", extra=b""):
    return (b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: " + str(length).encode() + b"\r\n" + extra
            + b"\r\n" + body)


def answer(client):
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def one_answer(client):
    """One complete answer on a kept-alive connection (its body is its Content-Length's)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += client.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += client.recv(65536)
    return head + b"\r\n\r\n" + body


# --- What the front reads of a request -----------------------------------------------------------


def test_head_length_finds_the_blank_line_also_across_reads():
    assert head_length(b"GET / HTTP/1.1\r\nHost: t\r\n") is None
    data = b"GET / HTTP/1.1\r\nHost: t\r\n\r\nbody"
    assert head_length(data) == len(data) - 4
    # Searched up to its first "\r\n" already: the end that straddles the two reads is found.
    assert head_length(data, searched=len(b"GET / HTTP/1.1\r\nHost: t\r\n")) == len(data) - 4


@pytest.mark.parametrize("head, length", [
    (b"GET / HTTP/1.1\r\nHost: t", 0),
    (b"POST / HTTP/1.1\r\ncontent-length:  12 ", 12),
    (b"POST / HTTP/1.1\r\nContent-Length: 12\r\nTransfer-Encoding: chunked", None),
    (b"POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12", None),
    (b"POST / HTTP/1.1\r\nContent-Length: -1", None),
    (b"POST / HTTP/1.1\r\nContent-Length: 1e3", None),
])
def test_body_length_is_the_one_content_length_or_none(head, length):
    assert body_length(head) == length


def test_expects_continue_only_for_http_1_1():
    assert expects_continue(b"POST / HTTP/1.1\r\nExpect: 100-Continue")
    assert not expects_continue(b"POST / HTTP/1.0\r\nExpect: 100-continue")
    assert not expects_continue(b"POST / HTTP/1.1\r\nHost: t")


def test_a_thread_reads_past_the_received_bytes_only_until_the_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        unreader = DeadlineUnreader(ours)
        unreader.deadline = time.monotonic() + PATIENT
        theirs.sendall(b"more")
        assert unreader.chunk() == b"more"
        assert ours.gettimeout() is None  # blocking again, as gunicorn leaves it
        unreader.deadline = time.monotonic() - 1
        with pytest.raises(TimeoutError):
            unreader.chunk()


def test_configure_raises_the_descriptor_limit_to_the_connections_and_refuses_tls(monkeypatch, settings):
    settings.CODEJAIL_MAX_REQUEST_BYTES = MAX_BODY
    cfg = Config()
    cfg.set("worker_connections", 3000)
    set_to = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4000))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: set_to.append(limits))
    worker = ReceivingThreadWorker(1, os.getppid(), [], None, 30, cfg, Logger(cfg))
    worker.configure()
    assert set_to == [(3000 + gunicorn_worker.SPARE_DESCRIPTORS, 4000)]
    assert worker.budget == cfg.threads * (MAX_BODY + HEAD_BYTES)
    worker.tmp.close()

    cfg.set("certfile", __file__)
    worker = ReceivingThreadWorker(1, os.getppid(), [], None, 30, cfg, Logger(cfg))
    with pytest.raises(RuntimeError, match="TLS"):
        worker.configure()
    worker.tmp.close()


# --- Served ---------------------------------------------------------------------------------------


def test_allow_a_request_sent_at_once_is_answered_and_the_connection_kept(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(post(5, b"hello"))
    assert one_answer(client).endswith(b"read 5")
    client.sendall(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")  # the same connection, kept alive
    assert one_answer(client).endswith(b"read 0")


def test_allow_pipelined_requests_are_each_received_then_answered(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(post(3, b"abc") + post(2, b"de", extra=b"Connection: close\r\n"))
    received = answer(client)
    assert received.count(b"HTTP/1.1 200") == 2 and received.endswith(b"read 2")


def test_allow_a_slow_steady_upload_within_the_receive_time(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(post(10, extra=b"Connection: close\r\n"))
    for byte in b"0123456789":
        time.sleep(0.05)
        client.send(bytes([byte]))
    assert answer(client).endswith(b"read 10")


def test_allow_expect_100_continue_is_answered_before_the_body(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(post(4, extra=b"Expect: 100-continue\r\nConnection: close\r\n"))
    assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")
    client.sendall(b"body")
    assert answer(client).endswith(b"read 4")


@pytest.mark.parametrize("head", [
    b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: " + str(MAX_BODY + 1).encode() + b"\r\n\r\n",
])
def test_a_body_that_will_not_be_read_is_not_waited_for_and_its_connection_closes(serve, clients, head):
    running = serve()
    client = clients(running.address)
    client.sendall(head)  # and not the body
    assert answer(client).endswith(b"read 0")


# --- Slow clients ------------------------------------------------------------------------------------

STALLS = {
    "headers, then nothing": post(MAX_BODY),
    "part of the body": post(MAX_BODY, b"x" * 100),
    "part of the headers": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Le",
}


@pytest.mark.parametrize("stall", STALLS)
def test_deny_stalled_requests_hold_no_thread(serve, clients, stall):
    running = serve()
    stalled = [clients(running.address) for _ in range(5 * THREADS)]
    for client in stalled:
        client.sendall(STALLS[stall])
    client = clients(running.address)
    client.sendall(post(5, b"hello", extra=b"Connection: close\r\n"))
    assert answer(client).endswith(b"read 5")  # within ANSWER_WAIT: stalled ones wait PATIENT


@pytest.mark.parametrize("stall", STALLS)
def test_deny_a_request_not_received_in_time_is_answered_408_and_closed(serve, clients, stall):
    running = serve(receive_timeout=0.3)
    client = clients(running.address)
    client.sendall(STALLS[stall])
    assert answer(client).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert running.worker.held == 0 and not running.worker.receiving


def test_deny_a_connection_that_sends_nothing_is_closed_in_time_unanswered(serve, clients):
    running = serve(receive_timeout=0.3)
    assert answer(clients(running.address)) == b""


def test_deny_a_client_gone_before_its_request_was_complete_is_forgotten(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(post(MAX_BODY, b"x" * 10))
    client.shutdown(socket.SHUT_WR)
    assert answer(client) == b""
    assert running.worker.held == 0


def test_deny_a_head_beyond_its_limit_is_answered_431(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * HEAD_BYTES + b"\r\n\r\n")
    assert answer(client).startswith(b"HTTP/1.1 431 ")


def test_deny_bytes_beyond_the_workers_budget_are_answered_503(serve, clients):
    running = serve()
    running.worker.budget = 3 * len(STALLS["part of the body"])
    within = [clients(running.address) for _ in range(3)]
    for client in within:
        client.sendall(STALLS["part of the body"])
    while running.worker.held < running.worker.budget:
        time.sleep(0.01)
    beyond = clients(running.address)
    beyond.sendall(STALLS["part of the body"])
    assert answer(beyond).startswith(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n")


def test_deny_clients_that_never_close_do_not_stall_the_event_loop(serve, clients):
    """gthread lingers on each closing connection in its event loop, up to 2 s; here, it does not wait."""
    running = serve()
    for _ in range(10):  # answered, then left open by their clients: 20 s of gthread's lingering
        clients(running.address).sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    client = clients(running.address)
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer(client).endswith(b"read 0")


def test_a_lingering_connection_is_closed_after_its_linger_time(serve, clients, monkeypatch):
    monkeypatch.setattr(gunicorn_worker, "LINGER_SECONDS", 0.2)
    running = serve()
    client = clients(running.address)
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer(client).endswith(b"read 0")  # the server's FIN; the client keeps its end open
    deadline = time.monotonic() + ANSWER_WAIT
    while running.worker.lingering and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running.worker.lingering


def test_a_stopping_worker_waits_for_a_stalled_request_only_as_for_a_kept_alive_connection(serve, clients):
    running = serve()
    client = clients(running.address)
    client.sendall(STALLS["part of the body"])
    while not running.worker.receiving:
        time.sleep(0.01)
    running.stop()
    assert answer(client).startswith(b"HTTP/1.1 408 ")  # within ANSWER_WAIT, not PATIENT

