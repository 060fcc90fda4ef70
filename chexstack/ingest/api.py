"""The ingest service's HTTP API (`chexstack ingest serve`): uploads for clients without the key.

The service is the one holder of the pseudonym key on the platform: a client sends a file's bytes and
gets an image_id back, and never sees the key, the writable blob store or the right to publish to
`xray.uploaded` (the notebooks are such clients). Behind the API is the `Uploader` of `chexstack upload`,
so an upload through the service is validated, de-identified, stored and published exactly as one
made on the command line.

GET  /healthz         {"status": "ok"} (never needs the token)
GET  /v1/status       {"kafka": "ok" or why not, "max_bytes": N, "max_pixels": N}
POST /v1/uploads      the file's bytes as the body; the optional header X-Chexstack-Patient-Id (UTF-8,
                      percent-encoded) is the patient's ID, pseudonymised like --patient-id
    201 {"image_id": ..., "duplicate": false}   de-identified, stored and published
    200 {"image_id": ..., "duplicate": true}    the same de-identified image was uploaded before
    422 {"error": reason}                       not an image the platform takes
    413 {"error": ...}                          over --max-bytes, refused before the body is read
    503 {"error": reason}                       the store or Kafka failed: the same upload may succeed later
With a token every request but /healthz needs `Authorization: Bearer <token>` (401 otherwise, before a
byte of the body is read). The patient's ID travels in a header, never in the URL, and is neither
logged nor stored; an unexpected failure is logged by its type and code location only (the message of
a decoder may quote the file's contents).
"""

from __future__ import annotations

import hmac
import logging
import threading
import traceback
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote, urlsplit

from chexstack.httpjson import HttpError, JsonHandler, JsonServer
from chexstack.ingest.uploader import KafkaUnavailable, Uploader

log = logging.getLogger(__name__)

PATIENT_HEADER: Final = "X-Chexstack-Patient-Id"
UPLOADS_PATH: Final = "/v1/uploads"
STATUS_PATH: Final = "/v1/status"
# How long /v1/status waits for the brokers' metadata.
STATUS_TIMEOUT_S: Final = 5.0


class IngestServer(JsonServer):
    """The API on `address` in front of `uploader`; uploads are processed one at a time.

    One at a time keeps "is it published yet?" and "mark it published" together, so the same image sent
    twice at once is published once, and bounds the memory a decode takes. Bodies are read in parallel,
    by at most `max_connections` clients: with the default 64 MiB limit that is at most 512 MiB held.
    """

    max_connections = 8

    def __init__(self, address: tuple[str, int], uploader: Uploader, *, token: str | None) -> None:
        self.uploader = uploader
        self.token = token or None
        self.upload_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(JsonHandler):
    server: IngestServer
    access_log = log
    access_level = logging.INFO

    def internal_error(self, exc: BaseException) -> tuple[int, str]:
        # Not the message: pydicom's and Pillow's may quote element values of the file, i.e. patient data.
        # Where it happened is file, line and function of each frame, without the source lines.
        where = "\n".join(
            f"  {frame.filename}:{frame.lineno} in {frame.name}"
            for frame in traceback.extract_tb(exc.__traceback__)
        )
        log.error(
            "%s %s failed: %s (message withheld)\n%s", self.command, self.path_only, type(exc).__name__, where
        )
        return (
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"internal error ({type(exc).__name__}); the service's log has where it happened",
        )

    def _authorize(self) -> None:
        if self.server.token is None:
            return
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        presented = given.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(presented, self.server.token.encode()):
            raise HttpError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/healthz" and method == "GET":
            self.reply_json(HTTPStatus.OK, {"status": "ok"})
            return
        methods = {"/healthz": "GET", STATUS_PATH: "GET", UPLOADS_PATH: "POST"}
        if path not in methods:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
        if methods[path] != method:
            allow = methods[path]
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed; use {allow}", {"Allow": allow}
            )
        self._authorize()
        if path == STATUS_PATH:
            self._status()
        else:
            self._upload()

    def _status(self) -> None:
        uploader = self.server.uploader
        try:
            uploader.check_connection(timeout_s=STATUS_TIMEOUT_S)
            kafka = "ok"
        except KafkaUnavailable as exc:
            kafka = str(exc)
        limits = uploader.limits
        self.reply_json(
            HTTPStatus.OK, {"kafka": kafka, "max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}
        )

    def _patient_id(self) -> str | None:
        raw = self.headers.get(PATIENT_HEADER)
        if raw is None or not raw.strip():
            return None
        try:
            return unquote(raw.strip(), errors="strict")
        except UnicodeDecodeError:
            # Not echoed: it is a patient identifier, however garbled.
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"{PATIENT_HEADER} must be percent-encoded UTF-8"
            ) from None

    def _upload(self) -> None:
        uploader = self.server.uploader
        patient_id = self._patient_id()
        try:
            data = self.read_body(required=True, max_bytes=uploader.limits.max_bytes)
        except HttpError as exc:
            if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                # Worded as `chexstack upload` words a file over the limit.
                limit = uploader.limits.max_bytes
                length = (self.headers.get("Content-Length") or "").strip()
                size = f"{length} bytes" if len(length) <= 18 else f"more than {limit} bytes"
                raise HttpError(exc.status, f"file is {size}, over the limit of {limit}") from None
            raise
        with self.server.upload_lock:
            result = uploader.upload_bytes(data, "upload", patient_id)
        if result.image_id is not None and result.reason is None:
            status = HTTPStatus.OK if result.duplicate else HTTPStatus.CREATED
            self.reply_json(status, {"image_id": result.image_id, "duplicate": result.duplicate})
            return
        reason = result.reason or "not uploaded"
        if result.transient:
            log.warning("an upload failed: %s", reason)
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, reason, {"Retry-After": "5"})
        # Up to the first colon: our own words; what follows may quote a decoder, and so the file.
        log.info("refused an upload: %s", reason.split(":", 1)[0])
        raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, reason)

    def do_GET(self) -> None:
        self.dispatch(lambda: self._route("GET"))

    def do_POST(self) -> None:
        self.dispatch(lambda: self._route("POST"))
