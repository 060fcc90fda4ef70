"""TF Serving's REST API (/v1/models/...) and the Prometheus page on a threaded HTTP server."""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from chexstack.serve import rest_json
from chexstack.serve.core import ModelServer
from chexstack.serve.errors import Code, ServeError, not_found
from chexstack.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 * 1024 * 1024
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RestHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode())

    def _error(self, exc: ServeError) -> None:
        self._json(exc.code.http_status, {"error": exc.message})

    def _route(self) -> tuple[str, int | None, str | None, str]:
        path = urlsplit(self.path).path
        match = _ROUTE.match(path)
        if match is None:
            raise not_found(f"Malformed request: {self.command} {path}")
        version = match["version"]
        label = match["label"]
        return (
            unquote(match["name"]),
            int(version) if version else None,
            unquote(label) if label else None,
            match["suffix"] or "",
        )

    def do_GET(self) -> None:
        try:
            monitoring = self.server.metrics_path
            if monitoring and urlsplit(self.path).path == monitoring:
                self._send(200, self.server.model_server.metrics.render().encode(), METRICS_CONTENT_TYPE)
                return
            name, version, label, suffix = self._route()
            if suffix == "":
                self._json(200, status_json(self.server.model_server, name, version, label))
            elif suffix == "/metadata":
                self._json(200, metadata_json(self.server.model_server, name, version, label))
            else:
                raise ServeError(Code.INVALID_ARGUMENT, f"{suffix} requires POST")
        except ServeError as exc:
            self._error(exc)
        except Exception as exc:  # the client gets a 500, the log the details
            log.exception("GET %s failed", self.path)
            self._json(500, {"error": str(exc)})

    def do_POST(self) -> None:
        try:
            body = self._read_body()
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
            self._json(200, rest_json.format_outputs(outputs, request.row_format))
        except ServeError as exc:
            self._error(exc)
        except Exception as exc:  # TF runtime errors (e.g. an undecodable image) are the caller's input
            log.warning("POST %s failed: %s", self.path, exc)
            self._json(400, {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)})

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ServeError(Code.INVALID_ARGUMENT, "Content-Length is required")
        if int(length) > MAX_BODY_BYTES:
            raise ServeError(Code.RESOURCE_EXHAUSTED, f"request body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))


class _RestHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model_server: ModelServer, metrics_path: str | None) -> None:
        super().__init__(address, _Handler)
        self.model_server = model_server
        self.metrics_path = metrics_path


class RestServer:
    def __init__(
        self, model_server: ModelServer, host: str, port: int, metrics_path: str | None = None
    ) -> None:
        self._httpd = _RestHTTPServer((host, port), model_server, metrics_path)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
