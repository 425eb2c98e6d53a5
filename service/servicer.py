"""gradsentry.v1.Reliability on top of the transport-agnostic pipeline.

Each input is decoded and validated by ``service.codec`` (errors name the input's index in
batches and streams), scored by ``service.pipeline`` and turned into a CheckResponse. Calls
are refused with NotReadyError until the server has warmed up and DrainingError once it is
shutting down.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.codec import CodecError, decode
from service.errors import ClientError, DrainingError, NotReadyError
from service.pipeline import Pipeline, Result

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
KIND_ENUM: dict[str, int] = {
    "adversarial": pb.ADVERSARIAL,
    "ood": pb.OOD,
    "corrupted": pb.CORRUPTED,
}
_DTYPE_ENUM: dict[str, int] = {"float32": pb.FLOAT32, "float64": pb.FLOAT64}


def call_request_id(context: grpc.ServicerContext) -> str:
    """The call's id: the client's "x-request-id" metadata or a fresh one; sent back as
    initial metadata."""
    sent = [v for k, v in context.invocation_metadata() if k == REQUEST_ID_KEY]
    if sent:
        rid = str(sent[0])
        if not _REQUEST_ID.match(rid):
            raise ClientError(
                f"{REQUEST_ID_KEY} must be 1-128 printable ASCII characters without spaces"
            )
    else:
        rid = uuid.uuid4().hex
    context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    return rid


def to_response(
    result: Result,
    request: pb.CheckRequest,
    request_id: str,
    decode_seconds: float,
) -> pb.CheckResponse:
    """One pipeline Result -> CheckResponse, honouring the request's return_* options."""
    response = pb.CheckResponse(
        request_id=request.request_id or request_id,
        predicted_class=result.predicted_class,
        label=result.label,
        verdict=pb.FLAGGED if result.flagged else pb.RELIABLE,
        score=result.score,
        threshold=result.threshold,
        kind=KIND_ENUM.get(result.kind or "", pb.KIND_UNSPECIFIED),
        kind_scores=result.kind_scores,
        timings=pb.Timings(
            decode_seconds=decode_seconds,
            queue_seconds=result.timings.get("queue", 0.0),
            forward_seconds=result.timings.get("forward", 0.0),
            backward_seconds=result.timings.get("backward", 0.0),
            statistics_seconds=result.timings.get("statistics", 0.0),
            detector_seconds=result.timings.get("detector", 0.0),
        ),
    )
    if request.return_probabilities:
        response.probabilities.extend(result.probabilities.tolist())
    if request.return_features:
        response.features.extend(result.features.tolist())
    return response


class ReliabilityServicer(pb_grpc.ReliabilityServicer):
    """The Reliability service for one pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.ready = threading.Event()
        self.draining = threading.Event()

    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        self._admit()
        rid = call_request_id(context)
        return self._score([request], [rid])[0]

    def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        self._admit()
        rid = call_request_id(context)
        if not request.requests:
            raise ClientError("empty batch: CheckBatchRequest.requests holds no inputs")
        ids = [f"{rid}/{i}" for i in range(len(request.requests))]
        return pb.CheckBatchResponse(responses=self._score(request.requests, ids, "requests"))

    def CheckStream(
        self, request_iterator: Iterator[pb.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckResponse]:
        self._admit()
        rid = call_request_id(context)
        for i, request in enumerate(request_iterator):
            self._admit()
            yield self._score([request], [f"{rid}/{i}"], "stream message", offset=i)[0]

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        spec = self.pipeline.spec
        manifest = self.pipeline.sentry.bundle.manifest
        versions = {str(k): str(v) for k, v in manifest.get("versions", {}).items()}
        for dist in ("gradsentry", "grpcio"):
            try:
                versions[f"server.{dist}"] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[f"server.{dist}"] = "unknown"
        return pb.InfoResponse(
            input=pb.InputSpec(
                shape=list(spec.shape),
                dtype=_DTYPE_ENUM[spec.dtype],
                min_value=spec.value_range[0],
                max_value=spec.value_range[1],
                mean=list(spec.mean),
                std=list(spec.std),
            ),
            labels=list(spec.labels),
            feature_names=self.pipeline.feature_names,
            threshold=float(manifest["threshold"]),
            target_fpr=float(manifest["target_fpr"]),
            kinds=self.pipeline.kinds,
            model_fingerprint=str(manifest["model_fingerprint"]),
            versions=versions,
            max_batch_size=self.pipeline.max_batch_size,
        )

    def _admit(self) -> None:
        if self.draining.is_set():
            raise DrainingError("the server is shutting down; retry on another replica")
        if not self.ready.is_set():
            raise NotReadyError("the model is still loading; retry when health is SERVING")

    def _score(
        self,
        requests: Sequence[pb.CheckRequest],
        ids: Sequence[str],
        where: str | None = None,
        offset: int = 0,
    ) -> list[pb.CheckResponse]:
        """Decode every request (naming the bad one), score them as one batch, respond."""
        arrays: list[np.ndarray] = []
        decode_times: list[float] = []
        for i, request in enumerate(requests):
            t0 = time.perf_counter()
            try:
                arrays.append(decode(request, self.pipeline.spec))
            except CodecError as exc:
                if where is None:
                    raise
                raise CodecError(f"{where} {offset + i}: {exc}") from exc
            decode_times.append(time.perf_counter() - t0)
        results = self.pipeline.run(arrays)
        return [
            to_response(r, q, rid, dt)
            for r, q, rid, dt in zip(results, requests, ids, decode_times, strict=True)
        ]
