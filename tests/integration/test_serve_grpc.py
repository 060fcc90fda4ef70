"""`chexstack serve` over gRPC through ServingClient and raw stubs; batching and metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from chexstack.serving_client import ServingClient, ServingError
from tests.conftest import free_port
from tests.integration.conftest import ServeProcess, models_config, sample_pixels, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = models_config(model_base, versions=(1, 2), labels={"stable": 1})
    srv = start_server(tmp_path_factory.mktemp("grpc"), config=config)
    srv.wait_available(1)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[ServingClient]:
    with ServingClient(server.grpc_target, timeout_s=60) as c:
        yield c


def test_predict_by_version_label_and_latest(client: ServingClient) -> None:
    pixels = sample_pixels(2)
    p1, v1 = client.predict("chexnet", pixels, version=1)
    p2, v2 = client.predict("chexnet", pixels[..., 0])  # [N,224,224] is accepted too
    pl, vl = client.predict("chexnet", pixels, label="stable")
    assert (v1, v2, vl) == (1, 2, 1)
    assert p1.shape == (2, 14) and p1.dtype == np.float32
    assert np.all((p1 >= 0) & (p1 <= 1))
    np.testing.assert_array_equal(p1, pl)
    assert not np.allclose(p1, p2, atol=1e-4)


def test_grpc_and_rest_agree(client: ServingClient, server: ServeProcess) -> None:
    pixels = sample_pixels(1, seed=5)
    probs, _ = client.predict("chexnet", pixels, version=2)
    res = requests.post(
        f"{server.rest_url}/v1/models/chexnet/versions/2:predict",
        json={"instances": pixels.tolist()},
        timeout=60,
    )
    np.testing.assert_allclose(probs, res.json()["predictions"], atol=1e-6)


def test_explain_gives_the_same_probabilities_and_class_activation_maps(client: ServingClient) -> None:
    pixels = sample_pixels(2, seed=9)
    probs, version = client.predict("chexnet", pixels, version=2)
    explained, cams, explained_version = client.explain("chexnet", pixels, version=2)
    assert explained_version == version == 2
    np.testing.assert_allclose(explained, probs, atol=1e-5)
    assert cams.shape[0] == 2 and cams.shape[3] == 14 and cams.shape[1] == cams.shape[2] >= 1
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0


def test_model_status(client: ServingClient) -> None:
    assert client.model_status("chexnet") == {1: "AVAILABLE", 2: "AVAILABLE"}


@pytest.mark.parametrize("kwargs", [{"model_name": "nope"}, {"model_name": "chexnet", "version": 9}])
def test_not_found_is_not_retryable(client: ServingClient, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ServingError, match="NOT_FOUND") as info:
        client.predict(pixels=sample_pixels(1), **kwargs)
    assert info.value.retryable is False and info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServingError, match="NOT_FOUND"):
        client.model_status("nope")


def test_unreachable_server_is_retryable() -> None:
    with ServingClient(f"127.0.0.1:{free_port()}", timeout_s=2) as dead, pytest.raises(ServingError) as info:
        dead.predict("chexnet", sample_pixels(1))
    assert info.value.retryable is True


def test_raw_stubs_metadata_and_invalid_argument(server: ServeProcess) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = "chexnet"
        req.model_spec.version_label = "stable"
        meta = stub.GetModelMetadata(req, timeout=30)
        assert meta.model_spec.version.value == 1
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sig_map)
        assert {"serving_default", "predict_image"} <= set(sig_map.signature_def)
        assert sig_map.signature_def["serving_default"].inputs["image"].dtype == tf.uint8.as_datatype_enum

        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "chexnet"
        bad.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 224, 224, 1), np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(bad, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        ok = predict_pb2.PredictRequest()
        ok.model_spec.name = "chexnet"
        ok.model_spec.signature_name = "predict_image"
        png = tf.io.encode_png(tf.constant(sample_pixels(1)[0])).numpy()
        ok.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png]))
        res = stub.Predict(ok, timeout=60)
        assert res.model_spec.version.value == 2 and res.model_spec.signature_name == "predict_image"
        assert tf.make_ndarray(res.outputs["probabilities"]).shape == (1, 14)


def test_batching_gives_unbatched_answers_and_reports_batch_sizes(
    serve_factory: Any, model_base: Path, tmp_path: Path
) -> None:
    params = tmp_path / "batching.config"
    params.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 500000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 10 }\n"
    )
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    srv = serve_factory(
        [
            "--enable-batching",
            "--batching-parameters-file",
            str(params),
            "--monitoring-config-file",
            str(monitoring),
        ],
        model_base=model_base,
    )
    pixels = sample_pixels(6, seed=11)
    with ServingClient(srv.grpc_target, timeout_s=120) as c:
        expected = np.concatenate([c.predict("chexnet", pixels[i : i + 1])[0] for i in range(2)])
        results: dict[int, np.ndarray] = {}
        start = threading.Barrier(len(pixels))

        def one(i: int) -> None:
            start.wait()
            results[i] = c.predict("chexnet", pixels[i : i + 1])[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pixels))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == list(range(len(pixels)))
    np.testing.assert_allclose(np.concatenate([results[0], results[1]]), expected, atol=1e-5)
    assert len({tuple(np.round(r[0], 5)) for r in results.values()}) == len(pixels)  # each got its own row

    page = requests.get(f"{srv.rest_url}/monitoring/prometheus/metrics", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    metrics = _parse(page.text)
    batch = ":tensorflow:serving:batching_session:processed_batch_size"
    count = metrics[f'{batch}_count{{model_name="chexnet"}}']
    assert metrics[f'{batch}_sum{{model_name="chexnet"}}'] > count  # some batch held more than one request
    ok = ':tensorflow:serving:request_count{API="predict",entrypoint="GRPC",model_name="chexnet",status="OK"}'
    assert metrics[ok] == 2 + len(pixels)
    assert metrics[':tensorflow:serving:loaded_model_versions{model_name="chexnet",model_version="2"}'] == 1
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page.text


def _parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {series: value}; fails on malformed lines."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        out[series] = float(value)
    return out
