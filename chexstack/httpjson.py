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
  exceptions through `error_reply`, anything else a logged 500 that names only the exception's type
  (its text, which may hold paths, goes to the log); a body that cannot be parsed (not JSON, nested
  too deeply, an integer of more digits than Python converts) is a 400 saying so;
- the errors the stdlib answers itself (request line or headers too long or malformed, an HTTP
  version it does not speak) are JSON too, and a method no `do_*` implements is a 405 with `Allow`;
- access and error logs show the path without its query string (tokens or patient data may be in it);
- the server: a thread per connection up to `max_connections`; one more is answered 503 and closed
  at once (daemon threads, the address reusable at once after a restart).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

log = logging.getLogger(__name__)

# A query string in a log line: from its "?" to the next white space.
_QUERY = re.compile(r"\?\S*")


class HttpError(Exception):
    """Answered as `{"error": message}` with `status` (and `headers`, e.g. Allow for a 405)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = dict(headers or {})


class BadJson(ValueError):
    """Bytes that are not a usable JSON document; the message says why, for the client."""


def parse_json(raw: bytes, **hooks: Any) -> Any:
    """`json.loads(raw, **hooks)`; every way a client's bytes can fail to parse is a BadJson.

    Beyond malformed JSON and text that is not UTF-8, json.loads raises RecursionError for deep
    nesting (e.g. 100,000 "[") and ValueError for an integer of more digits than Python converts.
    """
    try:
        return json.loads(raw, **hooks)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJson(str(exc)) from exc
    except RecursionError as exc:
        raise BadJson("arrays or objects are nested too deeply") from exc
    except ValueError as exc:  # the int-max-str-digits limit
        raise BadJson(f"an integer has more than {sys.get_int_max_str_digits()} digits") from exc


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
        # Every access and error line ends here; a query string that got this far is cut all the same.
        text = _QUERY.sub("", format % args)
        self.access_log.log(self.access_level, "%s %s", self.address_string(), text)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The access line: method, path without its query string, version, status, size."""
        self.log_message(
            '"%s" %s %s', self._request_summary(), int(code) if isinstance(code, int) else code, size
        )

    def _request_summary(self) -> str:
        if self.command:  # the request line parsed
            return f"{self.command} {self.path_only} {self.request_version}".strip()
        # Not parsed (what it holds is unknown): up to its first "?", or a placeholder when empty.
        line, query, _ = self.requestline.partition("?")
        return (line + (" (query not logged)" if query else "")) or "-"

    @property
    def path_only(self) -> str:
        """The request path without its query string: what the handler's own log lines show."""
        return self.path.partition("?")[0]

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (its do_* methods)."""
        return sorted(n[3:] for n in dir(self) if n.startswith("do_") and callable(getattr(self, n)))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The replies the stdlib makes itself (a malformed or too long request line or header, an
        HTTP version it does not speak, an unknown method) as `{"error": ...}` with Content-Length;
        a method no do_* implements is a 405 with Allow instead of a 501.

        The connection is closed after it: the request (and any body) was not read to its end.
        """
        headers = {}
        if code == HTTPStatus.NOT_IMPLEMENTED and self.command and not hasattr(self, "do_" + self.command):
            headers["Allow"] = ", ".join(self.allowed_methods())
            code, explain = HTTPStatus.METHOD_NOT_ALLOWED, None
            message = f"method {self.command} is not allowed; use {headers['Allow']}"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        text = message or phrase
        if code == HTTPStatus.REQUEST_URI_TOO_LONG:
            text = "request line longer than 65536 bytes (the URL is too long)"
        elif explain:
            text = f"{text}: {explain}"
        # A request line that did not parse may be echoed in the message: the log gets the phrase.
        self.log_error("code %d, %s", code, text if self.command else phrase)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # The request line did not parse as HTTP/1.x: answer with a status line and headers anyway.
            self.request_version = "HTTP/1.0"
        body = json.dumps({"error": text}).encode()
        self.send_response(code, phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def dispatch(self, handler: Callable[[], None]) -> None:
        """Run `handler`, which replies; an exception it raises is answered by `error_reply`."""
        self._body_read = False
        try:
            handler()
        except Exception as exc:
            status, message = self.error_reply(exc)
            headers = exc.headers if isinstance(exc, HttpError) else None
            self.reply_json(status, {"error": message}, headers)

    def error_reply(self, exc: Exception) -> tuple[int, str]:
        """The status and message for an exception a handler raised (override for the API's own)."""
        if isinstance(exc, HttpError):
            return exc.status, exc.message
        return self.internal_error(exc)

    def internal_error(self, exc: BaseException) -> tuple[int, str]:
        """A 500 for a failure of the server's own: the log gets the traceback, the client the type."""
        log.exception("%s %s failed", self.command, self.path_only, exc_info=exc)
        return (
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"internal error ({type(exc).__name__}); the server's log has the details",
        )

    def read_body(self, *, required: bool = False, max_bytes: int | None = None) -> bytes:
        """The request body. Without Content-Length it is empty, or a 400 when `required`.

        `max_bytes` is a limit set at run time (the ingest service's --max-bytes) instead of the class's
        `max_body_bytes`.
        """
        limit = self.max_body_bytes if max_bytes is None else max_bytes
        text = self.headers.get("Content-Length")
        if text is None or not text.strip():
            if required:
                raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is required")
            self._body_read = True
            return b""
        digits = text.strip()
        if not (digits.isascii() and digits.isdigit()):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {text[:40]!r}")
        # More digits than any body limit has is too large (and int() refuses over 4300 digits).
        length = int(digits) if len(digits) <= 18 else limit + 1
        if length > limit:
            raise HttpError(self.body_too_large_status, f"request body larger than {limit} bytes")
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
            body = parse_json(raw)
        except BadJson as exc:
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

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not self.keep_alive or self.close_connection or self._body_pending():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(doc).encode(), headers=headers)


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
