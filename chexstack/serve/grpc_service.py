"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata) and ModelService."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from chexstack.serve.config import ConfigError, parse_model_server_config
from chexstack.serve.core import ModelServer
from chexstack.serve.errors import Code, ServeError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_GRPC_CODES = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}


def _spec(model_spec: Any) -> tuple[str, int | None, str | None]:
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return model_spec.name, int(model_spec.version.value), None
    if which == "version_label":
        return model_spec.name, None, model_spec.version_label
    return model_spec.name, None, None


def _abort(context: grpc.ServicerContext, exc: ServeError) -> None:
    context.abort(_GRPC_CODES[exc.code], exc.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, server: ModelServer) -> None:
        self._server = server

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        import tensorflow as tf

        name, version, label = _spec(request.model_spec)
        try:
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as exc:  # malformed TensorProto
                raise ServeError(Code.INVALID_ARGUMENT, f"cannot decode input tensor: {exc}") from exc
            servable, signature, outputs = self._server.predict(
                name,
                inputs,
                version=version,
                label=label,
                signature_name=request.model_spec.signature_name,
                output_filter=list(request.output_filter),
                entrypoint="GRPC",
            )
        except ServeError as exc:  # TF's errors on the request's data too (inference.model_error)
            _abort(context, exc)
            raise  # unreachable: abort raises
        except Exception as exc:  # the server's own failure: the details go to the log, as over REST
            log.exception("Predict %s failed", name)
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error ({type(exc).__name__}); the server's log has the details",
            )
            raise
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        name, version, label = _spec(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def must be requested (only)"
            )
        try:
            servable = self._server.metadata(name, version, label)
        except ServeError as exc:
            _abort(context, exc)
            raise
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, server: ModelServer) -> None:
        self._server = server

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        name, version, label = _spec(request.model_spec)
        try:
            statuses = self._server.status(name, version, label)
        except ServeError as exc:
            _abort(context, exc)
            raise
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, s in statuses.items():
            item = response.model_version_status.add()
            item.version = v
            item.state = get_model_status_pb2.ModelVersionStatus.State.Value(s.state)
            item.status.error_code = _error_code(s.error_code)
            item.status.error_message = s.error_message
        return response

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        from tensorflow_serving.apis import model_management_pb2

        response = model_management_pb2.ReloadConfigResponse()
        try:
            # Same validation as a models.config file.
            from google.protobuf import text_format

            self._server.registry.apply_config(
                parse_model_server_config(text_format.MessageToString(request.config))
            )
        except ConfigError as exc:
            response.status.error_code = _error_code("INVALID_ARGUMENT")
            response.status.error_message = str(exc)
        return response


def _error_code(name: str) -> int:
    from tensorflow_serving.apis import status_pb2

    codes = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_name
    return int(codes[name].number if name in codes else codes["UNKNOWN"].number)


class GrpcServer:
    def __init__(self, model_server: ModelServer, host: str, port: int, max_workers: int = 32) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(model_server), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(model_server), self._server)
        try:  # grpc raises RuntimeError (older versions: returned 0)
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"--serving {host}:{port}: cannot bind it")

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_s: float = 5.0) -> None:
        self._server.stop(grace_s).wait()
