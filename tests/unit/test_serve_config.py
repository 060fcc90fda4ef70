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


def rest_error(body: bytes, dtype: str) -> str:
    """The INVALID_ARGUMENT message for a columnar body whose one input `x` has `dtype`."""
    from chexstack.serve.rest_json import parse_predict_body, to_array

    with pytest.raises(ServeError) as info:
        to_array(parse_predict_body(body).data, dtype, "x")
    assert info.value.code.name == "INVALID_ARGUMENT"
    return info.value.message


@pytest.mark.parametrize(
    ("data", "dtype", "message"),
    [
        # JSON allows 1e400; float64 cannot hold it, and inf would have passed as "Infinity".
        ("[1.5, 1e400]", "float32", "input x: value 1e400 is out of range for float32"),
        ("[-1e400]", "float64", "input x: value -1e400 is out of range for float64"),
        ("[1e39]", "float32", "input x: value 1e+39 is out of range for float32"),
        ("[70000]", "float16", "input x: value 70000 is out of range for float16"),
        # Past uint64 numpy keeps an object; an int64 beside a uint64 it turns into a float64.
        ("[1, 18446744073709551616]", "int64", "input x: value 18446744073709551616 is out of range"),
        ("[9223372036854775808, -1]", "int64", "input x: value 9223372036854775808 is out of range"),
        ("[" + "9" * 400 + "]", "float64",
         "input x: value 999999999999999999999999999999... (400 characters) is out of range for float64"),
        ("[[1, 2], [3, 300]]", "uint8", "input x: value 300 is out of range for uint8"),
        ("[1, NaN]", "uint8", "input x: expects uint8 values, got NaN"),
        ("[1, Infinity]", "int32", "input x: expects int32 values, got Infinity"),
        ("[1e400]", "uint8", "input x: value 1e400 is out of range for uint8"),
        ("[true, NaN]", "bool", "input x: expects bool values, got NaN"),
        ("[1, null]", "float32", "input x: expects float32 values, got null"),
        ('[1, "a"]', "uint8", 'input x: expects uint8 values, got "a"'),
        ('["\\ud800"]', "string", "input x: a string that is not valid Unicode (surrogates not allowed)"),
        ("[1e400]", "string", "input x: expects string or {'b64': ...} values, got 1e400"),
        ("[" * 40 + "1" + "]" * 40, "uint8", "input x: 40 dimensions, more than 32"),
        ("[" * 100 + "1" + "]" * 100, "uint8", "input x: not a rectangular array"),  # numpy stops at 64
        ("[" * 40 + '"a"' + "]" * 40, "string", "input x: nested more than 32 lists deep"),
    ],
)  # fmt: skip
def test_rest_json_out_of_range_values_are_invalid_argument_naming_the_input(
    data: str, dtype: str, message: str
) -> None:
    assert rest_error(b'{"inputs": ' + data.encode() + b"}", dtype).startswith(message)


def test_rest_json_keeps_nan_and_infinity_for_floats() -> None:
    from chexstack.serve.rest_json import parse_predict_body, to_array

    body = parse_predict_body(b'{"inputs": [NaN, Infinity, -Infinity, 1e38, 18446744073709551616]}')
    values = to_array(body.data, "float32", "x")
    assert values.dtype == np.float32 and np.isnan(values[0]) and list(values[1:3]) == [np.inf, -np.inf]
    assert to_array(body.data[3:], "float64", "x").tolist() == [1e38, 2.0**64]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": [' + b"9" * 5000 + b"]}", "JSON Parse error: an integer has more than 4300 digits"),
        (b"[" * 100_000, "JSON Parse error: arrays or objects are nested too deeply"),
        (b'{"inputs": [1}', "JSON Parse error: Expecting ',' delimiter"),
    ],
)
def test_rest_json_bodies_that_do_not_parse_are_invalid_argument(body: bytes, message: str) -> None:
    from chexstack.serve.rest_json import parse_predict_body

    # The first two were a ValueError and a RecursionError out of json.loads: not a ServeError.
    with pytest.raises(ServeError) as info:
        parse_predict_body(body)
    assert info.value.message.startswith(message)


def test_tf_messages_lose_their_boilerplate() -> None:
    from chexstack.serve.inference import tf_message

    eager = (
        "Graph execution error:\n\nDetected at node map/while/decode_image/DecodeImage defined at (most "
        "recent call last):\n<stack traces unavailable>\nUnknown image file format. One of JPEG, PNG, GIF, "
        "BMP required.\n\t [[{{node map/while/decode_image/DecodeImage}}]] [Op:__inference_wrapper_235]"
    )
    assert tf_message(eager) == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
    traced = (
        "Graph execution error:\n\nDetected at node 'DecodePng' defined at (most recent call last):\n"
        '    File "/usr/lib/python3.11/threading.py", line 995, in _bootstrap\n'
        "      self._bootstrap_inner()\n"
        "Node: 'DecodePng'\nInvalid PNG data, size 4\n\t [[{{node DecodePng}}]] [Op:__inference_f_12]"
    )
    assert tf_message(traced) == "Invalid PNG data, size 4"
    assert tf_message("Graph execution error:\n\n") == "the model could not run on this input"


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
