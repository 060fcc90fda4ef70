"""TF Serving's REST API (/v1/models/...) and the Prometheus page on a threaded HTTP server."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from chexstack.httpjson import JsonHandler, JsonServer
from chexstack.serve import rest_json
from chexstack.serve.core import ModelServer
from chexstack.serve.errors import Code, ServeError, not_found
from chexstack.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

# A predict body of 64 MiB holds about 150 images as JSON numbers; larger ones are refused unread.
MAX_BODY_BYTES = 64 * 1024 * 1024
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$"
)


def status_json(server: ModelServer, name: str, version: int | None, label: str | None) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": s.state,
                "status": {"error_code": s.error_code, "error_message": s.error_message},
            }
            for v, s in server.status(name, version, label).items()
        ]
    }


def metadata_json(server: ModelServer, name: str, version: int | None, label: str | None) -> dict[str, Any]:
    servable = server.metadata(name, version, label)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    # Proto JSON with defaults printed: the shape TF Serving's REST metadata uses ("size": "-1", ...).
    sig_json = json_format.MessageToDict(
        sig_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": sig_json},
    }


class _Handler(JsonHandler):
    server: _RestHTTPServer
    max_body_bytes = MAX_BODY_BYTES
    body_too_large_status = Code.RESOURCE_EXHAUSTED.http_status
    access_log = log

    def error_reply(self, exc: Exception) -> tuple[int, str]:
        # What the request's data did wrong, TF's errors on it included (inference.model_error), is a
        # ServeError by now; anything else is the server's own failure: a 500, the details in the log.
        if isinstance(exc, ServeError):
            return exc.code.http_status, exc.message
        return super().error_reply(exc)

    def _route(self) -> tuple[str, int | None, str | None, str]:
        path = urlsplit(self.path).path
        match = _ROUTE.match(path)
        if match is None:
            raise not_found(f"Malformed request: {self.command} {path}")
        version = match["version"]
        label = match["label"]
        if version and len(version.lstrip("-")) > 19:  # past int64 (and int() refuses 4300 digits)
            raise not_found(f"Malformed request: a version of {len(version)} digits is out of range")
        return (
            unquote(match["name"]),
            int(version) if version else None,
            unquote(label) if label else None,
            match["suffix"] or "",
        )

    def do_GET(self) -> None:
        self.dispatch(self._get)

    def do_POST(self) -> None:
        self.dispatch(self._post)

    def _get(self) -> None:
        monitoring = self.server.metrics_path
        if monitoring and urlsplit(self.path).path == monitoring:
            self.reply(200, self.server.model_server.metrics.render().encode(), METRICS_CONTENT_TYPE)
            return
        name, version, label, suffix = self._route()
        if suffix == "":
            self.reply_json(200, status_json(self.server.model_server, name, version, label))
        elif suffix == "/metadata":
            self.reply_json(200, metadata_json(self.server.model_server, name, version, label))
        else:
            raise ServeError(Code.INVALID_ARGUMENT, f"{suffix} requires POST")

    def _post(self) -> None:
        body = self.read_body(required=True)
        name, version, label, suffix = self._route()
        if suffix != ":predict":
            raise ServeError(
                Code.INVALID_ARGUMENT, f"POST {suffix or 'status'} is not supported (predict only)"
            )
        request = rest_json.parse_predict_body(body)
        _, _, outputs = self.server.model_server.predict(
            name,
            None,
            version=version,
            label=label,
            signature_name=request.signature_name,
            entrypoint="REST",
            input_builder=lambda specs: rest_json.build_inputs(request, specs),
        )
        self.reply_json(200, rest_json.format_outputs(outputs, request.row_format))


class _RestHTTPServer(JsonServer):
    def __init__(self, address: tuple[str, int], model_server: ModelServer, metrics_path: str | None) -> None:
        super().__init__(address, _Handler)
        self.model_server = model_server
        self.metrics_path = metrics_path


class RestServer:
    def __init__(
        self, model_server: ModelServer, host: str, port: int, metrics_path: str | None = None
    ) -> None:
        self._httpd = _RestHTTPServer((host, port), model_server, metrics_path)

    @property
    def port(self) -> int:
        return self._httpd.port

    def start(self) -> None:
        self._httpd.serve_in_thread("rest")

    def stop(self) -> None:
        self._httpd.stop()
