"""chexstack.httpjson, the JSON-over-HTTP layer of the REST and hub APIs, on a real local server."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chexstack.httpjson import HttpError, JsonHandler, JsonServer
from tests.http_probes import raw_exchange, split_reply


class EchoHandler(JsonHandler):
    """POST /echo answers the JSON object it was sent; POST /raw needs a Content-Length; GET /boom fails;
    GET /post-only is a 405 of the handler's own."""

    max_body_bytes = 64

    def do_GET(self) -> None:
        self.dispatch(self._get)

    def do_POST(self) -> None:
        self.dispatch(self._post)

    def _get(self) -> None:
        if self.path.partition("?")[0] == "/boom":
            raise RuntimeError("boom in /srv/chexstack/secret.db")
        if self.path == "/teapot":
            raise HttpError(418, "short and stout")
        if self.path == "/post-only":
            raise HttpError(405, "use POST", {"Allow": "POST"})
        self.reply_json(200, {"path": self.path})

    def _post(self) -> None:
        if self.path == "/raw":
            self.reply(200, self.read_body(required=True), "application/octet-stream")
        else:
            self.reply_json(200, {"echo": self.read_json_object()})


class OneShotHandler(EchoHandler):
    keep_alive = False


class BigBodyHandler(EchoHandler):
    max_body_bytes = 1 << 20


def serve(handler: type[JsonHandler]) -> Iterator[JsonServer]:
    server = JsonServer(("127.0.0.1", 0), handler)
    server.serve_in_thread("test-httpjson")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[JsonServer]:
    yield from serve(EchoHandler)


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.getheader("Content-Length") == str(len(data))
    doc = json.loads(data) if resp.getheader("Content-Type") == "application/json" else data
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, doc


def test_json_replies_on_one_kept_alive_connection(server: JsonServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert request(conn, "GET", "/a")[::2] == (200, {"path": "/a"})
    assert conn.sock is not None
    first = conn.sock
    status, headers, doc = request(
        conn, "POST", "/echo", b'{"x": [1, 2]}', **{"Content-Type": "application/json"}
    )
    assert (status, doc) == (200, {"echo": {"x": [1, 2]}}) and "connection" not in headers
    assert conn.sock is first  # the same connection served both
    assert request(conn, "POST", "/echo", b"")[::2] == (200, {"echo": {}})
    assert server.url == f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"not json", "request body is not JSON"), (b"[1]", "must be a JSON object"), (b"\xff", "not JSON")],
)
def test_a_body_that_is_not_a_json_object_is_a_400(server: JsonServer, body: bytes, message: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, _, doc = request(conn, "POST", "/echo", body)
    assert status == 400 and message in doc["error"]


def test_a_body_json_cannot_parse_is_a_400_that_says_why() -> None:
    # json.loads raises ValueError (not JSONDecodeError) past 4300 digits and RecursionError for deep
    # nesting: both were 500s naming Python internals.
    for server in serve(BigBodyHandler):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        status, _, doc = request(conn, "POST", "/echo", b'{"n": ' + b"9" * 5000 + b"}")
        assert (status, doc) == (
            400,
            {"error": "request body is not JSON: an integer has more than 4300 digits"},
        )
        status, _, doc = request(conn, "POST", "/echo", b"[" * 100_000)
        assert (status, doc) == (
            400,
            {"error": "request body is not JSON: arrays or objects are nested too deeply"},
        )
        # The server is still there and the connection still usable.
        assert request(conn, "POST", "/echo", b'{"n": 1}')[::2] == (200, {"echo": {"n": 1}})


def test_errors_are_json_with_their_status(server: JsonServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert request(conn, "GET", "/teapot")[::2] == (418, {"error": "short and stout"})
    status, headers, doc = request(conn, "GET", "/post-only")
    assert (status, doc, headers["allow"]) == (405, {"error": "use POST"}, "POST")
    # A failure of the server's own names the exception's type, never its text (paths, internals).
    status, _, doc = request(conn, "GET", "/boom")
    assert status == 500 and doc == {
        "error": "internal error (RuntimeError); the server's log has the details"
    }
    conn.putrequest("POST", "/raw")
    conn.endheaders()  # no Content-Length at all
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())) == (400, {"error": "Content-Length is required"})


def test_a_negative_content_length_is_refused_at_once(server: JsonServer) -> None:
    # Were it passed to read(), the server would wait for the connection to close: recv() would time out.
    answer = raw_exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b"bad Content-Length '-5'" in answer and b"Connection: close" in answer


