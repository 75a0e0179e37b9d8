"""
gunicorn's threaded worker with a receiving front: a thread takes a request only once all of it
has arrived.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first bytes arrive;
the thread then reads the headers and the body with blocking reads. A client that sends part of a
request and stops holds that thread for as long as it likes, and a few hundred such clients hold
every thread of every worker (issue 20: ordinary requests went unanswered for 4.5 s).

Here the worker's event loop, which already waits for connections without a thread, also
receives each request: it reads whatever has arrived, without blocking, until the headers and the
body they announce are all there, then hands the connection to a thread with those bytes, which
gunicorn's own parser reads as before. A request that has not fully arrived
``CODEJAIL_SERVICE_RECEIVE_TIMEOUT`` seconds after its first byte was awaited is answered 408
and closed (one that sent nothing is just closed): waiting costs a descriptor and its bytes, never
a thread. This is the buffering front nginx puts before a WSGI server, inside the worker, so every
deployment that runs gunicorn with ``codejail_service.gunicorn_config`` has it.

Bounds, per worker:

- bytes held: at most ``threads`` x (CODEJAIL_MAX_REQUEST_BYTES + HEAD_BYTES), what the threads
  could hold reading bodies themselves; past that, a connection with more to read is answered
  503 (Retry-After) and closed;
- headers: at most HEAD_BYTES (431 beyond);
- a body that will not be read (chunked, or longer than CODEJAIL_MAX_REQUEST_BYTES: the app
  refuses both from the headers, apps/core/middleware.py) is not waited for: the request goes to a
  thread straight after its headers and its connection is closed after the answer, unread;
- closing a connection gracefully (FIN, then reading what the client still sends for at most
  LINGER_SECONDS) is done by the event loop too, not by blocking it as gthread does.

A thread still never reads past what was received without a deadline: its reads end when the
request's receive time does (a request gunicorn reads differently from this front, say).
"""

import errno
import resource
import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

# Largest request head (request line and header fields) received; nginx allows 4 x 8 KiB.
HEAD_BYTES = 64 * 1024
# Longest a closing connection is read from, for the client to take the answer and close first.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
# Descriptors a worker needs besides its connections (the app's pipes, sockets and files).
SPARE_DESCRIPTORS = 256

_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def head_length(data, searched=0):
    """
    Length of the request head (up to and with its blank line) in ``data``, or None until it is
    all there; ``searched``: how much of ``data`` an earlier call saw without finding its end.
    """
    end = data.find(b"\r\n\r\n", max(0, searched - 3))
    return None if end < 0 else end + 4


def body_length(head):
    """
    Bytes of body the ``head`` announces: its Content-Length, 0 when it has none, or None when the
    body has no length this front waits for (chunked, a malformed or repeated Content-Length):
    gunicorn and the app refuse those from the head alone.
    """
    lengths = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            lengths.append(value.strip())
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit():
        return None
    return int(lengths[0])


def expects_continue(head):
    """Whether the client waits for ``100 Continue`` before sending its body (HTTP/1.1 only)."""
    lines = head.split(b"\r\n")
    if not lines[0].rstrip().endswith(b"HTTP/1.1"):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue":
            return True
    return False


def status_line(status):
    """A complete answer with no body, for a connection the front closes."""
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nConnection: close\r\nContent-Length: 0\r\n"
            + ("Retry-After: 1\r\n" if status == 503 else "") + "\r\n").encode("ascii")


