"""Wire registry, batching, REST, gRPC and polling together; run until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexstack.serve.batching import Batcher
from chexstack.serve.config import (
    BatchingParameters,
    ConfigError,
    MonitoringConfig,
    parse_batching_parameters,
    parse_monitoring_config,
    read_model_server_config,
    single_model_config,
)
from chexstack.serve.core import ModelServer
from chexstack.serve.grpc_service import GrpcServer
from chexstack.serve.registry import Registry
from chexstack.serve.rest import RestServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """`chexstack serve`'s flags; their defaults are written there only."""

    model_config_file: Path | None
    model_name: str
    model_base_path: str | None
    host: str
    port: int
    rest_api_port: int
    model_config_file_poll_wait_seconds: float
    file_system_poll_wait_seconds: float
    enable_batching: bool
    batching_parameters_file: Path | None
    monitoring_config_file: Path | None

    def initial_config(self) -> Any:
        if self.model_config_file is not None:
            # --model-name alone may come from the shared CHEXSTACK_MODEL_NAME; only a base path conflicts.
            if self.model_base_path:
                raise ConfigError(
                    "use either --model-config-file or --model-name/--model-base-path, not both"
                )
            return read_model_server_config(self.model_config_file)
        if not self.model_base_path:
            raise ConfigError("--model-config-file or --model-base-path (with --model-name) is required")
        return single_model_config(self.model_name, str(Path(self.model_base_path).absolute()))

    def batching(self) -> BatchingParameters | None:
        if not self.enable_batching:
            return None
        if self.batching_parameters_file is None:
            return BatchingParameters()
        return parse_batching_parameters(self.batching_parameters_file.read_text())

    def monitoring(self) -> MonitoringConfig:
        if self.monitoring_config_file is None:
            return MonitoringConfig()
        return parse_monitoring_config(self.monitoring_config_file.read_text())


class Poller:
    """Re-scans base paths every file-system period and re-reads the config file when it changes."""

    def __init__(self, registry: Registry, options: ServeOptions) -> None:
        self._registry, self._options = registry, options
        self._stop = threading.Event()
        self._config_text = options.model_config_file.read_text() if options.model_config_file else None
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        fs_wait = self._options.file_system_poll_wait_seconds
        cfg_wait = self._options.model_config_file_poll_wait_seconds
        # TF Serving semantics: a period of 0 (or less) turns that kind of polling off.
        waits = [w for w in (fs_wait, cfg_wait if self._config_text is not None else 0) if w > 0]
        if not waits:
            return
        tick = min(waits)
        elapsed_fs = elapsed_cfg = 0.0
        while not self._stop.wait(tick):
            elapsed_fs += tick
            elapsed_cfg += tick
            try:
                if self._config_text is not None and cfg_wait > 0 and elapsed_cfg >= cfg_wait:
                    elapsed_cfg = 0.0
                    self._reload_config()
                if fs_wait > 0 and elapsed_fs >= fs_wait:
                    elapsed_fs = 0.0
                    self._registry.poll()
            except Exception:  # keep serving what is loaded; the next poll tries again
                log.exception("polling failed")

    def _reload_config(self) -> None:
        assert self._options.model_config_file is not None
        text = self._options.model_config_file.read_text()
        if text == self._config_text:
            return
        self._config_text = text
        log.info("model config file changed; reloading %s", self._options.model_config_file)
        try:
            self._registry.apply_config(read_model_server_config(self._options.model_config_file))
        except ConfigError as exc:
            log.error("model config reload failed: %s", exc)


class Server:
    """Everything `chexstack serve` runs; start() loads the models first, like tensorflow_model_server."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.registry = Registry()
        self.model_server = ModelServer(self.registry)
        params = options.batching()
        if params is not None:
            self.model_server.batcher = Batcher(params, on_batch=self.model_server.on_batch)
        monitoring = options.monitoring()
        metrics_path = monitoring.prometheus_path if monitoring.prometheus_enabled else None
        self.rest = RestServer(self.model_server, options.host, options.rest_api_port, metrics_path)
        self.grpc = GrpcServer(self.model_server, options.host, options.port)
        self.poller = Poller(self.registry, options)

    def start(self) -> None:
        self.registry.apply_config(self.options.initial_config())
        self.grpc.start()
        self.rest.start()
        self.poller.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.options.host, self.grpc.port)
        log.info("Exporting HTTP/REST API at %s:%d ...", self.options.host, self.rest.port)

    def stop(self) -> None:
        log.info("shutting down")
        self.poller.stop()
        self.rest.stop()
        self.grpc.stop()
        if self.model_server.batcher is not None:
            self.model_server.batcher.stop()
        self.registry.close()


def run(options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = Server(options)
    try:
        server.start()
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
