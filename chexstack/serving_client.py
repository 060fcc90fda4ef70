"""gRPC client for TF Serving's standard API (official tensorflow_model_server or `chexstack serve`).

Tensors are encoded as TensorProto by hand, so only standard protos are used (no tf.* calls).
"""

from __future__ import annotations

from typing import Any, Final

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from chexstack.labels import NUM_LABELS
from chexstack.settings import IMAGE_SIZE

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
INPUT_KEY: Final = "image"
OUTPUT_KEY: Final = "probabilities"
CAM_KEY: Final = "class_activation_maps"
SIGNATURE: Final = "serving_default"
EXPLAIN_SIGNATURE: Final = "explain"
RETRYABLE: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
_DT_UINT8: Final = 4
_DT_FLOAT: Final = 1


class ServingError(RuntimeError):
    """A failed call; `retryable` says whether the same request may succeed later."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError, what: str) -> ServingError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return cls(f"{what}: {name}: {details}", code=code, retryable=code in RETRYABLE)


def _pixels_proto(pixels: np.ndarray) -> Any:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1) or array.shape[0] < 1:
        raise ValueError(f"pixels must be [N,{IMAGE_SIZE},{IMAGE_SIZE}] or [N,{IMAGE_SIZE},{IMAGE_SIZE},1]")
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
    )
    return tensor_pb2.TensorProto(dtype=_DT_UINT8, tensor_shape=shape, tensor_content=array.tobytes())


def _float_array(proto: Any) -> np.ndarray:
    if proto.dtype != _DT_FLOAT:
        raise ServingError(f"expected a float32 output, got dtype {proto.dtype}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype="<f4")
    else:
        values = np.asarray(proto.float_val, dtype=np.float32)
        if values.size == 1 and int(np.prod(shape)) > 1:  # a constant tensor may send one repeated value
            values = np.full(shape, values[0], dtype=np.float32)
    return values.astype(np.float32).reshape(shape)


class ServingClient:
    """TF Serving's gRPC API at `target`; every call waits at most `timeout_s` (--serving-timeout-s)."""

    def __init__(self, target: str, *, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def predict(
        self, model_name: str, pixels: np.ndarray, *, version: int | None = None, label: str | None = None
    ) -> tuple[np.ndarray, int]:
        """Probabilities float32 [N,14] for uint8 pixels [N,224,224(,1)], and the version that answered."""
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = SIGNATURE
        if version is not None:
            request.model_spec.version.value = version
        elif label is not None:
            request.model_spec.version_label = label
        request.inputs[INPUT_KEY].CopyFrom(_pixels_proto(pixels))
        request.output_filter.append(OUTPUT_KEY)
        try:
            response = self._predict.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ServingError.from_rpc(exc, f"Predict {model_name}") from exc
        if OUTPUT_KEY not in response.outputs:
            raise ServingError(f"Predict {model_name}: response has no {OUTPUT_KEY!r} output")
        probs = _float_array(response.outputs[OUTPUT_KEY])
        n = request.inputs[INPUT_KEY].tensor_shape.dim[0].size
        if probs.shape != (n, NUM_LABELS):
            raise ServingError(
                f"Predict {model_name}: expected output shape {(n, NUM_LABELS)}, got {probs.shape}"
            )
        return probs, int(response.model_spec.version.value)

    def explain(
        self, model_name: str, pixels: np.ndarray, *, version: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(probabilities [N,14], class activation maps [N,h,w,14] in [0, 1], version) from the model's
        `explain` signature. Versions exported without it answer with a ServingError (not retryable)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = EXPLAIN_SIGNATURE
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[INPUT_KEY].CopyFrom(_pixels_proto(pixels))
        try:
            response = self._predict.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ServingError.from_rpc(exc, f"Predict {model_name} ({EXPLAIN_SIGNATURE})") from exc
        missing = {OUTPUT_KEY, CAM_KEY} - set(response.outputs)
        if missing:
            raise ServingError(
                f"Predict {model_name} ({EXPLAIN_SIGNATURE}): response lacks {sorted(missing)}"
            )
        probs = _float_array(response.outputs[OUTPUT_KEY])
        cams = _float_array(response.outputs[CAM_KEY])
        n = request.inputs[INPUT_KEY].tensor_shape.dim[0].size
        if (
            probs.shape != (n, NUM_LABELS)
            or cams.ndim != 4
            or cams.shape[0] != n
            or cams.shape[3] != NUM_LABELS
        ):
            raise ServingError(
                f"Predict {model_name} ({EXPLAIN_SIGNATURE}): unexpected shapes {probs.shape}, {cams.shape}"
            )
        return probs, cams, int(response.model_spec.version.value)

    def model_status(self, model_name: str) -> dict[int, str]:
        """Version -> state name (START, LOADING, AVAILABLE, UNLOADING, END)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        try:
            response = self._models.GetModelStatus(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ServingError.from_rpc(exc, f"GetModelStatus {model_name}") from exc
        states = get_model_status_pb2.ModelVersionStatus.State
        return {int(s.version): states.Name(s.state) for s in response.model_version_status}

    def label_version(self, model_name: str, label: str) -> int | None:
        """The version serving resolves `label` to now; None when serving does not know the label."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model_name
        request.model_spec.version_label = label
        request.metadata_field.append("signature_def")
        try:
            response = self._predict.GetModelMetadata(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            # TF Serving answers an unknown label with INVALID_ARGUMENT, `chexstack serve` with NOT_FOUND.
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise ServingError.from_rpc(exc, f"GetModelMetadata {model_name} label {label!r}") from exc
        return int(response.model_spec.version.value)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
