"""`chexstack serve` over REST, exactly as TF Serving documents it; plus version polling and config reload."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from chexstack.serving_client import ServingClient
from tests.integration.conftest import MODEL_NAME, ServeProcess, models_config, sample_pixels, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Versions 1 and 2 loaded; labels stable -> 1, canary -> 2."""
    config = models_config(model_base, versions=(1, 2), labels={"stable": 1, "canary": 2})
    srv = start_server(tmp_path_factory.mktemp("rest"), config=config)
    srv.wait_available(1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(model_base: Path) -> dict[int, np.ndarray]:
    """What versions 1 and 2 answer for sample_pixels(2), computed in-process."""
    import tensorflow as tf

    pixels = tf.constant(sample_pixels(2))
    return {
        v: tf.saved_model.load(str(model_base / str(v)))
        .signatures["serving_default"](image=pixels)["probabilities"]
        .numpy()
        for v in (1, 2)
    }


def post(srv: ServeProcess, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else None
    return requests.post(srv.rest_url + path, data=data, json=None if data is not None else body, timeout=60)


def test_status_lists_every_version_in_tf_serving_shape(server: ServeProcess) -> None:
    doc = requests.get(f"{server.rest_url}/v1/models/chexnet", timeout=10).json()
    assert doc == {
        "model_version_status": [
            {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in ("1", "2")
        ]
    }
    by_version = requests.get(f"{server.rest_url}/v1/models/chexnet/versions/2", timeout=10).json()
    assert [s["version"] for s in by_version["model_version_status"]] == ["2"]
    by_label = requests.get(f"{server.rest_url}/v1/models/chexnet/labels/stable", timeout=10).json()
    assert [s["version"] for s in by_label["model_version_status"]] == ["1"]


@pytest.mark.parametrize(
    "path",
    ["/v1/models/nope", "/v1/models/chexnet/versions/7", "/v1/models/chexnet/labels/nope", "/v1/nothing"],
)
def test_unknown_model_version_label_is_404_with_error_body(server: ServeProcess, path: str) -> None:
    for suffix in ("", "/metadata"):
        res = requests.get(server.rest_url + path + suffix, timeout=10)
        assert res.status_code == 404, (path, suffix)
        assert set(res.json()) == {"error"} and res.json()["error"]


def test_metadata_prints_signature_defs(server: ServeProcess) -> None:
    doc = requests.get(f"{server.rest_url}/v1/models/chexnet/labels/stable/metadata", timeout=10).json()
    assert doc["model_spec"] == {"name": "chexnet", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    image = sigs["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "224", "224", "1"]
    out = sigs["serving_default"]["outputs"]["probabilities"]
    assert out["dtype"] == "DT_FLOAT" and [d["size"] for d in out["tensor_shape"]["dim"]] == ["-1", "14"]
    assert sigs["predict_image"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_predict_row_and_columnar_by_version_label_and_latest(
    server: ServeProcess, reference: dict[int, np.ndarray]
) -> None:
    pixels = sample_pixels(2).tolist()
    rows = post(server, "/v1/models/chexnet/versions/1:predict", {"instances": pixels})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], reference[1], atol=1e-5)
    cols = post(server, "/v1/models/chexnet/labels/stable:predict", {"inputs": {"image": pixels}})
    assert cols.status_code == 200 and set(cols.json()) == {"outputs"}
    np.testing.assert_allclose(cols.json()["outputs"], reference[1], atol=1e-5)
    named = post(
        server, "/v1/models/chexnet/labels/canary:predict", {"instances": [{"image": p} for p in pixels]}
    )
    np.testing.assert_allclose(named.json()["predictions"], reference[2], atol=1e-5)
    latest = post(
        server, "/v1/models/chexnet:predict", {"signature_name": "serving_default", "inputs": pixels}
    )
    np.testing.assert_allclose(latest.json()["outputs"], reference[2], atol=1e-5)


def test_predict_image_with_b64_png(server: ServeProcess, reference: dict[int, np.ndarray]) -> None:
    from PIL import Image

    encoded = []
    for img in sample_pixels(2)[..., 0]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        encoded.append({"b64": base64.b64encode(buf.getvalue()).decode()})
    res = post(
        server,
        "/v1/models/chexnet/versions/2:predict",
        {"signature_name": "predict_image", "instances": [{"image_bytes": e} for e in encoded]},
    )
    assert res.status_code == 200, res.text
    np.testing.assert_allclose(res.json()["predictions"], reference[2], atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/chexnet:predict", b"{not json", 400),
        ("/v1/models/chexnet:predict", {"instances": [[1, 2, 3]]}, 400),  # bad shape
        ("/v1/models/chexnet:predict", {"instances": [[[[0.5]] * 224] * 224]}, 400),  # float for uint8
        ("/v1/models/chexnet:predict", {"instances": [[[[300]] * 224] * 224]}, 400),  # out of uint8 range
        ("/v1/models/chexnet:predict", {"signature_name": "nope", "instances": [[[[1]] * 224] * 224]}, 400),
        ("/v1/models/chexnet:predict", {"something": 1}, 400),
        (
            "/v1/models/chexnet:predict",
            {"signature_name": "predict_image", "instances": [{"b64": "bm9wZQ=="}]},
            400,
        ),
        ("/v1/models/nope:predict", {"instances": [[[[1]] * 224] * 224]}, 404),
        ("/v1/models/chexnet/versions/9:predict", {"instances": [[[[1]] * 224] * 224]}, 404),
    ],
)
def test_predict_errors(server: ServeProcess, path: str, body: Any, status: int) -> None:
    res = post(server, path, body)
    assert res.status_code == status, res.text
    assert set(res.json()) == {"error"} and res.json()["error"]


NOT_AN_IMAGE = {"signature_name": "predict_image", "instances": [{"b64": "bm9wZQ=="}]}  # b"nope"
# Then what TF says, e.g. "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
NOT_AN_IMAGE_ERROR = "input image_bytes is not a decodable image: Unknown image file format."


def png_b64(pixels: np.ndarray) -> dict[str, str]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buf, format="PNG")
    return {"b64": base64.b64encode(buf.getvalue()).decode()}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Numbers no uint8 holds: 1e400 would have been inf, 2**64 an object array, NaN a float.
        (b'{"inputs": {"image": [1e400]}}', "input image: value 1e400 is out of range for uint8"),
        (b'{"instances": [[18446744073709551616]]}',
         "input image: value 18446744073709551616 is out of range for uint8"),
        (b'{"instances": [[[[1]], [[NaN]]]]}', "input image: expects uint8 values, got NaN"),
        # json.loads' ValueError and RecursionError, answered with Python's wording before.
        (b'{"instances": [' + b"9" * 5000 + b"]}", "JSON Parse error: an integer has more than 4300 digits"),
        (b"[" * 100_000, "JSON Parse error: arrays or objects are nested too deeply"),
        # TF's InvalidArgumentError, answered "Graph execution error:" before.
        (NOT_AN_IMAGE, NOT_AN_IMAGE_ERROR),
    ],
)  # fmt: skip
def test_predict_errors_name_the_input_and_the_problem(server: ServeProcess, body: Any, message: str) -> None:
    res = post(server, "/v1/models/chexnet:predict", body)
    assert res.status_code == 400 and set(res.json()) == {"error"}, res.text
    assert res.json()["error"].startswith(message), res.text
    assert "\n" not in res.json()["error"] and "Graph execution" not in res.text and "[Op:" not in res.text


def test_a_non_image_is_reported_alike_over_rest_and_grpc(server: ServeProcess) -> None:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "chexnet"
    request.model_spec.signature_name = "predict_image"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"nope"]))
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(NOT_AN_IMAGE_ERROR), info.value.details()
    assert post(server, "/v1/models/chexnet:predict", NOT_AN_IMAGE).json() == {"error": info.value.details()}


