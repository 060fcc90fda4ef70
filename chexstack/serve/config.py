"""The text-proto configuration files tensorflow_model_server reads, parsed with the same schemas.

models.config uses TF Serving's own ModelServerConfig message. The batching-parameters and
monitoring files use messages that tensorflow-serving-api does not ship, so the same field
layout is declared here; unknown fields are errors, as in TF Serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_METRICS_PATH: Final = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A configuration file is malformed or inconsistent."""


def parse_model_server_config(text: str) -> Any:
    """models.config text -> validated ModelServerConfig."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"invalid models.config: {exc}") from exc
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("every model config needs a name")
        if model.name in seen:
            raise ConfigError(f"model {model.name!r} is configured twice")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model {model.name!r}: unsupported model_platform {model.model_platform!r}")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"model {model.name!r}: latest.num_versions must be positive")
        for label, version in model.version_labels.items():
            if version <= 0:
                raise ConfigError(f"model {model.name!r}: label {label!r} has invalid version {version}")
    return config


def read_model_server_config(path: Path) -> Any:
    return parse_model_server_config(Path(path).read_text())


def single_model_config(name: str, base_path: str) -> Any:
    """What --model_name/--model_base_path mean: one model, latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def select_versions(policy: Any, available: list[int]) -> set[int]:
    """The versions a ServableVersionPolicy keeps out of those on disk (default: the latest one)."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(available)
    if choice == "specific":
        return set(available) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(sorted(available)[-count:])


# --- batching parameters and monitoring config ---------------------------------------------

_FILE = "chexstack/serve/tf_serving_subset.proto"


def _build_messages() -> tuple[type[Any], type[Any]]:
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(name=_FILE, package="chexstack", dependency=[wrappers.name])
    f.syntax = "proto3"
    fd = descriptor_pb2.FieldDescriptorProto
    label, msg_type = fd.LABEL_OPTIONAL, fd.TYPE_MESSAGE
    batching = f.message_type.add(name="BatchingParameters")
    for i, (name, wrapper) in enumerate(
        [
            ("max_batch_size", "Int64Value"),
            ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"),
            ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue"),
            ("allowed_batch_sizes", None),
            ("pad_variable_length_inputs", None),
            ("enable_large_batch_splitting", "BoolValue"),
            ("max_execution_batch_size", "Int64Value"),
        ],
        start=1,
    ):
        if wrapper:
            batching.field.add(
                name=name, number=i, label=label, type=msg_type, type_name=f".google.protobuf.{wrapper}"
            )
        elif name == "allowed_batch_sizes":
            batching.field.add(
                name=name,
                number=i,
                label=fd.LABEL_REPEATED,
                type=fd.TYPE_INT64,
            )
        else:
            batching.field.add(name=name, number=i, label=label, type=fd.TYPE_BOOL)
    prom = f.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, label=label, type=fd.TYPE_BOOL)
    prom.field.add(name="path", number=2, label=label, type=fd.TYPE_STRING)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        label=label,
        type=msg_type,
        type_name=".chexstack.PrometheusConfig",
    )
    pool.Add(f)
    classes = message_factory.GetMessages([f, wrappers], pool=pool)
    return classes["chexstack.BatchingParameters"], classes["chexstack.MonitoringConfig"]


_BatchingParametersProto, _MonitoringConfigProto = _build_messages()


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's defaults when a field is unset."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2  # TF Serving uses the number of CPUs

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameter {name} must be positive")
        if self.batch_timeout_micros < 0:
            raise ConfigError("batching parameter batch_timeout_micros must not be negative")


def parse_batching_parameters(text: str) -> BatchingParameters:
    proto = _BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"invalid batching parameters: {exc}") from exc
    values = {
        name: getattr(proto, name).value
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
        if proto.HasField(name)
    }
    return BatchingParameters(**values)


@dataclass(frozen=True)
class MonitoringConfig:
    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_METRICS_PATH


def parse_monitoring_config(text: str) -> MonitoringConfig:
    proto = _MonitoringConfigProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"invalid monitoring config: {exc}") from exc
    path = proto.prometheus_config.path or DEFAULT_METRICS_PATH
    if not path.startswith("/"):
        raise ConfigError(f"prometheus_config.path must start with '/': {path!r}")
    return MonitoringConfig(prometheus_enabled=proto.prometheus_config.enable, prometheus_path=path)
