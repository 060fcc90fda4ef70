"""Raw HTTP exchanges for the probes of chexstack.httpjson servers: bytes as a client may really send
them (a lying Content-Length, a truncated body), which http.client would not. Used by the unit tests of
chexstack.httpjson and by the security tier against the deployed serving and hub."""

from __future__ import annotations

import socket


def raw_exchange(port: int, data: bytes, *, end_sending: bool = False) -> bytes:
    """Send bytes as they are and read until the server closes the connection. `end_sending` shuts the
    client's side down after them, as a client that sent all it ever will (a truncated body) does."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        if end_sending:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_reply(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP reply: status, headers (lower-case names), body (checked against Content-Length)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1."), answer[:200]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["content-length"] == str(len(body)), answer[:500]
    return int(status_line.split()[1]), headers, body