def raw_reply(srv: ServeProcess, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send bytes as they are; the one reply: status, headers (lower-case names), JSON body."""
    with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30) as sock:
        sock.sendall(data)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(body))
    return int(status_line.split()[1]), headers, json.loads(body)


def test_http_level_errors_are_json(server: ServeProcess) -> None:
    # An unknown method was an HTML 501, a long URL an HTML 414, a 5000-digit version a 500 from int().
    status, headers, doc = raw_reply(server, b"DELETE /v1/models/chexnet HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["allow"], doc) == (
        405,
        "GET, POST",
        {"error": "method DELETE is not allowed; use GET, POST"},
    )
    status, _, doc = raw_reply(server, b"GET /v1/models/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and "longer than 65536 bytes" in doc["error"]
    res = requests.get(f"{server.rest_url}/v1/models/chexnet/versions/{'9' * 5000}", timeout=10)
    assert res.status_code == 404 and res.json() == {
        "error": "Malformed request: a version of 5000 digits is out of range"
    }


def test_a_non_image_in_a_batch_fails_only_its_own_request(
    serve_factory: Any, model_base: Path, tmp_path: Path
) -> None:
    # A batch closes at 2 rows (or after 60 s): the two requests below run as one model call, which
    # the non-image fails. Before, both requests got its error; now the batch runs again request by request.
    params = tmp_path / "batching.config"
    params.write_text(
        "max_batch_size { value: 2 }\nbatch_timeout_micros { value: 60000000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 10 }\n"
    )
    srv = serve_factory(
        ["--enable-batching", "--batching-parameters-file", str(params)], model_base=model_base
    )
    bodies = {
        "good": {"signature_name": "predict_image", "instances": [png_b64(sample_pixels(1)[0])]},
        "bad": NOT_AN_IMAGE,
    }
    replies: dict[str, requests.Response] = {}
    start = threading.Barrier(len(bodies))

    def one(key: str) -> None:
        start.wait()
        replies[key] = post(srv, "/v1/models/chexnet:predict", bodies[key])

    threads = [threading.Thread(target=one, args=(key,)) for key in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies["good"].status_code == 200, replies["good"].text
    assert np.asarray(replies["good"].json()["predictions"]).shape == (1, 14)
    assert replies["bad"].status_code == 400 and replies["bad"].json()["error"].startswith(NOT_AN_IMAGE_ERROR)


def _copy_version(base: Path, src: int, dst: int) -> None:
    """Copy a version directory atomically, as a deploy job would (copy beside, then rename)."""
    tmp = base / f".tmp-{dst}"
    shutil.copytree(base / str(src), tmp)
    tmp.rename(base / str(dst))


def wait_for(predicate: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


def _states(srv: ServeProcess) -> dict[str, str]:
    doc = requests.get(f"{srv.rest_url}/v1/models/chexnet", timeout=10).json()
    return {s["version"]: s["state"] for s in doc.get("model_version_status", [])}


def test_new_version_is_loaded_by_polling_without_restart(
    serve_factory: Any, model_base: Path, tmp_path: Path
) -> None:
    base = tmp_path / "chexnet"
    shutil.copytree(model_base, base)
    srv = serve_factory(["--file-system-poll-wait-seconds", "0.5"], model_base=base)
    assert _states(srv) == {"2": "AVAILABLE"}  # default policy: latest 1
    _copy_version(base, 1, 3)
    wait_for(lambda: _states(srv) == {"2": "END", "3": "AVAILABLE"})
    pixels = sample_pixels(1).tolist()
    res = post(srv, "/v1/models/chexnet:predict", {"instances": pixels})
    v3 = post(srv, "/v1/models/chexnet/versions/3:predict", {"instances": pixels})
    assert res.status_code == 200 and res.json() == v3.json()
    assert post(srv, "/v1/models/chexnet/versions/2:predict", {"instances": pixels}).status_code == 404
    shutil.rmtree(base / "3")  # removing the served version falls back to the latest remaining one
    wait_for(lambda: _states(srv).get("2") == "AVAILABLE" and _states(srv).get("3") == "END")
    srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0  # graceful SIGTERM
    assert "Unloaded servable version {name: chexnet version: 3}" in srv.log()


def test_models_config_change_is_picked_up(serve_factory: Any, model_base: Path) -> None:
    srv = serve_factory(
        ["--model-config-file-poll-wait-seconds", "0.5"], config=models_config(model_base, versions=(1,))
    )
    assert requests.get(f"{srv.rest_url}/v1/models/chexnet/labels/next", timeout=10).status_code == 404
    config_file = Path(srv.args[srv.args.index("--model-config-file") + 1])
    # A label for a version that is not loaded is refused (TF Serving semantics); the server keeps serving.
    config_file.write_text(models_config(model_base, versions=(1,), labels={"next": 2}))
    wait_for(lambda: "not currently available" in srv.log())
    assert requests.get(f"{srv.rest_url}/v1/models/chexnet/labels/next", timeout=10).status_code == 404
    config_file.write_text(models_config(model_base, versions=(1, 2), labels={"next": 2}))
    wait_for(
        lambda: requests.get(f"{srv.rest_url}/v1/models/chexnet/labels/next", timeout=10).status_code == 200
    )
    assert _states(srv) == {"1": "AVAILABLE", "2": "AVAILABLE"}
    srv.stop()
    srv.start()  # restart on the same ports
    assert requests.get(f"{srv.rest_url}/v1/models/chexnet/labels/next", timeout=10).status_code == 200


@pytest.mark.parametrize("by_env", [False, True], ids=["flags", "variables"])
def test_serving_listens_where_its_address_settings_say(
    model_base: Path, tmp_path: Path, by_env: bool
) -> None:
    """gRPC on --serving (CHEXSTACK_SERVING), REST on --serving-rest (CHEXSTACK_SERVING_REST)."""
    args = ["--model-name", MODEL_NAME, "--model-base-path", str(model_base)]
    srv = ServeProcess(args, MODEL_NAME, tmp_path / "serve.log", by_env=by_env)
    try:
        srv.start()  # waits for a version AVAILABLE over REST on rest_port
        with ServingClient(srv.grpc_target, timeout_s=30) as client:
            assert client.model_status(MODEL_NAME) == {2: "AVAILABLE"}
        assert f"Running gRPC ModelServer at {srv.grpc_target} " in srv.log()
    finally:
        srv.stop()


def test_a_missing_base_path_is_logged_once_per_state_not_every_poll(
    model_base: Path, tmp_path: Path
) -> None:
    """Serving waits for the base path to hold a version (as TF Serving does) and says so once, and again
    only when what it finds there changes."""
    base = tmp_path / "models" / MODEL_NAME
    poll_s = 0.1
    args = [
        "--model-name",
        MODEL_NAME,
        "--model-base-path",
        str(base),
        "--file-system-poll-wait-seconds",
        str(poll_s),
    ]
    srv = ServeProcess(args, MODEL_NAME, tmp_path / "serve.log")
    missing = (
        f"model {MODEL_NAME}: nothing to serve: base path {base} does not exist; waiting for a numbered "
    )
    empty = f"model {MODEL_NAME}: nothing to serve: base path {base} holds no numbered version directory"
    try:
        srv.start(wait=False)
        wait_for(lambda: "Exporting HTTP/REST API" in srv.log())
        time.sleep(20 * poll_s)  # many polls that find the same thing
        base.mkdir(parents=True)
        wait_for(lambda: empty in srv.log())
        time.sleep(20 * poll_s)
        shutil.copytree(model_base / "1", base / ".tmp-1")
        (base / ".tmp-1").rename(base / "1")
        srv.wait_available(1)
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    assert (log.count(missing), log.count(empty)) == (1, 1)
    assert f"such as {base / '1'}" in log