@pytest.mark.parametrize(
    ("content_length", "status", "message"),
    [
        ("\u00b2", 400, "bad Content-Length"),  # "²": str.isdigit() says yes, int() no: was a 500
        ("9" * 5000, 413, "request body larger than 64 bytes"),  # int() refuses over 4300 digits: was a 500
    ],
)
def test_a_content_length_int_cannot_read_is_refused(
    server: JsonServer, content_length: str, status: int, message: str
) -> None:
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n\r\n"
    got, headers, body = split_reply(raw_exchange(server.port, head.encode("latin-1")))
    assert got == status and message in json.loads(body)["error"] and headers["connection"] == "close"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request line longer than 65536"),
        (b"GET /a HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, "Bad request version ('extra')"),
        (b"GET /a HTTP/x.y\r\nHost: x\r\n\r\n", 400, "Bad request version ('HTTP/x.y')"),
        (b"POST /a\r\n\r\n", 400, "Bad HTTP/0.9 request type ('POST')"),
        (b"GET /a HTTP/2.0\r\nHost: x\r\n\r\n", 505, "Invalid HTTP version (2.0)"),
        (b"GET /a HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Line too long"),
        (b"GET /a HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(120)) + b"\r\n", 431,
         "Too many headers"),
    ],
)  # fmt: skip
def test_errors_the_stdlib_answers_itself_are_json_too(
    server: JsonServer, data: bytes, status: int, message: str
) -> None:
    # They were HTML pages (and, for a request line that did not parse, had no status line at all).
    got, headers, body = split_reply(raw_exchange(server.port, data))
    assert (got, headers["content-type"], headers["connection"]) == (status, "application/json", "close")
    doc = json.loads(body)
    assert set(doc) == {"error"} and message in doc["error"], doc


def test_an_unknown_method_is_a_405_naming_the_methods_the_handler_has(server: JsonServer) -> None:
    # The stdlib answered 501 "Unsupported method" in HTML. The body (its bytes a request of their own)
    # is not read, so the connection is closed instead of serving "GET /smuggled".
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    answer = raw_exchange(server.port, head + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"/smuggled" not in answer
    status, headers, body = split_reply(answer)
    assert (status, headers["allow"], headers["connection"]) == (405, "GET, POST", "close")
    assert json.loads(body) == {"error": "method DELETE is not allowed; use GET, POST"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/a")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Allow"), resp.read()) == (405, "GET, POST", b"")


def test_logs_never_show_a_query_string(server: JsonServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chexstack.httpjson")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert request(conn, "GET", "/a?token=SECRET-1&patient=SECRET-2")[0] == 200
    assert request(conn, "GET", "/boom?token=SECRET-3")[0] == 500
    conn.close()
    for data in (
        b"DELETE /a?token=SECRET-4 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a?token=SECRET-5 HTTP/1.1 extra\r\n\r\n",
        b"GET /a?token=SECRET-6 HTTP/2.0\r\n\r\n",
        b"GET /a?token=SECRET-7 x\r\n\r\n",
        b"GET /a?token=SECRET-8 HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    ):
        raw_exchange(server.port, data)
    assert "SECRET" not in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == "chexstack.httpjson"]
    assert '127.0.0.1 "GET /a HTTP/1.1" 200 -' in lines
    assert "GET /boom failed" in lines
    assert '127.0.0.1 "DELETE /a HTTP/1.1" 405 -' in lines
    assert (
        '127.0.0.1 "GET /a (query not logged)" 505 -' in lines
    )  # a request line that did not parse: cut at its "?"


def test_an_unread_body_closes_the_connection_instead_of_becoming_the_next_request(
    server: JsonServer,
) -> None:
    # Over the limit: the body is not read, so the reply closes the connection; a kept-alive
    # connection would parse the body's bytes ("GET /smuggled ...") as a second request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 40
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    answer = raw_exchange(server.port, head + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"/smuggled" not in answer
    assert b" 413 " in answer.split(b"\r\n", 1)[0] and b"request body larger than 64 bytes" in answer
    assert b"Connection: close" in answer


def test_a_one_request_per_connection_handler_closes_after_every_reply() -> None:
    for server in serve(OneShotHandler):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        status, headers, doc = request(conn, "GET", "/a")
        assert (status, doc, headers["connection"]) == (200, {"path": "/a"}, "close")


def test_a_body_shorter_than_its_content_length_is_a_400_not_a_request(server: JsonServer) -> None:
    # The client sends 5 of the 20 bytes it announced and ends its side: the handler must not run on them.
    answer = raw_exchange(
        server.port, b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhello", end_sending=True
    )
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer
    assert b"request body of 5 bytes is shorter than its Content-Length 20" in answer
    assert b"Connection: close" in answer


class QuickTimeoutHandler(EchoHandler):
    timeout = 0.5


class TwoConnectionServer(JsonServer):
    max_connections = 2


def test_a_silent_connection_is_dropped_and_a_stalled_body_is_a_408() -> None:
    for server in serve(QuickTimeoutHandler):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
            # Nothing sent: the server closes the connection (recv returns b"") instead of waiting on.
            assert idle.recv(65536) == b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhello")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.split(b"\r\n", 1)[0].endswith(b" 408 Request Timeout"), answer
        assert b"request body not received within 0.5 s" in answer


def test_connections_over_the_limit_get_a_503_and_the_slots_come_back() -> None:
    server = TwoConnectionServer(("127.0.0.1", 0), EchoHandler)
    server.serve_in_thread("test-httpjson-limit")
    try:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        # Both held connections are served first (accepted in order), so this third one finds no slot.
        answer = raw_exchange(server.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 503 Service Unavailable", answer
        assert b'{"error": "server busy: 2 connections open"}' in answer
        for sock in held:
            sock.close()
        # A closed connection ends its thread, which gives its slot back.
        for _ in range(100):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                status, _, doc = request(conn, "GET", "/b")
            finally:
                conn.close()
            if status != 503:
                break
            time.sleep(0.1)
        assert (status, doc) == (200, {"path": "/b"})
    finally:
        server.stop()
