"""Shared by the probe tests: a local HTTP server with a chosen status, and a probe runner."""
import http.server
import subprocess
import sys
import threading

import pytest


class _StatusServer(http.server.ThreadingHTTPServer):
    """Answers every GET with the status code set in .status."""

    status = 200

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # the stdlib handler signature
                handler.send_response(self.status)
                handler.send_header("Content-Type", "application/json")
                handler.end_headers()
                handler.wfile.write(b"{}")

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def status_server():
    server = _StatusServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def run_probe():
    """Run a probe's argv (its exit status) with our python for the app venv's and a test port for 8550."""

    def run(argv, port):
        argv = [sys.executable] + [a.replace("127.0.0.1:8550", f"127.0.0.1:{port}") for a in argv[1:]]
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode

    return run


