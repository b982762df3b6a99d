"""A small HTTP server for `/metrics`, `/healthz` and `/readyz`, in a daemon thread."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

Probe = Callable[[], bool]


def _probe(check: Probe) -> bool:
    """Run a liveness/readiness callable; an exception counts as failing."""
    try:
        return bool(check())
    except Exception:
        log.exception("health probe raised")
        return False


class _Handler(BaseHTTPRequestHandler):
    """Routes GET/HEAD requests; the probes live on the server object."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Answer one request."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._status(_probe(self.server.is_live), b"ok\n", b"not live\n")
        elif path == "/readyz":
            self._status(_probe(self.server.is_ready), b"ready\n", b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def do_HEAD(self) -> None:
        """Same as GET (the body is dropped by `_send`)."""
        self.do_GET()

    def _status(self, ok: bool, ok_body: bytes, bad_body: bytes) -> None:
        self._send(200 if ok else 503, ok_body if ok else bad_body)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep access logs out of the worker log (scrapes every few seconds)."""
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], is_live: Probe, is_ready: Probe) -> None:
        self.is_live = is_live
        self.is_ready = is_ready
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)


class HealthServer:
    """A running metrics/health server; `.port` is the bound port, `.stop()` shuts it down."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:9108."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()


def start_http_server(host: str, port: int, is_live: Probe, is_ready: Probe) -> HealthServer:
    """Serve /metrics, /healthz and /readyz on host:port (0 = any free port) in a daemon thread.

    Raises OSError with a readable message when the address cannot be bound.
    """
    try:
        server = _Server((host, port), is_live, is_ready)
    except OSError as exc:
        why = "port already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise OSError(
            exc.errno, f"cannot serve metrics/health on {host}:{port}: {why}"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1},
        name="forecast-health", daemon=True,
    )
    thread.start()
    hs = HealthServer(server, thread)
    log.info("metrics and health on %s (/metrics /healthz /readyz)", hs.url)
    return hs
