"""The hub's JSON HTTP API (stdlib ThreadingHTTPServer), for tools and the notebook.

GET  /healthz                          {"status": "ok"} (never needs the token)
GET  /v1/projects                      {"projects": [...]}
GET  /v1/jobs[?kind=train|serve&limit=N]  {"jobs": [...]}, newest first
GET  /v1/jobs/{id}                     {"job": {...}}
POST /v1/jobs/{id}/rerun               202 {"job": {...}} (the new, queued job; it runs in the background)
GET  /v1/models[?name=N]               {"models": [...]}
POST /v1/models/{name}/handoff         {"version": 3, "label": "canary"} (label optional) -> {"job": {...}}
POST /v1/models/{name}/promote         {"version": 2, "label": "stable"} -> {"job": {...}}
POST /v1/models/{name}/rollback        {"label": "stable"} (optional) -> {"job": {...}}
GET  /v1/models/{name}/ab              {"model_name": ..., "weights": {...}}
PUT  /v1/models/{name}/ab              {"weights": {"stable": 90, "canary": 10}} -> {"job": {...}}
Errors: {"error": "..."} with 400 (bad request), 401 (token), 403 (a read-only token asked for a
change), 404, 405 (with Allow), 409 (state refuses), 503 (serving or Kafka unreachable), 500. With a
token set every request but /healthz needs `Authorization: Bearer <token>`. A read token (the
notebooks get one) may only GET: rerun, hand-off, promote, rollback and A/B changes need the admin
token.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from chexstack.httpjson import HttpError, JsonHandler, JsonServer
from chexstack.hub.service import Conflict, Service, ServiceError

log = logging.getLogger(__name__)

# Hub requests are small JSON objects (a job spec, a label, A/B weights).
MAX_BODY: Final = 64 * 1024
_NAME_CHARS: Final = r"[A-Za-z0-9._-]+"
_NAME: Final = rf"(?P<name>{_NAME_CHARS})"
_ID: Final = r"(?P<id>[0-9a-f]{4,32})"
MAX_INT: Final = 2**63 - 1


class BadRequest(ServiceError):
    status = 400


Handler = Callable[["_Request"], tuple[int, dict[str, Any]]]


class _Request:
    def __init__(self, match: re.Match[str], query: dict[str, list[str]], body: dict[str, Any]) -> None:
        self.match, self.query, self.body = match, query, body

    def param(self, key: str) -> str:
        return unquote(self.match.group(key))

    def query_value(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[-1] if values else None

    def int_field(self, key: str, value: object, *, required: bool = True) -> int | None:
        if value is None and not required:
            return None
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not (text.isascii() and text.isdigit()):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise BadRequest(f"{key} must be a positive integer, got {shown}")
        if len(text) > len(str(MAX_INT)) or int(text) > MAX_INT:  # the database stores 64-bit integers
            raise BadRequest(f"{key} is out of range: at most {MAX_INT}")
        return int(text)


def _routes(
    service: Service, *, reruns: bool, label_wait_s: float
) -> list[tuple[str, re.Pattern[str], Handler]]:
    def jobs(r: _Request) -> tuple[int, dict[str, Any]]:
        limit = r.int_field("limit", r.query_value("limit"), required=False)
        found = service.list_jobs(kind=r.query_value("kind"), limit=50 if limit is None else limit)
        return 200, {"jobs": [j.to_dict() for j in found]}

    def models(r: _Request) -> tuple[int, dict[str, Any]]:
        name = r.query_value("name")
        if name is not None and not re.fullmatch(_NAME_CHARS, name):  # a NUL made os calls fail: a 500
            raise BadRequest(f"name must be a model name ({_NAME_CHARS}), got {name[:40]!r}")
        return 200, {"models": service.list_models(name)}

    def rerun(r: _Request) -> tuple[int, dict[str, Any]]:
        if not reruns:
            # A training needs the data, the volumes and the GPU of the trainer, not of this API process.
            raise Conflict(
                f"this hub API does not run training; run `chexstack jobs rerun {r.param('id')}` where the "
                "training data is (on the platform: in the trainer service)"
            )
        job, _ = service.rerun_job(r.param("id"), wait=False)
        return 202, {"job": job.to_dict()}

    def handoff(r: _Request) -> tuple[int, dict[str, Any]]:
        version = r.int_field("version", r.body.get("version"))
        label = r.body.get("label")
        if label is not None and not isinstance(label, str):
            raise BadRequest('"label" must be "stable" or "canary" (absent: no label)')
        assert version is not None
        return 200, {"job": service.handoff(r.param("name"), version, label, wait_s=label_wait_s).to_dict()}

    def promote(r: _Request) -> tuple[int, dict[str, Any]]:
        version = r.int_field("version", r.body.get("version"))
        label = r.body.get("label")
        if not isinstance(label, str):
            raise BadRequest('body needs "label": "stable" or "canary"')
        assert version is not None
        return 200, {"job": service.promote(r.param("name"), version, label, wait_s=label_wait_s).to_dict()}

    def rollback(r: _Request) -> tuple[int, dict[str, Any]]:
        label = r.body.get("label", "stable")
        if not isinstance(label, str):
            raise BadRequest('"label" must be a string')
        return 200, {"job": service.rollback(r.param("name"), label, wait_s=label_wait_s).to_dict()}

    def set_ab(r: _Request) -> tuple[int, dict[str, Any]]:
        weights = r.body.get("weights")
        if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in weights.items()
        ):
            raise BadRequest(
                'body needs "weights": {"NAME": integer, ...}, e.g. {"stable": 90, "canary": 10}'
            )
        return 200, {"job": service.set_ab(r.param("name"), weights).to_dict()}

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/v1/projects", lambda r: (200, {"projects": service.projects()})),
        ("GET", "/v1/jobs", jobs),
        ("GET", f"/v1/jobs/{_ID}", lambda r: (200, {"job": service.show_job(r.param("id")).to_dict()})),
        ("POST", f"/v1/jobs/{_ID}/rerun", rerun),
        ("GET", "/v1/models", models),
        ("POST", f"/v1/models/{_NAME}/handoff", handoff),
        ("POST", f"/v1/models/{_NAME}/promote", promote),
        ("POST", f"/v1/models/{_NAME}/rollback", rollback),
        ("GET", f"/v1/models/{_NAME}/ab",
         lambda r: (200, {"model_name": r.param("name"), "weights": service.get_ab(r.param("name"))})),
        ("PUT", f"/v1/models/{_NAME}/ab", set_ab),
    ]  # fmt: skip
    return [(m, re.compile(p + "/?"), h) for m, p, h in routes]


class HubServer(JsonServer):
    def __init__(
        self,
        address: tuple[str, int],
        service: Service,
        *,
        token: str | None,
        reruns: bool,
        label_wait_s: float,
        read_token: str | None = None,
    ) -> None:
        if read_token and not token:
            raise ValueError("a read token needs an admin token: without one the API is open to everybody")
        if read_token and hmac.compare_digest(read_token.encode(), (token or "").encode()):
            raise ValueError("the read token must differ from the admin token")
        self.service = service
        self.token = token or None
        self.read_token = read_token or None
        self.routes = _routes(service, reruns=reruns, label_wait_s=label_wait_s)
        super().__init__(address, _RequestHandler)


class _RequestHandler(JsonHandler):
    server: HubServer
    max_body_bytes = MAX_BODY
    body_too_large_status = HTTPStatus.BAD_REQUEST
    # One request per connection: an unread body (e.g. after a 401) can never confuse the next one.
    keep_alive = False
    access_log = log
    access_level = logging.INFO

    def error_reply(self, exc: Exception) -> tuple[int, str]:
        if isinstance(exc, ServiceError):
            return exc.status, str(exc)
        return super().error_reply(exc)  # the API answers; the details go to its log

    def _access(self) -> str | None:
        """ "admin", "read", or None (no valid token). Without an admin token the API is open."""
        if self.server.token is None:
            return "admin"
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        presented = given.strip().encode()
        # Both comparisons always run: the time taken says nothing about which token was close.
        admin = hmac.compare_digest(presented, self.server.token.encode())
        read = self.server.read_token is not None and hmac.compare_digest(
            presented, self.server.read_token.encode()
        )
        return "admin" if admin else "read" if read else None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        if method == "GET" and url.path.rstrip("/") == "/healthz":
            self.reply_json(200, {"status": "ok"})
            return
        access = self._access()
        if access is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
        if access == "read" and method != "GET":
            raise HttpError(
                HTTPStatus.FORBIDDEN,
                f"{method} needs the admin token: this token may only read (rerun, hand-off, promote,"
                " rollback and A/B changes are the admin's)",
            )
        allowed = []
        for route_method, pattern, handler in self.server.routes:
            match = pattern.fullmatch(url.path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            status, body = handler(_Request(match, parse_qs(url.query), self.read_json_object()))
            self.reply_json(status, body)
            return
        if allowed:
            allow = ", ".join(sorted(set(allowed)))
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed; use {allow}", {"Allow": allow}
            )
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")

    def do_GET(self) -> None:
        self.dispatch(lambda: self._handle("GET"))

    def do_POST(self) -> None:
        self.dispatch(lambda: self._handle("POST"))

    def do_PUT(self) -> None:
        self.dispatch(lambda: self._handle("PUT"))


def make_server(
    service: Service,
    *,
    host: str,
    port: int,
    token: str | None,
    reruns: bool,
    label_wait_s: float,
    read_token: str | None = None,
) -> HubServer:
    """The API on host:port; promotions and rollbacks wait up to `label_wait_s` for serving."""
    return HubServer(
        (host, port), service, token=token, reruns=reruns, label_wait_s=label_wait_s, read_token=read_token
    )


def serve_in_thread(server: HubServer) -> threading.Thread:
    return server.serve_in_thread("hub-api")
