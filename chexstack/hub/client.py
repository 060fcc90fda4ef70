"""HubClient: the hub's HTTP API from Python (tools, the notebook)."""

from __future__ import annotations

from typing import Any

import requests

from chexstack.settings import secret


class HubClientError(RuntimeError):
    """The API refused or failed a request; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HubClient:
    """`HubClient("http://127.0.0.1:8600", token, timeout_s=60)`; the token defaults to $CHEXSTACK_HUB_TOKEN
    (or the file $CHEXSTACK_HUB_TOKEN_FILE names).

    `timeout_s` bounds each request; a rerun or promote answers only once it is done, so give it room.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else secret("CHEXSTACK_HUB_TOKEN")
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._session.request(
                method, self.url + path, json=body, params=query, headers=headers, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise HubClientError(f"{method} {self.url}{path}: {exc}", 0) from exc
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:500]}
        if response.status_code >= 400:
            raise HubClientError(
                f"{method} {path}: {response.status_code} {data.get('error', data)}", response.status_code
            )
        return data

    def health(self) -> bool:
        return bool(self._call("GET", "/healthz").get("status") == "ok")

    def projects(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/projects")["projects"])

    def jobs(self, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/jobs", kind=kind, limit=limit)["jobs"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/jobs/{job_id}")["job"])

    def rerun(self, job_id: str) -> dict[str, Any]:
        """Starts the rerun in the API's background; returns the new (queued) job."""
        return dict(self._call("POST", f"/v1/jobs/{job_id}/rerun")["job"])

    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models", name=name)["models"])

    def promote(self, name: str, version: int, label: str) -> dict[str, Any]:
        return dict(
            self._call("POST", f"/v1/models/{name}/promote", {"version": version, "label": label})["job"]
        )

    def rollback(self, name: str, label: str = "stable") -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/models/{name}/rollback", {"label": label})["job"])

    def ab(self, name: str) -> dict[str, int]:
        return dict(self._call("GET", f"/v1/models/{name}/ab")["weights"])

    def set_ab(self, name: str, weights: dict[str, int]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/v1/models/{name}/ab", {"weights": weights})["job"])

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
