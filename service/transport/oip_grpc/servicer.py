"""inference.GRPCInferenceService (the Open Inference Protocol over gRPC) <-> the data plane.

Served on the same gRPC server and port as gradsentry.v1, behind the same interceptors:
metrics, auth, error mapping, admission (the probes and metadata are free, ModelInfer
shares the unary budget with Check) and message parsing. This class only translates
messages: inputs come as ``raw_input_contents`` (what tritonclient sends) or typed
``contents``; outputs go back as ``raw_output_contents``, as Triton answers
(``service.transport.oip_tensors`` has the tensors' names and meaning).

The repository methods (RepositoryModelLoad / Unload) are not served: the model is fixed
when the server starts, so they answer UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import time

import grpc

from service._proto.inference import grpc_predict_v2_pb2 as pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.dataplane.deadline import time_left
from service.dataplane.plane import DataPlane
from service.dataplane.request_id import check_request_id
from service.errors import ClientError
from service.transport import grpc_calls
from service.transport import oip_tensors as oip

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Typed-contents fields of InferTensorContents, in field order.
_TYPED = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


def server_version() -> str:
    """The gradsentry distribution's version ("unknown" when it is not installed)."""
    try:
        return importlib.metadata.version("gradsentry")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def input_tensors(request: pb.ModelInferRequest) -> list[oip.InputTensor]:
    """The request's inputs as transport-neutral tensors (raw or typed, never both)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ClientError(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in order"
        )
    tensors = []
    for i, t in enumerate(request.inputs):
        shape = tuple(t.shape)
        if raw:  # the usual case (tritonclient): any contents at all is a second copy
            typed = ("contents",) if t.HasField("contents") else ()
            tensors.append(oip.InputTensor(t.name, t.datatype, shape, raw[i], None, typed))
            continue
        contents = t.contents
        typed = tuple(f for f in _TYPED if len(getattr(contents, f)))
        values = None
        if t.datatype in oip.TYPED_FIELD:
            values = getattr(contents, oip.TYPED_FIELD[t.datatype])
        tensors.append(oip.InputTensor(t.name, t.datatype, shape, None, values, typed))
    return tensors


def parameter_timeout(request: pb.ModelInferRequest) -> float | None:
    """The request's ``parameters["timeout"]`` (microseconds, as tritonclient.grpc's
    ``infer(timeout=...)`` sends it) -> seconds; None when absent or 0."""
    if "timeout" not in request.parameters:
        return None
    param = request.parameters["timeout"]
    which = param.WhichOneof("parameter_choice")
    value = getattr(param, which) if which else None
    return oip.timeout_seconds(value)


@functools.lru_cache(maxsize=256)
def response_template(
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...],
) -> pb.ModelInferResponse:
    """A response holding the outputs' metadata, (name, datatype, shape) each: built once
    per kind of call, as copying it is cheaper than filling it in every time."""
    response = pb.ModelInferResponse(model_version=oip.MODEL_VERSION)
    for name, datatype, shape in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol's gRPC service on a data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.serving)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        oip.check_model(request.name, request.version, self.plane.model_name)
        return pb.ModelReadyResponse(ready=self.plane.serving)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="gradsentry", version=server_version())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        oip.check_model(request.name, request.version, self.plane.model_name)
        meta = oip.model_metadata(self.plane.info(), self.plane.num_classes)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        plane, arrived = self.plane, time.monotonic()
        oip.check_model(request.model_name, request.model_version, plane.model_name)
        plane.admit()
        await grpc_calls.request_id(context)
        check_request_id(request.id, "ModelInferRequest.id")
        chosen = oip.requested_outputs([o.name for o in request.outputs])
        asked = parameter_timeout(request)  # counts from the call's arrival, as in Triton
        tensor = oip.the_input(input_tensors(request))
        spec, most = plane.spec, plane.batcher.queue_size
        n = oip.input_rows(tensor, spec, most)  # before any data is read
        nbytes = len(tensor.raw) if tensor.raw is not None else 8 * n * math.prod(spec.shape)
        (batch,), _ = await plane.decode(
            [tensor], lambda t: oip.decode_input(t, spec, most), nbytes=nbytes
        )
        timeout = time_left(asked, arrived, grpc_calls.timeout(context))
        results = await plane.score(list(batch[:, None]), timeout)
        outputs = oip.outputs(results, chosen)
        response = pb.ModelInferResponse()
        response.CopyFrom(
            response_template(tuple((o.name, o.datatype, tuple(o.shape)) for o in outputs))
        )
        response.model_name, response.id = plane.model_name, request.id
        response.raw_output_contents.extend(oip.raw_bytes(out) for out in outputs)
        return response
