"""chexstack.httpjson, the JSON-over-HTTP layer of the REST and hub APIs, on a real local server."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chexstack.httpjson import HttpError, JsonHandler, JsonServer


class EchoHandler(JsonHandler):
    """POST /echo answers the JSON object it was sent; POST /raw needs a Content-Length; GET /boom fails."""

    max_body_bytes = 64

    def do_GET(self) -> None:
        self.dispatch(self._get)

    def do_POST(self) -> None:
        self.dispatch(self._post)

    def _get(self) -> None:
        if self.path == "/boom":
            raise RuntimeError("boom")
        if self.path == "/teapot":
            raise HttpError(418, "short and stout")
        self.reply_json(200, {"path": self.path})

    def _post(self) -> None:
        if self.path == "/raw":
            self.reply(200, self.read_body(required=True), "application/octet-stream")
        else:
            self.reply_json(200, {"echo": self.read_json_object()})


class OneShotHandler(EchoHandler):
    keep_alive = False


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


def test_errors_are_json_with_their_status(server: JsonServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert request(conn, "GET", "/teapot")[::2] == (418, {"error": "short and stout"})
    assert request(conn, "GET", "/boom")[::2] == (500, {"error": "RuntimeError: boom"})
    conn.putrequest("POST", "/raw")
    conn.endheaders()  # no Content-Length at all
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())) == (400, {"error": "Content-Length is required"})


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_negative_content_length_is_refused_at_once(server: JsonServer) -> None:
    # Were it passed to read(), the server would wait for the connection to close: recv() would time out.
    answer = raw_exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b"bad Content-Length '-5'" in answer and b"Connection: close" in answer


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
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhello")
        sock.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
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