def receive(sock, size):
    """What a readable non-blocking socket holds: None if nothing after all, b"" once the peer is gone."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def allow_open_files(wanted):
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (at most its hard limit); the limits it had."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    return soft, hard


class DeadlineUnreader(SocketUnreader):
    """gunicorn's socket reader, whose reads end at the request's receive deadline."""

    deadline = 0.0

    def chunk(self, size_hint=None):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request was not received in time")
        self.sock.settimeout(remaining)
        try:
            return super().chunk(size_hint)
        finally:
            self.sock.settimeout(None)


class Connection(gthread.TConn):
    """A client connection, with what the front has received of its current request."""

    def __init__(self, worker, *args):
        super().__init__(*args)
        self.worker = worker
        self.received = bytearray()
        self.head = None  # length of the head once it is all there
        self.searched = 0  # bytes of ``received`` already searched for the head's end
        self.wanted = None  # head + body bytes to receive, None: only the head
        self.deadline = 0.0
        self.held = 0  # bytes counted against the worker's budget
        self.drained = 0  # bytes read while closing

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class ReceivingThreadWorker(gthread.ThreadWorker):
    """gthread, whose threads only ever take requests that have fully arrived."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receiving = deque()  # connections by deadline (all get the same receive time)
        self.lingering = deque()
        self.held = 0
        self.receive_timeout = 0.0
        self.max_body = 0
        self.budget = 0

    def init_process(self):
        self.configure()
        super().init_process()

    def configure(self):
        """Read the receive time and the body limit; let the worker hold all its connections open."""
        from django.conf import settings

        from codejail_service import gunicorn_config

        if self.cfg.is_ssl:
            raise RuntimeError("the receiving front reads plain HTTP: terminate TLS before gunicorn")
        self.receive_timeout = gunicorn_config.receive_timeout
        self.max_body = settings.CODEJAIL_MAX_REQUEST_BYTES
        self.budget = self.cfg.threads * (self.max_body + HEAD_BYTES)
        # Past its descriptor limit, accept() fails and gthread's worker exits: make gunicorn's
        # own cap on connections (worker_connections) the one that applies.
        allow_open_files(self.cfg.worker_connections + SPARE_DESCRIPTORS)

    # --- Receiving ------------------------------------------------------------------------------

    def accept(self, listener):
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(Connection(self, self.cfg, client, address, listener.getsockname()))

    def enqueue_req(self, conn):
        """Every request, new or on a kept-alive connection, is received here before a thread takes it."""
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.receive_timeout
        if conn.parser is not None:  # bytes of this request read with the previous one
            conn.received += conn.parser.unreader.take_buffered()
            self.charge(conn, len(conn.received))
        self.receiving.append(conn)
        if not self.advance(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_receivable, conn))

    def on_receivable(self, conn, _sock):
        if self.held >= self.budget:
            self.refuse(conn, 503)
            return
        data = receive(conn.sock, RECV_BYTES)
        if data is None:
            return
        if not data:  # the client went away before its request was complete
            self.refuse(conn, None)
            return
        conn.received += data
        self.charge(conn, len(data))
        self.advance(conn)

    def advance(self, conn):
        """Hand ``conn`` to a thread if all of its request has arrived; True if it was (or closed)."""
        if conn.head is None:
            conn.head = head_length(conn.received, conn.searched)
            conn.searched = len(conn.received)
            if conn.head is None or conn.head > HEAD_BYTES:
                if conn.head is not None or len(conn.received) > HEAD_BYTES:
                    self.refuse(conn, 431)
                    return True
                return False
            head = bytes(conn.received[:conn.head])
            length = body_length(head)
            if length is not None and length <= self.max_body:
                conn.wanted = conn.head + length
                if len(conn.received) < conn.wanted and expects_continue(head):
                    self.send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if conn.wanted is not None and len(conn.received) < conn.wanted:
            return False
        self.stop_receiving(conn)
        super().enqueue_req(conn)
        return True

    def charge(self, conn, count):
        conn.held += count
        self.held += count

    def release(self, conn):
        self.held -= conn.held
        conn.held = 0

    def stop_receiving(self, conn):
        self.receiving.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass  # never registered: the request had arrived already

    def refuse(self, conn, status):
        """Answer ``status`` (None: nothing) to a request the front will not hand on, and close."""
        self.stop_receiving(conn)
        self.release(conn)
        if status is not None:
            peer = conn.client[0] if isinstance(conn.client, tuple) else conn.client
            self.log.info("Request from %s not handed on: %s %s", peer, status, _REASONS[status])
        self.nr_conns -= 1
        if status is None:
            gthread.TConn.close(conn)
            return
        self.send_quietly(conn, status_line(status))
        self.linger(conn)  # closing with the request unread would reset the connection, answer and all

    @staticmethod
    def send_quietly(conn, data):
        """Send what fits in the socket's buffer now; a client that does not read is not waited for."""
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.receiving and self.receiving[0].deadline <= now:
            conn = self.receiving[0]
            self.refuse(conn, 408 if conn.received else None)
        while self.lingering and self.lingering[0].deadline <= now:
            self.end_linger(self.lingering[0])

    def _cap_keepalive(self, deadline):
        # A stopping worker waits for its connections: requests still arriving get what kept-alive
        # connections get (gthread's linger), not the whole receive time.
        super()._cap_keepalive(deadline)
        for conn in self.receiving:
            conn.deadline = min(conn.deadline, deadline)

    # --- In the thread ---------------------------------------------------------------------------

    def handle(self, conn):
        received, conn.received = bytes(conn.received), bytearray()
        conn.data_ready = True  # gthread would otherwise wait for data in the thread
        conn.sock.setblocking(True)
        conn.init()
        if not isinstance(conn.parser.unreader, DeadlineUnreader):
            conn.parser.unreader = DeadlineUnreader(conn.sock)
        conn.parser.unreader.deadline = conn.deadline
        conn.parser.unreader.unread(received)
        return super().handle(conn)

    def _keepalive_after(self, conn, keepalive):
        # A body the front did not wait for was not read: the connection cannot carry another request.
        if conn.wanted is None:
            keepalive = False
        conn.head = conn.wanted = None
        conn.searched = 0
        return super()._keepalive_after(conn, keepalive)

    def finish_request(self, conn, fs):
        self.release(conn)
        super().finish_request(conn, fs)

    # --- Closing ----------------------------------------------------------------------------------

    def linger(self, conn):
        """Close gracefully: FIN, then read (and drop) what the client still sends, from the event loop."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            gthread.TConn.close(conn)
            return
        conn.drained = 0
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_lingering, conn))

    def on_lingering(self, conn, _sock):
        data = receive(conn.sock, LINGER_BYTES)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self.end_linger(conn)

    def end_linger(self, conn):
        self.lingering.remove(conn)
        self.poller.unregister(conn.sock)
        gthread.TConn.close(conn)
