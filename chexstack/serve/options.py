"""`chexstack serve`'s options, checked without TensorFlow: a wrong flag or file fails at once, not after
the seconds TensorFlow takes to import (this module imports only protobuf)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexstack.serve.config import (
    BatchingParameters,
    ConfigError,
    MonitoringConfig,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
    single_model_config,
)
from chexstack.settings import default_model_base

Address = tuple[str, int]


def parse_address(flag: str, value: str) -> Address:
    """`HOST:PORT` -> (host, port); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {value!r}: expected HOST:PORT with a port from 0 to 65535")
    return host, int(port)


def read_file(flag: str, path: Path) -> str:
    """The text of the file a flag names; a ConfigError that names the flag and why it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {path}: not a text file: {exc}") from None


def bind_check(flag: str, address: Address) -> None:
    """Bind the address once, now: before TensorFlow loads, and gRPC's own bind error does not say why."""
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {address[0]}:{address[1]}: cannot bind it: {exc.strerror or exc}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """`chexstack serve`'s flags; their defaults are written there only."""

    model_config_file: Path | None
    model_name: str
    model_base_path: Path | None  # None: $CHEXSTACK_HOME/models/<model_name>, unless model_config_file
    grpc: Address  # --serving
    rest: Address  # --serving-rest
    model_config_file_poll_wait_seconds: float
    file_system_poll_wait_seconds: float
    enable_batching: bool
    batching_parameters_file: Path | None
    monitoring_config_file: Path | None

    def check(self) -> None:
        """Bind the addresses and parse every file now; raises ConfigError naming the flag and the problem."""
        self.initial_config()
        self.batching()
        self.monitoring()
        bind_check("--serving", self.grpc)
        bind_check("--serving-rest", self.rest)

    def initial_config(self) -> Any:
        if self.model_config_file is not None:
            # --model-name alone may come from the shared CHEXSTACK_MODEL_NAME; only a base path conflicts.
            if self.model_base_path is not None:
                raise ConfigError(
                    "use either --model-config-file or --model-name/--model-base-path, not both"
                )
            text = read_file("--model-config-file", self.model_config_file)
            try:
                return parse_model_server_config(text)
            except ConfigError as exc:
                raise ConfigError(f"--model-config-file {self.model_config_file}: {exc}") from None
        base = self.model_base_path or default_model_base(self.model_name)
        return single_model_config(self.model_name, str(base.absolute()))

    def batching(self) -> BatchingParameters | None:
        if not self.enable_batching:
            return None
        if self.batching_parameters_file is None:
            return BatchingParameters()
        text = read_file("--batching-parameters-file", self.batching_parameters_file)
        try:
            return parse_batching_parameters(text)
        except ConfigError as exc:
            raise ConfigError(f"--batching-parameters-file {self.batching_parameters_file}: {exc}") from None

    def monitoring(self) -> MonitoringConfig:
        if self.monitoring_config_file is None:
            return MonitoringConfig()
        text = read_file("--monitoring-config-file", self.monitoring_config_file)
        try:
            return parse_monitoring_config(text)
        except ConfigError as exc:
            raise ConfigError(f"--monitoring-config-file {self.monitoring_config_file}: {exc}") from None
