"""TF Serving's gRPC API (PredictionService: Predict, GetModelMetadata; ModelService: GetModelStatus).

Built on `tensorflow-serving-api`'s generated servicers, so any TF Serving gRPC client talks to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from medsynth.errors import ServingError
from medsynth.serving.app import ServingApp
from medsynth.serving.protocol import RequestError, invalid

log = logging.getLogger("medsynth.serve")


def start_grpc(app: ServingApp, host: str, port: int) -> tuple[grpc.Server, int]:
    limit = app.config.max_request_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=app.config.grpc_workers, thread_name_prefix="medsynth-grpc"),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(app), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(app), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ServingError(f"--grpc-port {port}: cannot listen on {host}:{port} (in use?); pick another port")
    server.start()
    return server, bound


def _spec(request: Any) -> tuple[str, int | None]:
    spec = request.model_spec
    if spec.version_label:
        raise invalid(f"Unrecognized servable version label: {spec.version_label} "
                      "(medsynth serve has no labels; set model_spec.version)")
    return spec.name, (spec.version.value if spec.HasField("version") else None)


def _call(app: ServingApp, method: str, context: grpc.ServicerContext, fn: Callable[[], tuple[Any, Any, int]]
          ) -> Any:
    """Run `fn` -> (response, version, images) with accounting; RequestError becomes the gRPC status."""
    t0 = time.perf_counter()
    code, version, images = "OK", None, 0
    try:
        app.begin()
    except RequestError as e:
        context.abort(grpc.StatusCode[e.code], e.message)
    try:
        response, version, images = fn()
        return response
    except RequestError as e:
        code = e.code
        context.abort(grpc.StatusCode[e.code], e.message)
    except Exception as e:  # noqa: BLE001 - a bug answers INTERNAL for this call, the server keeps going
        code = "INTERNAL"
        log.exception("internal error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    finally:
        app.end()
        app.metrics.observe(app.config.model_name, version, method, code, time.perf_counter() - t0, images)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's names
        import tensorflow as tf

        def run() -> tuple[Any, Any, int]:
            name, version = _spec(request)
            model = self.app.model(name, version)
            signature = request.model_spec.signature_name or "serving_default"
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except (TypeError, ValueError) as e:
                raise invalid(f"an input TensorProto cannot be read: {e}") from None
            outputs, n = self.app.predict(model, signature, inputs, list(request.output_filter) or None)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response, model.version, n

        return _call(self.app, "grpc_predict", context, run)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> tuple[Any, Any, int]:
            name, version = _spec(request)
            resp = self.app.metadata_proto(name, version, list(request.metadata_field))
            return resp, resp.model_spec.version.value, 0

        return _call(self.app, "grpc_metadata", context, run)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> tuple[Any, Any, int]:
            name, version = _spec(request)
            return self.app.status_proto(name, version), version, 0

        return _call(self.app, "grpc_status", context, run)
