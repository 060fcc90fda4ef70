"""The ingest service's API (chexstack.ingest.api) and its client, on a real local server.

Everything that is decided before a message is published: the token, the body limit, files that are not
images, the patient header, the routes; and, with a broker address where nothing listens, the 503 a
client may retry. Uploads that reach Kafka are tested against the real broker in
tests/integration/test_ingest.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chexstack.blobstore import BlobStore
from chexstack.cli import app
from chexstack.ingest.api import IngestServer
from chexstack.ingest.client import IngestClient, IngestUnavailable
from chexstack.ingest.uploader import Uploader
from chexstack.notebook.env import NotebookSettings
from chexstack.settings import Limits
from chexstack.synth import make_png, render_radiograph
from tests.conftest import free_port
from tests.http_probes import raw_exchange, split_reply

TOKEN = "t0ken-0123456789abcdef0123456789abcdef"
LIMITS = Limits(max_bytes=1 << 20, max_pixels=10_000_000)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IngestServer]:
    # Nothing listens on the broker's port: a publish fails within the 1 s timeout.
    uploader = Uploader(
        bootstrap=f"127.0.0.1:{free_port()}",
        store=BlobStore(tmp_path / "blobs"),
        key=b"k" * 64,
        limits=LIMITS,
        publish_timeout_s=1.0,
    )
    srv = IngestServer(("127.0.0.1", 0), uploader, token=TOKEN)
    srv.serve_in_thread("test-ingest")
    try:
        yield srv
    finally:
        srv.stop()
        uploader.close()


def exchange(server: IngestServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    return split_reply(raw_exchange(server.port, request, end_sending=True))


def png() -> bytes:
    return make_png(render_radiograph(np.random.default_rng(0), [], size=64))


def test_every_request_but_health_needs_the_token(server: IngestServer) -> None:
    assert exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    for auth in (b"", b"Authorization: Bearer wrong\r\n", f"Authorization: Basic {TOKEN}\r\n".encode()):
        # A body is announced but never sent: the refusal comes before it is read.
        status, _, body = exchange(
            server, b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 5000\r\n\r\n"
        )
        assert (status, body) == (401, b'{"error": "missing or wrong bearer token"}')
    with pytest.raises(IngestUnavailable, match="refused the token"):
        IngestClient(server.url, "wrong", limits=LIMITS).upload_bytes(png(), "a.png")
    with pytest.raises(IngestUnavailable, match="refused the token"):
        IngestClient(server.url, "", limits=LIMITS).check_connection()
    assert not any((server.uploader.store.root).glob("sha256/*/*")), "a refused upload was stored"


def test_a_body_over_the_limit_is_refused_unread(server: IngestServer) -> None:
    status, _, body = exchange(
        server,
        f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {(1 << 20) + 1}\r\n\r\n".encode(),
    )
    assert (status, body) == (413, b'{"error": "file is 1048577 bytes, over the limit of 1048576"}')
    # The client refuses it before sending, with the CLI's words.
    client = IngestClient(server.url, TOKEN, limits=LIMITS)
    result = client.upload_bytes(b"x" * ((1 << 20) + 1), "big.png")
    assert result.reason == "file is 1048577 bytes, over the limit of 1048576" and not result.transient
    # A client whose limit is larger than the service's gets the service's answer as the reason.
    roomy = IngestClient(server.url, TOKEN, limits=Limits(max_bytes=2 << 20, max_pixels=1))
    assert roomy.upload_bytes(b"x" * ((1 << 20) + 1), "big.png").reason == (
        "file is 1048577 bytes, over the limit of 1048576"
    )


def test_files_that_are_not_images_are_422_with_the_reason(server: IngestServer) -> None:
    client = IngestClient(server.url, TOKEN, limits=LIMITS)
    result = client.upload_bytes(b"just some text, not a radiograph", "notes.png", "MRN-1")
    assert (result.name, result.image_id, result.transient) == ("notes.png", None, False)
    assert result.reason == "unsupported format (looks like text)"
    assert client.upload_bytes(b"", "empty.png").reason == "empty file (0 bytes)"
    # From disk: the same checks as the CLI before a byte is sent.
    assert client.upload_path(Path("/nonexistent/x.png")).reason == "not a file"


def test_a_store_or_kafka_failure_is_a_503_the_client_marks_transient(
    server: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = IngestClient(server.url, TOKEN, limits=LIMITS)
    with caplog.at_level(logging.INFO, logger="chexstack.ingest.api"):
        result = client.upload_bytes(png(), "chest.png", "MRN-SECRET-42")
    assert result.image_id is None and result.transient, result
    assert result.reason is not None and result.reason.startswith("publish failed:"), result.reason
    assert "MRN-SECRET-42" not in caplog.text
    assert "POST /v1/uploads" in caplog.text
    # The status says why, and the client's check names the service and the cause.
    with pytest.raises(IngestUnavailable, match="cannot publish: cannot reach Kafka"):
        client.check_connection()


def test_the_patient_header_is_percent_encoded_utf8(server: IngestServer) -> None:
    request = (
        f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "X-Chexstack-Patient-Id: %FF%FE\r\nContent-Length: 4\r\n\r\ntext"
    ).encode()
    status, _, body = exchange(server, request)
    assert (status, body) == (400, b'{"error": "X-Chexstack-Patient-Id must be percent-encoded UTF-8"}')


def test_routes_and_methods(server: IngestServer) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    status, headers, _ = exchange(server, b"GET /v1/uploads HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert (status, headers["allow"]) == (405, "POST")
    assert exchange(server, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")[0] == 404
    status, headers, _ = exchange(server, b"DELETE /v1/uploads HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET, POST"
    # A POST without Content-Length (a chunked body, say) is refused rather than read.
    status, _, body = exchange(server, b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert (status, body) == (400, b'{"error": "Content-Length is required"}')


def test_an_unexpected_failure_logs_where_not_what(
    server: IngestServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in for a decoder bug (it cannot be caused on demand): its message may quote the file."""

    def broken(data: bytes, name: str, patient_id: str | None = None) -> None:
        raise ValueError("PatientName=DOE^JANE in element (0010,0010)")

    monkeypatch.setattr(server.uploader, "upload_bytes", broken)
    with (
        caplog.at_level(logging.INFO, logger="chexstack.ingest.api"),
        pytest.raises(IngestUnavailable, match=r"answered 500: internal error \(ValueError\)"),
    ):
        IngestClient(server.url, TOKEN, limits=LIMITS).upload_bytes(png(), "a.png")
    assert "DOE^JANE" not in caplog.text
    assert "ValueError (message withheld)" in caplog.text and "in broken" in caplog.text


def test_no_answer_names_the_service() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IngestUnavailable, match=f"no answer from the ingest service at {url}"):
        IngestClient(url, TOKEN, limits=LIMITS, timeout_s=5).check_connection()


def test_notebook_settings_read_the_ingest_service_and_hide_its_token(tmp_path: Path) -> None:
    token_file = tmp_path / "ingest_token"
    token_file.write_text(TOKEN + "\n")
    s = NotebookSettings.from_env(
        {"CHEXSTACK_INGEST_URL": "http://ingest:8700/", "CHEXSTACK_INGEST_TOKEN_FILE": str(token_file)}
    )
    assert (s.ingest_url, s.ingest_token) == ("http://ingest:8700", TOKEN)
    assert TOKEN not in repr(s) and "ingest_token=set" in repr(s)
    assert NotebookSettings.from_env({}).ingest_url == ""


def test_the_service_refuses_an_unusable_key_file_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("")
    result = CliRunner().invoke(
        app, ["ingest", "serve", "--ingest-port", "0"], env={"CHEXSTACK_PSEUDONYM_KEY_FILE": str(empty)}
    )
    assert result.exit_code == 2
    assert f"CHEXSTACK_PSEUDONYM_KEY_FILE={empty}: the file is empty" in result.output, result.output
