"""Wire registry, batching, REST, gRPC and polling together; run until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from chexstack.serve.batching import Batcher
from chexstack.serve.config import ConfigError, parse_model_server_config
from chexstack.serve.core import ModelServer
from chexstack.serve.grpc_service import GrpcServer
from chexstack.serve.options import ServeOptions, read_file
from chexstack.serve.registry import Registry
from chexstack.serve.rest import RestServer

log = logging.getLogger(__name__)


class Poller:
    """Re-scans base paths every file-system period and re-reads the config file when it changes."""

    def __init__(self, registry: Registry, options: ServeOptions) -> None:
        self._registry, self._options = registry, options
        self._stop = threading.Event()
        config_file = options.model_config_file
        self._config_text = read_file("--model-config-file", config_file) if config_file else None
        self._failures: dict[str, str] = {}  # step -> its last failure, so each is logged once
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
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
            if self._config_text is not None and cfg_wait > 0 and elapsed_cfg >= cfg_wait:
                elapsed_cfg = 0.0
                self._guard("model config reload", self._reload_config)
            if fs_wait > 0 and elapsed_fs >= fs_wait:
                elapsed_fs = 0.0
                self._guard("polling", self._registry.poll)

    def _guard(self, step: str, run: Callable[[], None]) -> None:
        """Run one step; on failure keep serving what is loaded and retry next time, but log a failure only
        when it first happens or changes, not every poll."""
        try:
            run()
        except Exception as exc:
            problem = str(exc)
            if self._failures.get(step) != problem:
                if isinstance(exc, ConfigError):  # a bad file, said in one line
                    log.error("%s failed: %s; still serving what is loaded", step, problem)
                else:
                    log.exception("%s failed; still serving what is loaded", step)
            self._failures[step] = problem
        else:
            self._failures.pop(step, None)

    def _reload_config(self) -> None:
        path = self._options.model_config_file
        assert path is not None
        text = read_file("--model-config-file", path)
        if text == self._config_text:
            return
        self._config_text = text  # a config that fails is tried again when the file changes again
        log.info("model config file changed; reloading %s", path)
        try:
            config = parse_model_server_config(text)
        except ConfigError as exc:
            raise ConfigError(f"--model-config-file {path}: {exc}") from None
        self._registry.apply_config(config)


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
        self.rest = RestServer(self.model_server, *options.rest, metrics_path)
        self.grpc = GrpcServer(self.model_server, *options.grpc)
        self.poller = Poller(self.registry, options)

    def start(self) -> None:
        self.registry.apply_config(self.options.initial_config())
        self.grpc.start()
        self.rest.start()
        self.poller.start()
        log.info("Running gRPC ModelServer at %s:%d (--serving) ...", self.options.grpc[0], self.grpc.port)
        log.info(
            "Exporting HTTP/REST API at %s:%d (--serving-rest) ...", self.options.rest[0], self.rest.port
        )

    def stop(self) -> None:
        log.info("shutting down")
        self.poller.stop()
        self.rest.stop()
        self.grpc.stop()
        if self.model_server.batcher is not None:
            self.model_server.batcher.stop()
        self.registry.close()


def run(options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT. Errors before serving (a port taken, a label on a version that is not
    there) raise: OSError or ConfigError."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = Server(options)
        server.start()  # once it returns, everything runs: stop() stops it all
        try:
            stop.wait()
        finally:
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
