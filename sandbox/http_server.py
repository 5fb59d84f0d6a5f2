"""A small threaded HTTP(S) server for the emulators, with socket-level control for faults.

Handlers are plain functions `Request -> Response`. Raising `Drop` closes the connection without
an answer (a reset); raising `Hang(seconds)` holds the connection silent, then closes it, which is
how the emulators act out timeouts, lost batches and commit-then-hang writes.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    client_ip: str
    raw_query: str = ""

    @property
    def cookies(self) -> dict[str, str]:
        jar = SimpleCookie()
        for header in self.headers.get_all("Cookie") or []:
            jar.load(header)
        return {name: morsel.value for name, morsel in jar.items()}

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls,
        payload: Any,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        body = json.dumps(payload).encode()
        return cls(
            status, body, [("Content-Type", "application/json;charset=UTF-8"), *(headers or [])]
        )

    @classmethod
    def text(
        cls,
        text: str,
        status: int = 200,
        content_type: str = "text/plain;charset=UTF-8",
    ) -> Response:
        return cls(status, text.encode(), [("Content-Type", content_type)])


class Drop(Exception):
    """Close the connection without a reply (the client sees a reset)."""


class Hang(Exception):
    """Say nothing for `seconds`, then close the connection."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


Handler = Callable[[Request], Response]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux), which would add 40 ms to every reply on a kept-alive
    # connection. Real Salesforce and WHMCS front ends do not do that (bench/ measured it).
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulators keep their own request logs

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            client_ip=self.client_address[0],
            raw_query=parts.query,
        )
        try:
            response = self.server.app(request)
        except Drop:
            self._abort()
            return
        except Hang as hang:
            self.server.sleep(hang.seconds)
            self._abort()
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _abort(self) -> None:
        self.close_connection = True
        try:
            # SO_LINGER 0 turns the close into a TCP reset, as a crashed PHP-FPM or proxy does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        except OSError:
            pass

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


class Server(ThreadingHTTPServer):
    """One listening emulator; `start()` serves in a background thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        app: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((host, port), _RequestHandler)
        self.app = app
        self.ssl_context = ssl_context
        self.host = host
        self.port = self.server_address[1]
        self.scheme = "https" if ssl_context else "http"
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, daemon=True, kwargs={"poll_interval": 0.1}
        )

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "localhost") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        # A client that hangs up before its reply is written (a subscriber stopping during a
        # long-poll) is routine, not a traceback on the terminal.
        if isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        # The TLS handshake happens here, in the connection's own thread, so one slow client
        # cannot stall the accept loop.
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
