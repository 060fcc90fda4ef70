"""models.config / batching / monitoring parsing, version policies, REST JSON decoding, metrics text."""

from __future__ import annotations

import numpy as np
import pytest

from chexstack.serve.config import (
    BatchingParameters,
    ConfigError,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
    select_versions,
    single_model_config,
)
from chexstack.serve.errors import ServeError

CONFIG = """
model_config_list {
  config {
    name: "chexnet"
    base_path: "/models/chexnet"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config { name: "other" base_path: "/models/other" model_version_policy { all {} } }
}
"""


def test_parse_model_server_config() -> None:
    config = parse_model_server_config(CONFIG)
    chexnet, other = config.model_config_list.config
    assert chexnet.name == "chexnet" and dict(chexnet.version_labels) == {"stable": 1, "canary": 3}
    assert select_versions(chexnet.model_version_policy, [1, 2, 3, 4]) == {1, 3}
    assert select_versions(other.model_version_policy, [1, 2]) == {1, 2}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model_config_list { config { name: 'a' } }", "base_path"),
        ("model_config_list { config { base_path: '/x' } }", "name"),
        (
            "model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
            "twice",
        ),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }", "platform"),
        ("model_config_list { config { name: 'a' base_path: '/x' bogus: 1 } }", "invalid"),
        ("not a proto {", "invalid"),
    ],
)
def test_invalid_model_server_config(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_model_server_config(text)


def test_default_policy_is_latest_one_and_latest_n() -> None:
    config = single_model_config("m", "/m")
    policy = config.model_config_list.config[0].model_version_policy
    assert select_versions(policy, [3, 1, 2]) == {3}
    assert select_versions(policy, []) == set()
    policy.latest.num_versions = 2
    assert select_versions(policy, [3, 1, 2]) == {2, 3}


def test_batching_parameters() -> None:
    text = "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 2 }\n"
    assert parse_batching_parameters(text) == BatchingParameters(16, 0, 100, 2)
    assert parse_batching_parameters("") == BatchingParameters()
    with pytest.raises(ConfigError):
        parse_batching_parameters("max_batch_size: 16")  # a wrapper message, not a scalar
    with pytest.raises(ConfigError):
        parse_batching_parameters("max_batch_size { value: 0 }")


def test_monitoring_config() -> None:
    cfg = parse_monitoring_config('prometheus_config { enable: true, path: "/metrics" }')
    assert cfg.prometheus_enabled and cfg.prometheus_path == "/metrics"
    default = parse_monitoring_config("prometheus_config { enable: true }")
    assert default.prometheus_path == "/monitoring/prometheus/metrics"
    assert not parse_monitoring_config("").prometheus_enabled
    with pytest.raises(ConfigError):
        parse_monitoring_config("prometheus_config { enabled: true }")


def test_rest_json_to_array_checks_types() -> None:
    from chexstack.serve.rest_json import to_array

    assert to_array([[1, 2], [3, 4]], "uint8", "x").dtype == np.uint8
    assert to_array([1, 2.5], "float32", "x").dtype == np.float32
    for bad, dtype in (([1.5], "uint8"), ([256], "uint8"), ([[1, 2], [3]], "uint8"), (["a"], "float32")):
        with pytest.raises(ServeError):
            to_array(bad, dtype, "x")
    strings = to_array([{"b64": "aGk="}, "yo"], "string", "x")
    assert strings.tolist() == [b"hi", b"yo"]
    with pytest.raises(ServeError):
        to_array([{"b64": "!!"}], "string", "x")


def test_rest_json_formats() -> None:
    from chexstack.serve.rest_json import format_outputs, parse_predict_body

    assert parse_predict_body(b'{"instances": [1]}').row_format
    assert not parse_predict_body(b'{"inputs": [1], "signature_name": "s"}').row_format
    for bad in (b"{", b"[]", b'{"instances": 1}', b'{"instances": [], "inputs": []}', b"{}"):
        with pytest.raises(ServeError):
            parse_predict_body(bad)
    out = {"p": np.array([[0.5], [0.25]], np.float32), "q": np.array([1, 2])}
    assert format_outputs({"p": out["p"]}, True) == {"predictions": [[0.5], [0.25]]}
    assert format_outputs(out, True) == {"predictions": [{"p": [0.5], "q": 1}, {"p": [0.25], "q": 2}]}
    assert format_outputs(out, False) == {"outputs": {"p": [[0.5], [0.25]], "q": [1, 2]}}
    assert format_outputs({"x_bytes": np.array([b"hi"], dtype=object)}, False) == {
        "outputs": [{"b64": "aGk="}]
    }


def test_metrics_text_format() -> None:
    from chexstack.serve.metrics import Metrics

    metrics = Metrics(lambda: {(("model_name", "m"), ("model_version", "1")): 1.0})
    metrics.record_request("m", "predict", "REST", "OK", 0.002)
    metrics.batch_size.observe(3, model_name="m")
    text = metrics.render()
    assert (
        ':tensorflow:serving:request_count{API="predict",entrypoint="REST",model_name="m",status="OK"} 1'
        in text
    )
    assert ':tensorflow:serving:batching_session:processed_batch_size_bucket{model_name="m",le="2"} 0' in text
    assert ':tensorflow:serving:batching_session:processed_batch_size_bucket{model_name="m",le="4"} 1' in text
    assert (
        ':tensorflow:serving:batching_session:processed_batch_size_bucket{model_name="m",le="+Inf"} 1' in text
    )
    assert ':tensorflow:serving:loaded_model_versions{model_name="m",model_version="1"} 1' in text
