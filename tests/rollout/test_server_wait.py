"""Waiting for engine servers: a refused connection (nothing listens) fails fast after the retry policy,
naming the URL; a server that answers but is still loading is waited for, and the wait is logged."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import pytest

from spro_mcore.rollout.engine import EngineError
from spro_mcore.rollout.server_pool import ServerPool

pytestmark = pytest.mark.unit


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_refused_connection_fails_after_the_retries_naming_the_url():
    url = _closed_url()
    pool = ServerPool([url], "vllm server", timeout_s=600, max_retries=2, backoff_s=0.2)
    start = time.monotonic()
    with pytest.raises(EngineError, match=rf"vllm server at {url} refused the connection \(GET /health\) after 3 attempts"):
        pool.wait_ready("/health")
    took = time.monotonic() - start
    assert 0.2 + 0.4 <= took < 10, took  # the back-off was honoured, the 600 s readiness timeout was not waited


def test_a_loading_server_is_waited_for_and_the_wait_is_logged(caplog):
    ready_at = time.monotonic() + 1.0

    class Loading(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if time.monotonic() > ready_at else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loading)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        pool = ServerPool([url], "sglang server", timeout_s=30, max_retries=0)
        with caplog.at_level(logging.INFO, logger="spro_mcore.rollout.server_pool"):
            pool.wait_ready("/health", poll_s=0.1)
        assert time.monotonic() >= ready_at
        assert f"waiting for sglang server at {url} to be ready (GET /health answered HTTP 503" in caplog.text
        short = ServerPool([url], "sglang server", timeout_s=30, max_retries=0)
        ready_at = time.monotonic() + 60
        with pytest.raises(EngineError, match=rf"sglang server at {url} not ready \(GET /health answered HTTP 503\) after 1 s"):
            short.wait_ready("/health", timeout_s=1, poll_s=0.1)
    finally:
        server.shutdown()
        server.server_close()
