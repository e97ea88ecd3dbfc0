"""A pool of engine servers over HTTP: JSON requests with retries and back-off, round-robin over servers.

Failures become one `EngineError` line naming the server, the endpoint and the cause: unreachable after N
attempts (connection errors, timeouts and 5xx answers are retried with exponential back-off), or rejected
(4xx: bad input, not retried, with the server's own message).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar

import requests
import requests.adapters

from spro_mcore.rollout.engine import EngineError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class ServerPool:
    def __init__(self, urls: Sequence[str], what: str, timeout_s: float = 600.0, max_retries: int = 3,
                 backoff_s: float = 1.0, max_parallel: int = 64):
        if not urls:
            raise EngineError(f"{what}: no server URLs given (set rollout.server_urls, e.g. http://127.0.0.1:8000)")
        self.urls = [u.rstrip("/") for u in urls]
        self.what = what
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_parallel = max_parallel
        self._next = 0  # round-robin cursor, kept across calls so load spreads over steps
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=len(self.urls), pool_maxsize=max_parallel)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(self, url: str, method: str, path: str, payload: Any = None, params: Optional[dict] = None,
                timeout_s: Optional[float] = None) -> Any:
        """JSON body of the answer (None when empty); raises EngineError as described above."""
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                r = self._session.request(method, url + path, json=payload, params=params,
                                          timeout=timeout_s or self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    if not r.content:
                        return None
                    try:
                        return r.json()
                    except ValueError:
                        return r.text
                if r.status_code < 500:
                    raise EngineError(f"{self.what} at {url} rejected {method} {path} "
                                      f"(HTTP {r.status_code}): {r.text[:500]}")
                last = f"HTTP {r.status_code}: {r.text[:500]}"
            if attempt + 1 < attempts:
                wait = self.backoff_s * 2 ** attempt
                log.warning("%s at %s: %s %s failed (%s); retry %d of %d in %.0f s", self.what, url, method, path,
                            last[:200], attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise EngineError(f"{self.what} unreachable at {url} ({method} {path}) after {attempts} attempts: {last}")

    def wait_ready(self, path: str, timeout_s: Optional[float] = None, poll_s: float = 1.0) -> None:
        """Block until every server answers `path` with a 2xx. A refused connection (nothing listens there) is
        retried like a request (`max_retries`, back-off) and then fails naming the URL; a server that answers
        but is not ready yet (still loading) is waited for up to `timeout_s` (default: the request timeout).
        Every wait is logged with what it waits for."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        for url in self.urls:
            deadline, refused, last_log = time.monotonic() + timeout_s, 0, 0.0
            while True:
                try:
                    r = self._session.get(url + path, timeout=min(10.0, timeout_s))
                    if r.status_code < 300:
                        break
                    state, refused = f"answered HTTP {r.status_code}", 0
                except requests.ConnectionError as e:
                    refused += 1
                    if refused > self.max_retries:
                        raise EngineError(
                            f"{self.what} at {url} refused the connection (GET {path}) after {refused} attempts: is "
                            f"it running and is the URL right? (rollout.server_urls; retries: rollout.max_retries) "
                            f"[{type(e).__name__}]") from None
                    state = "refused the connection"
                except requests.Timeout:
                    state, refused = "did not answer", 0
                now = time.monotonic()
                if now > deadline:
                    raise EngineError(f"{self.what} at {url} not ready (GET {path} {state}) after {timeout_s:.0f} s "
                                      "(rollout.request_timeout_s)")
                if now - last_log > 30:
                    log.info("waiting for %s at %s to be ready (GET %s %s; up to %.0f s more)", self.what, url, path,
                             state, deadline - now)
                    last_log = now
                time.sleep(self.backoff_s * 2 ** (refused - 1) if refused else poll_s)

    def round_robin(self, fn: Callable[[str, T], R], items: Sequence[T]) -> list[R]:
        """fn(url, item) for every item, item k on server (cursor + k) mod #servers, in parallel, in order."""
        if not items:
            return []
        start, n = self._next, len(self.urls)
        self._next = (start + len(items)) % n
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(items))) as ex:
            futures = [ex.submit(fn, self.urls[(start + k) % n], item) for k, item in enumerate(items)]
            return [f.result() for f in futures]

    def each(self, fn: Callable[[str], R]) -> list[R]:
        """fn(url) on every server in parallel (weight updates, cache flushes)."""
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(self.urls))) as ex:
            return list(ex.map(fn, self.urls))

    def close(self) -> None:
        self._session.close()
