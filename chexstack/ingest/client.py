"""IngestClient: uploads through the ingest service (chexstack.ingest.api), for clients without the key.

It is an `UploadTarget` like the local `Uploader`, so `chexstack upload --ingest-url` and the notebooks'
upload panel use either the same way. The patient's ID goes in a header (never the URL, which access
logs and proxies keep).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from chexstack.ingest.api import PATIENT_HEADER, STATUS_PATH, UPLOADS_PATH
from chexstack.ingest.uploader import IngestResult, UploadTarget, UploadUnavailable
from chexstack.settings import Limits, secret

# An upload of 64 MiB over a slow link, then the decode and de-identification of a large DICOM.
DEFAULT_TIMEOUT_S = 300.0


class IngestUnavailable(UploadUnavailable):
    """The ingest service did not answer, refused the token, or cannot reach Kafka; str(exc) says which."""


class IngestClient(UploadTarget):
    """`IngestClient("http://ingest:8700", token, limits=...)`; the token defaults to
    $CHEXSTACK_INGEST_TOKEN (or the file $CHEXSTACK_INGEST_TOKEN_FILE names).

    `limits` are checked here before a file is sent (the service applies its own as well).
    """

    def __init__(
        self, url: str, token: str | None = None, *, limits: Limits, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else secret("CHEXSTACK_INGEST_TOKEN")
        self.limits = limits
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, timeout_s: float, **kw: Any) -> tuple[int, dict[str, Any]]:
        """Status and JSON body; no answer, a refused token or a reply that is not JSON raise."""
        try:
            response = self._session.request(
                method,
                self.url + path,
                headers=self._headers() | kw.pop("headers", {}),
                timeout=timeout_s,
                **kw,
            )
        except requests.RequestException as exc:
            raise IngestUnavailable(
                f"no answer from the ingest service at {self.url}: {exc}; is it running "
                "(`docker compose ps` in its project) and --ingest-url/CHEXSTACK_INGEST_URL right?"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IngestUnavailable(
                f"the ingest service at {self.url} answered {response.status_code} without a JSON object"
            )
        if response.status_code == 401:
            raise IngestUnavailable(
                f"the ingest service at {self.url} refused the token ({body.get('error')}): set "
                "CHEXSTACK_INGEST_TOKEN or CHEXSTACK_INGEST_TOKEN_FILE to its token"
            )
        return response.status_code, body

    def check_connection(self, timeout_s: float = 10.0) -> None:
        """Raise IngestUnavailable unless the service answers, takes the token and reaches Kafka."""
        status, body = self._request("GET", STATUS_PATH, timeout_s)
        where = f"the ingest service at {self.url}"
        if status != 200:
            raise IngestUnavailable(f"{where} answered {status}: {body.get('error')}")
        if body.get("kafka") != "ok":
            raise IngestUnavailable(f"{where} cannot publish: {body.get('kafka')}")

    def upload_bytes(self, data: bytes, name: str, patient_id: str | None = None) -> IngestResult:
        if len(data) > self.limits.max_bytes:
            limit = self.limits.max_bytes
            return IngestResult(name, None, f"file is {len(data)} bytes, over the limit of {limit}")
        headers = {"Content-Type": "application/octet-stream"}
        if patient_id is not None and patient_id.strip():
            headers[PATIENT_HEADER] = quote(patient_id, safe="")
        status, body = self._request("POST", UPLOADS_PATH, self.timeout_s, data=data, headers=headers)
        if status in (200, 201) and isinstance(body.get("image_id"), str):
            return IngestResult(name, body["image_id"], None, duplicate=bool(body.get("duplicate")))
        error = str(body.get("error", body))
        if status in (413, 422):  # the file: too large, or not an image the platform takes
            return IngestResult(name, None, error)
        if status == 503:  # the service's store or Kafka: the same file may go through later
            return IngestResult(name, None, error, transient=True)
        raise IngestUnavailable(f"the ingest service at {self.url} answered {status}: {error}")

    def close(self) -> None:
        self._session.close()
