"""The small JSON-over-HTTP layer `chexstack serve`'s REST API and the hub's API share (stdlib only).

What both need and is easy to get wrong by hand:

- the request body is read only against a well-formed Content-Length (digits only: a negative
  length would make `read()` wait for the connection to close), at most `max_body_bytes`; a body
  shorter than its Content-Length is a 400, never a request that runs on what arrived;
- a read timeout (`timeout`) on every connection, so a client that stops sending (a half-open or idle
  connection) is dropped instead of holding a thread for good;
- every reply carries Content-Length, so HTTP/1.1 keep-alive works; a connection is closed after the
  reply when the handler keeps one request per connection (`keep_alive = False`) or when the request
  body was not read, so unread body bytes are never taken for the next request;
- an error is `{"error": "..."}` with its status: `HttpError` as raised, the handler's own
  exceptions through `error_reply`, anything else a logged 500;
- the server: a thread per connection up to `max_connections`; one more is answered 503 and closed
  at once (daemon threads, the address reusable at once after a restart).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

log = logging.getLogger(__name__)


class HttpError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler whose `do_*` methods call `self.dispatch(handler)`."""

    protocol_version = "HTTP/1.1"
    # Seconds a connection may wait for the next bytes of a request (socketserver applies it).
    timeout: ClassVar[float] = 30.0
    max_body_bytes: ClassVar[int] = 1 << 20
    body_too_large_status: ClassVar[int] = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    keep_alive: ClassVar[bool] = True
    access_log: ClassVar[logging.Logger] = log
    access_level: ClassVar[int] = logging.DEBUG

    _body_read = False

    def log_message(self, format: str, *args: Any) -> None:
        self.access_log.log(self.access_level, "%s %s", self.address_string(), format % args)

    def dispatch(self, handler: Callable[[], None]) -> None:
        """Run `handler`, which replies; an exception it raises is answered by `error_reply`."""
        self._body_read = False
        try:
            handler()
        except Exception as exc:
            status, message = self.error_reply(exc)
            self.reply_json(status, {"error": message})

    def error_reply(self, exc: Exception) -> tuple[int, str]:
        """The status and message for an exception a handler raised (override for the API's own)."""
        if isinstance(exc, HttpError):
            return exc.status, exc.message
        log.exception("%s %s failed", self.command, self.path)
        return HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}"

    def read_body(self, *, required: bool = False) -> bytes:
        """The request body. Without Content-Length it is empty, or a 400 when `required`."""
        text = self.headers.get("Content-Length")
        if text is None or not text.strip():
            if required:
                raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is required")
            self._body_read = True
            return b""
        if not text.strip().isdigit():
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {text!r}")
        length = int(text)
        if length > self.max_body_bytes:
            raise HttpError(
                self.body_too_large_status, f"request body larger than {self.max_body_bytes} bytes"
            )
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError as exc:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.REQUEST_TIMEOUT, f"request body not received within {self.timeout:g} s"
            ) from exc
        self._body_read = True
        if len(body) < length:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"request body of {len(body)} bytes is shorter than its Content-Length {length}",
            )
        return body

    def read_json_object(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is {}."""
        raw = self.read_body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
        return body

    def _body_pending(self) -> bool:
        if self._body_read:
            return False
        if self.headers.get("Transfer-Encoding"):
            return True  # a chunked body is never read here
        length = (self.headers.get("Content-Length") or "0").strip()
        return length != "0"

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if not self.keep_alive or self.close_connection or self._body_pending():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, doc: Any) -> None:
        self.reply(status, json.dumps(doc).encode())


class JsonServer(ThreadingHTTPServer):
    """A threaded server for a JsonHandler; `serve_in_thread()` runs it, `stop()` ends it."""

    daemon_threads = True
    allow_reuse_address = True
    # Connections served at once; each holds a thread until it closes or times out.
    max_connections: ClassVar[int] = 32

    def __init__(self, address: tuple[str, int], handler: type[JsonHandler]) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%s: %d connections open: refusing one more", self.url, self.max_connections)
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        body = json.dumps({"error": f"server busy: {self.max_connections} connections open"}).encode()
        try:
            request.settimeout(1.0)
            request.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s" % (len(body), body)
            )
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def serve_in_thread(self, name: str) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
